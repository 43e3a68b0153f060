//! Several relays (`[[smtp.relays]]`): which one carries the next message (by weight, among
//! those in rotation), each relay's own connection cap and rate ceiling, its own breaker that
//! takes it out of rotation after connection or policy failures and back after a cool-down,
//! and failover: a message a relay could not take is tried on the next one at once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use lettre::address::Envelope;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::classify::{self, Failure, Outcome};
use super::rate::Pacer;
use super::smtp::SmtpPool;
use crate::config::Settings;

/// A relay breaker judges the last this many attempts …
const WINDOW: usize = 20;
/// … once there are at least this many …
const MIN_ATTEMPTS: usize = 10;
/// … and takes the relay out when this share of them failed for relay reasons.
const RATIO: f64 = 0.8;

/// One relay: its connections, its ceilings and its health.
pub struct Relay {
    pub name: String,
    pool: SmtpPool,
    weight: u32,
    permits: Semaphore,
    pacer: Pacer,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// True for an attempt that failed because of the relay (connection, policy, 4xx).
    window: VecDeque<bool>,
    /// Out of rotation until then, and why.
    out: Option<(Instant, String)>,
}

/// What a relay's attempt counts as, for its breaker: the relay's fault (its connection, its
/// policy, "421 service not available", a refusal every recipient gets, a 5xx without an
/// enhanced code), or not (a recipient's own 4xx, or a 5xx whose code names the mailbox).
fn relay_fault(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Sent | Outcome::Bounced(_) => false,
        Outcome::Transient(f) => f.systemic || f.code == Some(421),
        Outcome::Failed(f) => f.systemic,
    }
}

/// Where a failed attempt is worth repeating on another relay at once: any temporary failure
/// (another relay may take it now) and a refusal the breaker counts (it may be this relay's
/// own); never a refusal whose code names the recipient's mailbox, and never when the relay
/// may have the message after all (it went silent or the connection broke once the message
/// was on its way): that waits for the normal retry, so a subscriber does not get it twice
/// through two relays.
fn try_elsewhere(outcome: &Outcome, maybe_sent: bool) -> bool {
    !maybe_sent
        && match outcome {
            Outcome::Sent | Outcome::Bounced(_) => false,
            Outcome::Transient(_) => true,
            Outcome::Failed(f) => f.systemic,
        }
}

/// The relays of a process, shared by its senders.
pub struct Relays {
    relays: Vec<Relay>,
    cooldown: Duration,
    /// The database the relays' own rate ceilings are kept in, when they are paced.
    pacing: std::sync::OnceLock<PgPool>,
}

/// A message handed to a relay: what came of it, and which relay had the last word.
pub struct Handed {
    pub outcome: Outcome,
    /// `None` when no relay was tried (all out of rotation).
    pub relay: Option<String>,
}

impl Relays {
    /// Every relay of the settings, with its pool (a bad URL or CA file fails here).
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let from = settings.newsletter.from.email.domain();
        let relays = settings
            .smtp
            .relays
            .iter()
            .map(|r| {
                Ok(Relay {
                    name: r.name.clone(),
                    pool: SmtpPool::new(&settings.smtp, r, from)?,
                    weight: r.weight,
                    permits: Semaphore::new(r.concurrency as usize),
                    pacer: Pacer::for_relay(r),
                    health: Mutex::new(Health::default()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            relays,
            cooldown: settings.delivery.breaker_cooldown,
            pacing: std::sync::OnceLock::new(),
        })
    }

    /// How many messages the relays' own ceilings let out `within` this long together; `None`
    /// when one of them has none (a message can always go out there).
    pub fn capacity(&self, within: Duration) -> Option<u32> {
        self.relays.iter().try_fold(0u32, |sum, r| {
            r.pacer.capacity(within).map(|n| sum.saturating_add(n))
        })
    }

    /// Paces sends under each relay's own ceiling, kept in this database.
    pub fn pace_with(&self, pool: PgPool) {
        let _ = self.pacing.set(pool);
    }

    /// Sends one message on a relay chosen by weight; when it cannot take the message, on
    /// the next, until one answers for the recipient or every relay in rotation was tried.
    /// The message is handed over only once `gate` says yes (`None`: it said no); on a
    /// further relay, only once `recheck` says yes again (the first relay may have taken
    /// long enough to fail for the claim to have passed to another worker).
    pub async fn send<R: Future<Output = bool>>(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        gate: impl Future<Output = bool>,
        recheck: impl Fn() -> R,
    ) -> Option<Handed> {
        // Shared: asked once, whichever relay asks first.
        let gate = gate.shared();
        // The gate for one attempt; `again`: the claim is confirmed once more before the dot.
        let gate_for = |again: bool| {
            let gate = gate.clone();
            let recheck = &recheck;
            async move { gate.await && (!again || recheck().await) }
        };
        let mut tried = Vec::with_capacity(self.relays.len());
        let mut last: Option<Handed> = None;
        while let Some(i) = self.choose(&tried) {
            tried.push(i);
            let relay = &self.relays[i];
            let Ok(_permit) = relay.permits.acquire().await else {
                continue;
            };
            if let Some(db) = self.pacing.get()
                && let Err(e) = relay.pacer.wait(db).await
            {
                tracing::warn!(relay = %relay.name, "cannot reserve the relay's send rate: {e}");
                last = Some(Handed {
                    outcome: classify::connection_failure(&format!(
                        "cannot reserve relay {}'s send rate: {e}",
                        relay.name
                    )),
                    relay: Some(relay.name.clone()),
                });
                continue;
            }
            let first = tried.len() == 1;
            let mut attempt = relay
                .pool
                .send(envelope, bytes, gate_for(!first), false)
                .await?;
            if attempt.found_closed {
                // No answer about this message (an error or a 421 at MAIL): the relay had
                // closed the pooled connection (many take so many messages a connection).
                // Once more on a new connection, after asking again whether the claim is
                // still ours, as before a further relay.
                tracing::debug!(relay = %relay.name, "pooled connection found closed; sending on a new one");
                attempt = relay
                    .pool
                    .send(envelope, bytes, gate_for(true), true)
                    .await?;
            }
            let super::smtp::Attempt {
                outcome,
                maybe_sent,
                ..
            } = attempt;
            self.record(i, &outcome);
            let again = try_elsewhere(&outcome, maybe_sent) && self.relays.len() > 1;
            let handed = Handed {
                outcome,
                relay: Some(relay.name.clone()),
            };
            if !again {
                return Some(handed);
            }
            last = Some(handed);
        }
        Some(last.unwrap_or_else(|| Handed {
            outcome: Outcome::Transient(Failure {
                code: None,
                enhanced: None,
                reason: classify::truncate(
                    &format!("every relay is out of rotation: {}", self.out_reasons()),
                    400,
                ),
                systemic: true,
            }),
            relay: None,
        }))
    }

    /// Says QUIT on every relay's idle connections.
    pub async fn close(&self) {
        futures_util::future::join_all(self.relays.iter().map(|r| r.pool.close())).await;
    }

    /// Checks every relay (EHLO, TLS, AUTH); the first error names its relay.
    pub async fn check(&self) -> anyhow::Result<()> {
        for r in &self.relays {
            r.pool.check().await.map_err(|e| match self.relays.len() {
                1 => e,
                _ => e.context(format!("relay {}", r.name)),
            })?;
        }
        Ok(())
    }

    /// Whether relay `i` is in rotation now (a relay whose cool-down is over comes back, with
    /// a clean slate).
    pub fn in_rotation(&self, i: usize) -> bool {
        let Ok(mut h) = self.relays[i].health.lock() else {
            return false;
        };
        match &h.out {
            Some((until, _)) if Instant::now() < *until => false,
            Some(_) => {
                tracing::info!(relay = %self.relays[i].name, "relay back in rotation after its cool-down");
                h.out = None;
                h.window.clear();
                true
            }
            None => true,
        }
    }

    /// A relay in rotation not yet tried, at random by weight.
    fn choose(&self, tried: &[usize]) -> Option<usize> {
        let open: Vec<usize> = (0..self.relays.len())
            .filter(|i| !tried.contains(i) && self.in_rotation(*i))
            .collect();
        let total: u64 = open.iter().map(|i| u64::from(self.relays[*i].weight)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = fastrand::u64(0..total);
        for i in open {
            let w = u64::from(self.relays[i].weight);
            if pick < w {
                return Some(i);
            }
            pick -= w;
        }
        None
    }

    /// Counts one attempt on relay `i`; with several relays, one whose recent attempts mostly
    /// failed for its own reasons leaves the rotation for the cool-down. A single relay stays:
    /// the breaker judges it, as before relays existed.
    fn record(&self, i: usize, outcome: &Outcome) {
        let relay = &self.relays[i];
        if self.relays.len() < 2 {
            return;
        }
        let Ok(mut h) = relay.health.lock() else {
            return;
        };
        h.window.push_back(relay_fault(outcome));
        if h.window.len() > WINDOW {
            h.window.pop_front();
        }
        let bad = h.window.iter().filter(|b| **b).count();
        let n = h.window.len();
        if h.out.is_none() && n >= MIN_ATTEMPTS && bad as f64 >= RATIO * n as f64 {
            let reason = match outcome {
                Outcome::Transient(f) | Outcome::Failed(f) | Outcome::Bounced(f) => {
                    f.reason.clone()
                }
                Outcome::Sent => String::new(),
            };
            tracing::warn!(
                relay = %relay.name,
                "relay out of rotation for {}: {bad} of its last {n} attempts failed ({reason})",
                humantime::format_duration(self.cooldown)
            );
            h.out = Some((Instant::now() + self.cooldown, reason));
            h.window.clear();
        }
    }

    fn out_reasons(&self) -> String {
        self.relays
            .iter()
            .map(|r| {
                let why = r
                    .health
                    .lock()
                    .ok()
                    .and_then(|h| h.out.as_ref().map(|(_, w)| w.clone()))
                    .unwrap_or_default();
                format!("{} ({why})", r.name)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relays(weights: &str) -> Relays {
        let mut toml = String::from("[delivery]\nbreaker_cooldown = \"200ms\"\n[smtp]\n");
        for (i, w) in weights.split(',').enumerate() {
            toml.push_str(&format!(
                "[[smtp.relays]]\nname = \"r{i}\"\nurl = \"smtp://127.0.0.1:{}\"\nweight = {w}\n",
                2525 + i
            ));
        }
        Relays::new(&Settings::from_toml(&toml).expect("settings")).expect("relays")
    }

    fn refused() -> Outcome {
        classify::connection_failure("connection refused")
    }

    #[test]
    fn messages_spread_by_weight() {
        let r = relays("1,3");
        let mut n = [0u32; 2];
        for _ in 0..4000 {
            n[r.choose(&[]).unwrap()] += 1;
        }
        assert!((800..1200).contains(&n[0]), "{n:?}");
        assert_eq!(r.choose(&[0, 1]), None, "every relay tried");
        assert_eq!(r.choose(&[1]), Some(0));
    }

    #[test]
    fn a_failing_relay_leaves_the_rotation_and_the_other_stays() {
        let r = relays("1,1");
        for _ in 0..MIN_ATTEMPTS - 1 {
            r.record(0, &refused());
            r.record(1, &Outcome::Sent);
        }
        assert!(r.in_rotation(0), "too few attempts to judge");
        r.record(0, &refused());
        assert!(!r.in_rotation(0));
        assert!(r.in_rotation(1));
        assert!((0..100).all(|_| r.choose(&[]) == Some(1)));
        assert!(r.out_reasons().contains("r0 (connection refused)"));
        // A recipient's own refusal is not the relay's fault.
        let mailbox = classify::classify_reply(550, "5.1.1 no such user");
        for _ in 0..50 {
            r.record(1, &mailbox);
        }
        assert!(r.in_rotation(1));
        // After its cool-down it is back, with a clean slate.
        std::thread::sleep(Duration::from_millis(250));
        assert!(r.in_rotation(0));
        r.record(0, &refused());
        assert!(
            r.in_rotation(0),
            "one failure after the cool-down is not a verdict"
        );
    }

    #[test]
    fn a_single_relay_is_never_taken_out() {
        let r = relays("1");
        for _ in 0..50 {
            r.record(0, &refused());
        }
        assert!(
            r.in_rotation(0),
            "the issue's breaker judges a single relay"
        );
    }
}
