//! The bounce mailbox over IMAP against a real Dovecot: a DSN and an ARF report placed in the
//! mailbox are counted once across passes and restarts and end up in the processed folder;
//! `serve` polls and outlives a server that is down; a wrong password, an untrusted
//! certificate and hostile messages each get one clear line and wedge nothing.

use std::process::Stdio;
use std::time::Duration;

use chrono::DateTime;
use digestif::config::Settings;
use digestif::digest;
use sqlx::PgPool;

use crate::helpers::{Digestif, deliver_all, seed, sigterm, subscriber_status, wait_for};
use crate::imap_server::{Dovecot, PASSWORD, Tls, USER};
use crate::smtp_server::TestCa;

/// Two subscribers sent issue 1 (file transport); the VERP addresses of their deliveries.
async fn sent_to_two(pool: &PgPool) -> (tempfile::TempDir, String, String) {
    let outbox = tempfile::tempdir().unwrap();
    let s = Settings::from_toml(&format!(
        "[delivery]\noutbox = \"{}\"\n",
        outbox.path().display()
    ))
    .unwrap();
    seed(pool, 2).await;
    let slot = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z").unwrap();
    digest::create_issue(pool, &s, slot.into()).await.unwrap();
    let sent = deliver_all(pool, &s, Duration::ZERO).await.outcomes.sent;
    assert_eq!(sent, 2);
    let keys = digest::token_keys(&s, pool).await.unwrap();
    let issue_id: i64 = sqlx::query_scalar("SELECT issue_id FROM issue")
        .fetch_one(pool)
        .await
        .unwrap();
    let verp = |id| format!("bounces+{}@example.com", keys.sign_bounce(issue_id, id));
    (outbox, verp(1), verp(2))
}

/// Postfix's DSN for the mailbox `rcpt`, which does not exist, sent to `verp`.
fn dsn(verp: &str, rcpt: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\nDelivered-To: {verp}\r\n\
         From: MAILER-DAEMON@mx.example.org\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n\
         --B\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.example.org\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: user unknown\r\n\r\n\
         --B\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: Backend Tips #1\r\n\r\n--B--\r\n"
    )
    .into_bytes()
}

/// An ISP's abuse report (RFC 5965) about our message, whose return path is `verp`.
fn arf(verp: &str) -> Vec<u8> {
    format!(
        "From: Feedback Loop <fbl@tiny-isp.example>\r\nTo: bounces@example.com\r\n\
         Subject: FW: Backend Tips #1\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <report-1@tiny-isp.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"F1\"\r\n\r\n\
         --F1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --F1\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n\r\n\
         --F1\r\nContent-Type: message/rfc822\r\n\r\n\
         Return-Path: <{verp}>\r\nFrom: Backend Tips <tips@example.com>\r\n\
         To: redacted@example.net\r\nSubject: Backend Tips #1: A tip\r\n\r\nHi,\r\n\r\n\
         --F1--\r\n"
    )
    .into_bytes()
}

/// `digestif` reading `dovecot`'s mailbox as `bounces` with `password`.
fn reader(pool: &PgPool, url: &str, password: &str) -> Digestif {
    Digestif::new(pool)
        .env("DIGESTIF_INBOUND__IMAP_URL", url)
        .env("DIGESTIF_INBOUND__IMAP_USER", USER)
        .env("DIGESTIF_INBOUND__IMAP_PASSWORD", password)
        .env("DIGESTIF_INBOUND__TIMEOUT", "5s")
}

/// Subscriber 1's hard bounces, and the bounced and complained events recorded.
async fn counts(pool: &PgPool) -> (i32, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT hard_bounces FROM subscriber WHERE subscriber_id = 1), \
         (SELECT count(*) FROM subscriber_event WHERE kind = 'bounced'), \
         (SELECT count(*) FROM subscriber_event WHERE kind = 'complained')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn delivery_status(pool: &PgPool, subscriber: i64) -> String {
    sqlx::query_scalar("SELECT status FROM delivery WHERE subscriber_id = $1")
        .bind(subscriber)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The acceptance test of #20's mailbox: a DSN and an ARF report are each counted once,
/// across a second pass and a restart that finds them again (a crash between the commit and
/// the move), and sit in the processed folder afterwards.
#[sqlx::test]
async fn a_dsn_and_an_arf_count_once_across_two_passes_and_a_restart(pool: PgPool) {
    let Some(dovecot) = Dovecot::start(Tls::None, "") else {
        return;
    };
    let (_outbox, verp1, verp2) = sent_to_two(&pool).await;
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));
    dovecot.deliver(&arf(&verp2));
    let d = reader(&pool, &dovecot.url(), PASSWORD);

    let first = d.ok_async(&["inbound", "--imap"]).await;
    let out = first.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{first}");
    assert!(lines.iter().all(|l| l.starts_with("INBOX uid ")), "{first}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(": hard bounce 5.1.1 recorded for subscriber 1")),
        "{first}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(": complaint: subscriber 2 unsubscribed and suppressed")),
        "{first}"
    );
    assert_eq!(delivery_status(&pool, 1).await, "bounced");
    assert_eq!(subscriber_status(&pool, 1).await, "bounced");
    assert_eq!(subscriber_status(&pool, 2).await, "complained");
    assert_eq!(counts(&pool).await, (1, 1, 1));
    assert_eq!(dovecot.count("INBOX"), 0);
    assert_eq!(dovecot.count("processed"), 2);

    // A second pass finds nothing to do.
    let second = d.ok_async(&["inbound", "--imap"]).await;
    assert_eq!(
        second.stdout().trim(),
        format!("{}/INBOX ({USER}): no messages", dovecot.url()),
        "{second}"
    );
    assert_eq!(counts(&pool).await, (1, 1, 1));

    // A process that died after the intake's commit but before the move: the next one finds
    // the same two messages again and counts nothing twice.
    for raw in dovecot.messages("processed") {
        dovecot.deliver(&raw);
    }
    let restart = d.ok_async(&["inbound", "--imap"]).await;
    assert!(
        restart
            .stdout()
            .contains("DSN for subscriber 1 changes nothing: already recorded, or never sent"),
        "{restart}"
    );
    assert_eq!(counts(&pool).await, (1, 1, 1));
    assert_eq!(subscriber_status(&pool, 2).await, "complained");
    assert_eq!(dovecot.count("INBOX"), 0);
    assert_eq!(dovecot.count("processed"), 4);
}

/// `serve` polls every `inbound.poll_interval`: with the server down it logs one line per
/// attempt and keeps running; once the server is up it reads the mailbox; SIGTERM stops it.
#[sqlx::test]
async fn serve_polls_the_mailbox_and_outlives_a_server_that_is_down(pool: PgPool) {
    if Dovecot::start(Tls::None, "").is_none() {
        return;
    }
    let (outbox, verp1, _) = sent_to_two(&pool).await;
    let port = crate::imap_server::free_port();
    let url = format!("imap://127.0.0.1:{port}");
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("stderr");
    let mut cmd = tokio::process::Command::from(
        reader(&pool, &url, PASSWORD)
            .env("DIGESTIF_INBOUND__POLL_INTERVAL", "300ms")
            .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
            .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap())
            .command(&["serve"]),
    );
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut serve = cmd.spawn().unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let refused = format!("bounce mailbox: {url}/INBOX ({USER}): cannot connect: ");
    wait_for(
        "two failed attempts in the log",
        Duration::from_secs(15),
        || {
            let n = log().matches(&refused).count();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve exited:\n{}",
        log()
    );

    let dovecot = Dovecot::start_on(port, Tls::None, "").unwrap();
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));
    wait_for("the bounce to be recorded", Duration::from_secs(15), || {
        let pool = pool.clone();
        async move { (delivery_status(&pool, 1).await == "bounced").then_some(()) }
    })
    .await;
    wait_for("the message to be moved", Duration::from_secs(15), || {
        let moved = dovecot.count("processed") == 1;
        async move { moved.then_some(()) }
    })
    .await;
    sigterm(&serve);
    let status = tokio::time::timeout(Duration::from_secs(20), serve.wait())
        .await
        .expect("serve stops")
        .unwrap();
    let log = log();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("reachable again"), "{log}");
    assert!(
        log.contains("hard bounce 5.1.1 recorded for subscriber 1"),
        "{log}"
    );
    for line in log.lines().filter(|l| l.contains(&refused)) {
        assert!(line.contains("trying again in 300ms"), "{line}");
    }
    assert!(!log.contains(PASSWORD), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A wrong password: one line naming the mailbox and what the server said, exit 1, the
/// password nowhere, nothing moved; `doctor` fails the same check.
#[sqlx::test]
async fn a_wrong_password_is_one_line_naming_the_mailbox(pool: PgPool) {
    let Some(dovecot) = Dovecot::start(Tls::None, "") else {
        return;
    };
    let (_outbox, verp1, _) = sent_to_two(&pool).await;
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));
    let wrong = "not-the-password";
    // At the most talkative log level, too: the LOGIN command is nowhere in the log.
    let d = reader(&pool, &dovecot.url(), wrong).env("RUST_LOG", "trace");
    let line = d.fails(
        &["inbound", "--imap"],
        &format!(
            "{}/INBOX ({USER}): login refused: the server said NO: [AUTHENTICATIONFAILED] Authentication failed.",
            dovecot.url()
        ),
    );
    let run = d.run(&["inbound", "--imap"]);
    assert!(!run.stderr().contains(wrong), "{run}");
    assert!(!line.contains(wrong), "{line}");
    assert_eq!(dovecot.count("INBOX"), 1);
    assert_eq!(delivery_status(&pool, 1).await, "sent");

    let doctor = d.run_async(&["doctor"]).await;
    let out = doctor.stdout();
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "FAIL  bounce mailbox: {}/INBOX ({USER}): login refused",
            dovecot.url()
        ))),
        "{doctor}"
    );
    assert!(!out.contains(wrong) && !doctor.stderr().contains(wrong));

    // With the right one, doctor logs in and changes nothing.
    let doctor = reader(&pool, &dovecot.url(), PASSWORD)
        .run_async(&["doctor"])
        .await;
    assert!(
        doctor.stdout().contains(&format!(
            "ok    bounce mailbox: {}/INBOX ({USER}): logged in; 1 message waiting; processed is created at the first pass",
            dovecot.url()
        )),
        "{doctor}"
    );
    assert_eq!(dovecot.count("INBOX"), 1);
}

/// Hostile mail in the mailbox: one far over the size cap, binary garbage with NUL bytes, an
/// empty file, a header without end. Each is moved with its reason, and the DSN behind them
/// is counted in the same pass.
#[sqlx::test]
async fn hostile_messages_are_moved_and_do_not_block_the_others(pool: PgPool) {
    let Some(dovecot) = Dovecot::start(Tls::None, "") else {
        return;
    };
    let (_outbox, verp1, _) = sent_to_two(&pool).await;
    let mut huge = b"From: a@example.net\r\nSubject: huge\r\n\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 300_000));
    dovecot.deliver(&huge);
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 256) as u8).collect();
    dovecot.deliver(&garbage);
    dovecot.deliver(b"");
    dovecot.deliver(&[b"X-Endless: ".as_slice(), &[b'y'; 50_000]].concat());
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));

    let run = reader(&pool, &dovecot.url(), PASSWORD)
        .env("DIGESTIF_INBOUND__MAX_MESSAGE_BYTES", "65536")
        .ok_async(&["inbound", "--imap"])
        .await;
    let out = run.stdout();
    assert_eq!(out.lines().count(), 5, "{run}");
    assert!(
        out.contains(": not read: 300038 bytes, over inbound.max_message_bytes (65536)"),
        "{run}"
    );
    assert!(
        out.contains(": hard bounce 5.1.1 recorded for subscriber 1"),
        "{run}"
    );
    assert_eq!(out.matches(": ignored: ").count(), 3, "{run}");
    assert!(
        run.stderr().contains("over inbound.max_message_bytes"),
        "{run}"
    );
    assert_eq!(dovecot.count("INBOX"), 0);
    assert_eq!(dovecot.count("processed"), 5);
}

/// TLS: imaps:// verifies the server's certificate (an internal CA's, given as
/// `inbound.ca_file`; without it nothing is read and the line says what to set), and
/// imap:// with `?tls=required` logs in only after STARTTLS.
#[sqlx::test]
async fn imaps_and_starttls_verify_the_server_with_a_private_ca(pool: PgPool) {
    let ca = TestCa::new();
    let Some(dovecot) = Dovecot::start(Tls::With(&ca), "") else {
        return;
    };
    let (_outbox, verp1, verp2) = sent_to_two(&pool).await;
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));

    let untrusted = reader(&pool, &dovecot.imaps_url(), PASSWORD);
    let line = untrusted.fails(&["inbound", "--imap"], "TLS handshake failed");
    assert!(
        line.contains("certificate") && line.contains("set inbound.ca_file"),
        "{line}"
    );
    assert_eq!(dovecot.count("INBOX"), 1);

    let trusted = reader(&pool, &dovecot.imaps_url(), PASSWORD)
        .env("DIGESTIF_INBOUND__CA_FILE", &ca.ca_file());
    let run = trusted.ok_async(&["inbound", "--imap"]).await;
    assert!(
        run.stdout()
            .contains("hard bounce 5.1.1 recorded for subscriber 1"),
        "{run}"
    );

    dovecot.deliver(&arf(&verp2));
    let starttls = format!("{}?tls=required", dovecot.url());
    let run = reader(&pool, &starttls, PASSWORD)
        .env("DIGESTIF_INBOUND__CA_FILE", &ca.ca_file())
        .ok_async(&["inbound", "--imap"])
        .await;
    assert!(
        run.stdout()
            .contains("complaint: subscriber 2 unsubscribed and suppressed"),
        "{run}"
    );
    assert_eq!(subscriber_status(&pool, 2).await, "complained");
    assert_eq!(dovecot.count("processed"), 2);
    // Dovecot's own word that both logins were encrypted.
    let logins: Vec<String> = dovecot
        .log()
        .lines()
        .filter(|l| l.contains("Login: user=<bounces>"))
        .map(str::to_owned)
        .collect();
    assert_eq!(logins.len(), 2, "{}", dovecot.log());
    assert!(logins.iter().all(|l| l.contains("TLS")), "{logins:?}");
}

/// A server without MOVE: the message is copied, flagged \Deleted and expunged by its UID
/// alone, so a message another client deleted (and has not expunged yet) is left to it.
#[sqlx::test]
async fn without_move_a_message_is_copied_and_expunged_by_uid(pool: PgPool) {
    let Some(dovecot) = Dovecot::start(
        Tls::None,
        "imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE UIDPLUS",
    ) else {
        return;
    };
    let (_outbox, verp1, _) = sent_to_two(&pool).await;
    dovecot.deliver_deleted(b"From: someone@example.net\r\nSubject: theirs\r\n\r\nbye\r\n");
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));
    let d = reader(&pool, &dovecot.url(), PASSWORD);
    let doctor = d.run_async(&["doctor"]).await;
    assert!(
        doctor
            .stdout()
            .contains("handled messages are moved with COPY and EXPUNGE (no MOVE)"),
        "{doctor}"
    );
    let run = d.ok_async(&["inbound", "--imap"]).await;
    assert_eq!(run.stdout().lines().count(), 1, "{run}");
    assert_eq!(delivery_status(&pool, 1).await, "bounced");
    assert_eq!(dovecot.count("processed"), 1);
    // Only the other client's deleted message is left.
    assert_eq!(dovecot.count("INBOX"), 1);
    assert_eq!(dovecot.deleted_in("INBOX"), 1);
}

/// One reader at a time across processes: while another holds the mailbox, a pass does
/// nothing and says so.
#[sqlx::test]
async fn a_second_reader_leaves_the_mailbox_to_the_first(pool: PgPool) {
    let Some(dovecot) = Dovecot::start(Tls::None, "") else {
        return;
    };
    let (_outbox, verp1, _) = sent_to_two(&pool).await;
    dovecot.deliver(&dsn(&verp1, "user1@example.com"));
    let mut other = pool.acquire().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(1768776048, 0)")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);
    let d = reader(&pool, &dovecot.url(), PASSWORD);
    let run = d.ok_async(&["inbound", "--imap"]).await;
    assert!(
        run.stdout()
            .contains("another digestif is reading it now; nothing done"),
        "{run}"
    );
    assert_eq!(dovecot.count("INBOX"), 1);
    assert_eq!(delivery_status(&pool, 1).await, "sent");
    sqlx::query("SELECT pg_advisory_unlock(1768776048, 0)")
        .execute(&mut *other)
        .await
        .unwrap();
    d.ok_async(&["inbound", "--imap"]).await;
    assert_eq!(delivery_status(&pool, 1).await, "bounced");
}

/// `--imap` without a mailbox configured is a configuration error (78), not a retry (75).
#[sqlx::test]
async fn imap_without_a_mailbox_is_a_configuration_error(pool: PgPool) {
    Digestif::new(&pool).config_fails(&["inbound", "--imap"], "config: inbound.imap_url: not set");
}

/// Something on the port that is not an IMAP server: one that never says a word, and one that
/// speaks another protocol. Each is one line within `inbound.timeout`, exit 1.
#[sqlx::test]
async fn a_silent_or_foreign_server_is_one_line_within_the_timeout(pool: PgPool) {
    for (greeting, want) in [
        (
            None,
            "no greeting within inbound.timeout (1s): is this an IMAP server?",
        ),
        (Some("HTTP/1.1 400 Bad Request\r\n\r\n"), "no greeting: "),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("imap://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut sock, _) = listener.accept().await.unwrap();
            if let Some(g) = greeting {
                sock.write_all(g.as_bytes()).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(sock);
        });
        let started = std::time::Instant::now();
        let run = reader(&pool, &url, PASSWORD)
            .env("DIGESTIF_INBOUND__TIMEOUT", "1s")
            .run_async(&["inbound", "--imap"])
            .await;
        assert!(started.elapsed() < Duration::from_secs(10), "{run}");
        assert_eq!(run.output.status.code(), Some(1), "{run}");
        let stderr = run.stderr();
        assert_eq!(stderr.lines().count(), 1, "{run}");
        assert!(
            stderr.starts_with(&format!("digestif: {url}/INBOX ({USER}): {want}")),
            "{run}"
        );
        server.abort();
    }
}

/// A message the intake cannot finish now (a feedback loop's report whose DKIM key gets no
/// DNS answer) stays in the folder, the messages after it are read, and the pass exits 75;
/// the next pass, with DNS answering, counts it and moves it. Nothing is lost.
#[sqlx::test]
async fn a_message_that_fails_for_now_stays_for_the_next_pass(pool: PgPool) {
    use crate::complaints::{FBL, SELECTOR, key_record, loop_report_about_user1};
    use crate::dns_server::DnsServer;
    let Some(dovecot) = Dovecot::start(Tls::None, "") else {
        return;
    };
    let (_outbox, _, verp2) = sent_to_two(&pool).await;
    let keys = digest::token_keys(&Settings::from_toml("").unwrap(), &pool)
        .await
        .unwrap();
    dovecot.deliver(loop_report_about_user1(&keys).as_bytes());
    dovecot.deliver(&dsn(&verp2, "user2@example.com"));
    let pass = |dns: &DnsServer| {
        let toml = format!(
            "[bounces]\ncomplaint_senders = [\"{FBL}\"]\ndns_server = \"{}\"\n",
            dns.addr()
        );
        let (dir, config) = crate::helpers::file_with("digestif.toml", toml.as_bytes());
        let d = reader(&pool, &dovecot.url(), PASSWORD);
        async move {
            let run = d
                .run_async(&[
                    "--config",
                    crate::helpers::arg(&config),
                    "inbound",
                    "--imap",
                ])
                .await;
            drop(dir);
            run
        }
    };

    let silent = DnsServer::silent();
    let run = pass(&silent).await;
    assert_eq!(run.output.status.code(), Some(75), "{run}");
    assert!(
        run.stderr()
            .lines()
            .last()
            .unwrap_or_default()
            .ends_with("/INBOX (bounces): 1 message left for the next pass (the log says why)"),
        "{run}"
    );
    assert!(
        run.stdout()
            .contains("hard bounce 5.1.1 recorded for subscriber 2"),
        "{run}"
    );
    assert_eq!(subscriber_status(&pool, 1).await, "active");
    assert_eq!((dovecot.count("INBOX"), dovecot.count("processed")), (1, 1));

    let answering = DnsServer::start(&[key_record(FBL, SELECTOR)]);
    let run = pass(&answering).await;
    assert!(run.output.status.success(), "{run}");
    assert!(
        run.stdout()
            .contains("complaint: subscriber 1 unsubscribed and suppressed"),
        "{run}"
    );
    assert_eq!(subscriber_status(&pool, 1).await, "complained");
    assert_eq!((dovecot.count("INBOX"), dovecot.count("processed")), (0, 2));
}
