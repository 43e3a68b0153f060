//! Several relays (`[[smtp.relays]]`) against real SMTP servers over TCP: failover when one
//! goes away mid-issue, a pause when every one is gone, per-relay counts, and each relay's own
//! rate ceiling held across two processes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use digestif::config::Settings;
use digestif::digest;
use sqlx::PgPool;

use crate::helpers::{Digestif, at, deliver_all, seed};
use crate::smtp_server::{DataAction, Policy, SmtpServer};

const SLOT: &str = "2026-11-30T08:00:00Z";

/// Two relays, `a` and `b`, with `extra` TOML after each (`extra_a`, `extra_b`).
fn toml(a: &SmtpServer, b: &SmtpServer, extra_a: &str, extra_b: &str) -> String {
    format!(
        "[delivery]\ntransport = \"smtp\"\nconcurrency = 4\nbatch_size = 20\nretry_base = \"1s\"\n\
         lease = \"5s\"\ngive_up_after = \"1h\"\n[smtp]\ntimeout = \"2s\"\n\
         [[smtp.relays]]\nname = \"a\"\nurl = \"{}\"\n{extra_a}\n\
         [[smtp.relays]]\nname = \"b\"\nurl = \"{}\"\n{extra_b}\n",
        a.url(),
        b.url()
    )
}

/// Copies each recipient got, over every server.
fn copies(servers: &[&SmtpServer]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in servers {
        for a in s.accepted() {
            *m.entry(a.rcpt).or_default() += 1;
        }
    }
    m
}

#[sqlx::test]
async fn a_relay_that_goes_away_mid_issue_leaves_every_message_to_the_other_once(pool: PgPool) {
    let a = SmtpServer::start(Policy::default().delay(Duration::from_millis(20))).await;
    let b = SmtpServer::start(Policy::default().delay(Duration::from_millis(20))).await;
    let s = Settings::from_toml(&toml(&a, &b, "", "")).unwrap();
    seed(&pool, 200).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let taken_by_a = a.accepted_count();
    let run = tokio::spawn({
        let (pool, s) = (pool.clone(), s.clone());
        async move { deliver_all(&pool, &s, Duration::from_secs(5)).await }
    });
    crate::helpers::wait_for(
        "relay a to take 20 messages",
        Duration::from_secs(30),
        || {
            let n = taken_by_a();
            async move { (n >= 20).then_some(()) }
        },
    )
    .await;
    a.go_down();
    let report = run.await.unwrap();

    let copies = copies(&[&a, &b]);
    assert_eq!(copies.len(), 200, "{report:?}");
    assert!(
        copies.values().all(|n| *n == 1),
        "a recipient got two copies"
    );
    assert!(report.paused.is_empty(), "{report:?}");
    assert_eq!(report.outcomes.sent, 200, "{report:?}");
    assert_eq!(
        report.outcomes.deferred, 0,
        "failed over at once, not retried later"
    );
    // The database says which relay carried each message, and `issue status` shows it.
    let by_relay: HashMap<String, i64> =
        sqlx::query_as("SELECT relay, count(*) FROM delivery WHERE status = 'sent' GROUP BY relay")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(by_relay["a"], a.accepted().len() as i64);
    assert_eq!(by_relay["b"], b.accepted().len() as i64);
    let status = Digestif::new(&pool)
        .ok(&["issue", "status", "1", "--format", "json"])
        .stdout();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["relays"]["b"]["sent"], by_relay["b"], "{status}");
    let web = crate::web::App::start(&pool, "").await;
    let metrics = web.request("GET", "/metrics", None).await.body;
    for relay in ["a", "b"] {
        let line = format!(
            "digestif_relay_deliveries{{relay=\"{relay}\",status=\"sent\"}} {}",
            by_relay[relay]
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[sqlx::test]
async fn with_every_relay_gone_the_issue_pauses_and_says_why(pool: PgPool) {
    let a = SmtpServer::start(Policy::default()).await;
    let b = SmtpServer::start(Policy::default()).await;
    let s = Settings::from_toml(&toml(&a, &b, "", "")).unwrap();
    a.go_down();
    b.go_down();
    seed(&pool, 100).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s, Duration::ZERO).await;
    assert_eq!(report.paused.len(), 1, "{report:?}");
    assert_eq!(report.outcomes.sent, 0);
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, status_reason FROM issue")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "paused");
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("connection or policy"), "{reason}");
    let gone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery WHERE status IN ('failed', 'bounced', 'sent')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gone, 0, "nothing is given up on: it waits for the relays");
}

/// Each relay's ceiling is shared through the database: two `issue send` processes together
/// stay under it on each relay.
#[sqlx::test]
async fn each_relays_own_ceiling_holds_across_two_processes(pool: PgPool) {
    let a = SmtpServer::start(Policy::default()).await;
    let b = SmtpServer::start(Policy::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("digestif.toml");
    std::fs::write(
        &config,
        toml(&a, &b, "rate_per_second = 10", "rate_per_second = 10"),
    )
    .unwrap();
    let s = Settings::from_toml(&std::fs::read_to_string(&config).unwrap()).unwrap();
    seed(&pool, 120).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let d = Digestif::new(&pool).env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING);
    let cfg = config.to_str().unwrap();
    let started = Instant::now();
    let args = ["--config", cfg, "issue", "send"];
    let (one, two) = tokio::join!(d.run_async(&args), d.run_async(&args));
    assert!(one.output.status.success(), "{one}");
    assert!(two.output.status.success(), "{two}");
    let took = started.elapsed();
    let copies = copies(&[&a, &b]);
    assert_eq!(copies.len(), 120);
    assert!(copies.values().all(|n| *n == 1));
    // 120 messages at 10/s on each of two relays: at least about 6 s, whoever sends.
    assert!(took >= Duration::from_millis(5_500), "took {took:?}");
    for (name, server) in [("a", &a), ("b", &b)] {
        let mut times: Vec<Instant> = (1..=120)
            .flat_map(|i| server.rcpt_times(&format!("user{i}@example.com")))
            .collect();
        times.sort();
        if times.len() < 2 {
            continue;
        }
        let span = times[times.len() - 1] - times[0];
        let rate = (times.len() - 1) as f64 / span.as_secs_f64();
        assert!(
            rate <= 11.0,
            "relay {name}: {rate:.1} messages/s over {span:?}"
        );
    }
}

/// A claim is a promise to send soon: the subscriber's status it read is the one checked before
/// sending. Under relays' own ceilings (and no `delivery.rate_*`), a claim took `batch_size`
/// rows whatever those ceilings let out, so the last of them waited minutes (hours under an
/// hourly ceiling) in the relays' pacers, and whoever unsubscribed meanwhile was still mailed.
#[sqlx::test]
async fn under_relay_ceilings_a_claim_takes_no_more_than_they_let_out_soon(pool: PgPool) {
    let a = SmtpServer::start(Policy::default()).await;
    let b = SmtpServer::start(Policy::default()).await;
    let s =
        Settings::from_toml(&toml(&a, &b, "rate_per_second = 2", "rate_per_second = 2")).unwrap();
    seed(&pool, 30).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let run = tokio::spawn({
        let (pool, s) = (pool.clone(), s.clone());
        async move { deliver_all(&pool, &s, Duration::from_secs(5)).await }
    });
    let (taken_a, taken_b) = (a.accepted_count(), b.accepted_count());
    crate::helpers::wait_for("the first message", Duration::from_secs(20), || {
        let n = taken_a() + taken_b();
        async move { (n > 0).then_some(()) }
    })
    .await;
    // Everyone unsubscribes once the first message is out.
    sqlx::query("UPDATE subscriber SET status = 'unsubscribed'")
        .execute(&pool)
        .await
        .unwrap();
    let report = run.await.unwrap();
    let copies = copies(&[&a, &b]);
    // The first claim: 2.5 s (half the 5 s lease) at 2 + 2 messages a second.
    assert!(
        copies.len() <= 10,
        "{} sent after everyone unsubscribed: {report:?}",
        copies.len()
    );
    assert_eq!(
        report.outcomes.skipped as usize,
        30 - copies.len(),
        "{report:?}"
    );
}

/// `doctor` checks every relay and names the one that does not answer.
#[sqlx::test]
async fn doctor_checks_each_relay(pool: PgPool) {
    let a = SmtpServer::start(Policy::default()).await;
    let b = SmtpServer::start(Policy::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("digestif.toml");
    std::fs::write(&config, toml(&a, &b, "", "weight = 3")).unwrap();
    let cfg = config.to_str().unwrap();
    let web = crate::web::App::start(&pool, "").await;
    let d = Digestif::new(&pool).links_to(&web);
    let ok = d.run_async(&["--config", cfg, "doctor"]).await;
    assert!(
        ok.stdout().contains("smtp: 2 relays connected (a, b)"),
        "{ok}"
    );
    b.go_down();
    let down = d.run_async(&["--config", cfg, "doctor"]).await;
    assert!(!down.output.status.success(), "{down}");
    assert!(down.stdout().contains("relay b"), "{down}");

    // Two relays by one name, or a weight of 0, are refused at start-up.
    std::fs::write(
        &config,
        toml(&a, &b, "", "").replace("name = \"b\"", "name = \"a\""),
    )
    .unwrap();
    Digestif::new(&pool).config_fails(
        &["--config", cfg, "schedule", "next"],
        "config: smtp.relays[2].name: 'a' names two relays",
    );
    std::fs::write(&config, toml(&a, &b, "weight = 0", "")).unwrap();
    Digestif::new(&pool).config_fails(
        &["--config", cfg, "schedule", "next"],
        "smtp.relays[1].weight",
    );
}

/// A relay that goes silent after the final dot may have the message: it is not sent again
/// through the other relay at once (two copies), but waits for the normal retry.
#[sqlx::test]
async fn silence_after_the_final_dot_is_not_failed_over(pool: PgPool) {
    not_failed_over(pool, DataAction::Stall).await;
}

/// Nor does a relay that answers the final dot with a 3xx, which is neither "taken" nor
/// "refused".
#[sqlx::test]
async fn a_3xx_to_the_final_dot_is_not_failed_over(pool: PgPool) {
    not_failed_over(pool, DataAction::Reply("354 3.0.0 go ahead")).await;
}

async fn not_failed_over(pool: PgPool, after_the_dot: DataAction) {
    let (report, _a, b) =
        one_message_to_a_first(&pool, Policy::default().data(move |_, _| after_the_dot)).await;
    assert_eq!(report.outcomes.deferred, 1, "{report:?}");
    assert!(b.accepted().is_empty(), "sent again through b at once");
    assert_eq!(
        status_and_relay(&pool).await,
        ("deferred".into(), Some("a".into()))
    );
}

/// One subscriber's message through `a` (following `policy`), which gets everything first
/// (weight), and `b`, there to fail over to.
async fn one_message_to_a_first(
    pool: &PgPool,
    policy: Policy,
) -> (digestif::digest::deliver::Report, SmtpServer, SmtpServer) {
    let a = SmtpServer::start(policy).await;
    let b = SmtpServer::start(Policy::default()).await;
    let s = Settings::from_toml(&toml(&a, &b, "weight = 1000", "")).unwrap();
    seed(pool, 1).await;
    digest::create_issue(pool, &s, at(SLOT)).await.unwrap();
    (deliver_all(pool, &s, Duration::ZERO).await, a, b)
}

/// The one delivery's status, and the relay that had the last word on it.
async fn status_and_relay(pool: &PgPool) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, relay FROM delivery")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A relay that answers DATA with 250 instead of 354 has not got the message (it was never
/// sent to it): the other relay gets it at once.
#[sqlx::test]
async fn a_relay_out_of_protocol_before_the_message_is_failed_over(pool: PgPool) {
    let policy = Policy::default().data(|_, _| DataAction::NotReady("250 2.0.0 ok"));
    let (report, a, b) = one_message_to_a_first(&pool, policy).await;
    assert_eq!(
        (report.outcomes.sent, report.outcomes.deferred),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(copies(&[&a, &b]).values().sum::<usize>(), 1);
    assert_eq!(
        status_and_relay(&pool).await,
        ("sent".into(), Some("b".into()))
    );
}

/// A relay that closes its connections after two messages (a 421 to the next MAIL) keeps
/// its messages: the one that finds a pooled connection closed goes on a new connection to
/// it, not to the other relay, and is not deferred.
#[sqlx::test]
async fn a_relay_closing_its_connections_keeps_its_messages(pool: PgPool) {
    let a = SmtpServer::start(
        Policy::default().close_after(2, Some("421 4.7.0 too many messages, closing")),
    )
    .await;
    let b = SmtpServer::start(Policy::default()).await;
    let s = Settings::from_toml(&toml(&a, &b, "weight = 1000", "")).unwrap();
    seed(&pool, 20).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let report = deliver_all(&pool, &s, Duration::ZERO).await;
    assert_eq!(
        (report.outcomes.sent, report.outcomes.deferred),
        (20, 0),
        "{report:?}"
    );
    assert!(a.sessions() >= 10, "{} connections to a", a.sessions());
    let mails = a.mail_commands();
    assert!(
        mails > 20,
        "no pooled connection met the 421: {mails} MAILs"
    );
    // b's weight of 1 against a's 1,000 may give it one message by choice, not more.
    assert!(
        b.accepted().len() <= 1,
        "failed over to b: {}",
        b.accepted().len()
    );
}

/// A relay that takes long to refuse: by then the claim may have passed to another worker
/// (this one's lease ran out); the message is not handed to the next relay without asking
/// again whether the claim is still this worker's.
#[sqlx::test]
async fn a_failover_asks_again_whether_the_claim_is_still_ours(pool: PgPool) {
    let a = SmtpServer::start(
        Policy::default()
            .delay(Duration::from_millis(1500))
            .data(|_, _| DataAction::Reply("451 4.3.0 try another relay")),
    )
    .await;
    let b = SmtpServer::start(Policy::default()).await;
    let s = Settings::from_toml(&toml(&a, &b, "weight = 1000", "")).unwrap();
    seed(&pool, 1).await;
    digest::create_issue(&pool, &s, at(SLOT)).await.unwrap();
    let run = tokio::spawn({
        let (pool, s) = (pool.clone(), s.clone());
        async move { deliver_all(&pool, &s, Duration::ZERO).await }
    });
    // While `a` makes up its mind, another worker takes the delivery over.
    crate::helpers::wait_for("the message to reach a", Duration::from_secs(10), || {
        let seen = a.commands().iter().any(|c| c == "DATA");
        async move { seen.then_some(()) }
    })
    .await;
    sqlx::query("UPDATE delivery SET claimed_by = claimed_by + 1000")
        .execute(&pool)
        .await
        .unwrap();
    let report = run.await.unwrap();
    assert!(
        b.accepted().is_empty(),
        "handed to b without asking: {report:?}"
    );
    assert_eq!(report.outcomes.sent, 0, "{report:?}");
}
