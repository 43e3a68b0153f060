//! The breaker (docs/ARCHITECTURE.md §4.6): when most recent attempts fail for connection or
//! policy reasons, sending more only hurts the sender's reputation, so the issue pauses.

use std::collections::VecDeque;

use crate::render;
use crate::send::Failure;

/// Recent attempts for the breaker: when most of them failed because of the connection or
/// the server's policy, sending more only hurts the sender's reputation.
#[derive(Default)]
pub(super) struct Breaker {
    window: VecDeque<bool>,
    /// Issues this worker stopped sending.
    pub(super) open: Vec<i64>,
    /// Issues that tripped since last asked, with the reason: to be paused in the database.
    pub(super) newly_tripped: Vec<(i64, String)>,
}

const BREAKER_WINDOW: usize = 20;
const BREAKER_MIN: usize = 10;
const BREAKER_RATIO: f64 = 0.8;

impl Breaker {
    /// Counts one attempt of `issue_id`: `None` when it was sent.
    pub(super) fn record(&mut self, issue_id: i64, failure: Option<&Failure>) {
        let systemic = failure.is_some_and(|f| f.systemic);
        self.window.push_back(systemic);
        if self.window.len() > BREAKER_WINDOW {
            self.window.pop_front();
        }
        let bad = self.window.iter().filter(|b| **b).count();
        let n = self.window.len();
        if n >= BREAKER_MIN
            && bad as f64 >= BREAKER_RATIO * n as f64
            && !self.open.contains(&issue_id)
        {
            // The last failure first: `issue list` shortens the reason, and the reply
            // ("554 5.7.1 …") is what the operator needs to see.
            let last = failure.map(|f| f.reason.as_str()).unwrap_or_default();
            self.open.push(issue_id);
            self.newly_tripped.push((
                issue_id,
                render::one_line(&format!(
                    "{last} ({bad} of the last {n} attempts failed for connection or policy reasons)"
                )),
            ));
            self.window.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn systemic() -> Failure {
        Failure {
            code: Some(554),
            enhanced: Some("5.7.1".into()),
            reason: "554 5.7.1 blocked".into(),
            systemic: true,
        }
    }

    fn mailbox() -> Failure {
        Failure {
            code: Some(550),
            enhanced: Some("5.1.1".into()),
            reason: "550 5.1.1 no such user".into(),
            systemic: false,
        }
    }

    #[test]
    fn it_trips_once_most_recent_attempts_fail_for_policy_reasons() {
        let mut b = Breaker::default();
        for _ in 0..BREAKER_MIN - 1 {
            b.record(7, Some(&systemic()));
        }
        assert!(b.open.is_empty(), "too few attempts to judge");
        b.record(7, Some(&systemic()));
        assert_eq!(b.open, [7]);
        let (issue, reason) = &b.newly_tripped[0];
        assert_eq!(*issue, 7);
        assert!(reason.starts_with("554 5.7.1 blocked"), "{reason}");
        assert!(
            reason.contains("(10 of the last 10 attempts failed"),
            "{reason}"
        );
    }

    #[test]
    fn mailbox_errors_and_successes_do_not_trip_it() {
        let mut b = Breaker::default();
        for i in 0..100 {
            match i % 5 {
                0 => b.record(1, Some(&systemic())),
                1 | 2 => b.record(1, Some(&mailbox())),
                _ => b.record(1, None),
            }
        }
        assert!(b.open.is_empty() && b.newly_tripped.is_empty());
    }

    #[test]
    fn a_tripped_issue_is_reported_once() {
        let mut b = Breaker::default();
        for _ in 0..50 {
            b.record(3, Some(&systemic()));
        }
        assert_eq!(b.open, [3]);
        assert_eq!(b.newly_tripped.len(), 1);
    }
}
