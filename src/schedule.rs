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
async fn fetch_feeds(pool: &PgPool, settings: &Settings) {
    match crate::feeds::fetch_due(pool, settings, None).await {
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
        fetch_feeds(pool, settings).await;
    }
    let due = digest::due_slot(settings, now);
    // Found before the due slot's issue exists: the slots since the last issue.
    let (missed, more) = missed_slots(pool, settings, now, due).await?;
    if let Some(slot) = due {
        pass.issue = Some(digest::create_issue(pool, settings, slot).await?);
    }
    pass.missed = missed_line(settings, now, due, &missed, more);
    pass.missed_slots = missed;
    pass.report = deliverer
        .run_until_idle(stop, patience, &deliver::no_progress)
        .await?;
    Ok(pass)
}

/// The most missed slots a pass names; a schedule every minute, off for a month, has 40,000.
const MISSED_AT_MOST: usize = 100;

/// The slots at or before `now`, other than `due`, that have no issue and came after the last
/// issue and the first `migrate` (a fresh install has missed nothing), oldest first, at most
/// [`MISSED_AT_MOST`]; and whether there are more. Before the first issue, only the latest
/// slot counts: an install set up over days has not missed every slot since `migrate`.
async fn missed_slots(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
) -> anyhow::Result<(Vec<DateTime<Utc>>, bool)> {
    let cron = &settings.schedule.cron;
    let installed = crate::store::installed_at(pool).await?;
    let Some(last_issue) = issues::latest_slot_at_or_before(pool, now).await? else {
        let latest = cron
            .latest_at_or_before(now)
            .filter(|s| Some(*s) != due && installed.is_none_or(|i| *s >= i));
        return Ok((latest.into_iter().collect(), false));
    };
    // From the first slot at or after the first migrate, if the last issue came before it.
    let from = installed
        .map(|i| i - chrono::Duration::seconds(1))
        .map_or(last_issue, |i| i.max(last_issue));
    let mut slots = Vec::new();
    let mut at = from;
    while let Some(slot) = cron.next_after(at).filter(|s| *s <= now) {
        if Some(slot) != due {
            if slots.len() == MISSED_AT_MOST {
                return Ok((slots, true));
            }
            slots.push(slot);
        }
        at = slot;
    }
    Ok((slots, false))
}

/// What the operator is told of `missed` (see [`missed_slots`]).
fn missed_line(
    settings: &Settings,
    now: DateTime<Utc>,
    due: Option<DateTime<Utc>>,
    missed: &[DateTime<Utc>],
    more: bool,
) -> Option<String> {
    let cron = &settings.schedule.cron;
    let grace = humantime::format_duration(settings.schedule.grace);
    let named = |slots: &[DateTime<Utc>]| {
        let shown: Vec<String> = slots.iter().take(5).map(|s| cron.local(*s)).collect();
        let rest = slots.len() - shown.len();
        match (rest, more) {
            (0, false) => shown.join(", "),
            (_, false) => format!("{} and {rest} more", shown.join(", ")),
            (_, true) => format!("{} and more than {rest} others", shown.join(", ")),
        }
    };
    match (due, missed) {
        (_, []) => None,
        (Some(_), older) => Some(format!(
            "missed {} (a newer slot passed over them); not sent, their articles are in this issue",
            named(older)
        )),
        (None, [latest]) => {
            let late = humantime::format_duration(Duration::from_secs(
                (now - *latest).num_seconds().max(0) as u64,
            ));
            Some(format!(
                "missed the slot {} by {late}, more than schedule.grace ({grace}); not sent",
                cron.local(*latest)
            ))
        }
        (None, [older @ .., latest]) => {
            let late = humantime::format_duration(Duration::from_secs(
                (now - *latest).num_seconds().max(0) as u64,
            ));
            Some(format!(
                "missed the slot {} by {late}, more than schedule.grace ({grace}), and before it {}; not sent",
                cron.local(*latest),
                named(older)
            ))
        }
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
