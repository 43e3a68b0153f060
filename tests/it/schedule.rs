//! `digestif run` and `digestif serve` as real processes: idempotency, catch-up within the
//! grace window, graceful shutdown on SIGTERM, and two `serve` processes sharing one issue.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike, Utc};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{db_url, http_get, seed, sigterm};
use crate::smtp_server::{Policy, SmtpServer};

/// A crontab line for the minute `t` (UTC) that fires once a year.
fn cron_at(t: chrono::DateTime<Utc>) -> String {
    format!("{} {} {} {} *", t.minute(), t.hour(), t.day(), t.month())
}

fn digestif(
    pool: &PgPool,
    server: &SmtpServer,
    cron: &str,
    args: &[&str],
) -> tokio::process::Command {
    digestif_under(&[], pool, server, cron, args)
}

/// [`digestif`] run by `wrapper` (e.g. `faketime -f -1h`).
fn digestif_under(
    wrapper: &[&str],
    pool: &PgPool,
    server: &SmtpServer,
    cron: &str,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(crate::helpers::program_under(wrapper));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("DATABASE_URL", db_url(pool))
        .env("DIGESTIF_SCHEDULE__CRON", cron)
        .env("DIGESTIF_SCHEDULE__TIMEZONE", "UTC")
        .env("DIGESTIF_SCHEDULE__GRACE", "6h")
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "2")
        .env("DIGESTIF_DELIVERY__BATCH_SIZE", "20")
        .env("DIGESTIF_DELIVERY__LEASE", "5s")
        .env("DIGESTIF_DELIVERY__SHUTDOWN_GRACE", "5s")
        .env("DIGESTIF_SMTP__URL", server.url())
        .env("DIGESTIF_SMTP__TIMEOUT", "5s")
        .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn copies(server: &SmtpServer) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for a in server.accepted() {
        *m.entry(a.rcpt).or_default() += 1;
    }
    m
}

async fn issue_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn two_runs_at_once_make_one_issue_and_one_copy_each(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 200).await;
    let cron = cron_at(digestif::clock::now() - chrono::Duration::hours(1));
    let a = digestif(&pool, &server, &cron, &["run"]).output();
    let b = digestif(&pool, &server, &cron, &["run"]).output();
    let (a, b) = tokio::join!(a, b);
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(issue_count(&pool).await, 1);
    let c = copies(&server);
    assert_eq!(c.len(), 200);
    assert!(c.values().all(|&n| n == 1), "a subscriber got two copies");
    // And once more: nothing new.
    let again = digestif(&pool, &server, &cron, &["run"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("sent 0, deferred 0, bounced 0, failed 0, skipped 0"),
        "{stdout}"
    );
    assert_eq!(server.accepted().len(), 200);
    assert_eq!(issue_count(&pool).await, 1);
}

/// A fresh install's first `run` must not warn about a slot from before it existed.
#[sqlx::test]
async fn a_slot_from_before_the_first_migrate_is_not_missed(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 3).await;
    installed(&pool, digestif::clock::now() - chrono::Duration::hours(1)).await;
    let old = cron_at(digestif::clock::now() - chrono::Duration::days(3));
    let out = digestif(&pool, &server, &old, &["run"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("missed") && !stderr.contains("missed"),
        "{stdout}{stderr}"
    );
    assert_eq!(issue_count(&pool).await, 0);
    assert!(server.accepted().is_empty());
}

/// Pretends `digestif migrate` first ran at `at`.
async fn installed(pool: &PgPool, at: chrono::DateTime<chrono::Utc>) {
    sqlx::query("UPDATE _sqlx_migrations SET installed_on = $1")
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test]
async fn a_slot_two_hours_late_is_sent_and_one_three_days_late_is_reported(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 3).await;
    installed(&pool, "2000-01-01T00:00:00Z".parse().unwrap()).await;
    let old = cron_at(digestif::clock::now() - chrono::Duration::days(3));
    let out = digestif(&pool, &server, &old, &["run"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("missed the slot") && stdout.contains("not sent"),
        "{stdout}"
    );
    assert_eq!(issue_count(&pool).await, 0);
    assert!(server.accepted().is_empty());

    let recent = cron_at(digestif::clock::now() - chrono::Duration::hours(2));
    let out = digestif(&pool, &server, &recent, &["run"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(issue_count(&pool).await, 1);
    assert_eq!(server.accepted().len(), 3);
}

/// An hourly schedule and a machine that was off from 06:05 to 09:05: the run at boot sends
/// 09:00's issue (which holds the articles of the hours between) and says that 07:00 and 08:00
/// were missed, failing with `--fail-on-missed` as for any missed slot. It used to say nothing
/// of them and exit 0.
#[sqlx::test]
async fn slots_missed_before_the_due_one_are_reported(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 3).await;
    installed(&pool, "2000-01-01T00:00:00Z".parse().unwrap()).await;
    let run = |now: &'static str, args: &'static [&'static str]| {
        let mut cmd = digestif(&pool, &server, "0 * * * *", args);
        cmd.env("DIGESTIF_NOW", now);
        cmd
    };
    let out = run("2026-11-30T06:05:00Z", &["run", "--fail-on-missed"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("missed"), "{stdout}");

    let out = run("2026-11-30T09:05:00Z", &["run", "--fail-on-missed"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    let missed = stdout
        .lines()
        .find(|l| l.contains("missed"))
        .unwrap_or_else(|| panic!("no missed line: {stdout}"));
    for slot in ["2026-11-30 07:00", "2026-11-30 08:00"] {
        assert!(missed.contains(slot), "{slot} not named: {missed}");
    }
    assert!(
        !missed.contains("09:00") && !missed.contains("06:00"),
        "{missed}"
    );
    assert_eq!(issue_count(&pool).await, 2);
}

#[sqlx::test]
async fn sigterm_mid_send_exits_cleanly_and_a_restart_sends_the_rest_once(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(20))).await;
    seed(&pool, 300).await;
    let cron = cron_at(digestif::clock::now() - chrono::Duration::hours(1));
    let child = digestif(&pool, &server, &cron, &["run"]).spawn().unwrap();
    let started = Instant::now();
    while server.accepted().len() < 30 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sigterm(&child);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("run stops after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Stopping cleanly means the messages in flight finished: the grace period never ran out.
    assert!(
        stderr.contains("SIGTERM: finishing messages in flight"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not finish within"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped on request before issue #1 was finished"),
        "{stdout}"
    );
    let first = server.accepted().len();
    assert!(first < 300, "SIGTERM came too late to test anything");
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery WHERE status = 'sending'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leased, 0, "unstarted claims were given back");

    let out = digestif(&pool, &server, &cron, &["run"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let c = copies(&server);
    assert_eq!(c.len(), 300);
    assert!(
        c.values().all(|&n| n == 1),
        "a graceful stop must not cause a duplicate"
    );
}

/// Reads stderr until the "listening on" line and returns the address.
pub(crate) async fn listening_addr(
    child: &mut tokio::process::Child,
) -> (String, tokio::task::JoinHandle<String>) {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("serve starts")
            .unwrap()
            .expect("serve printed nothing");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    let rest = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    (addr, rest)
}

fn sent_by(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("digestif_attempts_total{outcome=\"sent\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[sqlx::test]
async fn two_serve_processes_share_one_issue_when_the_slot_fires(pool: PgPool) {
    seed(&pool, 1500).await;
    // The next minute, or the one after if this one is nearly over.
    let now = digestif::clock::now();
    let fire = now + chrono::Duration::seconds(if now.second() > 45 { 120 } else { 60 });
    let cron = cron_at(fire);
    // Each process talks to its own SMTP server, so the servers tell who sent what; the first
    // one's server holds its replies until the second has delivered one, so both take part
    // however the two processes are scheduled.
    let server_b = SmtpServer::start(Policy::default().delay(Duration::from_millis(2))).await;
    let server_a = SmtpServer::start(
        Policy::default()
            .delay(Duration::from_millis(2))
            .hold_until({
                let sent_by_b = server_b.accepted_count();
                move || sent_by_b() > 0
            }),
    )
    .await;
    let serve = |server: &SmtpServer| {
        let mut cmd = digestif(&pool, server, &cron, &["serve"]);
        // Above the server's longest hold: a held reply is slow, not lost.
        cmd.env("DIGESTIF_SMTP__TIMEOUT", "30s");
        cmd
    };
    let mut a = serve(&server_a).spawn().unwrap();
    let mut b = serve(&server_b).spawn().unwrap();
    let (addr_a, _log_a) = listening_addr(&mut a).await;
    let (addr_b, _log_b) = listening_addr(&mut b).await;
    assert!(
        http_get(&addr_a, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let sent = || server_a.accepted().len() + server_b.accepted().len();
    let deadline = Instant::now() + Duration::from_secs(200);
    while sent() < 1500 {
        assert!(Instant::now() < deadline, "only {} sent", sent());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(issue_count(&pool).await, 1);
    let mut c = copies(&server_a);
    for (rcpt, n) in copies(&server_b) {
        *c.entry(rcpt).or_default() += n;
    }
    assert_eq!(c.len(), 1500);
    assert!(c.values().all(|&n| n == 1), "a subscriber got two copies");

    // A server's 250 comes before the process records it: wait until both have.
    let (ma, mb) = crate::helpers::wait_for(
        "the metrics to count every message",
        Duration::from_secs(30),
        || async {
            let (ma, mb) = (
                http_get(&addr_a, "/metrics").await,
                http_get(&addr_b, "/metrics").await,
            );
            (sent_by(&ma) + sent_by(&mb) == 1500 && ma.contains("digestif_queue_depth 0"))
                .then_some((ma, mb))
        },
    )
    .await;
    let (sa, sb) = (sent_by(&ma), sent_by(&mb));
    assert_eq!(
        (sa, sb),
        (
            server_a.accepted().len() as u64,
            server_b.accepted().len() as u64
        ),
        "{ma}\n{mb}"
    );
    assert!(
        sa > 0 && sb > 0,
        "both processes delivered some: {sa} and {sb}"
    );
    assert!(ma.contains("\ndigestif_last_issue_number 1\n"), "{ma}");

    sigterm(&a);
    sigterm(&b);
    for child in [a, b] {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .expect("stops within the grace period")
            .unwrap()
            .status;
        assert!(status.success(), "serve exits 0 on SIGTERM");
    }
}

/// This machine's clock an hour behind the database's (a host whose NTP has failed): a retry's
/// time was taken on this clock and compared with the database's `now()`, so it was already due
/// and every 4xx was retried at once, five or six times in a row, until the doubling delay
/// outgrew the skew; a breaker pause ended before it began. Times are now taken on the
/// database's clock. Needs Debian's faketime (`scripts/test` installs it).
#[sqlx::test]
async fn a_clock_behind_the_database_does_not_retry_at_once(pool: PgPool) {
    if !crate::helpers::faketime_installed() {
        return;
    }
    let server = SmtpServer::start(
        Policy::default().rcpt(|_, _| Some("451 4.7.1 greylisted, try again later".to_owned())),
    )
    .await;
    seed(&pool, 2).await;
    // Two hours before this clock (DIGESTIF_NOW when CI sets it): due, an hour ago, for the
    // process an hour behind.
    let cron = cron_at(digestif::clock::now() - chrono::Duration::hours(2));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        digestif_under(&["faketime", "-f", "-1h"], &pool, &server, &cron, &["run"])
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output(),
    )
    .await
    .expect("run under faketime ends")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.rcpt_times("user1@example.com").len(),
        1,
        "retried at once: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let later: bool = sqlx::query_scalar(
        "SELECT bool_and(next_attempt_at > now() + interval '1 minute') FROM delivery",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        later,
        "the retry is due on the database's clock, minutes from now"
    );
}
