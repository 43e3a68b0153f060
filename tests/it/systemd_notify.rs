//! `Type=notify` and `WatchdogSec=` as systemd runs `serve`: a datagram socket in
//! `NOTIFY_SOCKET` receives READY=1 once the listeners are bound, WATCHDOG=1 every half
//! period while the scheduler loop lives, and STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::helpers::{Digestif, MONDAY_MORNING, sigterm};

/// The messages the socket received within `within`, until one equals `until`.
fn receive_until(socket: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            let done = msg == until;
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

/// [`receive_until`] off the test's runtime (the socket blocks).
async fn next(
    socket: &std::sync::Arc<UnixDatagram>,
    until: &'static str,
    within: Duration,
) -> Vec<String> {
    let s = socket.clone();
    tokio::task::spawn_blocking(move || receive_until(&s, until, within))
        .await
        .unwrap()
}

#[sqlx::test]
async fn serve_says_ready_pings_the_watchdog_and_says_stopping(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut cmd = tokio::process::Command::from(
        Digestif::new(&pool)
            .env("DIGESTIF_NOW", MONDAY_MORNING)
            .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
            .env("NOTIFY_SOCKET", path.to_str().unwrap())
            // Two seconds: a ping every second.
            .env("WATCHDOG_USEC", "2000000")
            .command(&["serve"]),
    );
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();

    let socket = std::sync::Arc::new(socket);
    let first = next(&socket, "WATCHDOG=1", Duration::from_secs(30)).await;
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1"),
        "{first:?}"
    );
    assert_eq!(
        first.last().map(String::as_str),
        Some("WATCHDOG=1"),
        "{first:?}"
    );
    // And again a second later: pings keep coming while the loop lives.
    let more = next(&socket, "WATCHDOG=1", Duration::from_secs(5)).await;
    assert_eq!(
        more.last().map(String::as_str),
        Some("WATCHDOG=1"),
        "{more:?}"
    );

    sigterm(&child);
    let last = next(&socket, "STOPPING=1", Duration::from_secs(30)).await;
    assert_eq!(
        last.last().map(String::as_str),
        Some("STOPPING=1"),
        "{last:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("serve stops")
        .unwrap()
        .status;
    assert!(status.success());
}
