//! Claims have an owner (docs/ARCHITECTURE.md §4.7): a live worker's claims are never taken
//! over however slow its batch, and a dead worker's come back at once, as real processes
//! against a real Postgres and a real SMTP server.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::helpers::{MONDAY_MORNING, db_url, http_get, seed};
use crate::schedule::listening_addr;
use crate::smtp_server::{Policy, SmtpServer};

/// `digestif ARGS` against `server` on the default schedule at its Monday slot, with `envs`.
fn digestif(
    pool: &PgPool,
    server: &SmtpServer,
    args: &[&str],
    envs: &[(&str, &str)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_digestif"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("DATABASE_URL", db_url(pool))
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", server.url())
        .env("DIGESTIF_SMTP__TIMEOUT", "10s")
        .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Copies per recipient, and whether every copy of one recipient has the same Message-ID.
fn copies(server: &SmtpServer) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for a in server.accepted() {
        m.entry(a.rcpt).or_default().push(a.message_id);
    }
    m
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The "sent N," a run printed.
fn reported_sent(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .split("sent ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'sent N,' in {}", String::from_utf8_lossy(&out.stdout)))
}

async fn wait_for(server: &SmtpServer, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while server.accepted().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} accepted",
            server.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_one_copy_each(server: &SmtpServer, n: usize) {
    let c = copies(server);
    assert_eq!(c.len(), n, "every subscriber got the issue");
    let doubled: Vec<_> = c.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(doubled.is_empty(), "sent twice: {doubled:?}");
}

#[sqlx::test]
async fn a_slow_batch_outliving_its_lease_is_never_taken_over_by_a_second_sender(pool: PgPool) {
    // One message a second, one connection, a lease of three seconds: the first sender's claim
    // of ten deliveries takes more than three leases to send. (Three, not two: the check before
    // each dot asks for a third of the lease left, and a heartbeat late by a loaded machine's
    // moment must not make it say no.)
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(1000))).await;
    seed(&pool, 10).await;
    let envs = [
        ("DIGESTIF_DELIVERY__LEASE", "3s"),
        ("DIGESTIF_DELIVERY__CONCURRENCY", "1"),
        ("DIGESTIF_DELIVERY__BATCH_SIZE", "10"),
    ];
    let first = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .spawn()
        .unwrap();
    wait_for(&server, 3, Duration::from_secs(30)).await;
    let second = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .output()
        .await
        .unwrap();
    let first = first.wait_with_output().await.unwrap();
    for out in [&first, &second] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_one_copy_each(&server, 10);
    assert_eq!(reported_sent(&first) + reported_sent(&second), 10);
    // A heartbeat that keeps time leaves every check a yes (two thirds of the lease or more).
    for out in [&first, &second] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("claim lost"), "{stderr}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM delivery WHERE status = 'sent'").await,
        10
    );
}

#[sqlx::test]
async fn a_rate_limited_send_and_a_second_one_started_mid_way_send_each_copy_once(pool: PgPool) {
    // The field report: two messages a second, a five-second lease, a second `issue send --now`
    // seven seconds in.
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 30).await;
    let envs = [
        ("DIGESTIF_DELIVERY__RATE_PER_SECOND", "2"),
        ("DIGESTIF_DELIVERY__LEASE", "5s"),
    ];
    let first = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .spawn()
        .unwrap();
    wait_for(&server, 12, Duration::from_secs(30)).await;
    let second = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .output()
        .await
        .unwrap();
    let first = first.wait_with_output().await.unwrap();
    assert!(first.status.success() && second.status.success());
    assert_one_copy_each(&server, 30);
    assert_eq!(reported_sent(&first) + reported_sent(&second), 30);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM delivery WHERE status = 'sent'").await,
        30
    );
}

#[sqlx::test]
async fn overlapping_timer_runs_on_a_slow_rate_limited_issue_send_each_copy_once(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 30).await;
    let envs = [
        ("DIGESTIF_DELIVERY__RATE_PER_SECOND", "5"),
        ("DIGESTIF_DELIVERY__LEASE", "2s"),
    ];
    // A timer firing `digestif run` while the previous run is still sending.
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(digestif(&pool, &server, &["run"], &envs).spawn().unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for run in runs {
        let out = run.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A last run after all of them picks up anything left.
    let last = digestif(&pool, &server, &["run"], &envs)
        .output()
        .await
        .unwrap();
    assert!(last.status.success());
    assert_one_copy_each(&server, 30);
    assert_eq!(count(&pool, "SELECT count(*) FROM issue").await, 1);
}

#[sqlx::test]
async fn after_a_kill_9_with_the_default_lease_a_restart_sends_the_rest_within_30_s(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(2))).await;
    // Small enough that the 30 s bound measures how soon the claims come back, not how fast a
    // debug build sends on a loaded machine.
    seed(&pool, 400).await;
    let envs = [("DIGESTIF_DELIVERY__CONCURRENCY", "4")];
    let mut child = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .spawn()
        .unwrap();
    wait_for(&server, 150, Duration::from_secs(120)).await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    let claimed = count(
        &pool,
        "SELECT count(*) FROM delivery WHERE status = 'sending'",
    )
    .await;
    assert!(claimed > 0, "the killed worker held claims");

    let restarted = Instant::now();
    let out = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .output()
        .await
        .unwrap();
    let took = restarted.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = copies(&server);
    assert_eq!(c.len(), 400, "nobody lost");
    assert!(
        took < Duration::from_secs(30),
        "the rest took {took:?} after the restart"
    );
    let extra: usize = c.values().map(|ids| ids.len() - 1).sum();
    assert!(extra <= 4, "{extra} extra copies with concurrency 4");
    for (rcpt, ids) in &c {
        assert!(ids.iter().all(|id| id == &ids[0]), "{rcpt}: {ids:?}");
    }
    let status = digestif(&pool, &server, &["issue", "status", "1"], &envs)
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!(
            "reclaimed from workers that died or ran out their lease: {claimed}"
        )),
        "{status}"
    );
}

#[sqlx::test]
async fn when_one_of_two_serve_processes_is_killed_the_other_finishes_within_30_s(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(2))).await;
    seed(&pool, 400).await;
    let envs = [
        ("DIGESTIF_DELIVERY__CONCURRENCY", "2"),
        ("DIGESTIF_DELIVERY__BATCH_SIZE", "50"),
    ];
    let mut a = digestif(&pool, &server, &["serve"], &envs).spawn().unwrap();
    let mut b = digestif(&pool, &server, &["serve"], &envs).spawn().unwrap();
    let (_addr_a, _log_a) = listening_addr(&mut a).await;
    let (addr_b, _log_b) = listening_addr(&mut b).await;
    // Killed while it holds claims (the first to start may have sent a hundred before the
    // other claimed anything).
    let pid = a.id().expect("running") as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delivery d JOIN worker w ON w.worker_id = d.claimed_by \
             WHERE d.status = 'sending' AND w.pid = $1",
        )
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the first process never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.start_kill().expect("SIGKILL");
    a.wait().await.expect("reap");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    while copies(&server).len() < 400 {
        assert!(
            Instant::now() < deadline,
            "{} of 400",
            copies(&server).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra: usize = copies(&server).values().map(|ids| ids.len() - 1).sum();
    assert!(extra <= 2, "{extra} extra copies with concurrency 2");
    let metrics = http_get(&addr_b, "/metrics").await;
    let reclaimed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("digestif_claims_reclaimed_total "))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(reclaimed > 0, "{metrics}");
}

#[sqlx::test]
async fn a_worker_claims_no_more_than_its_rate_ceiling_lets_out_in_a_minute(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 300).await;
    // Ten a minute, and the default batch of 200.
    let envs = [("DIGESTIF_DELIVERY__RATE_PER_HOUR", "600")];
    let mut child = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .spawn()
        .unwrap();
    let claimed = || async {
        count(
            &pool,
            "SELECT count(*) FROM delivery WHERE status = 'sending'",
        )
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while claimed().await == 0 {
        assert!(Instant::now() < deadline, "nothing was claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(claimed().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reap");
    assert!(
        (1..=10).contains(&most),
        "{most} deliveries claimed at once under a ceiling of 10 a minute"
    );
}

/// README: "`delivery.rate_per_second` and `rate_per_hour` are ceilings shared by every process
/// on the database". Two senders at once at 10 a second take as long as one would.
#[sqlx::test]
async fn the_rate_ceiling_is_shared_by_two_processes(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 40).await;
    // Small claims, so both hold some while they pace.
    let envs = [
        ("DIGESTIF_DELIVERY__RATE_PER_SECOND", "10"),
        ("DIGESTIF_DELIVERY__BATCH_SIZE", "5"),
    ];
    let a = digestif(&pool, &server, &["issue", "send", "--now"], &envs).output();
    let b = digestif(&pool, &server, &["issue", "send", "--now"], &envs).output();
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.status.success() && b.status.success());
    assert_eq!(reported_sent(&a) + reported_sent(&b), 40);
    assert!(
        reported_sent(&a) > 0 && reported_sent(&b) > 0,
        "both took part"
    );
    assert_one_copy_each(&server, 40);
    let times: Vec<Instant> = (1..=40)
        .flat_map(|i| server.rcpt_times(&format!("user{i}@example.com")))
        .collect();
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    // 40 messages 100 ms apart: 3.9 s from the first to the last, whoever sends them.
    assert!(
        span >= Duration::from_millis(3_700),
        "40 messages in {span:?}"
    );
}

#[sqlx::test]
async fn the_hourly_ceiling_spreads_messages_over_the_hour(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 6).await;
    // 7,200 an hour: one every half second.
    let envs = [("DIGESTIF_DELIVERY__RATE_PER_HOUR", "7200")];
    let out = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let times: Vec<Instant> = (1..=6)
        .flat_map(|i| server.rcpt_times(&format!("user{i}@example.com")))
        .collect();
    assert_eq!(times.len(), 6);
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(2_300),
        "6 messages in {span:?}"
    );
}

/// Worker locks count in their own database only: a session of another database on the same
/// server (staging beside production, another test) holding the same worker id's lock does not
/// make a dead worker here look alive, so its claims still come back at once.
#[sqlx::test]
async fn a_lock_in_another_database_does_not_keep_a_dead_workers_claims(pool: PgPool) {
    use digestif::store::deliveries::{WORKER_LOCK_CLASS, claim, register_worker};
    use sqlx::Connection;
    seed(&pool, 10).await;
    let s = digestif::config::Settings::from_toml("").unwrap();
    digestif::digest::create_issue(&pool, &s, crate::helpers::at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    // A worker claims everything for an hour, then its session ends (it died).
    let mut dead = pool.acquire().await.unwrap().detach();
    let dead_id = register_worker(&mut dead).await.unwrap();
    assert_eq!(claim(&pool, dead_id, 100, hour).await.unwrap().len(), 10);
    dead.close().await.unwrap();
    // Another database on the same server: a worker there with the same id is alive.
    let o = pool.connect_options();
    let mut elsewhere = sqlx::PgConnection::connect(&format!(
        "postgres://{}@{}:{}/postgres",
        o.get_username(),
        o.get_host(),
        o.get_port()
    ))
    .await
    .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(WORKER_LOCK_CLASS)
        .bind(dead_id)
        .execute(&mut elsewhere)
        .await
        .unwrap();

    let mut next = pool.acquire().await.unwrap().detach();
    let next_id = register_worker(&mut next).await.unwrap();
    let taken = claim(&pool, next_id, 100, hour).await.unwrap();
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(WORKER_LOCK_CLASS)
        .bind(dead_id)
        .execute(&mut elsewhere)
        .await
        .unwrap();
    assert_eq!(
        taken.len(),
        10,
        "the dead worker's claims wait for their leases: another database's lock hides its death"
    );
}

/// The issue of the Monday slot `day` (YYYY-MM-DD), on the default settings.
async fn issue_of(pool: &PgPool, day: &str) -> digestif::store::issues::IssueRow {
    let s = digestif::config::Settings::from_toml("").unwrap();
    digestif::digest::create_issue(pool, &s, crate::helpers::at(&format!("{day}T08:00:00Z")))
        .await
        .unwrap()
}

/// A live worker's id, registered on a connection of its own (kept open by the caller).
async fn live_worker(pool: &PgPool) -> (sqlx::PgConnection, i32) {
    let mut conn = pool.acquire().await.unwrap().detach();
    let id = digestif::store::deliveries::register_worker(&mut conn)
        .await
        .unwrap();
    (conn, id)
}

/// One delivery claimed for an hour by a live worker (its lock connection, its id), the
/// delivery's key, and the worker's results connection.
async fn one_claim(pool: &PgPool) -> (sqlx::PgConnection, i32, (i64, i64), sqlx::PgConnection) {
    use digestif::store::deliveries::{claim, settle_connection};
    seed(pool, 1).await;
    issue_of(pool, "2026-11-30").await;
    let (lock, w) = live_worker(pool).await;
    let claimed = claim(pool, w, 10, Duration::from_secs(3600)).await.unwrap();
    let key = (claimed[0].issue_id, claimed[0].subscriber_id);
    let results = settle_connection(pool, w).await.unwrap();
    (lock, w, key, results)
}

/// A transaction holding the row of `key` `FOR UPDATE`, as a claim does half-way.
async fn row_locked(pool: &PgPool, key: (i64, i64)) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM delivery WHERE issue_id = $1 AND subscriber_id = $2 FOR UPDATE")
        .bind(key.0)
        .bind(key.1)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Index entries of `delivery` read so far, as this connection's backend has reported them
/// (its pending counts flushed first).
async fn delivery_reads(single: &PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(single)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes \
                 WHERE relname = 'delivery')::bigint \
              + (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
                 WHERE relname = 'delivery')",
    )
    .fetch_one(single)
    .await
    .unwrap()
}

/// Last week's issue, paused by the breaker with 20,000 deliveries ready (and older than this
/// week's), costs a claim of this week's issue nothing: the claim reads this week's rows, not
/// every ready row in the table in time order until it reaches them (which made each claim of
/// a million-subscriber send walk a paused million: 272 ms a claim instead of 4.8 ms).
#[sqlx::test]
async fn a_paused_issues_ready_rows_are_not_read_by_claims_for_another_issue(pool: PgPool) {
    use digestif::store::deliveries::claim;
    // One connection, so every count below is this backend's own.
    let single = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    seed(&single, 50).await;
    let last_week = issue_of(&single, "2026-11-23").await;
    sqlx::query(
        "UPDATE issue SET status = 'paused', status_reason = 'breaker', \
                paused_until = now() + interval '1 day' WHERE issue_id = $1",
    )
    .bind(last_week.issue_id)
    .execute(&single)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery (issue_id, subscriber_id, next_attempt_at) \
         SELECT $1, 1000 + g, now() - interval '1 day' FROM generate_series(1, 20000) g",
    )
    .bind(last_week.issue_id)
    .execute(&single)
    .await
    .unwrap();
    let this_week = issue_of(&single, "2026-11-30").await;

    // Registered on a connection of its own, whose counts are flushed before the first
    // reading so they cannot land inside the measured claim.
    let (mut worker, id) = live_worker(&pool).await;
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut worker)
        .await
        .unwrap();
    let before = delivery_reads(&single).await;
    let taken = claim(&single, id, 10, Duration::from_secs(3600))
        .await
        .unwrap();
    let read = delivery_reads(&single).await - before;

    assert_eq!(taken.len(), 10);
    assert!(taken.iter().all(|c| c.issue_id == this_week.issue_id));
    assert!(
        read < 1_000,
        "one claim of 10 read {read} entries of delivery: the paused issue's 20,000 rows were walked"
    );
}

/// Two issues sending at once: a claim takes the older issue's ready rows first and fills the
/// batch from the newer one's.
#[sqlx::test]
async fn a_claim_takes_the_older_sending_issue_first_and_fills_up_from_the_next(pool: PgPool) {
    use digestif::store::deliveries::claim;
    seed(&pool, 20).await;
    let older = issue_of(&pool, "2026-11-23").await;
    // The older issue has three left to send.
    sqlx::query(
        "UPDATE delivery SET status = 'sent', sent_at = now() \
         WHERE issue_id = $1 AND subscriber_id > 3",
    )
    .bind(older.issue_id)
    .execute(&pool)
    .await
    .unwrap();
    let newer = issue_of(&pool, "2026-11-30").await;

    let (_worker, id) = live_worker(&pool).await;
    let taken = claim(&pool, id, 10, Duration::from_secs(3600))
        .await
        .unwrap();
    let from = |issue: i64| taken.iter().filter(|c| c.issue_id == issue).count();
    assert_eq!((from(older.issue_id), from(newer.issue_id)), (3, 7));
}

/// Ends `conn`'s session and waits until the server has let it go (its locks with it).
async fn end_session(pool: &PgPool, mut conn: sqlx::PgConnection) {
    use sqlx::Connection;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    crate::helpers::wait_for("the session to end", Duration::from_secs(10), || async {
        (count(pool, &gone).await == 0).then_some(())
    })
    .await;
}

/// A worker whose lock session ends while the process lives on (a dropped connection, a
/// terminated backend: it notices at its next renewal, up to a third of a lease later) keeps
/// its claims for as long as its results connection is open, since that connection holds the
/// same lock. The gate asks "still this worker's?" on that connection, so no other worker can
/// take the claim between that answer and the final dot; before, one did, and both sent.
/// Once both sessions are gone, the claims come back at once.
#[sqlx::test]
async fn a_worker_whose_lock_session_ends_keeps_its_claims_while_its_results_connection_lives(
    pool: PgPool,
) {
    use digestif::store::deliveries::{claim, settle_connection};
    seed(&pool, 10).await;
    issue_of(&pool, "2026-11-30").await;
    let hour = Duration::from_secs(3600);
    let (lock, w1) = live_worker(&pool).await;
    assert_eq!(claim(&pool, w1, 100, hour).await.unwrap().len(), 10);
    let results = settle_connection(&pool, w1).await.unwrap();
    end_session(&pool, lock).await;

    let (_other, w2) = live_worker(&pool).await;
    assert_eq!(
        claim(&pool, w2, 100, hour).await.unwrap().len(),
        0,
        "claims taken from a worker that is still sending"
    );
    end_session(&pool, results).await;
    assert_eq!(
        claim(&pool, w2, 100, hour).await.unwrap().len(),
        10,
        "a gone worker's claims come back at once"
    );
}

/// A worker that lost its lock session between passes may have its row in `worker` cleared by
/// another worker starting meanwhile; when it takes its lock again, the row comes back, so that
/// when it later dies its claims come back at once instead of after their lease.
#[sqlx::test]
async fn a_worker_that_locks_again_after_its_row_was_cleared_is_still_seen_dying(pool: PgPool) {
    use digestif::store::deliveries::{claim, lock_worker};
    seed(&pool, 10).await;
    issue_of(&pool, "2026-11-30").await;
    let hour = Duration::from_secs(3600);
    let (lock, w1) = live_worker(&pool).await;
    end_session(&pool, lock).await;
    // Starting, another worker clears the rows of workers without a lock or claims: w1's.
    let (_third, _) = live_worker(&pool).await;
    let mut again = pool.acquire().await.unwrap().detach();
    lock_worker(&mut again, w1).await.unwrap();
    assert_eq!(claim(&pool, w1, 100, hour).await.unwrap().len(), 10);
    end_session(&pool, again).await;

    let (_next, w2) = live_worker(&pool).await;
    assert_eq!(
        claim(&pool, w2, 100, hour).await.unwrap().len(),
        10,
        "a dead worker's claims wait for their lease"
    );
}

/// Two hard bounces of one subscriber (this week's issue and last week's, both sending)
/// written by one statement count twice: at a threshold of two, the subscriber is suppressed
/// and both bounces are in the event log. One `UPDATE … FROM` changes a row once, however many
/// rows it joins, so the counter went up by one.
#[sqlx::test]
async fn two_hard_bounces_of_one_subscriber_written_together_both_count(pool: PgPool) {
    use digestif::domain::DeliveryStatus;
    use digestif::store::deliveries::{Settled, claim, settle, settle_connection};
    seed(&pool, 1).await;
    issue_of(&pool, "2026-11-23").await;
    issue_of(&pool, "2026-11-30").await;
    let (_lock, w) = live_worker(&pool).await;
    let claimed = claim(&pool, w, 10, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let bounced: Vec<Settled> = claimed
        .iter()
        .map(|c| Settled {
            issue_id: c.issue_id,
            subscriber_id: c.subscriber_id,
            status: DeliveryStatus::Bounced,
            code: Some(550),
            error: Some("550 5.1.1 no such user".into()),
            next_attempt_at: None,
            message_id: None,
            relay: None,
            systemic: false,
        })
        .collect();
    let mut results = settle_connection(&pool, w).await.unwrap();
    let out = settle(&mut results, w, &bounced, &[], 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(out.written.len(), 2);
    let (status, hard): (String, i32) =
        sqlx::query_as("SELECT status, hard_bounces FROM subscriber")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), hard), ("bounced", 2));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM subscriber_event WHERE kind = 'bounced'"
        )
        .await,
        2
    );
}

/// The check before a final dot waits for another worker's claim that has locked the row (one
/// begun while this worker looked dead, say) and answers from what that claim did; before, it
/// read the row as it was and said yes, and both workers sent.
#[sqlx::test]
async fn the_pre_dot_check_waits_for_a_claim_that_locked_the_row_and_sees_it_taken(pool: PgPool) {
    use digestif::store::deliveries::settle;
    let (_lock, w1, key, mut results) = one_claim(&pool).await;
    // Another worker's claim, half-way: the row locked, its new owner not yet written.
    let mut other = row_locked(&pool, key).await;
    let check = tokio::spawn(async move {
        settle(&mut results, w1, &[], &[key], 1, Duration::from_secs(1200))
            .await
            .unwrap()
            .held
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND application_name = 'digestif results' \
                     AND wait_event_type = 'Lock'";
    crate::helpers::wait_for(
        "the check to wait for the claim's row lock",
        Duration::from_secs(10),
        || async {
            assert!(
                !check.is_finished(),
                "the check answered while a claim held the row"
            );
            (count(&pool, waiting).await == 1).then_some(())
        },
    )
    .await;
    sqlx::query(
        "UPDATE delivery SET claimed_by = $3 + 1000 WHERE issue_id = $1 AND subscriber_id = $2",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(w1)
    .execute(&mut *other)
    .await
    .unwrap();
    other.commit().await.unwrap();
    assert_eq!(
        check.await.unwrap(),
        Vec::new(),
        "confirmed a claim taken over"
    );
}

#[sqlx::test]
async fn a_claim_whose_lease_is_nearly_out_at_its_check_is_given_back_and_sent_once(pool: PgPool) {
    // A lease of two minutes: the heartbeat renews every 40 s, so within this test only the
    // leases set below count. Half a minute left is under the third of a lease the pre-dot
    // check asks for, so every check after the update says no, while the claims are still this
    // worker's (alive, so no claim takes them as orphaned) and not expired for 30 s.
    let server = SmtpServer::start(Policy::default().delay(Duration::from_millis(300))).await;
    seed(&pool, 8).await;
    let envs = [
        ("DIGESTIF_DELIVERY__LEASE", "120s"),
        ("DIGESTIF_DELIVERY__CONCURRENCY", "1"),
        ("DIGESTIF_DELIVERY__BATCH_SIZE", "8"),
    ];
    let run = digestif(&pool, &server, &["issue", "send", "--now"], &envs)
        .spawn()
        .unwrap();
    wait_for(&server, 2, Duration::from_secs(30)).await;
    let nearly_out = sqlx::query(
        "UPDATE delivery SET lease_until = now() + interval '30 seconds' \
         WHERE status = 'sending'",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(nearly_out > 0, "the run still held claims");
    // Claims said no to and kept would sit unsent for those 30 s, then for as long as the
    // heartbeat renews them: the run would not end.
    let out = tokio::time::timeout(Duration::from_secs(20), run.wait_with_output())
        .await
        .expect("the run ended: the claims it could not send were given back and sent")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("claim lost"), "a check said no: {stderr}");
    assert_one_copy_each(&server, 8);
    assert_eq!(reported_sent(&out), 8);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM delivery WHERE status = 'sent'").await,
        8
    );
    // A claim given back takes back its attempt: one send, one attempt.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM delivery WHERE attempts <> 1").await,
        0
    );
}

#[sqlx::test]
async fn taking_a_workers_lock_again_gives_up_on_a_claim_that_never_lets_go(pool: PgPool) {
    use digestif::store::deliveries::{WORKER_LOCK_CLASS, lock_worker, settle_connection};
    let (lock, w) = live_worker(&pool).await;
    // A claim asking whether this worker is gone holds its lock for a moment; this one stalls
    // holding it (its client hung, say).
    let mut stalled = pool.begin().await.unwrap();
    end_session(&pool, lock).await;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(WORKER_LOCK_CLASS)
        .bind(w)
        .execute(&mut *stalled)
        .await
        .unwrap();
    let mut heartbeat = pool.acquire().await.unwrap().detach();
    let (results, relocked) = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join(settle_connection(&pool, w), lock_worker(&mut heartbeat, w)),
    )
    .await
    .expect("both gave up instead of waiting without end (a stopped heartbeat, a silent stall)");
    // 55P03: lock_not_available, what lock_timeout raises.
    let timed_out = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "55P03")
    };
    match results {
        Err(e) => assert!(timed_out(&e), "the results connection: {e}"),
        Ok(_) => panic!("the results connection got the lock"),
    }
    match relocked {
        Err(e) => assert!(timed_out(&e), "the heartbeat: {e}"),
        Ok(()) => panic!("the heartbeat got the lock"),
    }
    stalled.rollback().await.unwrap();
    // Once the claim lets go, the lock is taken, and the timeout was for taking it only: the
    // heartbeat's renewals wait for row locks as long as they must.
    lock_worker(&mut heartbeat, w).await.unwrap();
    let reset: bool = sqlx::query_scalar(
        "SELECT setting = reset_val FROM pg_settings WHERE name = 'lock_timeout'",
    )
    .fetch_one(&mut heartbeat)
    .await
    .unwrap();
    assert!(reset, "lock_timeout outlived taking the lock");
}

#[sqlx::test]
async fn the_pre_dot_check_says_no_with_less_than_the_margin_of_the_lease_left(pool: PgPool) {
    use digestif::store::deliveries::settle;
    let (_lock, w, key, mut results) = one_claim(&pool).await;
    for (margin, held) in [(3700, false), (3000, true)] {
        let out = settle(&mut results, w, &[], &[key], 1, Duration::from_secs(margin))
            .await
            .unwrap();
        assert_eq!(out.held.contains(&key), held, "margin {margin} s");
    }
}

/// The lease is read against the clock once the row is locked: a check that waited for a row
/// lock (a claim that locked the row and left it as it was) must not answer with the time it
/// started at, a wait's worth of lease ago.
#[sqlx::test]
async fn the_pre_dot_checks_margin_counts_the_time_it_waited_for_the_row(pool: PgPool) {
    use digestif::store::deliveries::settle;
    let (_lock, w, key, mut results) = one_claim(&pool).await;
    let other = row_locked(&pool, key).await;
    // Two seconds short of the lease: a yes before the wait, a no after three seconds of it.
    let check = tokio::spawn(async move {
        settle(&mut results, w, &[], &[key], 1, Duration::from_secs(3598))
            .await
            .unwrap()
            .held
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    other.rollback().await.unwrap();
    assert_eq!(
        check.await.unwrap(),
        Vec::new(),
        "a yes with less than the margin left"
    );
}

/// The heartbeat renews every lease the worker holds in one statement while the worker gives
/// claims back (the breaker opened, a stop) or writes results in others, each locking rows in
/// its own order: they deadlocked, and Postgres failed one of them. A failed renewal drops
/// the worker's connection and with it its lock, so other workers take over its claims.
#[sqlx::test]
async fn renewing_leases_never_deadlocks_with_giving_claims_back(pool: PgPool) {
    use digestif::store::deliveries::{claim, register_worker, release, renew};
    seed(&pool, 300).await;
    let s = digestif::config::Settings::from_toml("").unwrap();
    digestif::digest::create_issue(&pool, &s, crate::helpers::at("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    let mut conn = pool.acquire().await.unwrap().detach();
    let id = register_worker(&mut conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let renewer = tokio::spawn(async move {
        let mut rounds = 0u32;
        while Instant::now() < deadline {
            renew(&mut conn, id, hour).await?;
            rounds += 1;
        }
        Ok::<u32, sqlx::Error>(rounds)
    });
    let p = pool.clone();
    let releaser = tokio::spawn(async move {
        let mut rounds = 0u32;
        while Instant::now() < deadline {
            let mut held = claim(&p, id, 300, hour).await?;
            held.reverse();
            release(&p, id, &held).await?;
            rounds += 1;
        }
        Ok::<u32, sqlx::Error>(rounds)
    });
    let renewed = renewer.await.unwrap().expect("renewing");
    let released = releaser.await.unwrap().expect("giving back");
    assert!(renewed > 10 && released > 10, "{renewed} {released}");
}
