//! Articles from feeds (issue 19): fetching every due feed ([`fetch`]), reading its entries
//! as articles ([`entry`]) and storing them once (`store::feeds`). A feed that is slow or
//! broken costs its own time limit and no more: its error is stored with it and the others go
//! on.

pub mod entry;
pub mod fetch;

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt as _;
use sqlx::PgPool;
use url::Url;

use crate::config::Settings;
use crate::store::feeds::{self as db, FeedRow};

/// Feeds fetched at once.
const AT_ONCE: usize = 8;

/// The first wait after a failure; each further failure doubles it, up to a day.
const FIRST_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// What fetching one feed did.
#[derive(Debug, serde::Serialize)]
pub struct FeedReport {
    pub feed_id: i64,
    pub url: String,
    /// New articles stored.
    pub added: u64,
    /// 'ok', 'not modified', or the error in one line.
    pub status: String,
    pub ok: bool,
    /// Entries left out, with why.
    pub skipped: Vec<String>,
}

/// Fetches the due feeds (or only `only`, due or not), stores their new entries and records
/// each outcome with its feed; `each_done` is called as each feed ends.
pub async fn fetch_due(
    pool: &PgPool,
    settings: &Settings,
    only: Option<i64>,
    each_done: &(dyn Fn() + Sync),
) -> anyhow::Result<Vec<FeedReport>> {
    db::sync_config(pool, &settings.feeds.sources).await?;
    let feeds = db::to_fetch(pool, only).await?;
    if feeds.is_empty() {
        return Ok(Vec::new());
    }
    let f = &settings.feeds;
    let user_agent = format!(
        "digestif/{} (+{})",
        env!("CARGO_PKG_VERSION"),
        settings.newsletter.base_url.as_str()
    );
    let fetcher = fetch::Fetcher::new(f.timeout, f.max_bytes, f.allow_private, &user_agent)?;
    let reports = futures_util::stream::iter(feeds)
        .map(|feed| async {
            let report = one(pool, settings, &fetcher, feed).await;
            each_done();
            report
        })
        .buffer_unordered(AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let mut reports = reports.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    reports.sort_by_key(|r| r.feed_id);
    Ok(reports)
}

/// The database refused the data itself: a data exception (22: an encoding, a value out of
/// range), a constraint (23), a limit (54: an index row too large) or a trigger's refusal
/// (P0). The feed is at fault then; a deadlock, a timeout or a restart is not the feed's.
fn is_refusal(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code().is_some_and(|code| {
        ["22", "23", "54", "P0"]
            .iter()
            .any(|class| code.starts_with(class))
    })
}

async fn one(
    pool: &PgPool,
    settings: &Settings,
    fetcher: &fetch::Fetcher,
    feed: FeedRow,
) -> anyhow::Result<FeedReport> {
    let mut report = FeedReport {
        feed_id: feed.feed_id,
        url: feed.url.clone(),
        added: 0,
        status: String::new(),
        ok: false,
        skipped: Vec::new(),
    };
    // Waits, not times: the database adds them to its own clock, which is the one that decides
    // when a feed is due.
    let backoff = |retry_after: Option<Duration>| {
        let doubled = FIRST_BACKOFF
            .saturating_mul(1u32 << feed.failures.clamp(0, 10))
            .min(Duration::from_secs(86400));
        retry_after.map_or(doubled, |r| r.max(doubled))
    };
    let url = match Url::parse(&feed.url) {
        Ok(u) => u,
        Err(e) => {
            report.status = format!("not a URL: {e}");
            db::failed(pool, feed.feed_id, &report.status, backoff(None)).await?;
            return Ok(report);
        }
    };
    let validators = fetch::Validators {
        etag: feed.etag.clone(),
        last_modified: feed.last_modified.clone(),
    };
    let next = settings.feeds.interval;
    match fetcher.get(&url, &validators).await {
        Ok(fetch::Fetched::NotModified) => {
            report.status = "not modified".into();
            report.ok = true;
            db::fetched(pool, feed.feed_id, &report.status, None, 0, next).await?;
        }
        Ok(fetch::Fetched::Body {
            bytes,
            url: final_url,
            validators,
        }) => match entry::read(&bytes, &final_url, Utc::now(), settings.feeds.summary_chars) {
            Ok(entries) => {
                // The database refusing what a feed holds fails that feed, with its error
                // and backoff, like any other fault of the feed: never the whole fetch.
                report.added = match db::store_entries(pool, feed.feed_id, &entries.articles).await
                {
                    Ok(added) => added,
                    Err(e) if is_refusal(&e) => {
                        report.status = format!(
                            "could not store its entries: {}",
                            crate::domain::shown_within(&e.to_string(), 300)
                        );
                        db::failed(pool, feed.feed_id, &report.status, backoff(None)).await?;
                        return Ok(report);
                    }
                    Err(e) => return Err(e.into()),
                };
                report.skipped = entries.skipped;
                report.status = "ok".into();
                report.ok = true;
                db::fetched(
                    pool,
                    feed.feed_id,
                    &report.status,
                    Some((
                        validators.etag.as_deref(),
                        validators.last_modified.as_deref(),
                    )),
                    report.added,
                    next,
                )
                .await?;
            }
            Err(e) => {
                report.status = e.to_string();
                db::failed(pool, feed.feed_id, &report.status, backoff(None)).await?;
            }
        },
        Err(e) => {
            report.status = e.to_string();
            let retry_after = match e {
                fetch::FetchError::Status { retry_after, .. } => retry_after,
                _ => None,
            };
            db::failed(pool, feed.feed_id, &report.status, backoff(retry_after)).await?;
        }
    }
    Ok(report)
}
