//! Working the delivery queue (docs/ARCHITECTURE.md §4): claim a batch, re-check each
//! subscriber, send with bounded concurrency under the shared rate ceiling, classify replies,
//! and write results in batches. A sender never hands a message over before its previous
//! result is durable (it may render the next one and open its SMTP transaction meanwhile), so
//! a crash re-sends at most `delivery.concurrency` messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::{Mutex, watch};

use super::breaker::Breaker;
pub use super::counters::{Counters, Outcomes, Progress, no_progress};
use super::worker::Worker;
use super::writer::{Pending, WRITE_FAILED, Writer, settle_pending};
use crate::config::Settings;
use crate::domain::{DeliveryStatus, TokenKeys};
use crate::render::{self, Recipient, RenderedIssue};
use crate::send::{Failure, Mailer, Outcome, rate::Pacer};
use crate::store::deliveries::{self, Claimed, Settled};
use crate::store::issues;

/// What a delivery run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Attempts by outcome in this run.
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// Messages handed over whose claim another worker had taken over before their result
    /// was written (a lease that ran out): not in `outcomes`, since the new owner sends them
    /// again.
    pub taken_over: u64,
    /// Issues paused by the breaker, with the reason.
    pub paused: Vec<String>,
    /// Issues whose every delivery is now settled.
    pub finished: Vec<i32>,
    /// When the next retry or lease expiry is due, if any is waiting.
    pub next_due: Option<chrono::DateTime<Utc>>,
}

impl Report {
    /// What the counts leave out, for a run's summary: messages handed over whose claims
    /// another worker had taken meanwhile.
    pub fn taken_over_line(&self) -> Option<String> {
        (self.taken_over > 0).then(|| {
            format!(
                "{} handed over after another worker had taken their claims (a lease ran out): \
                 not counted above, as that worker sends them again",
                self.taken_over
            )
        })
    }
}

/// How long a run keeps going when nothing is claimable right now.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Wait for retries and lease expiries due within this long; later ones are left to the
    /// next run.
    pub wait_within: Duration,
}

/// Sends what is ready; one per process, shared by its tasks. It is one worker: its claims
/// carry its id, and it holds its worker lock for as long as it lives.
pub struct Deliverer {
    pool: PgPool,
    worker: Worker,
    settings: Arc<Settings>,
    mailer: Mailer,
    keys: TokenKeys,
    pacer: Pacer,
    rendered: Mutex<HashMap<i64, Arc<RenderedIssue>>>,
    breaker: std::sync::Mutex<Breaker>,
    counters: Arc<Counters>,
    /// How far the database's clock is ahead of this machine's, read with each claim: the times
    /// this process writes (a retry's, a pause's end) are compared with the database's `now()`,
    /// so they are taken on its clock.
    db_ahead: std::sync::Mutex<chrono::Duration>,
}

impl Deliverer {
    /// A deliverer with the configured transport, keys and rate ceiling.
    pub async fn new(pool: PgPool, settings: Arc<Settings>) -> anyhow::Result<Self> {
        let mailer = Mailer::from_settings(&settings)?;
        if let Some(relays) = mailer.relays() {
            relays.pace_with(pool.clone());
        }
        let keys = super::token_keys(&settings, &pool).await?;
        let worker = Worker::start(&pool, settings.delivery.lease).await?;
        Ok(Self {
            worker,
            pacer: Pacer::new(&settings.delivery),
            pool,
            mailer,
            keys,
            rendered: Mutex::new(HashMap::new()),
            breaker: std::sync::Mutex::new(Breaker::default()),
            counters: Arc::new(Counters::default()),
            db_ahead: std::sync::Mutex::new(chrono::Duration::zero()),
            settings,
        })
    }

    /// This worker's id, as its claims and `pg_stat_activity` show it.
    pub fn worker_id(&self) -> i32 {
        self.worker.id
    }

    /// The attempt counters of this deliverer, for `/metrics`.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Delivers until nothing is claimable (waiting for retries due within `patience`), or
    /// until `stop` turns true: then it stops claiming, lets messages in flight finish, and
    /// gives back what it had claimed but not started.
    pub async fn run_until_idle(
        &self,
        mut stop: watch::Receiver<bool>,
        patience: Patience,
        progress: Progress<'_>,
    ) -> anyhow::Result<Report> {
        // The database says which issues are paused; an issue resumed since the last run (by
        // `issue resume` or its cool-down) must not stay blocked in this long-lived deliverer.
        if let Ok(mut b) = self.breaker.lock() {
            b.open.clear();
        }
        let _pass = self.worker.pass();
        let counters = &*self.counters;
        let before = counters.outcomes();
        let taken_over_before = counters.taken_over.load(Ordering::Relaxed);
        let writer = Writer::spawn(
            self.pool.clone(),
            self.worker.id,
            self.settings.delivery.hard_bounce_threshold,
            // A third: the heartbeat renews every third of a lease, so a lease has two thirds
            // left or more while it keeps time; the check says no only to a heartbeat late by
            // a third or more (or to a claim taken over).
            self.settings.delivery.lease / 3,
        );
        let mut report = Report::default();
        let mut idle_since = None;
        let result = async {
            loop {
                if *stop.borrow() {
                    break;
                }
                let batch = self.claim().await?;
                if batch.is_empty() {
                    report
                        .finished
                        .extend(deliveries::finish_issues(&self.pool).await?);
                    let due = deliveries::next_due(&self.pool).await?;
                    let mut wait = due
                        .map(|(_, after)| after)
                        .filter(|w| *w <= patience.wait_within);
                    // Claims other workers hold: such a worker may finish soon, or be dying
                    // (its session takes a moment to end after a kill -9), so watch them for as
                    // long as patience lasts rather than leave on the first look.
                    let first_look = idle_since.is_none();
                    let idle = idle_since.get_or_insert_with(std::time::Instant::now);
                    if wait.is_none()
                        && idle.elapsed() < patience.wait_within
                        && deliveries::any_claimed(&self.pool).await?
                    {
                        wait = Some(Duration::from_secs(1));
                        if first_look {
                            tracing::info!(
                                "waiting up to {} s for deliveries other workers hold",
                                patience.wait_within.as_secs()
                            );
                        }
                    } else if let (true, Some((at, after))) = (first_look, due.filter(|_| wait.is_some())) {
                        // Say what the wait is for: a silent pause of minutes reads as a hang.
                        tracing::info!(
                            "waiting for retries: the next is due at {} (in {} s); Ctrl-C stops, and `run` or `serve` sends them later",
                            self.settings.schedule.cron.local(at),
                            after.as_secs()
                        );
                    }
                    match wait {
                        // Poll at least every second: another worker may settle what it holds.
                        Some(w) => {
                            let nap = w.min(Duration::from_secs(1)) + Duration::from_millis(20);
                            tokio::select! {
                                _ = tokio::time::sleep(nap) => {}
                                _ = stop.changed() => {}
                            }
                            continue;
                        }
                        None => break,
                    }
                }
                idle_since = None;
                self.process(batch, &writer, counters, &stop, progress, &mut report)
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        writer.close().await;
        self.mailer.close().await;
        // Whatever this worker still holds (results it could not write) goes back to every
        // worker at once: a live worker must not sit on claims it is no longer working on.
        match deliveries::abandon(&self.pool, self.worker.id).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                n,
                "left claims whose results were not written to be sent again (same Message-ID)"
            ),
            // Not renewed any more, they come back when their leases run out.
            Err(e) => tracing::warn!("cannot give back claims: {e}"),
        }
        result?;
        report
            .finished
            .extend(deliveries::finish_issues(&self.pool).await?);
        report.next_due = deliveries::next_due(&self.pool).await?.map(|(at, _)| at);
        report.outcomes = counters.outcomes().since(before);
        report.taken_over = counters
            .taken_over
            .load(Ordering::Relaxed)
            .saturating_sub(taken_over_before);
        Ok(report)
    }

    async fn process(
        &self,
        batch: Vec<Claimed>,
        writer: &Writer,
        counters: &Counters,
        stop: &watch::Receiver<bool>,
        progress: Progress<'_>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let unsent: std::sync::Mutex<Vec<Claimed>> = std::sync::Mutex::new(Vec::new());
        let fatal: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
        let concurrency = self.settings.delivery.concurrency as usize;

        let queue = std::sync::Mutex::new(VecDeque::from(batch));
        let fail = |e: anyhow::Error| {
            if let Ok(mut f) = fatal.lock() {
                f.get_or_insert(e);
            }
        };
        // `concurrency` senders, each with at most one result not yet durable: a sender may
        // prepare its next message and open its SMTP transaction meanwhile, but hands it over
        // only once the previous result is written (the gate), so a crash re-sends at most
        // `concurrency` messages.
        let sender = || async {
            let mut pending: Option<Pending> = None;
            // The guard is dropped inside the closure, never held across an await.
            let pop = || queue.lock().ok().and_then(|mut q| q.pop_front());
            // A sender takes its next delivery as it writes the current result (not earlier,
            // which would hold a delivery back from an idle sender), so the statement that
            // writes the result also checks the next claim.
            let mut following: Option<Claimed> = None;
            let give_back = |c: Option<Claimed>| {
                if let (Some(c), Ok(mut u)) = (c, unsent.lock()) {
                    u.push(c);
                }
            };
            while let Some(claimed) = following.take().or_else(pop) {
                let halted = *stop.borrow()
                    || fatal.lock().map(|f| f.is_some()).unwrap_or(true)
                    || self.breaker_open(claimed.issue_id);
                if halted {
                    give_back(Some(claimed));
                    continue;
                }
                // Before the final dot: the previous result is durable, and this claim is still
                // this worker's (checked by the writer's next statement).
                let lost = AtomicBool::new(false);
                let gate = async {
                    let key = (claimed.issue_id, claimed.subscriber_id);
                    let checked = pending.as_mut().and_then(|p| p.take_check(key));
                    let held = match checked {
                        Some(answer) => answer,
                        None => writer.confirm(key).await,
                    };
                    let durable = settle_pending(&mut pending, counters, progress)
                        .await
                        .is_ok();
                    // No answer (the check could not be made) is not a "no": nothing is handed
                    // over, and the run stops with the write error rather than report the claim
                    // taken over by someone.
                    let answer = held.await;
                    lost.store(durable && matches!(answer, Ok(false)), Ordering::Relaxed);
                    durable && matches!(answer, Ok(true))
                };
                // Before a further relay's final dot: is the claim still this worker's?
                let recheck = || async {
                    let key = (claimed.issue_id, claimed.subscriber_id);
                    let answer = writer.confirm(key).await.await;
                    if matches!(answer, Ok(false)) {
                        lost.store(true, Ordering::Relaxed);
                    }
                    matches!(answer, Ok(true))
                };
                let attempt = self.attempt(&claimed, gate, recheck).await;
                // The gate is not awaited when nothing was sent (a skipped subscriber, say).
                if let Err(e) = settle_pending(&mut pending, counters, progress).await {
                    give_back(Some(claimed));
                    fail(e);
                    break;
                }
                if lost.load(Ordering::Relaxed) {
                    tracing::warn!(
                        issue_id = claimed.issue_id,
                        subscriber_id = claimed.subscriber_id,
                        "claim lost before the message was handed over (taken over, or under a third of its lease left: this worker's heartbeat is late or its database session was lost): not sent here; given back if still this worker's, else its new owner sends it"
                    );
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    // A "no" may mean only that the lease is nearly out: the claim may still be
                    // this worker's, and the heartbeat would renew it with nobody sending it.
                    // Giving it back touches it only if nobody took it over.
                    give_back(Some(claimed));
                    continue;
                }
                following = pop();
                let next = following.as_ref().map(|f| (f.issue_id, f.subscriber_id));
                match attempt {
                    Ok(settled) => match writer.submit(settled, next).await {
                        Ok(p) => pending = Some(p),
                        Err(e) => {
                            give_back(following.take());
                            fail(e);
                            break;
                        }
                    },
                    Err(e) => {
                        give_back(Some(claimed));
                        fail(e);
                    }
                }
            }
            if let Err(e) = settle_pending(&mut pending, counters, progress).await {
                fail(e);
            }
        };
        // Polled as they wake, not all at once: `join_all` of fewer than 30 futures polls every
        // sender whenever any one of them wakes, several times a message each.
        {
            let mut senders: futures_util::stream::FuturesUnordered<_> =
                (0..concurrency).map(|_| sender()).collect();
            while senders.next().await.is_some() {}
        }
        // Senders stop early on a fatal error; what they left in the queue goes back too.
        if let (Ok(mut u), Ok(mut q)) = (unsent.lock(), queue.lock()) {
            u.extend(q.drain(..));
        }

        let unsent = unsent.into_inner().unwrap_or_default();
        deliveries::release(&self.pool, self.worker.id, &unsent)
            .await
            .context("failed to release unsent deliveries")?;
        let tripped = self
            .breaker
            .lock()
            .map(|mut b| std::mem::take(&mut b.newly_tripped))
            .unwrap_or_default();
        for (issue_id, reason) in tripped {
            let until = self.db_now()
                + chrono::Duration::from_std(self.settings.delivery.breaker_cooldown)
                    .unwrap_or_default();
            deliveries::pause(&self.pool, issue_id, &reason, until).await?;
            tracing::warn!(issue_id, "issue paused by the breaker: {reason}");
            report.paused.push(reason);
        }
        match fatal.into_inner().ok().flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn claim(&self) -> anyhow::Result<Vec<Claimed>> {
        // Read again with every claim: a pass under an hourly ceiling lasts days, and a clock
        // that NTP puts right meanwhile must not leave an old offset behind.
        let ahead = deliveries::db_clock_ahead(&self.pool).await?;
        if let Ok(mut a) = self.db_ahead.lock() {
            *a = ahead;
        }
        deliveries::resume_cooled(&self.pool, self.settings.delivery.give_up_after).await?;
        let d = &self.settings.delivery;
        // No more than the rate ceilings let out in a minute (or half a lease), the relays' own
        // included: a claim is a promise to send soon, not a reservation of the queue, and the
        // subscriber's status it read is the one checked before sending.
        let within = (d.lease / 2).min(Duration::from_secs(60));
        let relays = self.mailer.relays().and_then(|r| r.capacity(within));
        let limit = [self.pacer.capacity(within), relays]
            .into_iter()
            .flatten()
            .min()
            .map_or(d.batch_size, |n| n.clamp(1, d.batch_size));
        let claimed = deliveries::claim(&self.pool, self.worker.id, limit, d.lease)
            .await
            .context("failed to claim deliveries")?;
        // A claim reads only issues that are sending: one this pass opened the breaker for has
        // been resumed since (its cool-down ended, or `issue resume`). Still counting it open
        // would give back every row of it at once and claim them again, without end.
        if let Ok(mut b) = self.breaker.lock() {
            b.open
                .retain(|issue| !claimed.iter().any(|c| c.issue_id == *issue));
        }
        let mut reclaimed: HashMap<i64, i32> = HashMap::new();
        for c in claimed.iter().filter(|c| c.was == DeliveryStatus::Sending) {
            *reclaimed.entry(c.issue_id).or_default() += 1;
        }
        for (issue_id, n) in reclaimed {
            tracing::warn!(
                issue_id,
                n,
                "took over deliveries whose worker is gone (its database session ended) or whose lease ran out"
            );
            self.counters
                .reclaimed
                .fetch_add(n as u64, Ordering::Relaxed);
            deliveries::count_reclaimed(&self.pool, issue_id, n).await?;
        }
        Ok(claimed)
    }

    /// Now, on the database's clock.
    fn db_now(&self) -> DateTime<Utc> {
        Utc::now() + self.db_ahead.lock().map(|a| *a).unwrap_or_default()
    }

    fn breaker_open(&self, issue_id: i64) -> bool {
        self.breaker
            .lock()
            .map(|b| b.open.contains(&issue_id))
            .unwrap_or(true)
    }

    /// One delivery: re-check, render, wait for the rate ceiling, send once `gate` says the
    /// previous result is durable, classify.
    async fn attempt<R: std::future::Future<Output = bool>>(
        &self,
        c: &Claimed,
        gate: impl std::future::Future<Output = bool>,
        recheck: impl Fn() -> R,
    ) -> anyhow::Result<Settled> {
        let settled = |status, failure: Option<&Failure>| Settled {
            issue_id: c.issue_id,
            subscriber_id: c.subscriber_id,
            status,
            code: failure.and_then(|f| f.code).map(|c| c as i16),
            error: failure.map(|f| f.reason.clone()),
            next_attempt_at: None,
            message_id: None,
            relay: None,
            systemic: false,
        };
        if c.subscriber_status != crate::domain::SubscriberStatus::Active {
            tracing::debug!(subscriber_id = c.subscriber_id, "skipped: no longer active");
            let mut s = settled(DeliveryStatus::Skipped, None);
            s.error = Some(format!(
                "subscriber is {} at send time",
                c.subscriber_status
            ));
            return Ok(s);
        }
        let rendered = self.rendered_issue(c.issue_id).await?;
        let recipient = Recipient {
            subscriber_id: c.subscriber_id,
            email: c.email.clone(),
            name: c.name.clone(),
        };
        let message = match rendered.message(&recipient) {
            Ok(m) => m,
            Err(e) => {
                let f = Failure {
                    code: None,
                    enhanced: None,
                    reason: e.to_string(),
                    systemic: false,
                };
                return Ok(settled(DeliveryStatus::Failed, Some(&f)));
            }
        };
        self.pacer
            .wait(&self.pool)
            .await
            .context("failed to reserve send rate")?;
        let name = format!("issue{}-s{}", rendered.number(), c.subscriber_id);
        let return_path = self.return_path(c.issue_id, c.subscriber_id);
        let Some(crate::send::Handed { outcome, relay }) = self
            .mailer
            .send_after(message, return_path, &name, gate, recheck)
            .await
        else {
            return Err(anyhow!(WRITE_FAILED));
        };
        self.record_breaker(c.issue_id, &outcome);
        let message_id = Some(rendered.message_id(c.subscriber_id));
        let mut s = match &outcome {
            Outcome::Sent => settled(DeliveryStatus::Sent, None),
            Outcome::Bounced(f) => settled(DeliveryStatus::Bounced, Some(f)),
            Outcome::Failed(f) => Settled {
                // Not a retry given up on (below): that may have been delivered (no answer to
                // the final dot).
                systemic: f.relays_own(),
                ..settled(DeliveryStatus::Failed, Some(f))
            },
            Outcome::Transient(f) => {
                let d = &self.settings.delivery;
                let jitter = 0.5 + fastrand::f64();
                match retry_at(c, d.retry_base, d.give_up_after, self.db_now(), jitter) {
                    Some(next) => {
                        let mut s = settled(DeliveryStatus::Deferred, Some(f));
                        s.next_attempt_at = Some(next);
                        s
                    }
                    None => {
                        let mut s = settled(DeliveryStatus::Failed, Some(f));
                        s.error = Some(crate::send::classify::truncate(
                            &format!("gave up after {} attempts: {}", c.attempts, f.reason),
                            500,
                        ));
                        s
                    }
                }
            }
        };
        if s.status == DeliveryStatus::Sent {
            s.message_id = message_id;
        }
        s.relay = relay;
        tracing::debug!(
            subscriber_id = c.subscriber_id,
            issue_id = c.issue_id,
            attempt = c.attempts,
            status = s.status.as_str(),
            code = ?s.code,
            "delivery attempt"
        );
        Ok(s)
    }

    /// `bounces+<tag>@domain` for this delivery, when VERP is on.
    fn return_path(&self, issue_id: i64, subscriber_id: i64) -> Option<lettre::Address> {
        let b = &self.settings.bounces;
        if !b.verp {
            return None;
        }
        let tag = self.keys.sign_bounce(issue_id, subscriber_id);
        lettre::Address::new(format!("{}+{tag}", b.address.user()), b.address.domain()).ok()
    }

    fn record_breaker(&self, issue_id: i64, outcome: &Outcome) {
        let failure = match outcome {
            Outcome::Sent => None,
            Outcome::Transient(f) | Outcome::Bounced(f) | Outcome::Failed(f) => Some(f),
        };
        if let Ok(mut b) = self.breaker.lock() {
            b.record(issue_id, failure);
        }
    }

    async fn rendered_issue(&self, issue_id: i64) -> anyhow::Result<Arc<RenderedIssue>> {
        let mut cache = self.rendered.lock().await;
        if let Some(r) = cache.get(&issue_id) {
            return Ok(r.clone());
        }
        let row = issues::find_by_id(&self.pool, issue_id)
            .await?
            .ok_or_else(|| anyhow!("issue {issue_id} vanished"))?;
        let content = super::stored_content(&self.pool, &row)
            .await?
            .ok_or_else(|| anyhow!("issue {issue_id} has no content"))?;
        let rendered = Arc::new(render::render_issue(
            &self.settings.newsletter,
            &self.keys,
            self.settings.schedule.cron.zone(),
            &content,
            &self.settings.bounces.address,
        )?);
        cache.insert(issue_id, rendered.clone());
        Ok(rendered)
    }
}

/// When to try a temporarily failed delivery again: `retry_base` doubling with each attempt
/// (at most 6 hours), times `jitter` (0.5 to 1.5, so retries of one batch spread out), or
/// `None` once that would be past `give_up_after` from its first attempt.
pub fn retry_at(
    c: &Claimed,
    retry_base: Duration,
    give_up_after: Duration,
    now: DateTime<Utc>,
    jitter: f64,
) -> Option<DateTime<Utc>> {
    let exp = 2f64.powi((c.attempts - 1).clamp(0, 20));
    let delay = retry_base
        .mul_f64(exp * jitter)
        .min(Duration::from_secs(6 * 3600));
    let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
    let give_up =
        c.first_attempt_at + chrono::Duration::from_std(give_up_after).unwrap_or_default();
    (next <= give_up).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(attempts: i32, first_attempt_at: DateTime<Utc>) -> Claimed {
        Claimed {
            issue_id: 1,
            subscriber_id: 1,
            was: DeliveryStatus::Pending,
            attempts,
            first_attempt_at,
            email: "a@example.com".into(),
            name: None,
            subscriber_status: crate::domain::SubscriberStatus::Active,
        }
    }

    #[test]
    fn retries_back_off_exponentially_then_give_up() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z")
            .unwrap()
            .to_utc();
        let base = Duration::from_secs(300);
        let day = Duration::from_secs(86_400);
        let after = |attempts| {
            retry_at(&claimed(attempts, t0), base, day, t0, 1.0).map(|t| (t - t0).num_seconds())
        };
        assert_eq!(after(1), Some(300));
        assert_eq!(after(2), Some(600));
        assert_eq!(after(4), Some(2_400));
        assert_eq!(after(12), Some(6 * 3600), "capped at six hours");
        let jittered = retry_at(&claimed(1, t0), base, day, t0, 0.5).unwrap();
        assert_eq!((jittered - t0).num_seconds(), 150);
        let late = t0 + chrono::Duration::hours(23);
        assert!(retry_at(&claimed(3, t0), base, day, late, 1.0).is_some());
        assert_eq!(
            retry_at(&claimed(5, t0), base, day, late, 1.0),
            None,
            "a retry past give_up_after gives up"
        );
    }

    #[test]
    fn a_retry_at_the_largest_settings_config_allows_does_not_overflow() {
        let t0 = Utc::now();
        let six_hours = Duration::from_secs(6 * 3600);
        let year = Duration::from_secs(366 * 86_400);
        for attempts in [1, 21, i32::MAX] {
            let next = retry_at(&claimed(attempts, t0), six_hours, year, t0, 1.5);
            assert_eq!(next.map(|t| t - t0), Some(chrono::Duration::hours(6)));
        }
    }
}
