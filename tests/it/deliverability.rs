//! DKIM verified by an independent implementation (dkimpy), VERP return paths, bounce and
//! complaint intake through `digestif inbound`, and `digestif doctor`'s failure reports.

use std::time::Duration;

use digestif::config::Settings;
use digestif::digest::{self, deliver};
use digestif::domain::Purpose;
use digestif::send::dkim::Signer;
use sqlx::PgPool;

use crate::helpers::{Digestif, at};
use crate::smtp_server::{Policy, SmtpServer};

const RSA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/dkim-test-rsa.pem"
);
const ED25519: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/dkim-test-ed25519.seed"
);

async fn seed(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO subscriber (email, name, status, consent_source) \
         SELECT 'user' || i || '@example.org', 'User ' || i, 'active', 'test' FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tip (title, body) VALUES ('Signed tip', 'A body worth signing.')")
        .execute(pool)
        .await
        .unwrap();
}

/// Runs dkimpy over `raw`; returns its exit status and output.
fn dkimpy(raw: &[u8], records: &[(String, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.eml");
    std::fs::write(&path, raw).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verify_dkim.py"))
        .arg(&path);
    for (name, value) in records {
        cmd.arg(format!("{name}={value}"));
    }
    let out = cmd
        .output()
        .expect("python3 (the test command installs dkimpy: pip install dkimpy pynacl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[sqlx::test]
async fn dkim_signatures_verify_independently_and_break_when_tampered(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = Settings::from_toml(&format!(
        "[delivery]\ntransport = \"smtp\"\n[smtp]\nurl = \"{}\"\n\
         [dkim]\nenabled = true\ndomain = \"example.com\"\nselector = \"digestif\"\n\
         key_file = \"{RSA}\"\ned25519_key_file = \"{ED25519}\"\n",
        server.url()
    ))
    .unwrap();
    seed(&pool, 1).await;
    digest::create_issue(&pool, &s, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 1);
    let raw = server.accepted()[0].data.clone();
    let records = Signer::load(&s.dkim)
        .unwrap()
        .unwrap()
        .dns_records()
        .to_vec();

    let (ok, out) = dkimpy(&raw, &records);
    assert!(ok, "{out}");
    let rsa = out
        .lines()
        .find(|l| l.starts_with("rsa-sha256 True"))
        .unwrap_or_else(|| panic!("{out}"));
    for h in [
        "from",
        "reply-to",
        "to",
        "subject",
        "date",
        "message-id",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
    ] {
        assert!(
            rsa.split("h=").nth(1).unwrap().split(':').any(|x| x == h),
            "{h} not signed: {rsa}"
        );
    }
    assert!(out.contains("ed25519-sha256 True"), "{out}");

    let text = String::from_utf8(raw.clone()).unwrap();
    let subject = text
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap()
        .to_owned();
    let tampered_subject = text.replacen(&subject, "Subject: Backend Tips #1: something else", 1);
    assert!(
        !dkimpy(tampered_subject.as_bytes(), &records).0,
        "a changed subject must fail"
    );
    // Over-signed: adding a second From, Subject or List-Unsubscribe, or a Reply-To the
    // message never had, breaks the signature.
    for added in [
        "From: Support <support@evil.example>",
        "Subject: Your account is locked",
        "Reply-To: refunds@evil.example",
        "List-Unsubscribe: <https://evil.example/unsub>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        // A client reading the first Content-Type would show the source, or other parts.
        "Content-Type: text/plain",
        "MIME-Version: 1.0",
    ] {
        let tampered = format!("{added}\r\n{text}");
        assert!(
            !dkimpy(tampered.as_bytes(), &records).0,
            "adding '{added}' must fail"
        );
    }
    let tampered_body = text.replacen("Hi User 1,", "Hi Mallory,", 1);
    assert_ne!(tampered_body, text);
    assert!(
        !dkimpy(tampered_body.as_bytes(), &records).0,
        "a changed body must fail"
    );

    // VERP: the envelope sender names this delivery.
    let mail_from = server
        .commands()
        .into_iter()
        .find(|c| c.starts_with("MAIL FROM:"))
        .unwrap();
    let keys = digest::token_keys(&s, &pool).await.unwrap();
    let tag = mail_from
        .split("bounces+")
        .nth(1)
        .and_then(|t| t.split('@').next())
        .unwrap();
    let issue_id: i64 = sqlx::query_scalar("SELECT issue_id FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sub: i64 = sqlx::query_scalar("SELECT subscriber_id FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        keys.verify_bounce(tag),
        Some((issue_id, sub)),
        "{mail_from}"
    );
}

fn dsn(to: &str, recipient: &str, action: &str, status: &str, message_id: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n\
         To: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <20261130080501.ABC123@mx.example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1\"\r\n\
         \r\n\
         --B1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is the mail system at host mx.example.org.\r\n\r\n\
         --B1\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.example.org\r\n\
         Arrival-Date: Mon, 30 Nov 2026 09:05:00 +0100 (CET)\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Original-Recipient: rfc822;{recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n\r\n\
         --B1\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: Backend Tips <tips@example.com>\r\n\
         To: {recipient}\r\n\
         Subject: Backend Tips #1: Signed tip\r\n\
         Message-ID: {message_id}\r\n\r\n\
         --B1--\r\n"
    )
}

/// An ARF report from a feedback loop digestif is not told about, unsigned; `returned` are
/// header fields of the returned copy of our message (its Message-ID, a Return-Path).
fn arf(recipient: &str, returned: &str) -> String {
    format!(
        "From: fbl@isp.example.net\r\nTo: abuse@example.com\r\nSubject: FW: complaint\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"F1\"\r\n\r\n\
         --F1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --F1\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n\
         Original-Rcpt-To: {recipient}\r\n\r\n\
         --F1\r\nContent-Type: message/rfc822\r\n\r\n\
         {returned}From: Backend Tips <tips@example.com>\r\nTo: {recipient}\r\n\
         Subject: Backend Tips #1: Signed tip\r\n\r\nbody\r\n\r\n\
         --F1--\r\n"
    )
}

async fn status_of(pool: &PgPool, id: i64) -> (String, i64) {
    sqlx::query_as(
        "SELECT s.status, (SELECT count(*) FROM subscriber_event e WHERE e.subscriber_id = s.subscriber_id) \
         FROM subscriber s WHERE subscriber_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `n` subscribers and the issue of Monday's slot, fanned out, for the file transport.
async fn issue_to_the_outbox(pool: &PgPool, n: i64) -> (tempfile::TempDir, Settings) {
    let outbox = tempfile::tempdir().unwrap();
    let s = Settings::from_toml(&format!(
        "[delivery]\noutbox = \"{}\"\n",
        outbox.path().display()
    ))
    .unwrap();
    seed(pool, n).await;
    digest::create_issue(pool, &s, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    (outbox, s)
}

/// The link keys and the id of the one issue.
async fn keys_and_issue(pool: &PgPool, s: &Settings) -> (digestif::domain::TokenKeys, i64) {
    let keys = digest::token_keys(s, pool).await.unwrap();
    let issue_id = sqlx::query_scalar("SELECT issue_id FROM issue")
        .fetch_one(pool)
        .await
        .unwrap();
    (keys, issue_id)
}

#[sqlx::test]
async fn inbound_handles_each_kind_of_message_as_the_rules_say(pool: PgPool) {
    let (_outbox, s) = issue_to_the_outbox(&pool, 4).await;
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 4);
    let (keys, issue_id) = keys_and_issue(&pool, &s).await;
    let id = |n: i64| n; // subscriber ids are 1..=4 in a fresh database
    let verp = |sub: i64| format!("bounces+{}@example.com", keys.sign_bounce(issue_id, sub));
    let d = Digestif::new(&pool);
    let inbound = |input: String, rcpt: Option<String>| {
        let mut args = vec!["inbound".to_owned()];
        if let Some(r) = rcpt {
            args.push("--recipient".into());
            args.push(r);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = d.run_with_stdin(&args, input.as_bytes());
        assert!(run.output.status.success(), "{run}");
        run.stdout()
    };

    // A Postfix-style 5.1.1 DSN to the VERP address: bounced and suppressed.
    let before = status_of(&pool, id(1)).await;
    let out = inbound(
        dsn(
            &verp(1),
            "user1@example.org",
            "failed",
            "5.1.1",
            "<issue1.s1@example.com>",
        ),
        Some(verp(1)),
    );
    assert!(out.contains("hard bounce 5.1.1"), "{out}");
    let (status, events) = status_of(&pool, id(1)).await;
    assert_eq!((status.as_str(), events), ("bounced", before.1 + 1));
    let delivery: String =
        sqlx::query_scalar("SELECT status FROM delivery WHERE subscriber_id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(delivery, "bounced");
    // The same DSN again counts once.
    let out = inbound(
        dsn(
            &verp(1),
            "user1@example.org",
            "failed",
            "5.1.1",
            "<issue1.s1@example.com>",
        ),
        Some(verp(1)),
    );
    assert!(out.contains("already recorded"), "{out}");

    // A delayed 4.4.7 notice changes nothing.
    let before = status_of(&pool, id(2)).await;
    let out = inbound(
        dsn(
            &verp(2),
            "user2@example.org",
            "delayed",
            "4.4.7",
            "<issue1.s2@example.com>",
        ),
        Some(verp(2)),
    );
    assert!(out.contains("delay notice 4.4.7"), "{out}");
    assert_eq!(status_of(&pool, id(2)).await, before);

    // A DSN whose VERP HMAC is forged is ignored.
    let forged =
        format!("bounces+{}@example.com", keys.sign_bounce(issue_id, 3)).replace(".3.", ".2.");
    let out = inbound(
        dsn(
            &forged,
            "user2@example.org",
            "failed",
            "5.1.1",
            "<issue1.s2@example.com>",
        ),
        Some(forged.clone()),
    );
    assert!(out.contains("does not verify"), "{out}");
    assert_eq!(status_of(&pool, id(2)).await, before);

    // An ARF complaint about the message as we sent it, its signed Message-ID alone, from a
    // sender that is not a listed feedback loop proving itself with DKIM: ignored. (It used to
    // count; the recipient can write such a report. complaints.rs has the DKIM cases.)
    let genuine = format!(
        "Message-ID: <{}@example.com>\r\n",
        keys.sign_message_id(1, 3)
    );
    let before = status_of(&pool, id(3)).await;
    let out = inbound(arf("user3@example.org", &genuine), None);
    assert!(out.contains("not in bounces.complaint_senders"), "{out}");
    assert_eq!(status_of(&pool, id(3)).await, before);
    // The same with our VERP return path in the returned copy: unsubscribed and suppressed.
    let tagged = format!("Return-Path: <{}>\r\n{genuine}", verp(3));
    let out = inbound(arf("user3@example.org", &tagged), None);
    assert!(out.contains("complaint: subscriber 3"), "{out}");
    assert_eq!(status_of(&pool, id(3)).await.0, "complained");

    // Mail to the List-Unsubscribe mailto.
    let token = keys.sign(Purpose::Unsubscribe, 4);
    let mail = format!(
        "From: user4@example.org\r\nTo: tips@example.com\r\nSubject: unsubscribe {token}\r\n\r\n\r\n"
    );
    let out = inbound(mail, Some("tips@example.com".into()));
    assert!(out.contains("unsubscribe by mail"), "{out}");
    let (status, _) = status_of(&pool, id(4)).await;
    assert_eq!(status, "unsubscribed");
    let method: String = sqlx::query_scalar(
        "SELECT method FROM subscriber_event WHERE subscriber_id = 4 AND kind = 'unsubscribed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(method, "mailto");

    // Ordinary mail is left alone.
    let before = status_of(&pool, id(2)).await;
    let out = inbound("From: friend@example.net\r\nTo: tips@example.com\r\nSubject: hello\r\n\r\nNice newsletter!\r\n".into(), None);
    assert!(out.starts_with("ignored"), "{out}");
    assert_eq!(status_of(&pool, id(2)).await, before);
}

#[sqlx::test]
async fn doctor_names_each_failure_mode(pool: PgPool) {
    let d = |extra: &[(&str, &str)]| {
        let mut d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__TRANSPORT", "smtp");
        for (k, v) in extra {
            d = d.env(k, v);
        }
        d
    };
    let refused = d(&[("DIGESTIF_SMTP__URL", "smtp://127.0.0.1:1")])
        .run_async(&["doctor"])
        .await;
    assert_eq!(refused.output.status.code(), Some(1), "{refused}");
    assert!(
        refused.stdout().contains("FAIL  smtp:")
            && refused.stdout().contains("check the host and port"),
        "{refused}"
    );

    let plain = SmtpServer::start(Policy::default()).await;
    let port = plain.url().rsplit(':').next().unwrap().to_owned();
    let no_tls = d(&[(
        "DIGESTIF_SMTP__URL",
        &format!("smtp://localhost:{port}?tls=required"),
    )])
    .run_async(&["doctor"])
    .await;
    assert_eq!(no_tls.output.status.code(), Some(1), "{no_tls}");
    assert!(no_tls.stdout().contains("STARTTLS"), "{no_tls}");

    let auth = SmtpServer::start(Policy::default().refuse_auth()).await;
    let bad_auth = d(&[
        ("DIGESTIF_SMTP__URL", &auth.url()),
        ("DIGESTIF_SMTP__USERNAME", "mailer"),
        ("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true"),
        ("DIGESTIF_SMTP__PASSWORD", "wrong-password"),
    ])
    .run_async(&["doctor"])
    .await;
    assert_eq!(bad_auth.output.status.code(), Some(1), "{bad_auth}");
    assert!(
        bad_auth.stdout().contains("authentication failed"),
        "{bad_auth}"
    );
    assert!(!bad_auth.stdout().contains("wrong-password"));

    let key = d(&[
        ("DIGESTIF_SMTP__URL", &plain.url()),
        ("DIGESTIF_DKIM__ENABLED", "true"),
        ("DIGESTIF_DKIM__KEY_FILE", "/nonexistent/dkim.pem"),
    ])
    .run_async(&["doctor"])
    .await;
    assert_eq!(key.output.status.code(), Some(1), "{key}");
    assert!(
        key.stdout()
            .contains("FAIL  dkim: dkim.key_file: /nonexistent/dkim.pem: cannot read the key"),
        "{key}"
    );
    assert!(
        key.stdout().contains("ok    smtp"),
        "the SMTP check still runs: {key}"
    );

    let web = crate::web::App::start(&pool, "").await;
    let good = d(&[
        ("DIGESTIF_SMTP__URL", &plain.url()),
        ("DIGESTIF_DKIM__ENABLED", "true"),
        ("DIGESTIF_DKIM__KEY_FILE", RSA),
        ("DIGESTIF_NEWSLETTER__BASE_URL", &web.url()),
    ])
    .run_async(&["doctor"])
    .await;
    assert!(good.output.status.success(), "{good}");
    assert!(
        good.stdout()
            .contains("dns   digestif._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p="),
        "{good}"
    );
    assert!(!good.stdout().contains("nor of its organisation"), "{good}");

    // Signed for another organisation than the From address's: DKIM passes, DMARC does not.
    // A subdomain of the From domain's is the same organisation.
    for (domain, note) in [("mail.example.net", true), ("mail.example.com", false)] {
        let run = d(&[
            ("DIGESTIF_SMTP__URL", &plain.url()),
            ("DIGESTIF_DKIM__ENABLED", "true"),
            ("DIGESTIF_DKIM__KEY_FILE", RSA),
            ("DIGESTIF_DKIM__DOMAIN", domain),
            ("DIGESTIF_NEWSLETTER__BASE_URL", &web.url()),
        ])
        .run_async(&["doctor"])
        .await;
        let expected = format!(
            "dkim: d={domain} is not the From address's domain example.com nor of its organisation"
        );
        assert_eq!(run.stdout().contains(&expected), note, "{run}");
    }
}

#[sqlx::test]
async fn a_bad_dkim_key_stops_sending_at_start_up_naming_the_file(pool: PgPool) {
    let (_dir, bad) = crate::helpers::file_with(
        "bad.pem",
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let d = Digestif::new(&pool)
        .env("DIGESTIF_DKIM__ENABLED", "true")
        .env("DIGESTIF_DKIM__KEY_FILE", crate::helpers::arg(&bad));
    seed(&pool, 1).await;
    let line = d.config_fails(&["issue", "send", "--now"], "not a PKCS#1 RSA private key");
    assert!(line.contains(crate::helpers::arg(&bad)), "{line}");
    assert!(
        !line.contains("not a key"),
        "the key's contents never appear: {line}"
    );
    let (issues, deliveries): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM issue), (SELECT count(*) FROM delivery)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (issues, deliveries),
        (0, 0),
        "the key is checked before the database is touched"
    );
}

#[sqlx::test]
async fn an_rsa_key_under_2048_bits_is_refused_at_start_up(pool: PgPool) {
    let d = Digestif::new(&pool)
        .env("DIGESTIF_DKIM__ENABLED", "true")
        .env(
            "DIGESTIF_DKIM__KEY_FILE",
            "tests/fixtures/dkim-test-rsa-1024.pem",
        );
    seed(&pool, 1).await;
    d.config_fails(
        &["issue", "send", "--now"],
        "dkim.key_file: tests/fixtures/dkim-test-rsa-1024.pem: cannot sign with this key (use an RSA key of 2048 to 4096 bits)",
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery WHERE status = 'sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sent, 0);
}

async fn deliver_all(pool: &PgPool, s: &Settings) -> deliver::Report {
    crate::helpers::deliver_all(pool, s, Duration::ZERO).await
}

/// The attacker's inbound mail: forged bounces and complaints that name a subscriber by address
/// and by the Message-ID digestif used to write (`<issue1.s2@…>`), a DSN for a delivery never
/// sent, a VERP tag with multi-byte characters. None of them may touch anyone.
#[sqlx::test]
async fn forged_bounces_and_complaints_change_nothing(pool: PgPool) {
    let (_outbox, s) = issue_to_the_outbox(&pool, 3).await;
    // Subscriber 3's delivery is never handed over.
    sqlx::query("UPDATE subscriber SET status = 'unsubscribed' WHERE subscriber_id = 3")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 2);
    sqlx::query("UPDATE subscriber SET status = 'active' WHERE subscriber_id = 3")
        .execute(&pool)
        .await
        .unwrap();
    let (keys, issue_id) = keys_and_issue(&pool, &s).await;
    let d = Digestif::new(&pool);
    let inbound = |input: String, rcpt: &str| {
        let run = d.run_with_stdin(&["inbound", "--recipient", rcpt], input.as_bytes());
        assert!(run.output.status.success(), "{run}");
        run.stdout()
    };
    let everyone = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT status, (SELECT count(*) FROM subscriber_event e \
                             WHERE e.subscriber_id = s.subscriber_id) \
             FROM subscriber s ORDER BY subscriber_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = everyone().await;

    // A DSN to the plain bounce address naming subscriber 1 by address and old-style id.
    let out = inbound(
        dsn(
            "bounces@example.com",
            "user1@example.com",
            "failed",
            "5.1.1",
            "<issue1.s1@example.com>",
        ),
        "bounces@example.com",
    );
    assert!(out.contains("without our VERP tag"), "{out}");
    // A forged complaint naming subscriber 2 the same way.
    let out = inbound(
        arf(
            "user2@example.com",
            "Message-ID: <issue1.s2@example.com>\r\n",
        ),
        "abuse@example.com",
    );
    assert!(out.contains("not in bounces.complaint_senders"), "{out}");
    // A genuine VERP tag for a delivery that was never sent.
    let verp3 = format!("bounces+{}@example.com", keys.sign_bounce(issue_id, 3));
    let out = inbound(
        dsn(
            &verp3,
            "user3@example.com",
            "failed",
            "5.1.1",
            "<x@example.com>",
        ),
        &verp3,
    );
    assert!(out.contains("never sent"), "{out}");
    // A tag with a multi-byte character where a hex digit belongs: a clean answer, no panic.
    let tag = keys.sign_bounce(issue_id, 1);
    let (head, mac) = tag.rsplit_once('.').unwrap();
    let broken = format!("bounces+{head}.é{}@example.com", &mac[2..]);
    let out = inbound(
        dsn(
            &broken,
            "user1@example.com",
            "failed",
            "5.1.1",
            "<x@example.com>",
        ),
        &broken,
    );
    assert!(out.contains("does not verify"), "{out}");

    assert_eq!(everyone().await, before, "nobody was touched");
    let delivery3: String =
        sqlx::query_scalar("SELECT status FROM delivery WHERE subscriber_id = 3")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(delivery3, "skipped");
}

/// A policy block that comes back through a relay as a DSN fails that delivery and keeps the
/// subscriber, exactly as the same reply given to us directly would (issue 14).
#[sqlx::test]
async fn a_relayed_policy_block_fails_the_delivery_and_suppresses_nobody(pool: PgPool) {
    let (_outbox, s) = issue_to_the_outbox(&pool, 2).await;
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 2);
    let (keys, issue_id) = keys_and_issue(&pool, &s).await;
    let d = Digestif::new(&pool);
    for (sub, status) in [(1, "5.7.1"), (2, "5.2.0")] {
        let verp = format!("bounces+{}@example.com", keys.sign_bounce(issue_id, sub));
        let run = d.run_with_stdin(
            &["inbound", "--recipient", &verp],
            dsn(
                &verp,
                &format!("user{sub}@example.com"),
                "failed",
                status,
                "<x@y>",
            )
            .as_bytes(),
        );
        assert!(run.stdout().contains("not suppressed"), "{run}");
        let (subscriber, delivery): (String, String) = sqlx::query_as(
            "SELECT s.status, d.status FROM subscriber s JOIN delivery d USING (subscriber_id) \
             WHERE subscriber_id = $1",
        )
        .bind(sub)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (subscriber.as_str(), delivery.as_str()),
            ("active", "failed"),
            "{status}"
        );
    }
}

/// The field report: `smtp://host` with credentials sent AUTH PLAIN unencrypted and `doctor`
/// said "ok". Now the password never leaves without TLS unless the operator says so.
#[sqlx::test]
async fn the_smtp_password_is_never_sent_without_tls_unless_allowed(pool: PgPool) {
    let server =
        SmtpServer::start(Policy::default().require_auth("mailer", "in the clear", "PLAIN")).await;
    seed(&pool, 1).await;
    let d = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__PASSWORD", "in the clear")
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING);
    let doctor = d.run_async(&["doctor"]).await;
    assert_eq!(doctor.output.status.code(), Some(1), "{doctor}");
    assert!(
        doctor
            .stdout()
            .contains("refusing to send the SMTP password over a connection without TLS"),
        "{doctor}"
    );
    let send = d.run_async(&["issue", "send", "--now"]).await;
    assert!(send.stdout().contains("sent 0, deferred 1"), "{send}");
    assert!(server.logins().is_empty(), "no AUTH went out");
    assert!(server.accepted().is_empty());

    // A relay on a trusted network, said so explicitly.
    let web = crate::web::App::start(&pool, "").await;
    let allowed = d
        .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
        .links_to(&web);
    let doctor = allowed.run_async(&["doctor"]).await;
    assert!(doctor.output.status.success(), "{doctor}");
    assert_eq!(server.logins(), ["PLAIN mailer"]);
}

/// A relay with an internal certificate (issue 14): STARTTLS and AUTH work once `smtp.ca_file`
/// names its CA, and fail without it, the password never sent.
#[sqlx::test]
async fn starttls_with_a_private_ca_and_auth_delivers_and_doctor_says_so(pool: PgPool) {
    let ca = crate::smtp_server::TestCa::new();
    let server = SmtpServer::start(Policy::default().starttls(&ca).require_auth(
        "mailer",
        "over tls",
        "PLAIN LOGIN",
    ))
    .await;
    seed(&pool, 2).await;
    let d = |ca_file: Option<&str>| {
        let mut d = Digestif::new(&pool)
            .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
            .env(
                "DIGESTIF_SMTP__URL",
                &format!("{}?tls=required", server.url()),
            )
            .env("DIGESTIF_SMTP__USERNAME", "mailer")
            .env("DIGESTIF_SMTP__PASSWORD", "over tls")
            .env("DIGESTIF_SMTP__TIMEOUT", "5s")
            .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING);
        if let Some(f) = ca_file {
            d = d.env("DIGESTIF_SMTP__CA_FILE", f);
        }
        d
    };
    // Without the CA: the certificate is not trusted, nothing is sent, no password goes out.
    let untrusted = d(None).run_async(&["doctor"]).await;
    assert_eq!(untrusted.output.status.code(), Some(1), "{untrusted}");
    assert!(untrusted.stdout().contains("FAIL  smtp:"), "{untrusted}");
    assert!(server.logins().is_empty());

    let web = crate::web::App::start(&pool, "").await;
    let doctor = d(Some(&ca.ca_file()))
        .links_to(&web)
        .run_async(&["doctor"])
        .await;
    assert!(doctor.output.status.success(), "{doctor}");
    let send = d(Some(&ca.ca_file()))
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("sent 2,"), "{send}");
    assert_eq!(server.accepted().len(), 2);
    assert!(
        server.tls_sessions() >= 2,
        "doctor and the send both used TLS"
    );
    assert!(server.logins().iter().all(|l| l.ends_with(" mailer")));
    assert!(!server.logins().is_empty());
}
