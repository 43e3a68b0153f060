//! SQL for `issue`, `issue_item` and `app_secret`: picking content for a slot, creating an issue
//! with its snapshot, and reading issues back.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::domain::IssueStatus;
use crate::domain::{Item, ItemKind};

/// An issue as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct IssueRow {
    pub issue_id: i64,
    /// 1, 2, …; `None` when the slot was skipped.
    pub number: Option<i32>,
    pub slot: DateTime<Utc>,
    pub subject: String,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub status: IssueStatus,
    /// Why it is paused or skipped.
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When its last delivery settled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Claims taken back from workers that died (or ran out their lease).
    pub reclaimed: i32,
    /// When a paused issue resumes on its own.
    pub paused_until: Option<DateTime<Utc>>,
}

const ISSUE_COLUMNS: &str = "issue_id, number, slot, subject, status, status_reason, created_at, finished_at, reclaimed, \
     paused_until";

/// A candidate item with the id of its source row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    /// `tip_id` or `article_id`.
    pub source_id: i64,
    /// The content.
    #[sqlx(flatten)]
    pub item: Item,
}

/// Tips by rotation: never sent first, then least recently sent; ties by id. Retired tips are
/// never picked.
pub async fn pick_tips(conn: &mut PgConnection, n: u32) -> sqlx::Result<Vec<Candidate>> {
    sqlx::query_as(
        "SELECT tip_id AS source_id, 'tip' AS kind, title, body, source_url AS url, \
                NULL::text AS author, NULL::timestamptz AS published_at \
         FROM tip WHERE active ORDER BY last_sent_at NULLS FIRST, tip_id LIMIT $1",
    )
    .bind(i64::from(n))
    .fetch_all(conn)
    .await
}

/// The articles an issue for `slot` considers (docs/ARCHITECTURE.md §5): those no issue has
/// considered yet, dated at or before the slot and after the previous issue's window began
/// (the slot of the issue before it). So a post dated before the previous slot but stored after
/// that issue was made goes in this one, while a new feed's archive goes in none. After the
/// first issue, its window is taken to be as long as the gap to this slot; before it, every
/// article up to the slot counts. An article in an issue's snapshot never counts again, even
/// unrecorded (an issue made by a binary from before migration 19).
pub async fn articles_to_consider(
    conn: &mut PgConnection,
    slot: DateTime<Utc>,
) -> sqlx::Result<Vec<i64>> {
    let before: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT slot FROM issue WHERE slot < $1 ORDER BY slot DESC LIMIT 2")
            .bind(slot)
            .fetch_all(&mut *conn)
            .await?;
    let since = match before[..] {
        [] => None,
        [previous] => Some(previous - (slot - previous)),
        [_, window_start, ..] => Some(window_start),
    };
    sqlx::query_scalar(
        "SELECT a.article_id FROM article a \
         WHERE ($1::timestamptz IS NULL OR a.published_at > $1) AND a.published_at <= $2 \
           AND NOT EXISTS (SELECT FROM article_considered c WHERE c.article_id = a.article_id) \
           AND NOT EXISTS (SELECT FROM issue_item i WHERE i.article_id = a.article_id)",
    )
    .bind(since)
    .bind(slot)
    .fetch_all(conn)
    .await
}

/// The articles to send among `considered`, newest first, as each feed's selection allows: its
/// keywords, then its newest `max_per_issue`. The rest are not carried into a later issue:
/// the issue records every article it considered.
pub async fn pick_articles(
    conn: &mut PgConnection,
    considered: &[i64],
    n: u32,
) -> sqlx::Result<Vec<Candidate>> {
    // A keyword matches as whole words: bounded by a non-word character or the text's end,
    // with the regex characters in it escaped (so "c++" and "node.js" mean themselves).
    const MATCHES: &str = "(a.title || ' ' || coalesce(a.summary, '')) ~* \
        ('(^|\\W)' || regexp_replace(k, '([]^$.*+?(){}|[\\\\-])', '\\\\\\1', 'g') || '(\\W|$)')";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT source_id, 'article' AS kind, title, body, url, author, published_at FROM ( \
             SELECT a.article_id AS source_id, a.title, a.summary AS body, a.url, a.author, \
                    a.published_at, f.max_per_issue, \
                    row_number() OVER (PARTITION BY a.feed_id \
                                       ORDER BY a.published_at DESC, a.article_id DESC) AS nth \
             FROM article a LEFT JOIN feed f ON f.feed_id = a.feed_id \
             WHERE a.article_id = ANY($1) \
               AND (f.feed_id IS NULL OR ( \
                   (cardinality(f.include) = 0 \
                    OR EXISTS (SELECT FROM unnest(f.include) k WHERE {MATCHES})) \
                   AND NOT EXISTS (SELECT FROM unnest(f.exclude) k WHERE {MATCHES}))) \
         ) picked WHERE max_per_issue IS NULL OR nth <= max_per_issue \
         ORDER BY published_at DESC, source_id DESC LIMIT $2"
    )))
    .bind(considered)
    .bind(i64::from(n))
    .fetch_all(conn)
    .await
}

/// The slot of the latest issue at or before `t`, skipped ones included (an issue made ahead
/// of its slot, by `issue send --next-slot`, is not one yet).
pub async fn latest_slot_at_or_before(
    pool: &PgPool,
    t: DateTime<Utc>,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(slot) FROM issue WHERE slot <= $1")
        .bind(t)
        .fetch_one(pool)
        .await
}

/// The number the next issue gets.
pub async fn next_number(conn: &mut PgConnection) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT COALESCE(max(number), 0) + 1 FROM issue")
        .fetch_one(conn)
        .await
}

/// The issue of a slot, if one was created.
pub async fn find_by_slot<'e, E>(conn: E, slot: DateTime<Utc>) -> sqlx::Result<Option<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE slot = $1"
    )))
    .bind(slot)
    .fetch_optional(conn)
    .await
}

/// An issue by id.
pub async fn find_by_id<'e, E>(conn: E, issue_id: i64) -> sqlx::Result<Option<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE issue_id = $1"
    )))
    .bind(issue_id)
    .fetch_optional(conn)
    .await
}

/// An issue by number.
pub async fn find_by_number<'e, E>(conn: E, number: i32) -> sqlx::Result<Option<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE number = $1"
    )))
    .bind(number)
    .fetch_optional(conn)
    .await
}

/// The issue with the latest slot; with `numbered`, skipped slots do not count.
pub async fn latest<'e, E>(conn: E, numbered: bool) -> sqlx::Result<Option<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE NOT $1 OR number IS NOT NULL \
         ORDER BY slot DESC LIMIT 1"
    )))
    .bind(numbered)
    .fetch_optional(conn)
    .await
}

/// The oldest issue whose delivery is not finished (still sending, or paused by the breaker).
pub async fn oldest_incomplete<'e, E>(conn: E) -> sqlx::Result<Option<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE status IN ('sending', 'paused') \
         ORDER BY slot LIMIT 1"
    )))
    .fetch_optional(conn)
    .await
}

/// Every issue, newest slot first.
pub async fn list<'e, E>(conn: E) -> sqlx::Result<Vec<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue ORDER BY slot DESC"
    )))
    .fetch_all(conn)
    .await
}

/// The issues paused by the breaker now, oldest first.
pub async fn paused<'e, E>(conn: E) -> sqlx::Result<Vec<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    with_status(conn, IssueStatus::Paused).await
}

/// The issues in `status` now, oldest first.
pub async fn with_status<'e, E>(conn: E, status: IssueStatus) -> sqlx::Result<Vec<IssueRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ISSUE_COLUMNS} FROM issue WHERE status = $1 ORDER BY slot"
    )))
    .bind(status.as_str())
    .fetch_all(conn)
    .await
}

/// The snapshot an issue carries, in order.
pub async fn items<'e, E>(conn: E, issue_id: i64) -> sqlx::Result<Vec<Item>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(
        "SELECT kind, title, body, url, author, published_at FROM issue_item \
         WHERE issue_id = $1 ORDER BY position",
    )
    .bind(issue_id)
    .fetch_all(conn)
    .await
}

/// What to insert for a new issue.
pub struct NewIssue<'a> {
    pub slot: DateTime<Utc>,
    /// `None` for a skipped slot.
    pub number: Option<i32>,
    /// Subject line (a description for skipped slots).
    pub subject: &'a str,
    /// `sending` or `skipped`.
    pub status: IssueStatus,
    /// Why it was skipped.
    pub reason: Option<&'a str>,
    pub items: &'a [Candidate],
    /// Every article the slot considered, picked or not ([`articles_to_consider`]).
    pub considered: &'a [i64],
}

/// Inserts an issue and its snapshot, moves the picked tips to the back of the rotation and
/// records the articles it considered, so no later issue considers them again. Returns `None`
/// when another process created the slot's issue first.
pub async fn insert(conn: &mut PgConnection, new: &NewIssue<'_>) -> sqlx::Result<Option<IssueRow>> {
    let row: Option<IssueRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO issue (number, slot, subject, status, status_reason, finished_at) \
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'skipped' THEN now() END) \
         ON CONFLICT (slot) DO NOTHING RETURNING {ISSUE_COLUMNS}"
    )))
    .bind(new.number)
    .bind(new.slot)
    .bind(new.subject)
    .bind(new.status.as_str())
    .bind(new.reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    for (position, c) in new.items.iter().enumerate() {
        let (tip_id, article_id) = if c.item.kind == ItemKind::Tip {
            (Some(c.source_id), None)
        } else {
            (None, Some(c.source_id))
        };
        sqlx::query(
            "INSERT INTO issue_item (issue_id, position, kind, tip_id, article_id, title, body, \
             url, author, tags, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     COALESCE((SELECT tags FROM tip WHERE tip_id = $4), '{}'), $10)",
        )
        .bind(row.issue_id)
        .bind(position as i32)
        .bind(c.item.kind)
        .bind(tip_id)
        .bind(article_id)
        .bind(&c.item.title)
        .bind(&c.item.body)
        .bind(&c.item.url)
        .bind(&c.item.author)
        .bind(c.item.published_at)
        .execute(&mut *conn)
        .await?;
    }
    let tip_ids: Vec<i64> = new
        .items
        .iter()
        .filter(|c| c.item.kind == ItemKind::Tip)
        .map(|c| c.source_id)
        .collect();
    sqlx::query(
        "UPDATE tip SET times_sent = times_sent + 1, last_sent_at = $2 WHERE tip_id = ANY($1)",
    )
    .bind(&tip_ids)
    // When it went out: the slot, or now for an issue sent ahead of its slot (`--next-slot`),
    // so `tips list` never shows a tip as sent in the future.
    .bind(new.slot.min(crate::clock::now()))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO article_considered (article_id, issue_id) SELECT unnest($2::bigint[]), $1",
    )
    .bind(row.issue_id)
    .bind(new.considered)
    .execute(&mut *conn)
    .await?;
    Ok(Some(row))
}

/// Serialises issue creation across every process sharing the database, so issue numbers stay
/// consecutive; released when the transaction ends.
pub async fn lock_issue_creation(conn: &mut PgConnection) -> sqlx::Result<()> {
    // An arbitrary constant that names this lock for all digestif processes.
    sqlx::query("SELECT pg_advisory_xact_lock(7305626915)")
        .execute(conn)
        .await?;
    Ok(())
}

/// The token secret digestif generated for itself at migration time.
pub async fn stored_token_secret<'e, E>(conn: E) -> sqlx::Result<Option<Vec<u8>>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_scalar("SELECT value FROM app_secret WHERE name = 'token'")
        .fetch_optional(conn)
        .await
}
