//! The subscriber pages served on 127.0.0.1:0 against a real Postgres: GET never changes
//! anything, one-click unsubscribe, identical answers for bad tokens, double opt-in through the
//! real SMTP server, the sign-up form, and the archive without personal data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use digestif::config::Settings;
use digestif::digest;
use digestif::domain::Purpose;
use digestif::http::Server;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Digestif, at, seed};
use crate::smtp_server::{Policy, SmtpServer};

pub(crate) const OPERATOR: digestif::store::subscribers::Asker =
    digestif::store::subscribers::Asker::Operator {
        allow_erased: false,
    };

pub(crate) struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// Test settings: the file transport into a fresh folder, and `extra` TOML.
fn settings(extra: &str) -> Settings {
    Settings::from_toml(&format!(
        "[newsletter]\nbase_url = \"https://news.example.com\"\n\
         [delivery]\ntransport = \"file\"\noutbox = \"{}\"\n{extra}",
        tempfile::tempdir().unwrap().keep().display()
    ))
    .expect("settings")
}

pub(crate) struct App {
    pub addr: SocketAddr,
    pub settings: Settings,
    pub keys: digestif::domain::TokenKeys,
    /// The attempt counters (and the scheduler heartbeat) the server reads.
    pub counters: Arc<digest::deliver::Counters>,
    /// Dropping the app stops its server.
    _stop: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// `serve`'s own HTTP server ([`Server::build`]) on 127.0.0.1:0, with the file transport.
    pub async fn start(pool: &PgPool, extra: &str) -> Self {
        Self::start_with(pool.clone(), settings(extra)).await
    }

    /// [`App::start`] on every address of this host (`0.0.0.0`), so that a client can come
    /// from an address other than loopback; [`App::url`] still names 127.0.0.1.
    pub async fn start_on_every_address(pool: &PgPool, extra: &str) -> Self {
        let mut settings = settings(extra);
        settings.http.listen = "0.0.0.0:0".parse().unwrap();
        let mut app = Self::start_listening(pool.clone(), settings).await;
        app.addr.set_ip([127, 0, 0, 1].into());
        app
    }

    /// [`App::start`] with these settings and this pool (which may not answer).
    async fn start_with(pool: PgPool, mut settings: Settings) -> Self {
        settings.http.listen = "127.0.0.1:0".parse().unwrap();
        Self::start_listening(pool, settings).await
    }

    async fn start_listening(pool: PgPool, settings: Settings) -> Self {
        let counters: Arc<digest::deliver::Counters> = Arc::new(Default::default());
        let server = Server::build(Arc::new(settings.clone()), pool, counters.clone())
            .await
            .expect("the server starts");
        let addr = server.local_addr().unwrap();
        let keys = server.keys().clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(server.run_until_stopped(stopped));
        Self {
            addr,
            settings,
            keys,
            counters,
            _stop: stop,
        }
    }

    /// Where it answers, for `newsletter.base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.request_with(method, path, body, &[]).await
    }

    /// [`App::request`] with these extra headers.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let body = body.unwrap_or("");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: news.example.com\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Reply {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }
}

impl App {
    /// A POST with a body of `len` bytes, written while the answer is read: the server may
    /// answer (413) and close before the body is all written.
    async fn big_post(&self, path: &str, len: usize) -> Reply {
        let s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: news.example.com\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\r\n"
        );
        let writer = tokio::spawn(async move {
            w.write_all(head.as_bytes()).await?;
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..len.div_ceil(chunk.len()) {
                w.write_all(&chunk).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // Read until the server closes, or resets the connection after answering.
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        writer.abort();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        Reply {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            headers: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }
}

async fn subscriber(pool: &PgPool, email: &str, status: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO subscriber (email, status, consent_source) VALUES ($1, $2, 'test') RETURNING subscriber_id",
    )
    .bind(email)
    .bind(status)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Everything a visit could change, as one comparable value.
async fn snapshot(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT coalesce(string_agg(s.subscriber_id || s.status || coalesce(s.confirm_nonce::text, '-') || \
         (SELECT count(*) FROM subscriber_event e WHERE e.subscriber_id = s.subscriber_id), ',' \
         ORDER BY s.subscriber_id), '') FROM subscriber s",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn get_and_head_change_nothing(pool: PgPool) {
    let app = App::start(&pool, "").await;
    let id = subscriber(&pool, "ann@example.com", "active").await;
    let pending = digestif::store::subscribers::request_confirmation(
        &pool,
        &digestif::domain::SubscriberEmail::parse("pia@example.com").unwrap(),
        None,
        OPERATOR,
    )
    .await
    .unwrap();
    let digestif::store::subscribers::ConfirmRequest::Send {
        subscriber_id,
        nonce,
        ..
    } = pending
    else {
        panic!("expected a confirmation request");
    };
    let unsub = format!("/unsubscribe/{}", app.keys.sign(Purpose::Unsubscribe, id));
    let confirm = format!("/confirm/{}", app.keys.sign_confirm(subscriber_id, nonce));
    let before = snapshot(&pool).await;
    for _ in 0..10 {
        for path in [&unsub, &confirm] {
            let get = app.request("GET", path, None).await;
            assert_eq!(get.status, 200, "{path}");
            assert!(get.body.contains("<form method=\"post\""), "{}", get.body);
            assert_eq!(app.request("HEAD", path, None).await.status, 200);
        }
    }
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test]
async fn one_click_post_unsubscribes_and_the_pending_delivery_is_skipped(pool: PgPool) {
    let app = App::start(&pool, "").await;
    for i in 1..=3 {
        subscriber(&pool, &format!("u{i}@example.com"), "active").await;
    }
    sqlx::query("INSERT INTO tip (title, body) VALUES ('T', 'B')")
        .execute(&pool)
        .await
        .unwrap();
    digest::create_issue(&pool, &app.settings, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    let id: i64 =
        sqlx::query_scalar("SELECT subscriber_id FROM subscriber WHERE email = 'u2@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let path = format!("/unsubscribe/{}", app.keys.sign(Purpose::Unsubscribe, id));
    for _ in 0..2 {
        let r = app
            .request("POST", &path, Some("List-Unsubscribe=One-Click"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.headers.contains("\r\nlocation:"), "no redirect");
        assert!(!r.headers.contains("set-cookie"), "no cookies");
        assert!(r.body.contains("You are unsubscribed"));
    }
    let (status, events): (String, i64) = sqlx::query_as(
        "SELECT s.status, (SELECT count(*) FROM subscriber_event e WHERE e.subscriber_id = s.subscriber_id \
           AND e.kind = 'unsubscribed' AND e.method = 'one-click') FROM subscriber s WHERE subscriber_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), events),
        ("unsubscribed", 1),
        "repeating is harmless"
    );

    let report = crate::helpers::deliver_all(&pool, &app.settings, Duration::ZERO).await;
    assert_eq!((report.outcomes.sent, report.outcomes.skipped), (2, 1));
    let next = digest::create_issue(&pool, &app.settings, at("2026-12-07T08:00:00Z"))
        .await
        .unwrap();
    let fanned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery WHERE issue_id = $1 AND subscriber_id = $2",
    )
    .bind(next.issue_id)
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(fanned, 0);
}

#[sqlx::test]
async fn bad_tokens_all_get_the_same_answer_and_change_nothing(pool: PgPool) {
    let app = App::start(&pool, "").await;
    let id = subscriber(&pool, "ann@example.com", "active").await;
    let good = app.keys.sign(Purpose::Unsubscribe, id);
    let mut flipped: Vec<char> = good.chars().collect();
    let i = flipped.len() - 3;
    flipped[i] = if flipped[i] == 'a' { 'b' } else { 'a' };
    let flipped: String = flipped.into_iter().collect();
    let before = snapshot(&pool).await;
    let mut answers = Vec::new();
    for token in [
        "abc123.1.forgedforgedforgedforged",
        flipped.as_str(),
        &good[..good.len() - 4],
        "",
    ] {
        for method in ["GET", "POST"] {
            for prefix in ["/unsubscribe/", "/confirm/"] {
                let r = app
                    .request(
                        method,
                        &format!("{prefix}{token}"),
                        Some("List-Unsubscribe=One-Click"),
                    )
                    .await;
                answers.push((r.status, r.body));
            }
        }
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "answers differ");
    assert_eq!(answers[0].0, 404);
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test]
async fn double_opt_in_end_to_end_through_the_real_smtp_server(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let cli = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_NEWSLETTER__BASE_URL", "https://news.example.com");
    let out = cli
        .ok_async(&[
            "subscribers",
            "add",
            "new@example.org",
            "--name",
            "New Person",
            "--confirm",
        ])
        .await
        .stdout();
    assert!(out.contains("pending"), "{out}");
    let app = App::start(&pool, "").await;
    let mails = server.accepted();
    assert_eq!(mails.len(), 1);
    let msg = mail_parser::MessageParser::default()
        .parse(&mails[0].data)
        .unwrap();
    assert_eq!(
        msg.subject(),
        Some("Confirm your subscription to Backend Tips")
    );
    let text = msg.body_text(0).unwrap();
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/confirm/"))
        .expect("a link")
        .to_owned();
    let path = &link["https://news.example.com".len()..];
    assert!(
        msg.body_html(0).unwrap().contains(&link),
        "the HTML part carries the same link"
    );

    assert_eq!(app.request("GET", path, None).await.status, 200);
    let status = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM subscriber WHERE email = 'new@example.org'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(status().await, "pending");
    let r = app.request("POST", path, Some("")).await;
    assert!(r.body.contains("You are subscribed"), "{}", r.body);
    // A POST without the page's name field (a client that only presses the button) keeps
    // the name the operator gave.
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM subscriber WHERE email = 'new@example.org'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(name.as_deref(), Some("New Person"));
    assert_eq!(status().await, "active");
    let consent: Option<String> = sqlx::query_scalar(
        "SELECT detail FROM subscriber_event WHERE kind = 'confirmed' AND method = 'web'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert!(
        consent.unwrap_or_default().contains("127.0.0.1"),
        "consent evidence names the client"
    );

    let replay = app.request("POST", path, Some("")).await;
    assert!(
        replay.body.contains("Nothing to confirm"),
        "{}",
        replay.body
    );
    cli.ok(&["subscribers", "remove", "new@example.org"]);
    let replay = app.request("POST", path, Some("")).await;
    assert_eq!(replay.status, 200);
    assert_eq!(
        status().await,
        "unsubscribed",
        "an old link never re-subscribes"
    );
}

#[sqlx::test]
async fn the_sign_up_form_answers_alike_and_is_rate_limited(pool: PgPool) {
    let app = App::start(&pool, "[http]\nsignup = true\nsignup_per_hour = 3\n").await;
    subscriber(&pool, "known@example.com", "active").await;
    let form = app.request("GET", "/subscribe", None).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"email\""));
    let new = app
        .request(
            "POST",
            "/subscribe",
            Some("email=fresh%40example.com&name=Fresh"),
        )
        .await;
    let known = app
        .request(
            "POST",
            "/subscribe",
            Some("email=known%40example.com&name="),
        )
        .await;
    assert_eq!(
        (new.status, &new.body),
        (known.status, &known.body),
        "no membership leak"
    );
    assert_eq!(new.status, 200);
    let bad = app
        .request("POST", "/subscribe", Some("email=bob%40"))
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("is not a valid email address"));
    let limited = app
        .request("POST", "/subscribe", Some("email=x%40example.com"))
        .await;
    assert_eq!(limited.status, 429);
    // The confirmation goes out after the answer, from a background task: wait for its mail.
    let outbox = app.settings.delivery.outbox.clone();
    let mail = crate::helpers::wait_for("the confirmation mail", Duration::from_secs(20), || {
        let outbox = outbox.clone();
        async move {
            let files: Vec<_> = std::fs::read_dir(&outbox).ok()?.flatten().collect();
            match files.as_slice() {
                [one] => std::fs::read_to_string(one.path()).ok(),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        mail.contains("fresh@example.com") && mail.contains("https://news.example.com/confirm/"),
        "{mail}"
    );
    let pending: String =
        sqlx::query_scalar("SELECT status FROM subscriber WHERE email = 'fresh@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, "pending");
}

#[sqlx::test]
async fn the_sign_up_form_is_off_by_default(pool: PgPool) {
    let app = App::start(&pool, "").await;
    assert_eq!(app.request("GET", "/subscribe", None).await.status, 404);
    assert_eq!(
        app.request("POST", "/subscribe", Some("email=a%40example.com"))
            .await
            .status,
        404
    );
}

/// The unsubscribe page offers a way back only when there is one.
#[sqlx::test]
async fn the_unsubscribe_page_promises_the_sign_up_form_only_when_it_is_on(pool: PgPool) {
    let id = subscriber(&pool, "ann@example.com", "active").await;
    for (extra, form) in [("", false), ("[http]\nsignup = true\n", true)] {
        let app = App::start(&pool, extra).await;
        let path = format!("/unsubscribe/{}", app.keys.sign(Purpose::Unsubscribe, id));
        let page = app.request("GET", &path, None).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.body.contains("subscribe again"), form, "{}", page.body);
        let signup = app.request("GET", "/subscribe", None).await.status;
        assert_eq!(
            signup == 200,
            form,
            "{extra:?}: /subscribe answered {signup}"
        );
    }
}

#[sqlx::test]
async fn the_archive_and_web_view_show_the_snapshot_without_personal_data(pool: PgPool) {
    let app = App::start(&pool, "").await;
    subscriber(&pool, "secret.reader@example.com", "active").await;
    sqlx::query(
        "INSERT INTO tip (title, body) VALUES ('Archived <b>tip</b>', 'Body <script>x</script>')",
    )
    .execute(&pool)
    .await
    .unwrap();
    digest::create_issue(&pool, &app.settings, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    sqlx::query("UPDATE tip SET title = 'Edited later'")
        .execute(&pool)
        .await
        .unwrap();

    let list = app.request("GET", "/issues", None).await;
    assert!(list.body.contains("/issues/1"), "{}", list.body);
    let view = app.request("GET", "/issues/1", None).await;
    assert_eq!(view.status, 200);
    assert!(
        view.body.contains("Archived &lt;b&gt;tip&lt;/b&gt;"),
        "the snapshot, escaped"
    );
    assert!(!view.body.contains("Edited later"));
    assert!(!view.body.contains("<script>"));
    assert!(
        !view.body.contains("secret.reader"),
        "no subscriber address"
    );
    assert!(!view.body.contains("/unsubscribe/"), "no token link");
    for path in ["/issues/2", "/issues/abc", "/issues/0"] {
        assert_eq!(app.request("GET", path, None).await.status, 404, "{path}");
    }
    let feed = app.request("GET", "/feed.xml", None).await;
    assert!(feed.headers.contains("application/atom+xml"));
    assert!(
        feed.body.contains("<entry>") && feed.body.contains("https://news.example.com/issues/1")
    );
    for header in [
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "content-security-policy:",
        "referrer-policy: no-referrer",
    ] {
        assert!(
            view.headers.contains(header),
            "{header} missing: {}",
            view.headers
        );
    }
}

#[sqlx::test]
async fn every_answer_says_no_store_and_none_redirects(pool: PgPool) {
    let app = App::start(&pool, "[http]\nsignup = true\nsignup_per_hour = 1\n").await;
    let id = subscriber(&pool, "ann@example.com", "active").await;
    let unsub = format!("/unsubscribe/{}", app.keys.sign(Purpose::Unsubscribe, id));
    let answers = vec![
        (404, app.request("GET", "/no-such-page", None).await),
        (405, app.request("PUT", "/healthz", Some("")).await),
        (413, app.big_post(&unsub, 3 << 20).await),
        (
            422,
            app.request("POST", "/subscribe", Some("email=bob%40"))
                .await,
        ),
        (
            429,
            app.request("POST", "/subscribe", Some("email=x%40example.com"))
                .await,
        ),
        (
            200,
            app.request("POST", &unsub, Some("List-Unsubscribe=One-Click"))
                .await,
        ),
        (200, app.request("GET", "/issues", None).await),
    ];
    for (want, r) in &answers {
        assert_eq!(r.status, *want, "{}", r.headers);
        assert!(
            r.headers.contains("\r\ncache-control: no-store"),
            "{want} lacks Cache-Control: no-store: {}",
            r.headers
        );
        assert!(!r.headers.contains("\r\nlocation:"), "{want} redirects");
    }
    let status = crate::helpers::subscriber_status(&pool, id).await;
    assert_eq!(
        status, "unsubscribed",
        "the POST after the 413 did its work"
    );
}

#[sqlx::test]
async fn healthz_answers_503_when_the_database_does_not_answer(pool: PgPool) {
    let up = App::start(&pool, "").await;
    let ok = up.request("GET", "/healthz", None).await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, "ok: digestif, database reachable\n")
    );

    // A "database" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@{silent_addr}/digestif"))
        .unwrap();
    // With a configured token secret the server starts without reading the database.
    let s = settings("[http]\ntoken_secret = \"a-test-secret-long-enough-for-the-token-keys\"\n");
    let down = App::start_with(dead, s).await;
    let r = down.request("GET", "/healthz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.starts_with("database "), "{}", r.body);
    assert!(r.headers.contains("cache-control: no-store"));
    // Not ready, but alive: a restart would not bring the database back.
    assert_eq!(down.request("GET", "/readyz", None).await.status, 503);
    assert_eq!(down.request("GET", "/livez", None).await.status, 200);
}

/// `/readyz` also says no when `serve`'s scheduler loop has stopped showing signs of life
/// (a pass that hangs, say), while `/livez` still says the process answers.
#[sqlx::test]
async fn readyz_answers_503_when_the_scheduler_loop_is_silent(pool: PgPool) {
    use std::sync::atomic::Ordering;
    let app = App::start(&pool, "").await;
    // `serve --no-schedule`: no loop, so only the database counts.
    assert_eq!(app.request("GET", "/readyz", None).await.status, 200);
    app.counters.beat();
    assert_eq!(app.request("GET", "/readyz", None).await.status, 200);
    let long_ago = chrono::Utc::now().timestamp() - 600;
    app.counters.heartbeat.store(long_ago, Ordering::Relaxed);
    for path in ["/readyz", "/healthz"] {
        let r = app.request("GET", path, None).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert!(
            r.body.starts_with("scheduler loop silent for "),
            "{}",
            r.body
        );
    }
    assert_eq!(app.request("GET", "/livez", None).await.status, 200);
}

#[sqlx::test]
async fn a_newer_confirmation_request_voids_the_older_link(pool: PgPool) {
    let app = App::start(&pool, "").await;
    let email = digestif::domain::SubscriberEmail::parse("pia@example.com").unwrap();
    let mut links = Vec::new();
    for _ in 0..2 {
        let request =
            digestif::store::subscribers::request_confirmation(&pool, &email, None, OPERATOR)
                .await
                .unwrap();
        let digestif::store::subscribers::ConfirmRequest::Send {
            subscriber_id,
            nonce,
            ..
        } = request
        else {
            panic!("expected a confirmation request");
        };
        links.push(format!(
            "/confirm/{}",
            app.keys.sign_confirm(subscriber_id, nonce)
        ));
    }
    let status = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM subscriber WHERE email = 'pia@example.com'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = snapshot(&pool).await;
    let old = app.request("POST", &links[0], Some("")).await;
    assert_eq!(old.status, 200);
    assert!(old.body.contains("Nothing to confirm"), "{}", old.body);
    assert_eq!(status().await, "pending");
    assert_eq!(
        snapshot(&pool).await,
        before,
        "the old link changed nothing"
    );

    let new = app.request("POST", &links[1], Some("")).await;
    assert!(new.body.contains("You are subscribed"), "{}", new.body);
    assert_eq!(status().await, "active");
}

#[sqlx::test]
async fn a_rotated_token_secret_keeps_old_links_working_and_signs_with_the_new_one(pool: PgPool) {
    const OLD: &str = "the-old-secret-that-signed-last-years-issues";
    const NEW: &str = "the-new-secret-after-rotation-0123456789abc";
    let id = subscriber(&pool, "ann@example.com", "active").await;
    let old = App::start(&pool, &format!("[http]\ntoken_secret = \"{OLD}\"\n")).await;
    let old_link = format!("/unsubscribe/{}", old.keys.sign(Purpose::Unsubscribe, id));

    let without = App::start(&pool, &format!("[http]\ntoken_secret = \"{NEW}\"\n")).await;
    assert_eq!(without.request("GET", &old_link, None).await.status, 404);

    let rotated = App::start(
        &pool,
        &format!("[http]\ntoken_secret = \"{NEW}\"\nprevious_token_secrets = [\"{OLD}\"]\n"),
    )
    .await;
    let new_link = format!(
        "/unsubscribe/{}",
        rotated.keys.sign(Purpose::Unsubscribe, id)
    );
    assert_eq!(
        new_link,
        format!(
            "/unsubscribe/{}",
            without.keys.sign(Purpose::Unsubscribe, id)
        ),
        "new links are signed with the new secret only"
    );
    assert_ne!(new_link, old_link);
    let r = rotated.request("POST", &old_link, Some("")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = crate::helpers::subscriber_status(&pool, id).await;
    assert_eq!(status, "unsubscribed");
}

#[sqlx::test]
async fn metrics_can_leave_the_public_listener(pool: PgPool) {
    let mut s = settings("[http]\nmetrics_listen = \"127.0.0.1:0\"\n");
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::build(Arc::new(s), pool.clone(), Arc::new(Default::default()))
        .await
        .expect("the server starts");
    let public = server.local_addr().unwrap().to_string();
    let metrics = server
        .metrics_addr()
        .expect("a metrics listener")
        .to_string();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(server.run_until_stopped(stopped));
    let get = crate::helpers::http_get;
    assert!(get(&public, "/metrics").await.starts_with("HTTP/1.1 404"));
    assert!(get(&public, "/healthz").await.starts_with("HTTP/1.1 200"));
    let m = get(&metrics, "/metrics").await;
    assert!(
        m.starts_with("HTTP/1.1 200") && m.contains("digestif_queue_depth"),
        "{m}"
    );
    assert!(
        get(&metrics, "/unsubscribe")
            .await
            .starts_with("HTTP/1.1 404")
    );

    // By default /metrics is on the one listener.
    let app = App::start(&pool, "").await;
    assert_eq!(app.request("GET", "/metrics", None).await.status, 200);
}

/// `/metrics` as Prometheus reads it: parsed by a Prometheus text parser, with the names and
/// labels dashboards depend on, the latest issue's deliveries without a per-issue label.
#[sqlx::test]
async fn metrics_parse_as_prometheus_text_with_stable_names(pool: PgPool) {
    use prometheus_parse::{Scrape, Value};
    let app = with_issue_1_sent_to_3(&pool).await;
    app.counters.count(digestif::domain::DeliveryStatus::Sent);
    let r = app.request("GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    let scrape = Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{}", r.body));
        match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name}: not a plain value"),
        }
    };
    assert_eq!(value("digestif_deliveries", Some(("status", "sent"))), 3.0);
    assert_eq!(
        value("digestif_deliveries", Some(("status", "pending"))),
        0.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "digestif_deliveries")
            .all(|s| s.labels.get("issue").is_none()),
        "{}",
        r.body
    );
    assert_eq!(value("digestif_last_issue_number", None), 1.0);
    assert_eq!(
        value("digestif_last_issue_status", Some(("status", "sent"))),
        1.0
    );
    assert!(value("digestif_last_issue_sent_timestamp_seconds", None) > 1.7e9);
    let next = value("digestif_next_slot_timestamp_seconds", None);
    assert!(next > digestif::clock::now().timestamp() as f64, "{next}");
    assert_eq!(
        value("digestif_attempts_total", Some(("outcome", "sent"))),
        1.0
    );
    assert_eq!(value("digestif_issues_paused", None), 0.0);
    assert_eq!(value("digestif_queue_depth", None), 0.0);
    assert_eq!(value("digestif_database_up", None), 1.0);
    assert_eq!(
        value(
            "digestif_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        1.0
    );
    assert!(value("process_resident_memory_bytes", None) > 1e6);
    assert!(value("process_open_fds", None) > 0.0);
}

/// The web side on default settings, with issue #1 sent to three subscribers.
async fn with_issue_1_sent_to_3(pool: &PgPool) -> App {
    let app = App::start(pool, "").await;
    seed(pool, 3).await;
    digest::create_issue(pool, &app.settings, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    crate::helpers::deliver_all(pool, &app.settings, Duration::ZERO).await;
    app
}

/// `/issues/N` and `/metrics` answer anyone on the public listener. Rendering an issue (CSS
/// inlined) took about 0.4 ms of the cores that send the mail, and each scrape counted the
/// latest issue's deliveries on the pool that delivery uses, on every request: a client asking
/// over and over slowed sending down. An issue is now rendered once, and the database's
/// figures are read at most once a second.
#[sqlx::test]
async fn asking_for_the_web_view_or_metrics_over_and_over_costs_one_render_and_one_count_a_second(
    pool: PgPool,
) {
    let app = with_issue_1_sent_to_3(&pool).await;
    let first = app.request("GET", "/issues/1", None).await;
    assert_eq!(first.status, 200);
    let scrape = app.request("GET", "/metrics", None).await.body;
    assert!(
        scrape.contains("digestif_deliveries{status=\"sent\"} 3"),
        "{scrape}"
    );
    // Were they read again, these would show.
    sqlx::query("UPDATE issue_item SET title = 'Changed under the cache'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE delivery SET status = 'failed'")
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..20 {
        let again = app.request("GET", "/issues/1", None).await;
        assert_eq!(again.body, first.body, "rendered again");
        let m = app.request("GET", "/metrics", None).await.body;
        assert!(
            m.contains("digestif_deliveries{status=\"sent\"} 3"),
            "read again: {m}"
        );
    }
    // A scrape a second later reads the database again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = app.request("GET", "/metrics", None).await.body;
    assert!(
        later.contains("digestif_deliveries{status=\"failed\"} 3"),
        "{later}"
    );
}

/// With the database gone, `/metrics` still answers with what the process knows (its own
/// counters, the process metrics) and says the database did not answer.
#[sqlx::test]
async fn metrics_still_answer_when_the_database_does_not(_pool: PgPool) {
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/digestif")
        .unwrap();
    let s = settings("[http]\ntoken_secret = \"a-test-secret-long-enough-for-the-token-keys\"\n");
    let down = App::start_with(dead, s).await;
    down.counters
        .count(digestif::domain::DeliveryStatus::Deferred);
    let r = down.request("GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("digestif_database_up 0"), "{}", r.body);
    assert!(
        r.body
            .contains("digestif_attempts_total{outcome=\"deferred\"} 1"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("process_resident_memory_bytes "),
        "{}",
        r.body
    );
    assert!(!r.body.contains("digestif_queue_depth"), "{}", r.body);
}
