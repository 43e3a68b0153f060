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

/// A datagram socket in a fresh folder, as systemd's `NOTIFY_SOCKET`; reads wait 200 ms.
fn notify_socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (dir, path, socket)
}

/// Waits for `serve`, stopped by SIGTERM, to exit 0.
async fn stops_cleanly(child: tokio::process::Child) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("serve stops")
        .unwrap()
        .status;
    assert!(status.success());
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
    let (_dir, path, socket) = notify_socket();
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
    stops_cleanly(child).await;
}

/// A pass that fetches many slow feeds is alive: each feed ends within `feeds.timeout`. The
/// loop used to show a sign of life only when a pass began and per delivery result, so 40
/// feeds that each took their whole timeout (2 s, 8 at a time: 10 s) silenced the watchdog
/// (6 s) and systemd would have killed `serve` mid-fetch. 200 firewalled feeds at the default
/// 20 s take 500 s, over the unit's `WatchdogSec=5min`.
#[sqlx::test]
async fn a_long_feed_fetch_keeps_the_watchdog_fed(pool: PgPool) {
    // Takes every connection and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    for n in 0..40 {
        sqlx::query("INSERT INTO feed (url) VALUES ($1)")
            .bind(format!("http://{addr}/feed/{n}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let (dir, path, socket) = notify_socket();
    let log = dir.path().join("stderr");
    let mut cmd = tokio::process::Command::from(
        Digestif::new(&pool)
            .env("DIGESTIF_NOW", MONDAY_MORNING)
            .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
            .env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true")
            .env("DIGESTIF_FEEDS__TIMEOUT", "2s")
            .env("NOTIFY_SOCKET", path.to_str().unwrap())
            // Six seconds: a ping every three while the loop shows a sign of life.
            .env("WATCHDOG_USEC", "6000000")
            .command(&["serve"]),
    );
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let socket = std::sync::Arc::new(socket);
    let started = Instant::now();
    next(&socket, "READY=1", Duration::from_secs(30)).await;
    // Until every feed has been asked and timed out, and a little more.
    while taken.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "feeds not fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    sigterm(&child);
    stops_cleanly(child).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.matches("no answer within 2s").count() == 40,
        "the feeds did not time out:\n{said}"
    );
    assert!(!said.contains("no sign of life"), "{said}");
}
