//! SQL for the delivery queue: fan-out, claiming with `FOR UPDATE SKIP LOCKED` and a lease,
//! settling results in batches, releasing claims, pausing and finishing issues.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::domain::DeliveryStatus;

/// Creates one pending delivery per active subscriber, in the transaction that creates the
/// issue: one statement, however long the list.
pub async fn fan_out(conn: &mut PgConnection, issue_id: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO delivery (issue_id, subscriber_id) \
         SELECT $1, subscriber_id FROM subscriber WHERE status = 'active'",
    )
    .bind(issue_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Refreshes the planner's statistics of `delivery` after a fan-out. The fan-out can grow the
/// table from nothing to a million rows in one transaction, long before autovacuum looks at
/// it; with the old figures the planner took `delivery` for a small table, and claims read
/// every ready row through a bitmap and sorted them (10 ms of each 15 ms claim of 500 at
/// 30,000 deliveries). Statistics only guide plans, so a failure is logged, not returned, and
/// the refresh never waits long: not behind a vacuum that holds the table (an anti-wraparound
/// one is not cancelled for us), and not past a minute on a huge table.
pub async fn analyze(pool: &PgPool) {
    let refresh = async {
        let mut tx = pool
            .begin_with("BEGIN; SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '60s'")
            .await?;
        sqlx::query("ANALYZE delivery").execute(&mut *tx).await?;
        tx.commit().await
    };
    if let Err(e) = refresh.await {
        tracing::warn!(error = %e, "could not refresh the statistics of the delivery table");
    }
}

/// A delivery this worker now holds, with what sending needs to know.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub issue_id: i64,
    pub subscriber_id: i64,
    /// The delivery's status before the claim (`pending`, `deferred`, or `sending` when it
    /// was taken back from a dead worker), to put it back if it is released unsent.
    #[sqlx(try_from = "String")]
    pub was: DeliveryStatus,
    /// Attempts including this one.
    pub attempts: i32,
    /// When the delivery was first attempted (the give-up age counts from here).
    pub first_attempt_at: DateTime<Utc>,
    /// The subscriber's address.
    pub email: String,
    /// The subscriber's name.
    pub name: Option<String>,
    /// The subscriber's status now: anything but `active` is skipped.
    pub subscriber_status: crate::domain::SubscriberStatus,
}

/// The advisory-lock namespace of worker locks (`'dgif'`): a worker holds
/// `pg_advisory_lock_shared(WORKER_LOCK_CLASS, worker_id)` for as long as it lives, on its own
/// connection and on its results connection (shared, so both can).
pub const WORKER_LOCK_CLASS: i32 = 0x6467_6966;

/// Registers a delivering process on `conn`, a connection it keeps to itself: a new worker id,
/// and that id's advisory lock, held until the session ends. Returns the id.
pub async fn register_worker(conn: &mut PgConnection) -> sqlx::Result<i32> {
    let id: i32 = sqlx::query_scalar("SELECT nextval('worker_id_seq')::int")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind(WORKER_LOCK_CLASS)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "WITH gone AS ( \
             DELETE FROM worker w WHERE w.worker_id NOT IN (SELECT worker FROM live_workers($3)) \
               AND NOT EXISTS (SELECT 1 FROM delivery d \
                               WHERE d.status = 'sending' AND d.claimed_by = w.worker_id)) \
         INSERT INTO worker (worker_id, host, pid) VALUES ($1, $2, $4)",
    )
    .bind(id)
    .bind(hostname())
    .bind(WORKER_LOCK_CLASS)
    .bind(std::process::id() as i32)
    .execute(&mut *conn)
    .await?;
    name_worker_session(conn, id).await?;
    Ok(id)
}

/// Takes worker `id`'s lock on `conn` again, after its connection was lost, and lists the worker
/// again: a worker that registered meanwhile clears the rows of workers that hold neither a lock
/// nor a claim, and an unlisted worker's claims would not be seen orphaned when it dies.
pub async fn lock_worker(conn: &mut PgConnection, id: i32) -> sqlx::Result<()> {
    use sqlx::Connection;
    // A claim asking whether this worker is gone holds its lock for a moment; a wait without
    // end would stop the heartbeat that keeps this worker's leases. Only for taking the lock:
    // a session-level advisory lock outlives the transaction, the timeout does not.
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL lock_timeout = '10s'")
        .await?;
    take_worker_lock(&mut tx, id).await?;
    tx.commit().await?;
    name_worker_session(conn, id).await
}

/// Worker `id`'s lock on `conn`, and its row in `worker` (back if it was cleared), in one
/// statement. An existing row is updated, not left alone: the row lock makes a registration
/// clearing it meanwhile wait and see this worker alive.
async fn take_worker_lock(conn: &mut PgConnection, id: i32) -> sqlx::Result<()> {
    sqlx::query(
        "WITH locked AS (SELECT pg_advisory_lock_shared($4, $1)) \
         INSERT INTO worker (worker_id, host, pid) SELECT $1, $2, $3 FROM locked \
         ON CONFLICT (worker_id) DO UPDATE SET pid = EXCLUDED.pid",
    )
    .bind(id)
    .bind(hostname())
    .bind(std::process::id() as i32)
    .bind(WORKER_LOCK_CLASS)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Names the session so `pg_stat_activity` shows which worker it is.
async fn name_worker_session(conn: &mut PgConnection, id: i32) -> sqlx::Result<()> {
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(format!("digestif worker {id}"))
        .execute(conn)
        .await?;
    Ok(())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
}

/// How far the database's clock is ahead of this machine's (negative when behind), measured
/// against the middle of the round trip.
pub async fn db_clock_ahead(pool: &PgPool) -> sqlx::Result<chrono::Duration> {
    let before = Utc::now();
    let db = super::db_now(pool).await?;
    let after = Utc::now();
    Ok(db - (before + (after - before) / 2))
}

/// Renews the leases of the claims `worker` holds; returns how many it renewed. A claim whose
/// row another statement is updating right now (the worker writing its result, or giving it
/// back) is left for the next round, a third of a lease later: waiting for it, with rows
/// locked in another order, deadlocked, and a failed renewal costs the worker its lock. The
/// lock taken (NO KEY UPDATE) is the one an UPDATE takes, which the check before the final
/// dot (KEY SHARE) does not wait for.
pub async fn renew(
    conn: &mut PgConnection,
    worker: i32,
    lease: std::time::Duration,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE delivery d SET lease_until = now() + make_interval(secs => $2) \
         FROM (SELECT issue_id, subscriber_id FROM delivery \
               WHERE status = 'sending' AND claimed_by = $1 FOR NO KEY UPDATE SKIP LOCKED) mine \
         WHERE d.issue_id = mine.issue_id AND d.subscriber_id = mine.subscriber_id",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .execute(conn)
    .await?
    .rows_affected())
}

/// Makes whatever `worker` still holds claimable by any worker now (claims it stopped working
/// on without a written result); returns how many.
pub async fn abandon(pool: &PgPool, worker: i32) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE delivery SET claimed_by = NULL, lease_until = now() \
         WHERE status = 'sending' AND claimed_by = $1",
    )
    .bind(worker)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Claims up to `limit` ready deliveries of issues that are sending for `worker`: new and
/// deferred ones whose time has come, ones whose worker is gone (its lock went with its
/// session), and, as a last resort, ones whose lease ran out. The short transaction of this
/// one statement is all the locking there is; nothing is held while SMTP talks.
///
/// The ready rows of the oldest sending issue come in time order from `delivery_ready_idx`
/// (issue, then time), and the scan stops at the batch; a later sending issue is read only to
/// fill a batch the older one leaves short. Indexed by time alone, as first written, the scan
/// went through every ready row in time order, a paused issue's included, until it reached a
/// sending issue's (272 ms a claim behind a paused million, against 4.8 ms); joined to the
/// issues instead, custom plans read every ready row and sorted them (30 ms a claim at
/// 100,000).
///
/// The plan is pinned to what a claim always wants, whatever the statistics say: the ready
/// rows walked in index order (no bitmap scan, which reads every ready row and sorts them)
/// and the picked rows looked up by key one by one (no hash or merge join, which reads the
/// whole table to join a batch of 500). Below about 50,000 deliveries the planner chose the
/// hash join (13–16 ms a claim of 500 at 30,000 deliveries; 5–8 ms by key).
pub async fn claim(
    pool: &PgPool,
    worker: i32,
    limit: u32,
    lease: std::time::Duration,
) -> sqlx::Result<Vec<Claimed>> {
    // The settings go with BEGIN (one round trip) and end with the transaction.
    let mut tx = pool
        .begin_with(
            "BEGIN; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
             SET LOCAL enable_bitmapscan = off",
        )
        .await?;
    let claimed = sqlx::query_as(
        // The oldest sending issue's oldest ready rows through the index led by the issue, then
        // the next issue's if the batch is not full: a paused issue's rows are never read, and
        // no ready row beyond the batch is locked.
        //
        // An orphaned row (its worker's lock gone, its lease not run out) is taken only if this
        // transaction gets its worker's lock exclusively: the worker may have taken its lock
        // again (a reopened results connection) since `live_workers` was read, and confirmed
        // the claim. Once got, the worker cannot take its lock until this commits, so no check
        // of its (which runs only on a connection holding that lock) can say yes meanwhile;
        // the pre-dot check locks the rows it confirms, so it also waits for a claim that
        // locked them first. Whatever order the plan evaluates this in.
        "WITH ready AS ( \
             SELECT r.issue_id, r.subscriber_id, r.was \
             FROM (SELECT issue_id FROM issue WHERE status = 'sending' ORDER BY issue_id) i \
             CROSS JOIN LATERAL ( \
                 SELECT d.issue_id, d.subscriber_id, d.status AS was FROM delivery d \
                 WHERE d.issue_id = i.issue_id AND d.status IN ('pending', 'deferred') \
                   AND d.next_attempt_at <= now() \
                 ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) r \
             LIMIT $1), \
         orphaned AS ( \
             SELECT issue_id, subscriber_id, status AS was FROM delivery \
             WHERE status = 'sending' AND claimed_by IN ( \
                     SELECT worker_id FROM worker \
                     WHERE worker_id NOT IN (SELECT worker FROM live_workers($4))) \
               AND issue_id IN (SELECT issue_id FROM issue WHERE status = 'sending') \
             LIMIT $1 FOR UPDATE SKIP LOCKED), \
         expired AS ( \
             SELECT issue_id, subscriber_id, status AS was FROM delivery \
             WHERE status = 'sending' AND lease_until < now() \
               AND issue_id IN (SELECT issue_id FROM issue WHERE status = 'sending') \
             LIMIT $1 FOR UPDATE SKIP LOCKED), \
         picked AS ( \
             SELECT * FROM ready UNION SELECT * FROM orphaned UNION SELECT * FROM expired \
             LIMIT $1) \
         UPDATE delivery d SET status = 'sending', attempts = d.attempts + 1, \
                lease_until = now() + make_interval(secs => $2), claimed_by = $3, \
                first_attempt_at = coalesce(d.first_attempt_at, now()) \
         FROM picked p, subscriber s \
         WHERE d.issue_id = p.issue_id AND d.subscriber_id = p.subscriber_id \
           AND s.subscriber_id = d.subscriber_id \
           AND CASE WHEN d.status = 'sending' AND d.lease_until >= now() \
                    THEN pg_try_advisory_xact_lock($4, d.claimed_by) \
                    ELSE true END \
         RETURNING d.issue_id, d.subscriber_id, p.was, d.attempts, d.first_attempt_at, s.email, s.name, \
                   s.status AS subscriber_status",
    )
    .bind(i64::from(limit))
    .bind(lease.as_secs_f64())
    .bind(worker)
    .bind(WORKER_LOCK_CLASS)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Counts claims taken back from dead workers against their issue.
pub async fn count_reclaimed(pool: &PgPool, issue_id: i64, n: i32) -> sqlx::Result<()> {
    sqlx::query("UPDATE issue SET reclaimed = reclaimed + $2 WHERE issue_id = $1")
        .bind(issue_id)
        .bind(n)
        .execute(pool)
        .await?;
    Ok(())
}

/// The result of one attempt, to be written.
#[derive(Debug, Clone)]
pub struct Settled {
    pub issue_id: i64,
    pub subscriber_id: i64,
    /// `sent`, `deferred`, `bounced`, `failed` or `skipped`.
    pub status: DeliveryStatus,
    /// SMTP reply code, if any.
    pub code: Option<i16>,
    /// Reply text or reason, truncated.
    pub error: Option<String>,
    /// When to try again (deferred only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The Message-ID sent.
    pub message_id: Option<String>,
    /// The relay that had the last word (SMTP only).
    pub relay: Option<String>,
    /// A relay refused it outright, by an enhanced code that says the reason is the relay's
    /// (a policy block, a message too big), not the subscriber's (see [`resume`]).
    pub systemic: bool,
}

/// Opens the connection [`settle`] runs on. It is the hot path of sending (one call per few
/// messages), so it skips two costs the pool would add to every call: the liveness ping before
/// each use, and planning the statement anew for its array parameters (a generic plan fits
/// every batch: all lookups are by key).
///
/// It holds `worker`'s lock too, for as long as it is open: the check before each final dot
/// (is this claim still this worker's?) runs on it, so while it says yes no other worker can
/// see this one as gone and take the claim over, even if the worker's own lock session has
/// ended unnoticed. Opened again after an error, it takes the lock again before any check.
pub async fn settle_connection(pool: &PgPool, worker: i32) -> sqlx::Result<PgConnection> {
    let mut conn = pool.acquire().await?.detach();
    // Named, so an operator can tell it apart in pg_stat_activity.
    // The worker's lock waits for a claim that is asking whether this worker is gone, and the
    // pre-dot check for row locks (a claim's, a purge's); one held without end surfaces as a
    // write error, as an unreachable database does, not as a silent stall.
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; SET application_name = 'digestif results'; \
         SET lock_timeout = '10s'",
    )
    .execute(&mut conn)
    .await?;
    take_worker_lock(&mut conn, worker).await?;
    Ok(conn)
}

/// What [`settle`] did.
#[derive(Debug, Default)]
pub struct SettleOutcome {
    /// The deliveries whose results were written (issue, subscriber); fewer than given when
    /// claims were taken over meanwhile.
    pub written: Vec<(i64, i64)>,
    /// The claims asked about that are still this worker's.
    pub held: Vec<(i64, i64)>,
}

/// The hard-bounce rule, written once for both ways a bounce arrives (a 5xx at send time, a DSN
/// later): the subscriber's counter goes up, an active subscriber is suppressed once it reaches
/// the threshold (the statement's parameter `$threshold`), and the event log says which, with
/// `$method`. It reads a CTE `upd(subscriber_id, status, last_error)` of the deliveries just
/// written and adds the CTEs `bounced` and `events`. A macro, so each statement stays one
/// string literal (prepared once per connection).
macro_rules! hard_bounce_rule {
    ($threshold:literal, $method:literal) => {
        concat!(
            // Counted per subscriber first: an `UPDATE … FROM` changes a row once however many
            // rows it joins, so two bounces of one subscriber in one statement (two issues
            // sending at once) counted as one.
            "bounced AS ( \
                 UPDATE subscriber s SET hard_bounces = s.hard_bounces + b.n, \
                        status = CASE WHEN s.status = 'active' AND s.hard_bounces + b.n >= ",
            $threshold,
            " THEN 'bounced' ELSE s.status END \
                 FROM (SELECT subscriber_id, count(*)::int AS n FROM upd \
                       WHERE status = 'bounced' GROUP BY subscriber_id) b \
                 WHERE s.subscriber_id = b.subscriber_id \
                 RETURNING s.subscriber_id, s.status, s.hard_bounces), \
             events AS ( \
                 INSERT INTO subscriber_event (subscriber_id, kind, method, detail) \
                 SELECT u.subscriber_id, 'bounced', '",
            $method,
            "', left(CASE WHEN b.status = 'bounced' THEN 'suppressed after ' || b.hard_bounces \
                              || ' hard bounce(s): ' ELSE 'hard bounce: ' END \
                         || coalesce(u.last_error, ''), 500) \
                 FROM upd u JOIN bounced b ON b.subscriber_id = u.subscriber_id \
                 WHERE u.status = 'bounced')"
        )
    };
}

/// Writes many results in one statement: delivery rows, and for hard bounces the subscriber's
/// counter, suppression at `threshold`, and the event log. In the same statement it checks
/// that the claims in `confirm` (messages about to be handed over) are still `worker`'s with
/// at least `margin` of their leases left, locking them for the statement (`FOR KEY SHARE`): a
/// claim by another worker that locked one first is waited for and its outcome read.
/// An expired lease is taken over without asking whether its worker lives, so a yes must leave
/// time for what follows it (the envelope's replies, the final dot's, the result): no other
/// worker can take the claim as expired for `margin` after the yes (measured when the check
/// runs, once the row is locked), even if this worker's heartbeat stops.
/// Every row is written only while `worker` holds its claim.
pub async fn settle(
    conn: &mut PgConnection,
    worker: i32,
    results: &[Settled],
    confirm: &[(i64, i64)],
    threshold: u32,
    margin: std::time::Duration,
) -> sqlx::Result<SettleOutcome> {
    let mut issue_ids = Vec::with_capacity(results.len());
    let mut subscriber_ids = Vec::with_capacity(results.len());
    let mut statuses = Vec::with_capacity(results.len());
    let mut codes = Vec::with_capacity(results.len());
    let mut errors = Vec::with_capacity(results.len());
    let mut next = Vec::with_capacity(results.len());
    let mut message_ids = Vec::with_capacity(results.len());
    let mut relays = Vec::with_capacity(results.len());
    let mut systemic = Vec::with_capacity(results.len());
    for r in results {
        systemic.push(r.systemic);
        relays.push(r.relay.as_deref());
        issue_ids.push(r.issue_id);
        subscriber_ids.push(r.subscriber_id);
        statuses.push(r.status.as_str());
        codes.push(r.code);
        errors.push(r.error.clone());
        next.push(r.next_attempt_at);
        message_ids.push(r.message_id.clone());
    }
    let (confirm_issues, confirm_subscribers): (Vec<i64>, Vec<i64>) =
        confirm.iter().copied().unzip();
    let (written_issues, written_subscribers, held_issues, held_subscribers): (
        Vec<i64>,
        Vec<i64>,
        Vec<i64>,
        Vec<i64>,
    ) = sqlx::query_as(concat!(
        "WITH v AS ( \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::smallint[], \
                                  $5::text[], $6::timestamptz[], $7::text[], $13::text[], \
                                  $15::bool[]) \
             AS v(issue_id, subscriber_id, status, code, error, next_at, message_id, relay, \
                  systemic)), \
         upd AS ( \
             UPDATE delivery d SET status = v.status, last_code = v.code, last_error = v.error, \
                    next_attempt_at = COALESCE(v.next_at, d.next_attempt_at), lease_until = NULL, \
                    claimed_by = NULL, message_id = COALESCE(v.message_id, d.message_id), \
                    relay = COALESCE(v.relay, d.relay), systemic = v.systemic, \
                    sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE d.sent_at END \
             FROM v WHERE d.issue_id = v.issue_id AND d.subscriber_id = v.subscriber_id \
               AND d.status = $9 AND d.claimed_by = $10 \
             RETURNING d.issue_id, d.subscriber_id, d.status, d.last_error), ",
        hard_bounce_rule!("$8", "smtp"),
        // The lease is compared once the row is locked, outside the locking scan: a row lock
        // waited for is re-checked only if its holder changed the row, and the clock read
        // before the wait would be old by the wait.
        ", locked AS ( \
             SELECT d.issue_id, d.subscriber_id, d.lease_until FROM delivery d \
             JOIN unnest($11::bigint[], $12::bigint[]) AS c(issue_id, subscriber_id) \
               ON d.issue_id = c.issue_id AND d.subscriber_id = c.subscriber_id \
             WHERE d.status = $9 AND d.claimed_by = $10 \
             FOR KEY SHARE OF d), \
         held AS ( \
             SELECT issue_id, subscriber_id FROM locked \
             WHERE lease_until > clock_timestamp() + make_interval(secs => $14)) \
         SELECT ARRAY(SELECT issue_id FROM upd), ARRAY(SELECT subscriber_id FROM upd), \
                ARRAY(SELECT issue_id FROM held), ARRAY(SELECT subscriber_id FROM held)",
    ))
    .bind(&issue_ids)
    .bind(&subscriber_ids)
    .bind(&statuses)
    .bind(&codes)
    .bind(&errors)
    .bind(&next)
    .bind(&message_ids)
    .bind(i64::from(threshold))
    // 'sending' as a parameter, not a literal: with the literal, the generic plan this
    // statement runs with (see settle_connection) scanned the whole partial index of leased
    // rows, dead entries included, for every group of results: 52 µs a call at 30,000
    // deliveries, 430 µs at 400,000. A parameter cannot prove that index's predicate, so the
    // plan looks each row up by its keys.
    .bind(DeliveryStatus::Sending.as_str())
    .bind(worker)
    .bind(&confirm_issues)
    .bind(&confirm_subscribers)
    .bind(&relays)
    .bind(margin.as_secs_f64())
    .bind(&systemic)
    .fetch_one(&mut *conn)
    .await?;
    Ok(SettleOutcome {
        written: written_issues
            .into_iter()
            .zip(written_subscribers)
            .collect(),
        held: held_issues.into_iter().zip(held_subscribers).collect(),
    })
}

/// Of `results`, those the database already holds as given: settled (claimed by no one) in the
/// given status. For a retry of [`settle`] after an error, whose first attempt may have
/// committed before its reply was lost: its rows are no longer this worker's, so the retry
/// writes nothing, yet they were written. (A row another worker took over and settled the same
/// way counts too: both then sent it, and this worker counts it as its own, not as taken over.)
pub async fn already_settled(
    conn: &mut PgConnection,
    results: &[Settled],
) -> sqlx::Result<Vec<(i64, i64)>> {
    let issue_ids: Vec<i64> = results.iter().map(|r| r.issue_id).collect();
    let subscriber_ids: Vec<i64> = results.iter().map(|r| r.subscriber_id).collect();
    let statuses: Vec<&str> = results.iter().map(|r| r.status.as_str()).collect();
    sqlx::query_as(
        "SELECT d.issue_id, d.subscriber_id FROM delivery d \
         JOIN unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(issue_id, subscriber_id, status) \
           ON d.issue_id = v.issue_id AND d.subscriber_id = v.subscriber_id \
         WHERE d.claimed_by IS NULL AND d.status = v.status",
    )
    .bind(&issue_ids)
    .bind(&subscriber_ids)
    .bind(&statuses)
    .fetch_all(conn)
    .await
}

/// Gives `worker`'s claimed deliveries back unsent (shutdown, breaker, a pre-dot check that
/// said no), as if never claimed; claims it no longer holds are left to their new owner.
pub async fn release(pool: &PgPool, worker: i32, claimed: &[Claimed]) -> sqlx::Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    let issue_ids: Vec<i64> = claimed.iter().map(|c| c.issue_id).collect();
    let subscriber_ids: Vec<i64> = claimed.iter().map(|c| c.subscriber_id).collect();
    let was: Vec<&str> = claimed.iter().map(|c| c.was.as_str()).collect();
    sqlx::query(
        "UPDATE delivery d SET \
                status = CASE WHEN v.was = 'pending' THEN 'pending' ELSE 'deferred' END, \
                attempts = greatest(d.attempts - 1, 0), lease_until = NULL, claimed_by = NULL, \
                first_attempt_at = CASE WHEN d.attempts > 1 THEN d.first_attempt_at END \
         FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(issue_id, subscriber_id, was) \
         WHERE d.issue_id = v.issue_id AND d.subscriber_id = v.subscriber_id \
           AND d.status = 'sending' AND d.claimed_by = $4",
    )
    .bind(&issue_ids)
    .bind(&subscriber_ids)
    .bind(&was)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks issues whose every delivery is settled as sent; returns their numbers.
pub async fn finish_issues(pool: &PgPool) -> sqlx::Result<Vec<i32>> {
    sqlx::query_scalar(
        "UPDATE issue i SET status = 'sent', finished_at = now() \
         WHERE i.status = 'sending' AND NOT EXISTS ( \
             SELECT 1 FROM delivery d WHERE d.issue_id = i.issue_id \
               AND d.status IN ('pending', 'sending', 'deferred')) \
         RETURNING number",
    )
    .fetch_all(pool)
    .await
}

/// Pauses an issue (the breaker tripped) until `until`, saying why.
pub async fn pause(
    pool: &PgPool,
    issue_id: i64,
    reason: &str,
    until: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE issue SET status = 'paused', status_reason = $2, paused_until = $3 \
         WHERE issue_id = $1 AND status = 'sending'",
    )
    .bind(issue_id)
    .bind(reason)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

/// Resumes a paused issue now: `None` when it was not paused and holds nothing the relay
/// refused, else how many of its deliveries were queued again because the relay, not the
/// subscriber, refused them ([`REFUSED`]). Asked by the operator, who has mended what tripped
/// the breaker, it takes them back whatever their age, each with a new `give_up_after` of its
/// own; and from an issue no longer paused (the cool-down resumed it, or it finished) as well,
/// reopening it.
pub async fn resume(pool: &PgPool, issue_id: i64) -> sqlx::Result<Option<u64>> {
    let requeued: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH resumed AS ( \
             UPDATE issue i SET status = 'sending', status_reason = NULL, paused_until = NULL, \
                    finished_at = NULL \
             WHERE i.issue_id = $1 AND (i.status = 'paused' OR (i.status IN ('sending', 'sent') \
                   AND EXISTS (SELECT 1 FROM delivery d WHERE d.issue_id = $1 AND {REFUSED}))) \
             RETURNING issue_id), \
         requeued AS ( \
             UPDATE delivery d SET {REQUEUE}, first_attempt_at = NULL \
             FROM resumed r WHERE d.issue_id = r.issue_id AND {REFUSED} RETURNING 1) \
         SELECT (SELECT count(*) FROM requeued) FROM resumed"
    )))
    .bind(issue_id)
    .fetch_optional(pool)
    .await?;
    Ok(requeued.map(|n| u64::try_from(n).unwrap_or_default()))
}

/// Resumes paused issues whose cool-down is over; returns their numbers. Deliveries the relay
/// refused ([`REFUSED`]) go again while younger than `give_up_after` and tried fewer than five
/// times: a block that lasts trips the breaker again, and must not keep an issue open for ever,
/// nor a refusal that keeps coming, which may be about that one address after all, trip it at
/// every cool-down. `issue resume` takes them all back. One statement, as it runs before every
/// claim.
pub async fn resume_cooled(
    pool: &PgPool,
    give_up_after: std::time::Duration,
) -> sqlx::Result<Vec<i32>> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "WITH resumed AS ( \
             UPDATE issue SET status = 'sending', status_reason = NULL, paused_until = NULL \
             WHERE status = 'paused' AND paused_until <= now() RETURNING issue_id, number), \
         requeued AS ( \
             UPDATE delivery d SET {REQUEUE} \
             FROM resumed r WHERE d.issue_id = r.issue_id AND {REFUSED} AND d.attempts < 5 \
               AND d.first_attempt_at > now() - make_interval(secs => $1)) \
         SELECT number FROM resumed"
    )))
    .bind(give_up_after.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Which failed deliveries resuming queues again: those a relay refused outright for its own
/// reasons (a policy block, a message too big: what trips the breaker), never a retry given up
/// on nor a failure a DSN reported. The attempts that trip the breaker fail before the issue
/// pauses, yet their subscribers did nothing.
const REFUSED: &str = "d.status = 'failed' AND d.systemic";

/// What queuing a refused delivery again sets: due at once, to be claimed like a retry.
const REQUEUE: &str = "status = 'deferred', next_attempt_at = now(), systemic = false";

/// When the next delivery of a sending issue becomes claimable (a retry, a lease running out,
/// or at once for a claim whose worker is gone), if any is waiting: the time, and how long
/// until then. The wait is measured by the database's clock, the one claims compare with, so
/// a process whose clock differs from the database's still wakes when the row is ready.
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<(DateTime<Utc>, std::time::Duration)>> {
    let due: (Option<DateTime<Utc>>, Option<f64>) = sqlx::query_as(
        "SELECT min(t), extract(epoch FROM greatest(min(t) - now(), interval '0'))::float8 FROM ( \
             SELECT min(r.t) AS t FROM issue i CROSS JOIN LATERAL ( \
                 SELECT d.next_attempt_at AS t FROM delivery d \
                 WHERE d.issue_id = i.issue_id AND d.status IN ('pending', 'deferred') \
                 ORDER BY d.next_attempt_at LIMIT 1) r \
             WHERE i.status = 'sending' \
             UNION ALL \
             SELECT min(lease_until) FROM delivery WHERE status = 'sending' \
               AND issue_id IN (SELECT issue_id FROM issue WHERE status = 'sending') \
             UNION ALL \
             SELECT now() FROM delivery WHERE status = 'sending' AND claimed_by IN ( \
                     SELECT worker_id FROM worker \
                     WHERE worker_id NOT IN (SELECT worker FROM live_workers($1))) \
               AND issue_id IN (SELECT issue_id FROM issue WHERE status = 'sending')) x",
    )
    .bind(WORKER_LOCK_CLASS)
    .fetch_one(pool)
    .await?;
    Ok(match due {
        (Some(at), Some(secs)) => Some((
            at,
            std::time::Duration::try_from_secs_f64(secs).unwrap_or_default(),
        )),
        _ => None,
    })
}

/// Whether any delivery is claimed right now (by any worker).
pub async fn any_claimed(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM delivery WHERE status = 'sending')")
        .fetch_one(pool)
        .await
}

/// Deliveries of an issue per status.
pub async fn counts(pool: &PgPool, issue_id: i64) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT status, count(*) FROM delivery WHERE issue_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(issue_id)
    .fetch_all(pool)
    .await
}

/// An issue's deliveries by the relay that had the last word and their status (relays only:
/// the file transport names none).
pub async fn counts_by_relay(
    pool: &PgPool,
    issue_id: i64,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT relay, status, count(*) FROM delivery WHERE issue_id = $1 AND relay IS NOT NULL \
         GROUP BY relay, status ORDER BY relay, status",
    )
    .bind(issue_id)
    .fetch_all(pool)
    .await
}

/// Deliveries still to do across sending issues (for the progress bar's length).
pub async fn open_count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM delivery WHERE status IN ('pending', 'sending', 'deferred') \
           AND issue_id IN (SELECT issue_id FROM issue WHERE status = 'sending')",
    )
    .fetch_one(pool)
    .await
}

/// Whether the delivery is claimed right now: handed to a relay (or about to be) with its
/// result not yet written.
pub async fn in_flight(pool: &PgPool, issue_id: i64, subscriber_id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM delivery \
                        WHERE issue_id = $1 AND subscriber_id = $2 AND status = 'sending')",
    )
    .bind(issue_id)
    .bind(subscriber_id)
    .fetch_one(pool)
    .await
}

/// Records a hard bounce that arrived later as a DSN: the delivery becomes `bounced` and the
/// subscriber's counter goes up (suppressed at `threshold`), with an event. The delivery is
/// `sent`, or `deferred` when the result of an attempt the relay took was lost (no answer to
/// its final dot): the bounce proves it was handed over, and its retry would only mail a dead
/// mailbox again. Returns false when the delivery is neither (its bounce was recorded before,
/// so the same DSN twice counts once; or it is in flight) or there is no such delivery.
pub async fn record_bounce(
    pool: &PgPool,
    issue_id: i64,
    subscriber_id: i64,
    detail: &str,
    threshold: u32,
) -> sqlx::Result<bool> {
    let changed: i64 = sqlx::query_scalar(concat!(
        "WITH upd AS ( \
             UPDATE delivery SET status = 'bounced', last_error = $3, lease_until = NULL \
             WHERE issue_id = $1 AND subscriber_id = $2 AND status IN ('sent', 'deferred') \
             RETURNING subscriber_id, status, last_error), ",
        hard_bounce_rule!("$4", "dsn"),
        " SELECT count(*) FROM upd"
    ))
    .bind(issue_id)
    .bind(subscriber_id)
    .bind(detail)
    .bind(i64::from(threshold))
    .fetch_one(pool)
    .await?;
    Ok(changed == 1)
}

/// Records a permanent failure that arrived later as a DSN (a relayed policy block, a local
/// delivery error): the delivery becomes `failed`; the subscriber is kept. False when the
/// delivery is neither `sent` nor `deferred` (see [`record_bounce`]).
pub async fn record_dsn_failure(
    pool: &PgPool,
    issue_id: i64,
    subscriber_id: i64,
    detail: &str,
) -> sqlx::Result<bool> {
    let changed = sqlx::query(
        "UPDATE delivery SET status = 'failed', last_error = $3, systemic = false \
         WHERE issue_id = $1 AND subscriber_id = $2 AND status IN ('sent', 'deferred')",
    )
    .bind(issue_id)
    .bind(subscriber_id)
    .bind(detail)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}
