//! The HTTP side under attack: clients that never finish their headers or bodies, idle
//! keep-alive connections, and more connections than the process has descriptors for, while
//! `serve` keeps delivering.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Timelike;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{db_url, http_get, seed, sigterm};
use crate::schedule::listening_addr;
use crate::smtp_server::{Policy, SmtpServer};
use crate::web::App;

/// Reads until the server closes the connection; what it sent, and how long that took.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open after {within:?}: {}",
        String::from_utf8_lossy(&raw)
    );
    (String::from_utf8_lossy(&raw).into_owned(), start.elapsed())
}

#[sqlx::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off(pool: PgPool) {
    let app = App::start(&pool, "[http]\nheader_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: news.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, took) = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[sqlx::test]
async fn an_idle_keep_alive_connection_is_closed(pool: PgPool) {
    let app = App::start(&pool, "[http]\nheader_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: news.example.com\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[sqlx::test]
async fn a_body_that_never_arrives_gets_408(pool: PgPool) {
    let app = App::start(
        &pool,
        "[http]\nsignup = true\nrequest_timeout = \"1s\"\nheader_timeout = \"30s\"\n",
    )
    .await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /subscribe HTTP/1.1\r\nHost: news.example.com\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail=ann",
    )
    .await
    .unwrap();
    let (answer, took) = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);
}

#[sqlx::test]
async fn connections_beyond_the_cap_wait_their_turn(pool: PgPool) {
    let app = App::start(
        &pool,
        "[http]\nmax_connections = 2\nheader_timeout = \"2s\"\n",
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The third waits in the backlog until a slow one is cut off.
    let start = Instant::now();
    let answer = http_get(&app.addr.to_string(), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "answered after {:?}: the cap let a third connection in",
        start.elapsed()
    );
}

/// `serve` with a slot a minute ago (so it sends at once) under an open-file limit of 96,
/// while 300 clients open connections and never finish their headers: every subscriber still
/// gets the issue, and `/healthz` answers again once the slow clients are cut off.
#[sqlx::test]
async fn serve_keeps_delivering_while_slow_clients_flood_the_http_side(pool: PgPool) {
    seed(&pool, 300).await;
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(10))).await;
    let past = digestif::clock::now() - chrono::Duration::minutes(1);
    let cron = format!(
        "{} {} {} {} *",
        past.minute(),
        past.hour(),
        chrono::Datelike::day(&past),
        chrono::Datelike::month(&past)
    );
    let mut child = tokio::process::Command::new("prlimit")
        .args([
            "--nofile=96:96",
            "--",
            env!("CARGO_BIN_EXE_digestif"),
            "serve",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("DATABASE_URL", db_url(&pool))
        .env("DIGESTIF_SCHEDULE__CRON", &cron)
        .env("DIGESTIF_SCHEDULE__TIMEZONE", "UTC")
        .env("DIGESTIF_SCHEDULE__GRACE", "6h")
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "4")
        .env("DIGESTIF_SMTP__URL", server.url())
        .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
        .env("DIGESTIF_HTTP__MAX_CONNECTIONS", "32")
        .env("DIGESTIF_HTTP__HEADER_TIMEOUT", "2s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs digestif");
    let (addr, log) = listening_addr(&mut child).await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(&addr).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            flood.push(s);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while server.accepted().len() < 300 {
        assert!(
            Instant::now() < deadline,
            "only {} of 300 delivered while the HTTP side was flooded",
            server.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(flood);
    let answer = http_get(&addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    sigterm(&child);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("serve stops")
        .unwrap();
    let log = log.await.unwrap();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}
