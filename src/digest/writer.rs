//! The results writer: one connection, one statement per batch of results and claim checks,
//! and the gate a sender waits at before its final dot.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::anyhow;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::counters::{Counters, Progress};
use crate::domain::DeliveryStatus;
use crate::store::deliveries::{self, Settled};

/// Why a sender stops when its results cannot be written.
pub(super) const WRITE_FAILED: &str = "cannot write delivery results to the database; stopping (unwritten sends are retried once this worker is gone)";

/// What became of a result the writer's statement ran for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// Durable.
    Written,
    /// Not written: the claim had been taken over (this worker's lease ran out, say), and its
    /// new owner sends the message again.
    TakenOver,
}

/// A result on its way to the database.
pub(super) struct Pending {
    /// Dropped unanswered when the result could not be written at all.
    done: oneshot::Receiver<Recorded>,
    status: DeliveryStatus,
    /// The sender's next claim and the answer to whether it is still this worker's.
    checked: Option<((i64, i64), oneshot::Receiver<bool>)>,
    submitted: std::time::Instant,
}

/// An answer checked with the previous result is used for a final dot only this soon after:
/// a sender held up longer (a rate ceiling, a slow connection) asks again.
const CHECK_FRESH_FOR: Duration = Duration::from_millis(50);

impl Pending {
    /// The answer for `key`, when it was checked with this result not long ago.
    pub(super) fn take_check(&mut self, key: (i64, i64)) -> Option<oneshot::Receiver<bool>> {
        let (checked, answer) = self.checked.take()?;
        (checked == key && self.submitted.elapsed() < CHECK_FRESH_FOR).then_some(answer)
    }
}

/// Waits until the sender's previous result is settled in the database, then counts it: as
/// its outcome when written, as taken over when its claim had gone to another worker (not
/// reported as sent: the new owner sends it). `pending` is cleared only once the answer is in:
/// should the wait be abandoned half-way, the next call waits again instead of losing the
/// result.
pub(super) async fn settle_pending(
    pending: &mut Option<Pending>,
    counters: &Counters,
    progress: Progress<'_>,
) -> anyhow::Result<()> {
    let Some(p) = pending.as_mut() else {
        return Ok(());
    };
    let answer = (&mut p.done).await;
    let status = p.status;
    *pending = None;
    match answer {
        Ok(Recorded::Written) => counters.count(status),
        Ok(Recorded::TakenOver) => {
            counters.taken_over.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => return Err(anyhow!(WRITE_FAILED)),
    }
    counters.beat_if_looping();
    progress(&counters.outcomes().to_string());
    Ok(())
}

/// A claim to check, and where the answer goes.
type Check = ((i64, i64), oneshot::Sender<bool>);

/// What senders ask the writer.
enum Job {
    /// Write this result; answer once it is durable (or found taken over). With it, the
    /// sender's next claim to check, so one statement answers both.
    Result(Settled, oneshot::Sender<Recorded>, Option<Check>),
    /// Is this claim still ours (renewing its lease)? Asked just before a final dot.
    Confirm((i64, i64), oneshot::Sender<bool>),
}

/// Writes results in batches: every result and claim check waiting when a write starts goes
/// into the same statement, and each sender hears back once its own is done.
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(super) fn spawn(pool: PgPool, worker: i32, threshold: u32, margin: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(1024);
        let task = tokio::spawn(async move {
            // Its own connection, opened again after any error (a restarted server, say).
            let mut conn: Option<sqlx::PgConnection> = None;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let mut results = Vec::new();
                let mut confirm = Vec::new();
                for job in &batch {
                    match job {
                        Job::Result(s, _, check) => {
                            results.push(s.clone());
                            if let Some((key, _)) = check {
                                confirm.push(*key);
                            }
                        }
                        Job::Confirm(key, _) => confirm.push(*key),
                    }
                }
                let mut outcome = None;
                for attempt in 0..5u32 {
                    let written = match conn.as_mut() {
                        Some(c) => {
                            deliveries::settle(c, worker, &results, &confirm, threshold, margin)
                                .await
                        }
                        None => match deliveries::settle_connection(&pool, worker).await {
                            Ok(c) => {
                                let c = conn.insert(c);
                                deliveries::settle(c, worker, &results, &confirm, threshold, margin)
                                    .await
                            }
                            Err(e) => Err(e),
                        },
                    };
                    match written {
                        Ok(mut o) => {
                            // An earlier attempt may have committed before its reply was lost.
                            if attempt > 0
                                && o.written.len() < results.len()
                                && let Some(c) = conn.as_mut()
                            {
                                let unwritten: Vec<Settled> = results
                                    .iter()
                                    .filter(|r| !o.written.contains(&(r.issue_id, r.subscriber_id)))
                                    .cloned()
                                    .collect();
                                if let Ok(before) = deliveries::already_settled(c, &unwritten).await
                                {
                                    o.written.extend(before);
                                }
                            }
                            outcome = Some(o);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(attempt, "writing delivery results failed: {e}");
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
                if let Some(o) = &outcome
                    && o.written.len() < results.len()
                {
                    tracing::warn!(
                        worker,
                        lost = results.len() - o.written.len(),
                        "results not written: their claims were taken over (this worker's lease ran out or its database session was lost); the new owner sends again"
                    );
                }
                // Checks are answered only when the statement ran: a dropped answer tells the
                // sender the check could not be made, which is not the same as "taken over".
                let held = |key: &(i64, i64), answer: oneshot::Sender<bool>| {
                    if let Some(o) = &outcome {
                        let _ = answer.send(o.held.contains(key));
                    }
                };
                for job in batch {
                    match job {
                        Job::Result(s, ack, check) => {
                            if let Some((key, answer)) = check {
                                held(&key, answer);
                            }
                            // Unanswered (dropped) when nothing could be written.
                            if let Some(o) = &outcome {
                                let key = (s.issue_id, s.subscriber_id);
                                let _ = ack.send(if o.written.contains(&key) {
                                    Recorded::Written
                                } else {
                                    Recorded::TakenOver
                                });
                            }
                        }
                        Job::Confirm(key, ack) => held(&key, ack),
                    }
                }
            }
            // Said goodbye properly, or Postgres logs an unexpected EOF for every run.
            if let Some(c) = conn {
                let _ = sqlx::Connection::close(c).await;
            }
        });
        Self { tx, task }
    }

    /// Queues a result; the returned [`Pending`] resolves once it is durable. `next`: the
    /// sender's next claim, checked by the same statement (the answer comes back with the
    /// pending result, for that claim's gate): asked separately, a check queued just after the
    /// result can miss the statement the result went into and put a second statement into the
    /// next message's wait.
    pub(super) async fn submit(
        &self,
        settled: Settled,
        next: Option<(i64, i64)>,
    ) -> anyhow::Result<Pending> {
        let status = settled.status;
        let (ack, done) = oneshot::channel();
        let (check, checked) = match next {
            Some(key) => {
                let (answer, checked) = oneshot::channel();
                (Some((key, answer)), Some((key, checked)))
            }
            None => (None, None),
        };
        self.tx
            .send(Job::Result(settled, ack, check))
            .await
            .map_err(|_| anyhow!("the result writer stopped"))?;
        Ok(Pending {
            done,
            status,
            checked,
            submitted: std::time::Instant::now(),
        })
    }

    /// Asks whether a claim is still this worker's: `Ok(true)` if it is, `Ok(false)` if it was
    /// taken over, an error if the check could not be made.
    pub(super) async fn confirm(&self, key: (i64, i64)) -> oneshot::Receiver<bool> {
        let (ack, answer) = oneshot::channel();
        // A stopped writer drops `ack`: no answer, and nothing is handed over.
        let _ = self.tx.send(Job::Confirm(key, ack)).await;
        answer
    }

    pub(super) async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}
