//! The HTTP side under attack: clients that never finish their headers or bodies, idle
//! keep-alive connections, and more connections than the process has descriptors for, while
//! `serve` keeps delivering; and the sign-up form used to mail-bomb strangers (another site's
//! form, forged proxy headers, IPv6 address hopping, one address over and over, unsubscribed
//! addresses, a name that is an advert).

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

/// One host opening every slot of `http.max_connections` (keep-alive connections that ask
/// something now and then, or headers sent slowly) held the server for everyone else: one-click
/// unsubscribes, confirmations and webhooks waited until it let go. A client now holds at most
/// `http.max_connections_per_client`; more are answered 503 at once.
/// This host itself (a reverse proxy on it) is not limited.
#[sqlx::test]
async fn one_client_cannot_take_every_connection_slot(pool: PgPool) {
    // The hog comes from this host's address on its network, the reader from loopback.
    let Some(own) = crate::helpers::own_address() else {
        eprintln!("skipped: this host has no address but loopback");
        return;
    };
    let app = App::start_on_every_address(
        &pool,
        "[http]\nmax_connections = 4\nmax_connections_per_client = 2\nheader_timeout = \"10s\"\n",
    )
    .await;
    let mut hog = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let mut s = socket
            .connect(std::net::SocketAddr::new(own, app.addr.port()))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        hog.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        http_get(&app.addr.to_string(), "/healthz"),
    )
    .await
    .expect("the hog's connections were cut off in the end");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "another client waited {:?} for the hog's connections",
        start.elapsed()
    );
    // The hog's third and fourth were turned away at once.
    let (said, took) = until_closed(&mut hog[3], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    // Loopback is not limited: five at once from here are all served.
    let answers = futures_util::future::join_all((0..5).map(|_| http_get_slowly(app.addr))).await;
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
}

/// GET /healthz, holding the connection open 300 ms before asking.
async fn http_get_slowly(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    until_closed(&mut s, Duration::from_secs(5)).await.0
}

/// A client that sends request after request and never reads the answers: once its buffers
/// are full the server's write waits for ever, and no header timeout runs while a request is
/// being answered, so such clients held every connection slot, and one-click unsubscribes,
/// confirmation links and `/readyz` hung. A write that makes no progress for
/// `http.request_timeout` now closes the connection.
#[sqlx::test]
async fn a_client_that_never_reads_its_answers_is_cut_off(pool: PgPool) {
    let app = App::start(
        &pool,
        "[http]\nmax_connections = 1\nrequest_timeout = \"2s\"\nheader_timeout = \"2s\"\n",
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hog = socket.connect(app.addr).await.unwrap();
    let flood = tokio::spawn(async move {
        let request = b"GET / HTTP/1.1\r\nHost: news.example.com\r\n\r\n".repeat(50);
        for _ in 0..400 {
            if hog.write_all(&request).await.is_err() {
                break;
            }
        }
        // Held open, never read.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(hog);
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        http_get(&app.addr.to_string(), "/healthz"),
    )
    .await
    .expect("a client that never reads held the only connection slot");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    flood.abort();
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

// ---- the sign-up form ------------------------------------------------------------------------

const FORM: &str = "[http]\nsignup = true\nsignup_per_hour = 100\n";

/// The confirmation mails in the outbox, by recipient, once `sentinel` has had one: the mails
/// go out from background tasks, in no set order.
async fn mails_after(app: &App, sentinel: &str) -> Vec<(String, String)> {
    let outbox = app.settings.delivery.outbox.clone();
    let read = move || {
        std::fs::read_dir(&outbox)
            .map(|d| {
                d.flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .filter_map(|m| {
                        let to = m.lines().find(|l| l.starts_with("To: "))?.to_owned();
                        Some((to, m))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    crate::helpers::wait_for("the sentinel's mail", Duration::from_secs(20), || {
        let mails = read();
        async move {
            mails
                .iter()
                .any(|(to, _)| to.contains(sentinel))
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    read()
}

async fn status_of(pool: &PgPool, email: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM subscriber WHERE email = $1")
        .bind(email)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_form_posted_from_another_site_is_refused(pool: PgPool) {
    let app = App::start(
        &pool,
        &format!("{FORM}signup_origins = [\"https://www.example.com\"]\n"),
    )
    .await;
    for origin in ["https://evil.example", "null", "http://news.example.com"] {
        let r = app
            .request_with(
                "POST",
                "/subscribe",
                Some("email=victim%40example.org"),
                &[("Origin", origin)],
            )
            .await;
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
    }
    assert_eq!(status_of(&pool, "victim@example.org").await, None);
    for (origin, email) in [
        ("https://news.example.com", "own%40example.org"),
        ("https://www.example.com", "blog%40example.org"),
    ] {
        let r = app
            .request_with(
                "POST",
                "/subscribe",
                Some(&format!("email={email}")),
                &[("Origin", origin)],
            )
            .await;
        assert_eq!(r.status, 200, "{origin}: {}", r.body);
    }
    // The request is recorded by the background task that sends the mail.
    crate::helpers::wait_for("the pending row", Duration::from_secs(20), || async {
        (status_of(&pool, "blog@example.org").await.as_deref() == Some("pending")).then_some(())
    })
    .await;
}

#[sqlx::test]
async fn behind_a_trusted_proxy_each_client_and_each_ipv6_slash_64_has_its_own_limit(pool: PgPool) {
    let app = App::start(
        &pool,
        "[http]\nsignup = true\nsignup_per_hour = 1\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    let post = |n: u32, header: &'static str, client: &'static str| {
        let app = &app;
        async move {
            app.request_with(
                "POST",
                "/subscribe",
                Some(&format!("email=p{n}%40example.org")),
                &[(header, client)],
            )
            .await
            .status
        }
    };
    assert_eq!(post(1, "X-Forwarded-For", "203.0.113.1").await, 200);
    assert_eq!(post(2, "X-Forwarded-For", "203.0.113.2").await, 200);
    assert_eq!(post(3, "X-Forwarded-For", "203.0.113.1").await, 429);
    // A client cannot forge its way out: the proxy appends the address it saw.
    assert_eq!(
        post(4, "X-Forwarded-For", "198.51.100.7, 203.0.113.1").await,
        429
    );
    assert_eq!(post(5, "X-Forwarded-For", "2001:db8:1:2::1").await, 200);
    assert_eq!(post(6, "X-Forwarded-For", "2001:db8:1:2::99").await, 429);
    assert_eq!(
        post(7, "Forwarded", "for=\"[2001:db8:1:3::1]:4711\"").await,
        200
    );

    // The consent evidence names the client, not the proxy.
    let keys = &app.keys;
    let id: i64 = crate::helpers::wait_for("p2's pending row", Duration::from_secs(20), || async {
        sqlx::query_scalar(
            "SELECT subscriber_id FROM subscriber WHERE email = 'p2@example.org' \
             AND confirm_nonce IS NOT NULL",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    let nonce: i64 =
        sqlx::query_scalar("SELECT confirm_nonce FROM subscriber WHERE subscriber_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let path = format!("/confirm/{}", keys.sign_confirm(id, nonce));
    let r = app
        .request_with(
            "POST",
            &path,
            Some(""),
            &[("X-Forwarded-For", "203.0.113.2")],
        )
        .await;
    assert_eq!(r.status, 200);
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM subscriber_event WHERE kind = 'confirmed' AND subscriber_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(detail, "confirmed from 203.0.113.2");
}

#[sqlx::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored(pool: PgPool) {
    let app = App::start(&pool, "[http]\nsignup = true\nsignup_per_hour = 1\n").await;
    let mut statuses = Vec::new();
    for (n, client) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let r = app
            .request_with(
                "POST",
                "/subscribe",
                Some(&format!("email=f{n}%40example.org")),
                &[
                    ("X-Forwarded-For", client),
                    ("Forwarded", &format!("for={client}")),
                ],
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 429]);
}

#[sqlx::test]
async fn the_form_mails_an_address_once_a_day_and_never_one_that_left(pool: PgPool) {
    let app = App::start(&pool, FORM).await;
    for (email, status) in [
        ("gone@example.org", "unsubscribed"),
        ("angry@example.org", "complained"),
        ("dead@example.org", "bounced"),
    ] {
        sqlx::query(
            "INSERT INTO subscriber (email, status, consent_source) VALUES ($1, $2, 'test')",
        )
        .bind(email)
        .bind(status)
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut answers = Vec::new();
    for email in [
        "pia", "pia", "pia", "gone", "angry", "dead", "gone", "sentinel",
    ] {
        // Each from its own client: the per-address limit is what holds.
        let r = app
            .request(
                "POST",
                "/subscribe",
                Some(&format!("email={email}%40example.org")),
            )
            .await;
        answers.push((r.status, r.body));
        if email == "pia" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every answer is the same, whoever the address belongs to"
    );
    let mails = mails_after(&app, "sentinel@example.org").await;
    let to = |who: &str| mails.iter().filter(|(to, _)| to.contains(who)).count();
    assert_eq!(
        to("pia@example.org"),
        1,
        "one confirmation mail per address per day"
    );
    assert_eq!(
        to("gone@example.org"),
        0,
        "an unsubscribed address is never mailed from the form"
    );
    assert_eq!(to("angry@example.org"), 0);
    assert_eq!(to("dead@example.org"), 0);
    assert_eq!(
        status_of(&pool, "gone@example.org").await.as_deref(),
        Some("unsubscribed")
    );
}

/// Someone signs target@example.org up through the form with `name` (form-encoded); the
/// confirmation mails once target's has gone.
async fn signed_up_by_a_stranger(app: &App, name: &str) -> Vec<(String, String)> {
    let form = format!("email=target%40example.org&name={name}");
    let r = app.request("POST", "/subscribe", Some(&form)).await;
    assert_eq!(r.status, 200);
    mails_after(app, "target@example.org").await
}

#[sqlx::test]
async fn the_confirmation_mail_never_repeats_the_typed_name(pool: PgPool) {
    let app = App::start(&pool, FORM).await;
    let mails = signed_up_by_a_stranger(&app, "Claim+your+prize+at+evil.example%2Flogin").await;
    let (to, mail) = &mails[0];
    assert!(!to.contains("prize"), "{to}");
    assert!(
        !mail.contains("evil.example") && !mail.contains("prize"),
        "{mail}"
    );
    assert!(mail.contains("Hi there,"), "{mail}");
}

/// Anyone can sign anyone up, typing any name, and the confirmation mail does not repeat it
/// (above), so its owner could not see what would greet them in every issue. The page the
/// link opens shows the name, and what the owner leaves in the field is what is kept: here
/// they clear it.
#[sqlx::test]
async fn a_strangers_name_is_shown_before_confirming_and_can_be_cleared(pool: PgPool) {
    let app = App::start(&pool, FORM).await;
    let mails =
        signed_up_by_a_stranger(&app, "Claim+your+%22prize%22+at+evil.example%2Flogin").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(mails[0].1.as_bytes())
        .unwrap();
    let text = parsed.body_text(0).unwrap();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/confirm/"))
        .expect("a confirmation link");
    let path = &link[link.find("/confirm/").unwrap()..];
    let page = app.request("GET", path, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("value=\"Claim your &#34;prize&#34; at evil.example/login\""),
        "{}",
        page.body
    );
    let name = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT name FROM subscriber WHERE email = 'target@example.org'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // A name that would be refused at sign-up is refused here too, and nothing is confirmed.
    let bad = app.request("POST", path, Some("name=a%0Db")).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("control character"), "{}", bad.body);
    assert!(name().await.is_some_and(|n| n.contains("prize")));
    let r = app.request("POST", path, Some("name=+")).await;
    assert!(r.body.contains("You are subscribed"), "{}", r.body);
    assert_eq!(name().await, None);
    // The used link shows no form, and no name.
    let again = app.request("GET", path, None).await;
    assert!(again.body.contains("Nothing to confirm"), "{}", again.body);
    assert!(!again.body.contains("name=\"name\""), "{}", again.body);
}

/// The owner's own sign-up after a stranger's: the newer request's name is the one kept, as
/// its link is the one that works.
#[sqlx::test]
async fn a_newer_sign_up_replaces_a_pending_name(pool: PgPool) {
    use digestif::domain::{SubscriberEmail, SubscriberName};
    use digestif::store::subscribers::{Asker, request_confirmation};
    let email = SubscriberEmail::parse("target@example.org").unwrap();
    let form = Asker::Form {
        resend_after: Duration::ZERO,
    };
    let stranger = SubscriberName::parse_optional("Claim your prize").unwrap();
    request_confirmation(&pool, &email, stranger.as_ref(), form)
        .await
        .unwrap();
    let own = SubscriberName::parse_optional("Tara").unwrap();
    request_confirmation(&pool, &email, own.as_ref(), form)
        .await
        .unwrap();
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("Tara"));
}
