//! Attempts counted by outcome: the [`Outcomes`] of a run, this process's [`Counters`] (for
//! `/metrics`, progress lines and `/readyz`'s heartbeat), and the [`Progress`] callback.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;

use crate::domain::DeliveryStatus;

/// Attempts counted by how they ended: the one list of delivery outcomes, in one order, that
/// reports, progress lines, logs and `/metrics` all read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Outcomes {
    /// Accepted by the server (or written to the outbox).
    pub sent: u64,
    /// Temporary failures, to be retried.
    pub deferred: u64,
    /// Hard bounces: they count toward suppression.
    pub bounced: u64,
    /// Refused for good; the subscriber is kept.
    pub failed: u64,
    /// Not sent: the subscriber left after fan-out.
    pub skipped: u64,
}

/// The settled states an attempt ends in, in [`Outcomes`]' order.
const OUTCOMES: [DeliveryStatus; 5] = [
    DeliveryStatus::Sent,
    DeliveryStatus::Deferred,
    DeliveryStatus::Bounced,
    DeliveryStatus::Failed,
    DeliveryStatus::Skipped,
];

impl Outcomes {
    fn from_array([sent, deferred, bounced, failed, skipped]: [u64; 5]) -> Self {
        Self {
            sent,
            deferred,
            bounced,
            failed,
            skipped,
        }
    }

    fn to_array(self) -> [u64; 5] {
        [
            self.sent,
            self.deferred,
            self.bounced,
            self.failed,
            self.skipped,
        ]
    }

    /// Each outcome as `delivery.status` spells it, with its count.
    pub fn by_status(&self) -> [(DeliveryStatus, u64); 5] {
        let counts = self.to_array();
        std::array::from_fn(|i| (OUTCOMES[i], counts[i]))
    }

    /// Messages handed to the relay or refused by it (every outcome but `skipped`).
    pub fn attempts(&self) -> u64 {
        self.sent + self.deferred + self.bounced + self.failed
    }

    /// Every outcome, `skipped` included.
    pub fn total(&self) -> u64 {
        self.attempts() + self.skipped
    }

    pub(super) fn since(self, earlier: Self) -> Self {
        let (now, then) = (self.to_array(), earlier.to_array());
        Self::from_array(std::array::from_fn(|i| now[i].saturating_sub(then[i])))
    }
}

impl std::fmt::Display for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (status, n)) in self.by_status().into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{status} {n}")?;
        }
        Ok(())
    }
}

/// Attempts by outcome since the process started (for `/metrics` and progress lines).
#[derive(Debug, Default)]
pub struct Counters {
    /// In [`Outcomes`]' order.
    outcomes: [AtomicU64; 5],
    /// Claims taken over from workers that died (or ran out their lease).
    pub reclaimed: AtomicU64,
    /// Claims this process did not hand over because the check before the final dot said no:
    /// taken over, or under a third of the lease left (then given back if still its own).
    pub lost: AtomicU64,
    /// Messages this process handed over whose claim was taken over before their result was
    /// written: not counted as sent, since the new owner sends them again.
    pub taken_over: AtomicU64,
    /// When `serve`'s scheduler loop last did something (unix seconds; 0: no loop in this
    /// process): a pass began, or a delivery result was written. `/readyz` reads it.
    pub heartbeat: std::sync::atomic::AtomicI64,
}

impl Counters {
    /// Marks the scheduler loop (or a delivery it runs) alive now.
    pub fn beat(&self) {
        self.heartbeat
            .store(Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// Marks the loop alive now if this process runs one (`serve`); a one-shot command's
    /// work (`run`, `feeds fetch`) leaves the heartbeat at 0.
    pub fn beat_if_looping(&self) {
        if self.heartbeat.load(Ordering::Relaxed) != 0 {
            self.beat();
        }
    }

    /// Counts one settled attempt. A state that is not an outcome (`pending`, `sending`)
    /// counts as `failed`: it cannot happen, and if it did, nothing would be claimed sent.
    pub fn count(&self, status: DeliveryStatus) {
        let i = OUTCOMES.iter().position(|o| *o == status).unwrap_or(3);
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The attempts counted so far.
    pub fn outcomes(&self) -> Outcomes {
        Outcomes::from_array(std::array::from_fn(|i| {
            self.outcomes[i].load(Ordering::Relaxed)
        }))
    }
}

/// Told after each settled attempt, with the counters as one line: how the CLI draws its
/// progress bar (the use case knows nothing of terminals).
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// A [`Progress`] that ignores everything (runs nobody watches: timers, `serve`, tests).
pub fn no_progress(_: &str) {}
