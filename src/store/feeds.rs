//! SQL for `feed` and the articles fed by it: adding and listing feeds, which are due, the
//! outcome of each fetch, and storing entries once (by feed and entry id, and by URL across
//! every source).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::{FeedArticle, FeedSelection};

/// A feed as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct FeedRow {
    pub feed_id: i64,
    pub url: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    #[serde(skip)]
    pub etag: Option<String>,
    #[serde(skip)]
    pub last_modified: Option<String>,
    pub last_fetch_at: Option<DateTime<Utc>>,
    /// 'ok', 'not modified', or the last fetch's error in one line.
    pub last_status: Option<String>,
    /// Failed fetches in a row.
    pub failures: i32,
    pub entries_taken: i64,
    pub next_fetch_at: DateTime<Utc>,
    /// Which of its articles go into an issue.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub selection: FeedSelection,
    /// Listed in the config file (which wins over `feeds edit`).
    pub from_config: bool,
}

const COLUMNS: &str = "feed_id, url, name, tags, etag, last_modified, last_fetch_at, last_status, \
                       failures, entries_taken, next_fetch_at, max_per_issue, include, exclude, \
                       from_config";

/// Adds a feed, due at once; `None` when its URL is already listed.
pub async fn add(
    pool: &PgPool,
    url: &str,
    name: Option<&str>,
    tags: &[String],
    selection: &FeedSelection,
) -> sqlx::Result<Option<FeedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO feed (url, name, tags, max_per_issue, include, exclude) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(url)
    .bind(name)
    .bind(tags)
    .bind(selection.max_per_issue)
    .bind(&selection.include)
    .bind(&selection.exclude)
    .fetch_optional(pool)
    .await
}

/// Gives a feed added by command a new name, tags or selection (each `None` left as it is);
/// `None` when there is no such feed.
pub async fn edit(
    pool: &PgPool,
    feed_id: i64,
    name: Option<Option<&str>>,
    tags: Option<&[String]>,
    selection: &FeedSelection,
) -> sqlx::Result<Option<FeedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE feed SET name = CASE WHEN $2 THEN $3 ELSE name END, \
                tags = COALESCE($4, tags), max_per_issue = $5, include = $6, exclude = $7 \
         WHERE feed_id = $1 RETURNING {COLUMNS}"
    )))
    .bind(feed_id)
    .bind(name.is_some())
    .bind(name.flatten())
    .bind(tags)
    .bind(selection.max_per_issue)
    .bind(&selection.include)
    .bind(&selection.exclude)
    .fetch_optional(pool)
    .await
}

/// One feed by id.
pub async fn find(pool: &PgPool, feed_id: i64) -> sqlx::Result<Option<FeedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM feed WHERE feed_id = $1"
    )))
    .bind(feed_id)
    .fetch_optional(pool)
    .await
}

/// Brings the feeds from the config file into the table: each listed one added or given the
/// file's name, tags and selection (the file wins), and any that came from the file but is no longer in
/// it removed (its articles stay). Feeds added by command are left alone.
pub async fn sync_config(pool: &PgPool, sources: &[crate::config::FeedSource]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for s in sources {
        sqlx::query(
            // Only a change is written: serve syncs at every pass, and an unconditional
            // update would leave a dead row version per feed per minute.
            "INSERT INTO feed (url, name, tags, max_per_issue, include, exclude, from_config) \
             VALUES ($1, $2, $3, $4, $5, $6, true) \
             ON CONFLICT (url) DO UPDATE SET name = EXCLUDED.name, tags = EXCLUDED.tags, \
                 max_per_issue = EXCLUDED.max_per_issue, include = EXCLUDED.include, \
                 exclude = EXCLUDED.exclude, from_config = true \
             WHERE (feed.name, feed.tags, feed.max_per_issue, feed.include, feed.exclude) \
                   IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.tags, EXCLUDED.max_per_issue, \
                                     EXCLUDED.include, EXCLUDED.exclude) \
                OR NOT feed.from_config",
        )
        .bind(s.url.as_str())
        .bind(s.name.as_deref())
        .bind(&s.tags)
        .bind(s.selection.max_per_issue)
        .bind(&s.selection.include)
        .bind(&s.selection.exclude)
        .execute(&mut *tx)
        .await?;
    }
    let urls: Vec<&str> = sources.iter().map(|s| s.url.as_str()).collect();
    sqlx::query("DELETE FROM feed WHERE from_config AND url <> ALL($1)")
        .bind(&urls)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Whether a feed came from the config file (so removing it by command would not last).
pub async fn from_config(pool: &PgPool, feed_id: i64) -> sqlx::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT from_config FROM feed WHERE feed_id = $1")
            .bind(feed_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(false),
    )
}

/// Every feed, in the order they were added.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<FeedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM feed ORDER BY feed_id"
    )))
    .fetch_all(pool)
    .await
}

/// The feeds to fetch now: those due, or the one asked for (due or not).
pub async fn to_fetch(pool: &PgPool, only: Option<i64>) -> sqlx::Result<Vec<FeedRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM feed \
         WHERE CASE WHEN $1::bigint IS NULL THEN next_fetch_at <= now() ELSE feed_id = $1 END \
         ORDER BY next_fetch_at, feed_id"
    )))
    .bind(only)
    .fetch_all(pool)
    .await
}

/// Removes a feed; its articles stay (issues may carry them). False when there is no such
/// feed.
pub async fn remove(pool: &PgPool, feed_id: i64) -> sqlx::Result<bool> {
    let n = sqlx::query("DELETE FROM feed WHERE feed_id = $1")
        .bind(feed_id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// A fetch that worked: its validators (kept when the answer was a 304), how many new
/// articles it brought, and how long until the next fetch (on the database's clock).
pub async fn fetched(
    pool: &PgPool,
    feed_id: i64,
    status: &str,
    validators: Option<(Option<&str>, Option<&str>)>,
    taken: u64,
    next: std::time::Duration,
) -> sqlx::Result<()> {
    let (etag, last_modified, replace) = match validators {
        Some((e, l)) => (e, l, true),
        None => (None, None, false),
    };
    sqlx::query(
        "UPDATE feed SET last_fetch_at = now(), last_status = $2, failures = 0, \
                entries_taken = entries_taken + $3, \
                next_fetch_at = now() + make_interval(secs => $4), \
                etag = CASE WHEN $7 THEN left($5, 500) ELSE etag END, \
                last_modified = CASE WHEN $7 THEN left($6, 100) ELSE last_modified END \
         WHERE feed_id = $1",
    )
    .bind(feed_id)
    .bind(status)
    .bind(i64::try_from(taken).unwrap_or(i64::MAX))
    .bind(next.as_secs_f64())
    .bind(etag)
    .bind(last_modified)
    .bind(replace)
    .execute(pool)
    .await?;
    Ok(())
}

/// A fetch that failed: the error (one line), one more failure, and how long until the next
/// try (on the database's clock).
pub async fn failed(
    pool: &PgPool,
    feed_id: i64,
    error: &str,
    next: std::time::Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE feed SET last_fetch_at = now(), last_status = left($2, 500), \
                failures = failures + 1, next_fetch_at = now() + make_interval(secs => $3) \
         WHERE feed_id = $1",
    )
    .bind(feed_id)
    .bind(error)
    .bind(next.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores a feed's entries in one transaction and returns how many are new articles. An entry
/// seen before (same feed and entry id) gets its new title, summary and author, and keeps its
/// URL and first publication time, so an edit never moves it into a later issue. An entry
/// whose URL is already stored from elsewhere (another feed, a CSV, by hand) is stored once:
/// left out.
pub async fn store_entries(
    pool: &PgPool,
    feed_id: i64,
    entries: &[FeedArticle],
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let mut added = 0;
    for e in entries {
        let a = &e.article;
        // Seen before: new text, same URL and publication time.
        let updated = sqlx::query(
            "UPDATE article SET title = $3, summary = $4, author = $5 \
             WHERE feed_id = $1 AND guid = $2",
        )
        .bind(feed_id)
        .bind(&e.guid)
        .bind(a.title.as_str())
        .bind(&a.summary)
        .bind(a.author.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated > 0 {
            continue;
        }
        // New, unless its URL is stored already: DO NOTHING covers every unique key, so two
        // feeds fetched side by side bringing the same page store it once (the second waits
        // for the first and then does nothing).
        let inserted = sqlx::query(
            "INSERT INTO article (title, url, summary, author, published_at, feed_id, guid) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(a.title.as_str())
        .bind(a.url.as_str())
        .bind(&a.summary)
        .bind(a.author.as_deref())
        .bind(a.published_at)
        .bind(feed_id)
        .bind(&e.guid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        added += inserted;
    }
    tx.commit().await?;
    Ok(added)
}
