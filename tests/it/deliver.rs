//! Delivering an issue against a real Postgres and a real SMTP server over TCP (smtp_server.rs):
//! retries, bounces, the breaker, dropped and stalled connections, concurrent senders, a
//! SIGKILL mid-send, dot lines, the rate ceiling, and secrets in logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use digestif::config::Settings;
use digestif::digest::{self, deliver};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{Digestif, at, db_url, seed};
use crate::smtp_server::{DataAction, Policy, SmtpServer};

fn settings(server: &SmtpServer, extra: &str) -> Settings {
    Settings::from_toml(&format!(
        "[delivery]\ntransport = \"smtp\"\nconcurrency = 4\nbatch_size = 50\nretry_base = \"1s\"\n\
         lease = \"5s\"\ngive_up_after = \"1h\"\n[smtp]\nurl = \"{}\"\ntimeout = \"2s\"\n{extra}",
        server.url()
    ))
    .expect("test settings")
}

const SLOT: &str = "2026-11-30T08:00:00Z";

fn copies(server: &SmtpServer) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in server.accepted() {
        *m.entry(a.rcpt).or_default() += 1;
    }
    m
}

async fn statuses(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM delivery GROUP BY status")
        .fetch_all(pool)
        .await
        .expect("statuses")
        .into_iter()
        .collect()
}

fn index(addr: &str) -> usize {
    addr.trim_start_matches("user")
        .split('@')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[sqlx::test]
async fn transient_rcpt_failures_are_retried_until_everyone_has_exactly_one_copy(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().rcpt(|addr, nth| {
        (index(addr).is_multiple_of(5) && nth == 1).then(|| "451 4.3.0 try again later".to_owned())
    }))
    .await;
    let s = settings(&server, "");
    seed(&pool, 50).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(report.outcomes.deferred, 10, "{report:?}");
    let c = copies(&server);
    assert_eq!(c.len(), 50);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
    assert_eq!(statuses(&pool).await.get("sent"), Some(&50));
    for i in (5..=50).step_by(5) {
        let times = server.rcpt_times(&format!("user{i}@example.com"));
        assert_eq!(times.len(), 2, "user{i}");
        // retry_base 1 s with jitter 0.5–1.5: never before next_attempt_at.
        assert!(
            times[1] - times[0] >= Duration::from_millis(500),
            "user{i} retried too early"
        );
    }
    assert_eq!(report.finished, vec![1]);
}

#[sqlx::test]
async fn hard_bounces_suppress_the_subscriber_and_leave_them_out_of_the_next_issue(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().rcpt(|addr, _| {
        matches!(index(addr), 3 | 7).then(|| "550 5.1.1 no such user here".to_owned())
    }))
    .await;
    let s = settings(&server, "");
    seed(&pool, 20).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!((report.outcomes.sent, report.outcomes.bounced), (18, 2));
    for i in [3, 7] {
        let addr = format!("user{i}@example.com");
        assert_eq!(server.rcpt_times(&addr).len(), 1, "{addr} tried once");
        let (status, bounces): (String, i32) =
            sqlx::query_as("SELECT status, hard_bounces FROM subscriber WHERE email = $1")
                .bind(&addr)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((status.as_str(), bounces), ("bounced", 1));
    }
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subscriber_event WHERE kind = 'bounced' AND detail LIKE '%5.1.1%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 2);
    let next = digest::create_issue(&pool, &s, at("2026-12-07T08:00:00Z"))
        .await
        .unwrap();
    let fanned: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery WHERE issue_id = $1")
        .bind(next.issue_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(fanned, 18);
}

#[sqlx::test]
async fn policy_blocks_pause_the_issue_and_suppress_nobody(pool: PgPool) {
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    let s = settings(&server, "");
    seed(&pool, 60).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(report.paused.len(), 1, "{report:?}");
    assert!(report.paused[0].contains("5.7.1"), "{report:?}");
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, status_reason FROM issue")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "paused");
    assert!(reason.unwrap_or_default().contains("policy"));
    let suppressed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subscriber WHERE status <> 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(suppressed, 0);
    let st = statuses(&pool).await;
    assert!(
        st.get("failed").copied().unwrap_or(0) < 60,
        "the breaker stopped early: {st:?}"
    );
    assert_eq!(st.get("sending"), None, "claims were released: {st:?}");

    let d = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "file")
        .env(
            "DIGESTIF_DELIVERY__OUTBOX",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
        );
    let out = d.ok(&["issue", "status", "1"]).stdout();
    assert!(out.contains("paused") && out.contains("5.7.1"), "{out}");
    d.ok(&["issue", "resume", "1"]);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery WHERE status IN ('pending','deferred','sending')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "resume delivered the rest");
}

/// A relay-wide block (a relay that lost our SASL login answers every RCPT "554 5.7.1 Relay
/// access denied") fails the attempts that trip the breaker before it pauses the issue. Those
/// subscribers did nothing: once the operator has mended the relay and resumed, they must get
/// the issue like everyone else, once each.
#[sqlx::test]
async fn resuming_after_a_relay_wide_block_sends_to_those_it_refused(pool: PgPool) {
    relay_wide_block(
        &pool,
        "554 5.7.1 <user1@example.com>: Relay access denied",
        true,
    )
    .await;
}

/// Refusals every recipient gets without a 5.7 code failed the whole list for good, and never
/// tripped the breaker: SES in its sandbox, or with the sender's identity not verified, and a
/// relay whose size limit is below the issue's. A bare 5xx pauses the issue but is not sent
/// again on resume: it may be one mailbox's (a list's dead addresses would trip the breaker
/// again at every resume).
#[sqlx::test]
async fn a_relay_refusing_every_message_without_a_policy_code_pauses_the_issue(pool: PgPool) {
    relay_wide_block(
        &pool,
        "554 Message rejected: Email address is not verified. The following identities failed \
         the check in region US-EAST-1: news@example.com",
        false,
    )
    .await;
}

#[sqlx::test]
async fn a_relay_refusing_the_message_as_too_big_pauses_the_issue(pool: PgPool) {
    relay_wide_block(
        &pool,
        "552 5.3.4 Message size exceeds fixed maximum message size",
        true,
    )
    .await;
}

/// 60 subscribers, a relay that answers every RCPT with `reply` until the block is lifted: the
/// breaker pauses the issue having failed some, and once resumed everyone has one copy (when
/// `requeued`), or everyone but those the block failed.
async fn relay_wide_block(pool: &PgPool, reply: &'static str, requeued: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pool = pool.clone();
    let blocked = Arc::new(AtomicBool::new(true));
    let flag = blocked.clone();
    let server = SmtpServer::start(
        Policy::default().rcpt(move |_, _| flag.load(Ordering::SeqCst).then(|| reply.to_owned())),
    )
    .await;
    let s = settings(&server, "");
    seed(&pool, 60).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(report.paused.len(), 1, "{report:?}");
    let refused = statuses(&pool).await.get("failed").copied().unwrap_or(0);
    assert!(
        refused > 0 && refused < 30,
        "the breaker trips early: {refused} failed"
    );

    blocked.store(false, Ordering::SeqCst);
    let out = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .ok_async(&["issue", "resume", "1"])
        .await
        .stdout();
    let c = copies(&server);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
    if requeued {
        assert!(
            out.contains(&format!("{refused} deliveries the relay refused")),
            "{out}"
        );
        assert_eq!(c.len(), 60, "everyone got the issue: {c:?}");
        assert_eq!(statuses(&pool).await.get("sent"), Some(&60));
    } else {
        assert!(!out.contains("the relay refused"), "{out}");
        assert_eq!(c.len() as i64, 60 - refused, "{c:?}");
    }
}

/// A relay that refuses our sender says nothing about any subscriber: Office 365 answers
/// "550 5.1.8 Access denied, bad outbound sender" for a blocked account, Postfix's
/// reject_unknown_sender_domain "550 5.1.8 … Domain not found" when the bounce domain's DNS
/// breaks. Read as the recipient's 5.1.x, it marked every subscriber bounced and suppressed.
#[sqlx::test]
async fn a_refused_sender_pauses_the_issue_and_suppresses_nobody(pool: PgPool) {
    let policy = Policy::default().mail("550 5.1.8 <bounces@example.com>: Sender address rejected");
    refused_sender(&pool, policy).await;
}

/// Postfix checks the sender at RCPT, not at MAIL, by default (`smtpd_delay_reject = yes`):
/// the same refusal arrives where a recipient's would. 5.1.7 and 5.1.8 name the sender's
/// address (RFC 3463), wherever they come.
#[sqlx::test]
async fn a_sender_refused_at_rcpt_pauses_the_issue_and_suppresses_nobody(pool: PgPool) {
    let policy = Policy::default().rcpt(|_, _| {
        Some("550 5.1.8 <bounces@example.com>: Sender address rejected: Domain not found".into())
    });
    refused_sender(&pool, policy).await;
}

async fn refused_sender(pool: &PgPool, policy: Policy) {
    let pool = pool.clone();
    let server = SmtpServer::start(policy).await;
    let s = settings(&server, "");
    seed(&pool, 60).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    let suppressed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subscriber WHERE status <> 'active'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(suppressed, 0);
    let st = statuses(&pool).await;
    assert_eq!(st.get("bounced"), None, "{st:?}");
    assert_eq!(st.get("failed"), None, "nothing is failed for good: {st:?}");
    assert_eq!(report.paused.len(), 1, "{report:?}");
    assert!(report.paused[0].contains("5.1.8"), "{report:?}");
    assert!(server.accepted().is_empty());
}

/// An issue the breaker paused comes back (its cool-down ends, or `issue resume`) while the
/// same pass goes on, waiting for another issue's retry. The pass still counted the breaker
/// open for it: it claimed the issue's rows, gave them all back and claimed them again, in a
/// loop that never slept and never sent them.
#[sqlx::test]
async fn an_issue_resumed_during_a_pass_is_sent_by_that_pass(pool: PgPool) {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let server = SmtpServer::start(Policy::default().rcpt(move |_, _| {
        match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0..12 => Some("550 5.7.1 message refused by policy".to_owned()),
            _ => None,
        }
    }))
    .await;
    let mut s = settings(&server, "");
    // The first claim holds only the first issue's rows.
    s.delivery.batch_size = 20;
    s.delivery.breaker_cooldown = Duration::from_secs(1);
    seed(&pool, 20).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    digest::create_issue(&pool, &s, at("2026-12-07T08:00:00Z"))
        .await
        .unwrap();
    // A retry of the second issue, due after the first issue's cool-down has ended: the pass
    // waits for it.
    sqlx::query(
        "UPDATE delivery SET status = 'deferred', next_attempt_at = now() + interval '3 seconds' \
         WHERE issue_id = 2 AND subscriber_id = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), deliver_all(&pool, &s))
        .await
        .expect("the pass ends");
    assert_eq!(report.paused.len(), 1, "{report:?}");
    let st = statuses(&pool).await;
    assert_eq!(st.get("pending"), None, "{st:?}");
    assert_eq!(st.get("deferred"), None, "{st:?}");
    assert_eq!(
        st.get("sent").copied().unwrap_or(0) + st.get("failed").copied().unwrap_or(0),
        40
    );
}

/// `delivery.give_up_after` counts from a delivery's first attempt. It counted from the
/// fan-out, so the tail of a list sent under an hourly ceiling (a million at 10,000 an hour
/// take 100 hours), or an issue resumed days after it paused, failed for good on its first
/// greylisting 4xx: "gave up after 1 attempts".
#[sqlx::test]
async fn give_up_after_counts_from_the_first_attempt(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default()
            .rcpt(|_, nth| (nth == 1).then(|| "451 4.7.1 greylisted, try again later".to_owned())),
    )
    .await;
    let s = settings(&server, "");
    seed(&pool, 3).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    // Fanned out two hours ago, past give_up_after (1 h), and not attempted since.
    sqlx::query("UPDATE delivery SET created_at = now() - interval '2 hours'")
        .execute(&pool)
        .await
        .unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(report.outcomes.deferred, 3, "{report:?}");
    assert_eq!(report.outcomes.failed, 0, "{report:?}");
    assert_eq!(statuses(&pool).await.get("sent"), Some(&3));
}

#[sqlx::test]
async fn a_dropped_connection_and_a_stalled_server_are_retried_without_doubles(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default().data(|addr, nth| match (index(addr), nth) {
            (1, 1) => DataAction::DropMidData,
            (2, 1) => DataAction::Stall,
            _ => DataAction::Accept,
        }),
    )
    .await;
    let s = settings(&server, "");
    seed(&pool, 10).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let started = Instant::now();
    let report = deliver_all(&pool, &s).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a worker got stuck"
    );
    assert_eq!(report.outcomes.deferred, 2, "{report:?}");
    let c = copies(&server);
    assert_eq!(c.len(), 10);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
}

#[sqlx::test]
async fn a_subscriber_who_leaves_after_fan_out_is_skipped(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    seed(&pool, 5).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    sqlx::query("UPDATE subscriber SET status = 'unsubscribed' WHERE email = 'user2@example.com'")
        .execute(&pool)
        .await
        .unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!((report.outcomes.sent, report.outcomes.skipped), (4, 1));
    assert!(!copies(&server).contains_key("user2@example.com"));
    let st = statuses(&pool).await;
    assert_eq!(st.get("skipped"), Some(&1));
}

#[sqlx::test]
async fn two_senders_on_one_issue_never_send_a_copy_twice(pool: PgPool) {
    // Each sender talks to its own server, so the servers tell who sent what; the first
    // sender's server holds its replies until the second has delivered one, so both take
    // part however the two are scheduled.
    let second = SmtpServer::start(Policy::default()).await;
    let first = SmtpServer::start(Policy::default().hold_until({
        let sent_by_second = second.accepted_count();
        move || sent_by_second() > 0
    }))
    .await;
    let with = |server: &SmtpServer| {
        let s = settings(server, "");
        Settings {
            delivery: digestif::config::DeliverySettings {
                batch_size: 20,
                ..s.delivery
            },
            // Above the server's longest hold: a held reply is slow, not lost.
            smtp: digestif::config::SmtpSettings {
                timeout: Duration::from_secs(30),
                ..s.smtp
            },
            ..s
        }
    };
    let (s1, s2) = (with(&first), with(&second));
    seed(&pool, 300).await;
    digest::create_issue(&pool, &s1, at(SLOT)).await.unwrap();
    let other = PgPoolOptions::new()
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("second pool");
    let (a, b) = tokio::join!(deliver_all(&pool, &s1), deliver_all(&other, &s2));
    assert_eq!(a.outcomes.sent + b.outcomes.sent, 300, "{a:?} {b:?}");
    assert_eq!(
        (a.outcomes.sent, b.outcomes.sent),
        (
            first.accepted().len() as u64,
            second.accepted().len() as u64
        )
    );
    assert!(
        a.outcomes.sent > 0 && b.outcomes.sent > 0,
        "both took part: {} and {}",
        a.outcomes.sent,
        b.outcomes.sent
    );
    let mut c = copies(&first);
    for (rcpt, n) in copies(&second) {
        *c.entry(rcpt).or_default() += n;
    }
    assert_eq!(c.len(), 300);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
}

#[sqlx::test]
async fn dot_lines_arrive_intact_in_one_message(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    sqlx::query(
        "INSERT INTO subscriber (email, status, consent_source) VALUES ('dot@example.com', 'active', 'test')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tip (title, body) VALUES ('Dots', E'Before\\n\\n.\\n\\n..\\n\\nQUIT\\n\\nafter')")
        .execute(&pool)
        .await
        .unwrap();
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    deliver_all(&pool, &s).await;
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1);
    let msg = mail_parser::MessageParser::default()
        .parse(&accepted[0].data)
        .expect("parses");
    let text = msg.body_text(0).expect("text part");
    assert!(text.lines().any(|l| l == "."), "{text}");
    assert!(text.lines().any(|l| l == ".."), "{text}");
    let commands = server.commands();
    assert!(
        commands.iter().all(|c| {
            let u = c.to_ascii_uppercase();
            [
                "EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT", "RSET", "NOOP",
            ]
            .iter()
            .any(|k| u.starts_with(k))
        }),
        "the body leaked into the command stream: {commands:?}"
    );
    let data_commands = commands
        .iter()
        .filter(|c| c.eq_ignore_ascii_case("DATA"))
        .count();
    assert_eq!(data_commands, 1, "one message, one DATA: {commands:?}");
}

#[sqlx::test]
async fn the_rate_ceiling_holds(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    let s = Settings {
        delivery: digestif::config::DeliverySettings {
            rate_per_second: Some(50.0),
            concurrency: 8,
            batch_size: 100,
            ..s.delivery
        },
        ..s
    };
    seed(&pool, 500).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let started = Instant::now();
    let report = deliver_all(&pool, &s).await;
    let took = started.elapsed();
    assert_eq!(report.outcomes.sent, 500);
    assert!(
        took >= Duration::from_millis(9_500),
        "500 messages at 50/s took {took:?}"
    );
}

/// `digestif issue send --now` as a child process against `server` and the test database.
fn send_process(pool: &PgPool, server: &SmtpServer) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_digestif"));
    cmd.args(["issue", "send", "--now"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("DATABASE_URL", db_url(pool))
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", server.url())
        .env("DIGESTIF_SMTP__TIMEOUT", "5s")
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "4")
        .env("DIGESTIF_DELIVERY__LEASE", "3s")
        // The default schedule, in the hour its slot is due: a restarted send must finish
        // this issue and never start next week's.
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[sqlx::test]
async fn a_sigkill_mid_send_loses_nothing_and_repeats_at_most_the_concurrency(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 5000).await;
    let mut child = send_process(&pool, &server)
        .spawn()
        .expect("start digestif");
    let started = Instant::now();
    while server.accepted().len() < 1000 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    let before = server.accepted().len();
    assert!(
        before < 5000,
        "killed too late to test anything ({before} sent)"
    );

    let out = send_process(&pool, &server)
        .output()
        .await
        .expect("restart");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let accepted = server.accepted();
    let mut by_rcpt: HashMap<String, Vec<String>> = HashMap::new();
    for a in &accepted {
        by_rcpt
            .entry(a.rcpt.clone())
            .or_default()
            .push(a.message_id.clone());
    }
    assert_eq!(
        by_rcpt.len(),
        5000,
        "every subscriber got at least one copy"
    );
    let duplicates = accepted.len() - by_rcpt.len();
    assert!(
        duplicates <= 4,
        "{duplicates} duplicates with concurrency 4"
    );
    for (rcpt, ids) in &by_rcpt {
        assert!(
            ids.iter().all(|id| id == &ids[0]),
            "{rcpt}: copies differ in Message-ID: {ids:?}"
        );
    }
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery WHERE status = 'sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sent, 5000);
    let issues: i64 = sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        issues, 1,
        "the restart finished the issue and started no other"
    );
}

#[sqlx::test]
async fn smtp_passwords_never_reach_the_log_even_when_auth_fails(pool: PgPool) {
    seed(&pool, 1).await;
    // A server that offers AUTH and refuses it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 auth.example ESMTP\r\n").await;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-auth.example\r\n250 AUTH PLAIN LOGIN\r\n"
                    } else if upper.starts_with("AUTH") {
                        b"535 5.7.8 authentication credentials invalid\r\n"
                    } else if upper.starts_with("QUIT") {
                        b"221 bye\r\n"
                    } else {
                        b"503 5.5.1 bad sequence\r\n"
                    };
                    let _ = w.write_all(reply).await;
                    line.clear();
                }
            });
        }
    });
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_digestif"))
        .args(["issue", "test-send", "--to", "someone@example.com"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("RUST_LOG", "trace")
        .env("DATABASE_URL", db_url(&pool))
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", format!("smtp://{addr}"))
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
        .env("DIGESTIF_SMTP__PASSWORD", "hunter2-very-secret")
        .env(
            "DIGESTIF_HTTP__TOKEN_SECRET",
            "token-secret-that-is-long-enough-1234567890",
        )
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "AUTH was refused, so test-send must fail: {all}"
    );
    assert!(all.contains("535"), "the failure is reported: {all}");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        "hunter2-very-secret".to_owned(),
        b64.encode("\0mailer\0hunter2-very-secret"),
        b64.encode("hunter2-very-secret"),
        "token-secret-that-is-long-enough".to_owned(),
    ] {
        assert!(!all.contains(&secret), "secret {secret:?} leaked:\n{all}");
    }
}

#[sqlx::test]
async fn a_long_lived_deliverer_sends_an_issue_again_once_it_is_resumed(pool: PgPool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let blocked = Arc::new(AtomicBool::new(true));
    let flag = blocked.clone();
    let server = SmtpServer::start(Policy::default().rcpt(move |_, _| {
        flag.load(Ordering::SeqCst)
            .then(|| "550 5.7.1 message refused by policy".to_owned())
    }))
    .await;
    let s = settings(&server, "");
    seed(&pool, 40).await;
    let issue = digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    // One deliverer for both runs, as `digestif serve` keeps one.
    let d = deliver::Deliverer::new(pool.clone(), Arc::new(s.clone()))
        .await
        .unwrap();
    let run = || crate::helpers::drain(&d, Duration::ZERO);
    assert_eq!(run().await.paused.len(), 1);
    blocked.store(false, Ordering::SeqCst);
    assert!(
        digestif::store::deliveries::resume(&pool, issue.issue_id)
            .await
            .unwrap()
            .is_some()
    );
    let second = run().await;
    assert_eq!(
        second.outcomes.sent, 40,
        "the resumed issue is sent to everyone: {second:?}"
    );
    assert_eq!(second.finished, vec![1], "{second:?}");
}

async fn deliver_all(pool: &PgPool, s: &Settings) -> deliver::Report {
    crate::helpers::deliver_all(pool, s, Duration::from_secs(30)).await
}

#[sqlx::test]
async fn the_results_connection_dropping_mid_send_neither_loses_nor_doubles_a_message(
    pool: PgPool,
) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(10))).await;
    let s = settings(&server, "");
    seed(&pool, 400).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    // A server restart or a network blip, seen only by the connection that writes results:
    // cut it twice, some time apart, while the issue is being sent (about a second).
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut killed = 0;
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'digestif results'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                killed += n;
                if killed >= 2 {
                    break;
                }
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            killed
        })
    };
    let report = deliver_all(&pool, &s).await;
    assert!(
        killer.await.unwrap() >= 2,
        "the results connection was cut at least twice"
    );
    assert_eq!(report.outcomes.sent, 400, "{report:?}");
    let c = copies(&server);
    assert_eq!(c.len(), 400);
    assert!(c.values().all(|&n| n == 1), "one copy each: {c:?}");
    assert_eq!(statuses(&pool).await.get("sent"), Some(&400));
}

#[sqlx::test]
async fn the_envelope_is_pipelined_only_when_the_server_offers_it(pool: PgPool) {
    seed(&pool, 10).await;
    let offers = SmtpServer::start(Policy::default()).await;
    let s = settings(&offers, "");
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 10);
    assert_eq!(
        offers.pipelined(),
        vec![true; 10],
        "MAIL, RCPT, DATA in one write"
    );

    let refuses = SmtpServer::start(Policy::default().no_pipelining()).await;
    let s = settings(&refuses, "");
    digest::create_issue(&pool, &s, at("2026-12-07T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 10);
    assert_eq!(
        refuses.pipelined(),
        vec![false; 10],
        "one command per reply"
    );
    assert_eq!(copies(&refuses).len(), 10);
}

/// Sends an issue of 40 with `s` while every write to `delivery` takes 50 ms, watching that
/// what was handed over (`handed_over()`) never runs more than the concurrency (4) ahead of
/// what is durable: the gate before each final dot (or each outbox file).
async fn the_gate_holds(pool: &PgPool, s: &Settings, handed_over: impl Fn() -> i64) {
    seed(pool, 40).await;
    digest::create_issue(pool, s, at(SLOT)).await.unwrap();
    // Every write to delivery takes 50 ms: results pile up behind the database.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$; \
         CREATE TRIGGER slow_write BEFORE UPDATE ON delivery \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_write();",
    )
    .execute(pool)
    .await
    .unwrap();
    let sending = {
        let (pool, s) = (pool.clone(), s.clone());
        tokio::spawn(async move { deliver_all(&pool, &s).await })
    };
    let mut checks = 0;
    while !sending.is_finished() {
        // Handed over first, durable second: the first can only have grown by the time the
        // second is read, so this never under-counts what went out without a durable record.
        let accepted = handed_over();
        let durable: i64 =
            sqlx::query_scalar("SELECT count(*) FROM delivery WHERE status = 'sent'")
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(
            accepted <= durable + 4,
            "{accepted} handed over but only {durable} recorded, with concurrency 4"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(checks > 20, "the run was watched ({checks} checks)");
    assert_eq!(sending.await.unwrap().outcomes.sent, 40);
    assert_eq!(handed_over(), 40);
}

#[sqlx::test]
async fn no_message_is_handed_over_before_the_previous_result_of_its_sender_is_durable(
    pool: PgPool,
) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    the_gate_holds(&pool, &s, || server.accepted().len() as i64).await;
    assert_eq!(copies(&server).len(), 40);
}

#[sqlx::test]
async fn the_gate_holds_on_the_path_without_pipelining(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().no_pipelining()).await;
    let s = settings(&server, "");
    the_gate_holds(&pool, &s, || server.accepted().len() as i64).await;
    assert!(
        server.pipelined().iter().all(|p| !p),
        "nothing was pipelined"
    );
}

#[sqlx::test]
async fn the_gate_holds_for_the_file_transport(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let outbox = tempfile::tempdir().unwrap();
    let s = settings(&server, "");
    let s = Settings {
        delivery: digestif::config::DeliverySettings {
            transport: digestif::config::TransportKind::File,
            outbox: outbox.path().to_owned(),
            ..s.delivery
        },
        ..s
    };
    let files = || std::fs::read_dir(outbox.path()).map_or(0, |d| d.count()) as i64;
    the_gate_holds(&pool, &s, files).await;
    assert!(server.accepted().is_empty());
}

#[sqlx::test]
async fn when_results_cannot_be_written_each_sender_stops_after_one_more_attempt(pool: PgPool) {
    // Every recipient is refused, so each result is a bounce to write; and no result can be
    // written (claims and releases still work).
    let server = SmtpServer::start(
        Policy::default().rcpt(|_, _| Some("550 5.1.1 no such user here".to_owned())),
    )
    .await;
    let s = settings(&server, "");
    seed(&pool, 40).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_results() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'results refused by the test'; END $$; \
         CREATE TRIGGER refuse_results BEFORE UPDATE ON delivery FOR EACH ROW \
         WHEN (NEW.status IN ('sent', 'bounced', 'failed', 'deferred', 'skipped')) \
         EXECUTE FUNCTION refuse_results();",
    )
    .execute(&pool)
    .await
    .unwrap();

    let d = deliver::Deliverer::new(pool.clone(), Arc::new(s))
        .await
        .unwrap();
    let run = crate::helpers::try_drain(&d, Duration::ZERO).await;
    let err = format!("{:#}", run.expect_err("the run stops"));
    assert!(err.contains("cannot write delivery results"), "{err}");

    // Each of the 4 senders tried its first recipient, and at most one more while that
    // result was being written; none went on past the failed write.
    let rcpts = server
        .commands()
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .count();
    assert!((4..=8).contains(&rcpts), "{rcpts} recipients tried");
    // Everything not attempted went back to the queue; only the attempted stay leased.
    let s = statuses(&pool).await;
    assert!(s.get("sending").copied().unwrap_or(0) <= 8, "{s:?}");
    assert!(s.get("pending").copied().unwrap_or(0) >= 32, "{s:?}");
    // ...and this live worker no longer holds them: once the database takes results again,
    // the same long-lived deliverer (as `serve` keeps one) settles every delivery at once,
    // without waiting out a lease it would otherwise keep renewing.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery WHERE status = 'sending' AND claimed_by IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0);
    sqlx::raw_sql("DROP TRIGGER refuse_results ON delivery")
        .execute(&pool)
        .await
        .unwrap();
    let report = crate::helpers::drain(&d, Duration::ZERO).await;
    assert_eq!(report.outcomes.bounced, 40, "{report:?}");
    assert_eq!(statuses(&pool).await.get("sending"), None);
}

/// `settings` with a different hard-bounce threshold, retry base and give-up time.
fn with_delivery(s: Settings, threshold: u32, retry_base: Duration, give_up: Duration) -> Settings {
    Settings {
        delivery: digestif::config::DeliverySettings {
            hard_bounce_threshold: threshold,
            retry_base,
            give_up_after: give_up,
            ..s.delivery
        },
        ..s
    }
}

async fn subscriber_state(pool: &PgPool, email: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, hard_bounces FROM subscriber WHERE email = $1")
        .bind(email)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn at_a_hard_bounce_threshold_of_two_the_second_bounce_suppresses(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default()
            .rcpt(|addr, _| (index(addr) == 3).then(|| "550 5.1.1 no such user here".to_owned())),
    )
    .await;
    let s = with_delivery(
        settings(&server, ""),
        2,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    seed(&pool, 5).await;
    let issue_count_for = |issue_id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery WHERE issue_id = $1")
                .bind(issue_id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let first = deliver_all(&pool, &s).await;
    assert_eq!(
        (first.outcomes.sent, first.outcomes.bounced),
        (4, 1),
        "{first:?}"
    );
    assert_eq!(
        subscriber_state(&pool, "user3@example.com").await,
        ("active".to_owned(), 1),
        "one bounce is below the threshold"
    );

    let second = digest::create_issue(&pool, &s, at("2026-12-07T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        issue_count_for(second.issue_id).await,
        5,
        "still fanned out"
    );
    let report = deliver_all(&pool, &s).await;
    assert_eq!(
        (report.outcomes.sent, report.outcomes.bounced),
        (4, 1),
        "{report:?}"
    );
    assert_eq!(
        subscriber_state(&pool, "user3@example.com").await,
        ("bounced".to_owned(), 2),
        "the second bounce reaches the threshold"
    );
    assert_eq!(server.rcpt_times("user3@example.com").len(), 2);

    let third = digest::create_issue(&pool, &s, at("2026-12-14T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(issue_count_for(third.issue_id).await, 4, "suppressed");
}

#[sqlx::test]
async fn temporary_failures_back_off_exponentially_and_fail_after_give_up_after(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default()
            .rcpt(|addr, _| (index(addr) == 2).then(|| "451 4.3.0 try again later".to_owned())),
    )
    .await;
    let base = Duration::from_millis(200);
    let give_up = Duration::from_secs(3);
    let s = with_delivery(settings(&server, ""), 1, base, give_up);
    // Enough others that the breaker never sees mostly failures.
    seed(&pool, 20).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(
        (report.outcomes.sent, report.outcomes.failed),
        (19, 1),
        "{report:?}"
    );

    let times = server.rcpt_times("user2@example.com");
    // Attempt k waits base · 2^(k-1) · jitter (0.5 to 1.5) after the one before: with these
    // numbers at least 4 attempts fit into give_up_after, and never one too early.
    assert!(times.len() >= 4, "{} attempts", times.len());
    for (k, pair) in times.windows(2).enumerate() {
        let least = base.mul_f64(2f64.powi(k as i32) * 0.5);
        let gap = pair[1] - pair[0];
        assert!(
            gap >= least,
            "retry {} after {gap:?}, before {least:?}",
            k + 1
        );
    }
    let span = *times.last().unwrap() - times[0];
    assert!(span <= give_up, "tried for {span:?}, past give_up_after");

    let (status, attempts, error): (String, i32, String) = sqlx::query_as(
        "SELECT d.status, d.attempts, d.last_error FROM delivery d \
         JOIN subscriber s USING (subscriber_id) WHERE s.email = 'user2@example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", times.len() as i32));
    assert!(
        error.starts_with(&format!("gave up after {} attempts", times.len()))
            && error.contains("451"),
        "{error}"
    );
    assert_eq!(
        subscriber_state(&pool, "user2@example.com").await,
        ("active".to_owned(), 0),
        "a temporary failure suppresses nobody"
    );
}

#[sqlx::test]
async fn a_4xx_to_the_final_dot_is_retried_once_and_a_5xx_fails_for_good(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default().data(|addr, nth| match (index(addr), nth) {
            (2, 1) => DataAction::Reply("451 4.3.0 queue full, try later"),
            (4, _) => DataAction::Reply("554 5.7.1 message content rejected"),
            _ => DataAction::Accept,
        }),
    )
    .await;
    let s = settings(&server, "");
    seed(&pool, 10).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(
        (
            report.outcomes.sent,
            report.outcomes.deferred,
            report.outcomes.failed,
            report.outcomes.bounced
        ),
        (9, 1, 1, 0),
        "{report:?}"
    );
    let c = copies(&server);
    assert_eq!(c.len(), 9);
    assert!(c.values().all(|&n| n == 1), "{c:?}");
    assert_eq!(
        c.get("user2@example.com"),
        Some(&1),
        "sent once, after a retry"
    );
    assert!(!c.contains_key("user4@example.com"));
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT s.email, d.status, d.attempts FROM delivery d JOIN subscriber s USING (subscriber_id) \
         WHERE s.email IN ('user2@example.com', 'user4@example.com') ORDER BY s.email",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("user2@example.com".into(), "sent".into(), 2),
            ("user4@example.com".into(), "failed".into(), 1),
        ]
    );
    assert_eq!(
        subscriber_state(&pool, "user4@example.com").await,
        ("active".to_owned(), 0),
        "a refused message is not a missing mailbox: the subscriber is kept"
    );
}

/// RFC 5321 answers the final dot with a completion (2xx) or a refusal. A relay that answers
/// it with a 3xx has not said it took the message: it is not recorded as sent (before, lettre's
/// "positive" 3xx counted as a 250 and the connection was reused mid-conversation). Whether
/// the relay kept it is unknown, so it is retried later with its Message-ID, as after silence.
#[sqlx::test]
async fn a_3xx_to_the_final_dot_is_not_sent_and_is_retried(pool: PgPool) {
    let policy = Policy::default().data(|addr, nth| match (index(addr), nth) {
        (2, 1) => DataAction::Reply("354 3.0.0 go ahead"),
        _ => DataAction::Accept,
    });
    user2_is_retried_once(pool, policy).await;
}

#[sqlx::test]
async fn a_3xx_to_the_final_dot_without_pipelining_is_not_sent_and_is_retried(pool: PgPool) {
    let policy = Policy::default().data(|addr, nth| match (index(addr), nth) {
        (2, 1) => DataAction::Reply("354 3.0.0 go ahead"),
        _ => DataAction::Accept,
    });
    user2_is_retried_once(pool, policy.no_pipelining()).await;
}

/// RFC 5321 §4.3.2: MAIL and RCPT are answered 250, DATA 354. A relay that answers DATA with
/// 250 is not reading a message: sent anyway, the message's lines would be read as commands,
/// and the first one's 502 failed the delivery for good. It is a broken relay, not a refusal:
/// the message is not sent after it, and the delivery is retried.
#[sqlx::test]
async fn a_250_to_data_is_not_followed_by_the_message_and_is_retried(pool: PgPool) {
    let policy = Policy::default().data(|addr, nth| match (index(addr), nth) {
        (2, 1) => DataAction::NotReady("250 2.0.0 ok"),
        _ => DataAction::Accept,
    });
    let server = user2_is_retried_once(pool, policy).await;
    no_message_read_as_commands(&server);
}

#[sqlx::test]
async fn a_250_to_data_without_pipelining_is_not_followed_by_the_message(pool: PgPool) {
    let policy = Policy::default().data(|addr, nth| match (index(addr), nth) {
        (2, 1) => DataAction::NotReady("250 2.0.0 ok"),
        _ => DataAction::Accept,
    });
    let server = user2_is_retried_once(pool, policy.no_pipelining()).await;
    no_message_read_as_commands(&server);
}

/// What the operator reads about such an attempt says what the relay did.
#[sqlx::test]
async fn a_250_to_data_is_recorded_as_the_relay_out_of_protocol(pool: PgPool) {
    let policy = Policy::default().data(|_, _| DataAction::NotReady("250 2.0.0 ok"));
    let server = SmtpServer::start(policy).await;
    let s = settings(&server, "");
    seed(&pool, 1).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = crate::helpers::deliver_all(&pool, &s, Duration::ZERO).await;
    assert_eq!(report.outcomes.deferred, 1, "{report:?}");
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM delivery")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), error.as_deref()),
        (
            "deferred",
            Some("the relay answered DATA with 250 2.0.0 ok, where RFC 5321 has 354")
        )
    );
}

/// Nor is a 3xx to RCPT an acceptance of the recipient (the DATA after it was refused with
/// 554 "no valid recipients", which failed the delivery for good).
#[sqlx::test]
async fn a_3xx_to_rcpt_is_not_an_acceptance(pool: PgPool) {
    let rcpt = |addr: &str, nth| (index(addr) == 2 && nth == 1).then(|| "354 3.0.0 what".into());
    user2_is_retried_once(pool, Policy::default().rcpt(rcpt)).await;
}

#[sqlx::test]
async fn a_3xx_to_rcpt_without_pipelining_is_not_an_acceptance(pool: PgPool) {
    let rcpt = |addr: &str, nth| (index(addr) == 2 && nth == 1).then(|| "354 3.0.0 what".into());
    user2_is_retried_once(pool, Policy::default().rcpt(rcpt).no_pipelining()).await;
}

/// A relay that takes a few messages a connection and then closes it, as many do (Exim's
/// default is 1,000), is not a failing relay: the message that finds the pooled connection
/// closed before any of it went is sent at once on a new connection, not deferred for
/// `retry_base` and counted against the relay.
#[sqlx::test]
async fn a_relay_closing_after_421_is_sent_the_next_message_on_a_new_connection(pool: PgPool) {
    let policy = Policy::default().close_after(5, Some("421 4.7.0 too many messages, closing"));
    every_message_goes_at_once(pool, policy, true).await;
}

#[sqlx::test]
async fn a_relay_hanging_up_after_a_message_is_sent_the_next_on_a_new_connection(pool: PgPool) {
    // Only the count of deferrals shows the retry here: a hang-up leaves no trace at the server.
    every_message_goes_at_once(pool, Policy::default().close_after(5, None), false).await;
}

#[sqlx::test]
async fn a_relay_closing_without_pipelining_is_sent_the_next_message_on_a_new_connection(
    pool: PgPool,
) {
    let policy = Policy::default().close_after(5, Some("421 4.7.0 too many messages, closing"));
    every_message_goes_at_once(pool, policy.no_pipelining(), true).await;
}

/// A slow rate ceiling leaves the one pooled connection idle for over five seconds between
/// messages, and meanwhile something between us and the relay dropped it without a word (a
/// NAT's or firewall's idle timeout): the NOOP that checks it gets no answer. The next message
/// goes on a new connection, not deferred after the whole `smtp.timeout`.
#[sqlx::test]
async fn a_pooled_connection_that_went_silent_while_idle_is_replaced(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().mute_after(1)).await;
    let s = settings(&server, "");
    let s = Settings {
        delivery: digestif::config::DeliverySettings {
            // One message every 10 s: longer than a connection may sit idle unchecked (5 s),
            // however long the first message takes.
            rate_per_second: Some(0.1),
            ..s.delivery
        },
        ..s
    };
    seed(&pool, 2).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    each_got_one_copy(&server, &report, 2, 0);
    assert!(
        server.commands().iter().any(|c| c == "NOOP"),
        "the idle connection was not checked: {:?}",
        server.commands()
    );
    assert_eq!(server.sessions(), 2);
}

/// Sixty messages through a server that takes five a connection: each one sent once, none
/// deferred. `says_421`: the server answers a MAIL over its limit with a 421 (else it hangs up).
async fn every_message_goes_at_once(pool: PgPool, policy: Policy, says_421: bool) {
    let server = SmtpServer::start(policy).await;
    let s = settings(&server, "");
    seed(&pool, 60).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = crate::helpers::deliver_all(&pool, &s, Duration::ZERO).await;
    each_got_one_copy(&server, &report, 60, 0);
    assert!(server.sessions() >= 12, "{} connections", server.sessions());
    if says_421 {
        let mails = server.mail_commands();
        assert!(
            mails > 60,
            "no pooled connection met the 421: {mails} MAILs"
        );
    }
}

/// `n` messages sent after `deferred` deferrals, and each of the `n` recipients got one
/// copy.
fn each_got_one_copy(server: &SmtpServer, report: &deliver::Report, n: u64, deferred: u64) {
    assert_eq!(
        (report.outcomes.sent, report.outcomes.deferred),
        (n, deferred),
        "{report:?}"
    );
    let c = copies(server);
    assert_eq!(c.len() as u64, n, "{c:?}");
    assert!(c.values().all(|&k| k == 1), "{c:?}");
}

/// Four subscribers through a server following `policy`, which answers user2's first attempt
/// out of the ordinary: everyone gets one copy, and user2's comes from a retry.
async fn user2_is_retried_once(pool: PgPool, policy: Policy) -> SmtpServer {
    let server = SmtpServer::start(policy).await;
    let s = settings(&server, "");
    seed(&pool, 4).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    each_got_one_copy(&server, &report, 4, 1);
    let (status, attempts): (String, i32) = sqlx::query_as(
        "SELECT d.status, d.attempts FROM delivery d \
         JOIN subscriber s USING (subscriber_id) WHERE s.email = 'user2@example.com'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("sent", 2));
    server
}

/// Asserts that no line of a message reached `server` as a command.
fn no_message_read_as_commands(server: &SmtpServer) {
    let commands = server.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.to_ascii_lowercase().starts_with("message-id:") || c == "."),
        "the message went after a 250 to DATA: {commands:?}"
    );
}

#[sqlx::test]
async fn sigint_stops_issue_send_cleanly_and_a_second_run_sends_the_rest_once(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(20))).await;
    seed(&pool, 300).await;
    let child = send_process(&pool, &server)
        .spawn()
        .expect("start digestif");
    crate::helpers::wait_for("30 messages sent", Duration::from_secs(60), || async {
        (server.accepted().len() >= 30).then_some(())
    })
    .await;
    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("issue send stops after SIGINT")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = server.accepted().len();
    assert!(first < 300, "SIGINT came too late to test anything");
    let st = statuses(&pool).await;
    assert_eq!(
        st.get("sending"),
        None,
        "unstarted claims were given back: {st:?}"
    );
    assert_eq!(st.get("sent").copied().unwrap_or(0), first as i64, "{st:?}");

    let again = send_process(&pool, &server).output().await.unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let c = copies(&server);
    assert_eq!(c.len(), 300);
    assert!(c.values().all(|&n| n == 1), "nothing lost, nothing doubled");
}

/// README: "hold no transaction while SMTP talks". The server takes two seconds over each
/// final dot; no database session of the sender may have a transaction open that long.
#[sqlx::test]
async fn no_transaction_is_held_while_the_smtp_server_talks(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_secs(2))).await;
    let s = settings(&server, "");
    let s = Settings {
        smtp: digestif::config::SmtpSettings {
            timeout: Duration::from_secs(10),
            ..s.smtp
        },
        ..s
    };
    seed(&pool, 4).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let sending = {
        let (pool, s) = (pool.clone(), s.clone());
        tokio::spawn(async move { deliver_all(&pool, &s).await })
    };
    let mut longest = 0.0f64;
    let mut samples = 0;
    while !sending.is_finished() {
        let oldest: Option<f64> = sqlx::query_scalar(
            "SELECT max(EXTRACT(EPOCH FROM now() - xact_start))::float8 FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND xact_start IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        longest = longest.max(oldest.unwrap_or(0.0));
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sending.await.unwrap().outcomes.sent, 4);
    assert!(samples > 20, "the send was watched ({samples} samples)");
    assert!(
        longest < 1.0,
        "a transaction stayed open {longest:.2} s while the server took 2 s per message"
    );
}

/// README: the breaker "says why (`issue list`, `issue status N`), and it resumes after
/// `delivery.breaker_cooldown`" on its own.
#[sqlx::test]
async fn a_paused_issue_says_why_in_issue_list_and_resumes_after_the_cooldown(pool: PgPool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let blocked = Arc::new(AtomicBool::new(true));
    let flag = blocked.clone();
    let server = SmtpServer::start(Policy::default().rcpt(move |_, _| {
        flag.load(Ordering::SeqCst)
            .then(|| "554 5.7.1 blocked by policy".to_owned())
    }))
    .await;
    let s = settings(&server, "");
    let s = Settings {
        delivery: digestif::config::DeliverySettings {
            breaker_cooldown: Duration::from_secs(2),
            ..s.delivery
        },
        ..s
    };
    seed(&pool, 40).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let d = deliver::Deliverer::new(pool.clone(), Arc::new(s.clone()))
        .await
        .unwrap();
    let paused_at = Instant::now();
    assert_eq!(
        crate::helpers::drain(&d, Duration::ZERO).await.paused.len(),
        1
    );
    let list = Digestif::new(&pool).ok(&["issue", "list"]).stdout();
    let row = list
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_default();
    assert!(row.contains("paused") && row.contains("5.7.1"), "{list}");

    blocked.store(false, Ordering::SeqCst);
    // Still paused before the cool-down is over: nothing is sent.
    assert_eq!(
        crate::helpers::drain(&d, Duration::ZERO)
            .await
            .outcomes
            .sent,
        0
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = crate::helpers::drain(&d, Duration::ZERO).await;
        if r.outcomes.sent > 0 {
            break r;
        }
        assert!(Instant::now() < deadline, "never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        paused_at.elapsed() >= Duration::from_secs(2),
        "resumed before the cool-down was over"
    );
    assert_eq!(report.finished, vec![1], "{report:?}");
    // Those refused before the breaker tripped went again with the rest.
    let c = copies(&server);
    assert_eq!(c.len(), 40, "{c:?}");
    assert!(c.values().all(|&n| n == 1), "{c:?}");
}

/// A relay without SMTPUTF8 cannot take `josé@…`: that delivery fails at once with the reason
/// (it used to be retried as a temporary failure for two days); an internationalised domain
/// goes out in its ASCII form, which every relay takes.
#[sqlx::test]
async fn an_address_the_relay_cannot_take_fails_at_once_with_the_reason(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().no_smtputf8()).await;
    let s = settings(&server, "");
    seed(&pool, 0).await;
    let d = Digestif::new(&pool);
    for a in ["josé@example.org", "bob@bücher.example", "ann@example.org"] {
        d.ok(&["subscribers", "add", a]);
    }
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s).await;
    assert_eq!(
        (
            report.outcomes.sent,
            report.outcomes.deferred,
            report.outcomes.failed
        ),
        (2, 0, 1),
        "{report:?}"
    );
    let c = copies(&server);
    assert!(c.contains_key("bob@xn--bcher-kva.example"), "{c:?}");
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "SELECT d.status, d.last_error FROM delivery d JOIN subscriber s USING (subscriber_id) \
         WHERE s.email = 'josé@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains("SMTPUTF8"));
}

#[sqlx::test]
async fn a_relay_with_smtputf8_gets_a_unicode_address_with_the_smtputf8_parameter(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    seed(&pool, 0).await;
    Digestif::new(&pool).ok(&["subscribers", "add", "josé@example.org"]);
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    assert_eq!(deliver_all(&pool, &s).await.outcomes.sent, 1);
    assert!(copies(&server).contains_key("josé@example.org"));
    assert!(
        server
            .commands()
            .iter()
            .any(|c| c.starts_with("MAIL FROM:") && c.contains("SMTPUTF8")),
        "{:?}",
        server.commands()
    );
}

/// A message whose claim another worker took over between its final dot and its result (as
/// after a lease ran out) is not reported sent: its result was not written, the new owner sends
/// it again, and this run's counts are what the database holds.
#[sqlx::test]
async fn a_result_whose_claim_was_taken_over_meanwhile_is_not_reported_sent(pool: PgPool) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let (dot, taken) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (at_dot, let_go) = (dot.clone(), taken.clone());
    // The reply to the final dot waits until the claim has been taken over.
    let server = SmtpServer::start(Policy::default().hold_until(move || {
        at_dot.store(true, SeqCst);
        let_go.load(SeqCst)
    }))
    .await;
    let s = settings(&server, "");
    seed(&pool, 1).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let d = Arc::new(
        deliver::Deliverer::new(pool.clone(), Arc::new(s))
            .await
            .unwrap(),
    );
    let run = tokio::spawn({
        let d = d.clone();
        async move { crate::helpers::drain(&d, Duration::ZERO).await }
    });
    crate::helpers::wait_for("the final dot", Duration::from_secs(10), || async {
        dot.load(SeqCst).then_some(())
    })
    .await;
    sqlx::query("UPDATE delivery SET claimed_by = claimed_by + 1000 WHERE status = 'sending'")
        .execute(&pool)
        .await
        .unwrap();
    taken.store(true, SeqCst);
    let report = run.await.unwrap();

    assert_eq!(server.accepted().len(), 1, "the relay took the message");
    assert_eq!(statuses(&pool).await.get("sent"), None, "nothing written");
    assert_eq!(report.outcomes.sent, 0, "reported sent, yet not written");
    assert_eq!(d.counters().taken_over.load(SeqCst), 1);
    assert_eq!(report.taken_over, 1, "the run says so");
}

/// When the check before a final dot cannot be made (the results statement fails every retry),
/// the run stops with the write error: the claim is not reported lost to another worker, which
/// would be false (nobody took it over), and the message is not handed over.
#[sqlx::test]
async fn a_pre_dot_check_that_cannot_be_made_stops_the_run_instead_of_reporting_the_claim_lost(
    pool: PgPool,
) {
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    seed(&pool, 1).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    // The results statement writes the event log too; without it, every attempt fails, while
    // claims, which do not touch it, still work.
    sqlx::query("ALTER TABLE subscriber_event RENAME TO subscriber_event_away")
        .execute(&pool)
        .await
        .unwrap();
    let d = deliver::Deliverer::new(pool.clone(), Arc::new(s))
        .await
        .unwrap();
    let run = crate::helpers::try_drain(&d, Duration::ZERO).await;

    let err = run.expect_err("the run went on as if the claim had been taken over");
    assert!(
        format!("{err:#}").contains("cannot write delivery results"),
        "{err:#}"
    );
    assert_eq!(
        d.counters().lost.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(server.accepted().is_empty(), "handed over unchecked");
}

/// `subscribers remove --purge` while an issue is being made: the purge used to miss the
/// fan-out's uncommitted delivery row and delete the subscriber, leaving a `pending` row no
/// claim can take (it joins the subscriber) but that `next_due` calls due at once, so every
/// `run` looped for ever and the issue never finished.
#[sqlx::test]
async fn a_purge_during_an_issues_fan_out_leaves_nothing_that_cannot_be_sent(pool: PgPool) {
    use digestif::domain::SubscriberEmail;
    use digestif::store::{deliveries, issues, subscribers};
    let server = SmtpServer::start(Policy::default()).await;
    let s = settings(&server, "");
    seed(&pool, 5).await;
    // What create_issue does, held open half-way.
    let mut tx = pool.begin().await.unwrap();
    issues::lock_issue_creation(&mut tx).await.unwrap();
    let issue_id: i64 = sqlx::query_scalar(
        "INSERT INTO issue (number, slot, subject, status) \
         VALUES (1, $1, 'Backend Tips #1', 'sending') RETURNING issue_id",
    )
    .bind(at(SLOT))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO issue_item (issue_id, position, kind, tip_id, title, body) \
         SELECT $1, 0, 'tip', tip_id, title, body FROM tip",
    )
    .bind(issue_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(deliveries::fan_out(&mut tx, issue_id).await.unwrap(), 5);
    let purge = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let email = SubscriberEmail::parse("user3@example.com").unwrap();
            subscribers::purge(&pool, &email).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    assert!(purge.await.unwrap(), "user3 was erased");

    let d = deliver::Deliverer::new(pool.clone(), Arc::new(s))
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        crate::helpers::drain(&d, Duration::ZERO),
    )
    .await
    .expect("the run ends");
    assert_eq!(report.finished, vec![1], "{report:?}");
    let c = copies(&server);
    assert_eq!(c.len(), 4, "{c:?}");
    assert!(!c.contains_key("user3@example.com"), "{c:?}");
}

/// A refusal that keeps coming may be about that address after all (a relay's own policy for
/// one recipient): the cool-down sends such a delivery again only while it has been tried
/// fewer than five times, or a few of them at the end of a list would trip the breaker at
/// every cool-down and the issue would never finish. `issue resume`, the operator's call,
/// takes them back all the same.
#[sqlx::test]
async fn a_delivery_tried_five_times_is_not_sent_again_by_the_cooldown(pool: PgPool) {
    use digestif::store::deliveries;
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    let s = settings(&server, "");
    seed(&pool, 30).await;
    let issue = digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    assert_eq!(deliver_all(&pool, &s).await.paused.len(), 1);
    let failed = statuses(&pool).await.get("failed").copied().unwrap_or(0);
    sqlx::query("UPDATE delivery SET attempts = 5 WHERE status = 'failed'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE issue SET paused_until = now()")
        .execute(&pool)
        .await
        .unwrap();
    let cooled = deliveries::resume_cooled(&pool, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(cooled, vec![1]);
    assert_eq!(statuses(&pool).await.get("failed"), Some(&failed));

    // Sending again, not paused: the operator's resume still takes them back.
    let requeued = deliveries::resume(&pool, issue.issue_id).await.unwrap();
    assert_eq!(requeued, Some(failed as u64));
    // And with nothing refused left, an issue that is not paused is not resumed.
    assert_eq!(
        deliveries::resume(&pool, issue.issue_id).await.unwrap(),
        None
    );
}
