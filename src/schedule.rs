//! Running on the schedule: `run_once` for cron and systemd timers (do what is due, then
//! exit) and `run_until_stopped` for `digestif serve` (sleep until the next slot or retry,
//! deliver, repeat; drain gracefully on a stop signal).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::clock;
use crate::config::Settings;
use crate::digest::{self, deliver};
use crate::store::{deliveries, issues};

/// What one pass did, for the operator.
#[derive(Debug, Default)]
pub struct Pass {
    /// The issue of the due slot (a skipped slot's has no number and says why).
    pub issue: Option<issues::IssueRow>,
    /// Slots missed and not sent, in one line: the latest when it is more than the grace window
    /// late, and those since the last issue that a newer slot passed over.
    pub missed: Option<String>,
    /// The slots `missed` names (at most [`MISSED_AT_MOST`]): how `serve` tells a new miss from
    /// one it has already told (the line itself changes as the lateness grows).
    pub missed_slots: Vec<DateTime<Utc>>,
    /// What delivery did.
    pub report: deliver::Report,
}

impl Pass {
    /// The issue of the due slot in one line: number, status and subject, or why the slot was
    /// skipped.
    pub fn issue_line(&self, schedule: &crate::domain::Schedule) -> Option<String> {
        let issue = self.issue.as_ref()?;
        Some(match issue.number {
            Some(n) => format!("issue #{n} ({}): {}", issue.status, issue.subject),
            None => format!(
                "slot {} skipped: {}",
                schedule.local(issue.slot),
                issue.status_reason.as_deref().unwrap_or_default()
            ),
        })
    }
}

/// Fetches the feeds that are due, logging each outcome; never fails the pass.
async fn fetch_feeds(pool: &PgPool, settings: &Settings, deliverer: &deliver::Deliverer) {
    // Each feed that ends is a sign of life for the watchdog: 200 feeds that each take their
    // whole `feeds.timeout` keep a pass busy for minutes.
    let alive = || deliverer.counters().beat_if_looping();
    match crate::feeds::fetch_due(pool, settings, None, &alive).await {
        Ok(reports) => {
            for r in reports {
                if r.ok {
                    tracing::info!(
                        feed = r.feed_id,
                        added = r.added,
                        "feed {}: {}",
                        r.url,
                        r.status
                    );
                } else {
                    tracing::warn!(feed = r.feed_id, "feed {}: {}", r.url, r.status);
                }
            }
        }
        Err(e) => tracing::warn!("fetching feeds failed: {e:#}"),
    }
}

/// Creates the issue of the slot due at `now` (if within `schedule.grace`; older missed slots
/// are reported, not sent, unless they came before the first `migrate`) and delivers whatever
/// is ready. Running it again, or twice at once, does nothing more: one issue per slot, and
/// claims are exclusive.
pub async fn run_once(
    pool: &PgPool,
    settings: &Settings,
    deliverer: &deliver::Deliverer,
    now: DateTime<Utc>,
    stop: watch::Receiver<bool>,
    patience: deliver::Patience,
) -> anyhow::Result<Pass> {
    let mut pass = Pass::default();
    // Feeds first, so an issue composed now holds what they just brought. A feed that fails
    // keeps its error and is skipped; nothing here stops the issue.
    if settings.feeds.fetch_before_compose {
        fetch_feeds(pool, settings, deliverer).await;
    }
    let due = digest::due_slot(settings, now);
    // Found before the due slot's issue exists: the slots since the last issue.
    let mut missed = missed_slots(pool, settings, now, due).await?;
    if let Some(slot) = due {
        let issue = digest::create_issue(pool, settings, slot).await?;
        // Skipped for want of anything new: the slots it came after had nothing either.
        if issue.number.is_none() {
            missed.passed_over.clear();
            missed.more = false;
        }
        pass.issue = Some(issue);
    }
    pass.missed = missed_line(settings, now, &missed);
    pass.missed_slots = missed.passed_over.into_iter().chain(missed.late).collect();
    pass.report = deliverer
        .run_until_idle(stop, patience, &deliver::no_progress)
        .await?;
    Ok(pass)
}

/// The most passed-over slots a pass names; a schedule every minute, off for a month, has
/// 40,000.
const MISSED_AT_MOST: usize = 100;

/// What a pass found missed: slots at or before `now` with no issue, after the last issue and
/// the first `migrate` (a fresh install has missed nothing).
#[derive(Debug, Default)]
struct Missed {
    /// The latest slot, when it is not due (later than `schedule.grace`) and has no issue.
    late: Option<DateTime<Utc>>,
    /// Older slots a newer one came before, oldest first, at most [`MISSED_AT_MOST`]; only
    /// since the last issue, so before the first one there are none (an install set up over
    /// days has not missed every slot since `migrate`).
    passed_over: Vec<DateTime<Utc>>,
    /// More passed-over slots than those.
    more: bool,
}

async fn missed_slots(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
) -> anyhow::Result<Missed> {
    let cron = &settings.schedule.cron;
    let installed = crate::store::installed_at(pool).await?;
    let last_issue = issues::latest_slot_at_or_before(pool, now).await?;
    let counts = |slot: DateTime<Utc>| {
        installed.is_none_or(|i| slot >= i) && last_issue.is_none_or(|l| slot > l)
    };
    let latest = cron.latest_at_or_before(now);
    let mut missed = Missed {
        late: latest.filter(|s| due.is_none() && counts(*s)),
        ..Missed::default()
    };
    let Some(mut at) = last_issue else {
        return Ok(missed);
    };
    while let Some(slot) = cron.next_after(at).filter(|s| Some(*s) < latest) {
        if counts(slot) {
            if missed.passed_over.len() == MISSED_AT_MOST {
                missed.more = true;
                break;
            }
            missed.passed_over.push(slot);
        }
        at = slot;
    }
    Ok(missed)
}

/// What the operator is told of `missed`, in one line.
fn missed_line(settings: &Settings, now: DateTime<Utc>, missed: &Missed) -> Option<String> {
    let cron = &settings.schedule.cron;
    let older = match missed.passed_over.as_slice() {
        [] => None,
        slots => {
            let shown: Vec<String> = slots.iter().take(5).map(|s| cron.local(*s)).collect();
            let rest = slots.len() - shown.len();
            Some(match (rest, missed.more) {
                (0, false) => shown.join(", "),
                (_, false) => format!("{} and {rest} more", shown.join(", ")),
                (_, true) => format!("{} and more than {rest} others", shown.join(", ")),
            })
        }
    };
    let late = missed.late.map(|slot| {
        let by = humantime::format_duration(Duration::from_secs(
            (now - slot).num_seconds().max(0) as u64
        ));
        format!(
            "missed the slot {} by {by}, more than schedule.grace ({})",
            cron.local(slot),
            humantime::format_duration(settings.schedule.grace)
        )
    });
    match (late, older) {
        (None, None) => None,
        (Some(late), None) => Some(format!("{late}; not sent")),
        (None, Some(older)) => Some(format!(
            "missed {older}: a newer slot came before they were sent; not sent"
        )),
        (Some(late), Some(older)) => Some(format!("{late}, and before it {older}; not sent")),
    }
}

/// The longest `serve` sleeps without looking at the database again (issues created or
/// resumed by hand, cool-downs ending).
const MAX_NAP: Duration = Duration::from_secs(60);

/// `digestif serve`'s loop: run a pass, then sleep until the next slot or the next retry is
/// due (never a busy loop). Returns when `stop` turns true, after the pass in progress has
/// drained (messages in flight finish, unstarted claims are released).
pub async fn run_until_stopped(
    pool: PgPool,
    settings: Arc<Settings>,
    deliverer: Arc<deliver::Deliverer>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last_missed = Vec::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        deliverer.counters().beat();
        let now = clock::now();
        match run_once(
            &pool,
            &settings,
            &deliverer,
            now,
            stop.clone(),
            deliver::Patience {
                wait_within: Duration::ZERO,
            },
        )
        .await
        {
            Ok(pass) => {
                if let Some(line) = &pass.missed
                    && pass.missed_slots != last_missed
                {
                    tracing::warn!("{line}");
                    last_missed = pass.missed_slots.clone();
                }
                let r = &pass.report;
                if r.outcomes.total() > 0 {
                    tracing::info!(outcomes = %r.outcomes, "delivery pass");
                }
                for n in &r.finished {
                    tracing::info!(number = n, "issue complete");
                }
            }
            // A database hiccup must not end the service: log it and try again after a nap.
            Err(e) => tracing::error!("delivery pass failed: {e:#}"),
        }
        let wake = next_wake(&pool, &settings, clock::now()).await;
        tracing::debug!(?wake, "sleeping");
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How long to sleep: until the next slot or the next retry, whichever comes first, at most
/// `MAX_NAP`.
async fn next_wake(pool: &PgPool, settings: &Settings, now: DateTime<Utc>) -> Duration {
    // The slot by the schedule's clock, a retry by the database's (see `next_due`): in a test
    // build whose clock was set, or with clocks that disagree, each is the one that decides.
    let slot = settings
        .schedule
        .cron
        .next_after(now)
        .map(|t| (t - now).to_std().unwrap_or_default());
    let retry = deliveries::next_due(pool)
        .await
        .ok()
        .flatten()
        .map(|(_, after)| after);
    // While another worker holds claims, look again soon: should it die, its claims are
    // claimable at once, and someone has to notice.
    let longest = match deliveries::any_claimed(pool).await {
        Ok(true) => WATCH_NAP,
        _ => MAX_NAP,
    };
    [slot, retry]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(MAX_NAP)
        .clamp(Duration::from_millis(200), longest)
}

/// How often `serve` looks for dead workers' claims while others are sending.
const WATCH_NAP: Duration = Duration::from_secs(5);
