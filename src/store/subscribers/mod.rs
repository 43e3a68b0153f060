//! SQL for `subscriber`, `subscriber_event` and `suppression`: adding, listing, removing and
//! erasing here; the bulk import in `import.rs`, double opt-in and link unsubscribes in
//! `consent.rs` (their items are re-exported, so callers name them all `subscribers::…`).

mod consent;
mod import;

pub use consent::*;
pub use import::*;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::domain::{EventKind, SubscriberEmail, SubscriberName, SubscriberStatus};

/// A subscriber as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SubscriberRow {
    /// Key; logs name subscribers by this, never by address.
    pub subscriber_id: i64,
    /// Address as stored.
    pub email: String,
    /// Display name, if known.
    pub name: Option<String>,
    /// Lifecycle state.
    pub status: SubscriberStatus,
    /// How consent was given.
    pub consent_source: String,
    /// When consent was given.
    pub consent_at: DateTime<Utc>,
    /// When double opt-in was confirmed.
    pub confirmed_at: Option<DateTime<Utc>>,
    /// When they opted out.
    pub unsubscribed_at: Option<DateTime<Utc>>,
    /// Hard bounces counted so far.
    pub hard_bounces: i32,
    pub created_at: DateTime<Utc>,
}

/// One entry of a subscriber's consent and lifecycle history.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventRow {
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    /// Through which channel.
    pub method: String,
    /// Evidence (file name, SMTP reply…).
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Why a subscriber could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The address (in any letter case) is already stored.
    #[error("'{email}' is already a subscriber (status {status})")]
    AlreadyStored { email: String, status: String },
    /// The address was erased on request before.
    #[error("'{0}' was erased on request; add --allow-erased if they asked to come back")]
    Erased(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "subscriber_id, email, name, status, consent_source, consent_at, \
                       confirmed_at, unsubscribed_at, hard_bounces, created_at";

/// The suppression key of the address `$1`, lower-cased and hashed by Postgres, as the stored
/// keys were, so that no second copy of either lives in Rust.
const SUPPRESSION_KEY: &str = "sha256(convert_to(lower($1), 'UTF8'))";

/// The expression of the unique index on addresses (migration 7): a query must name it exactly,
/// collation included, for Postgres to use the index (written out with `s.` where a join
/// needs it).
const EMAIL_KEY: &str = r#"lower(email) COLLATE "C""#;

/// The address `$1` in the form [`EMAIL_KEY`] compares. Lower-cased by Postgres like the
/// stored addresses: Rust's `to_lowercase` follows Unicode's full rules ('İ' becomes two
/// characters, a final 'Σ' becomes 'ς'), Postgres one character at a time by the database's
/// locale, and an address lower-cased by one is not found among those lower-cased by the other.
const EMAIL_KEY_OF_PARAM: &str = r#"lower($1) COLLATE "C""#;

/// Inserts a subscriber with the given status and records how consent was given.
pub async fn add(
    pool: &PgPool,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
    status: SubscriberStatus,
    method: &str,
    allow_erased: bool,
) -> Result<i64, AddError> {
    let mut tx = pool.begin().await?;
    if is_erased(&mut tx, email).await? {
        if !allow_erased {
            return Err(AddError::Erased(email.to_string()));
        }
        forget_erasure(&mut tx, email).await?;
    }
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO subscriber (email, name, status, consent_source) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING subscriber_id",
    )
    .bind(email.as_str())
    .bind(name.map(SubscriberName::as_str))
    .bind(status.as_str())
    .bind(method)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        let existing = find(&mut *tx, email).await?;
        let (email, status) = existing
            .map(|s| (s.email, s.status.to_string()))
            .unwrap_or_else(|| (email.to_string(), "unknown".into()));
        return Err(AddError::AlreadyStored { email, status });
    };
    record_event(&mut tx, id, EventKind::Subscribed, method, None).await?;
    tx.commit().await?;
    Ok(id)
}

async fn is_erased(conn: &mut PgConnection, email: &SubscriberEmail) -> sqlx::Result<bool> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY})"
    )))
    .bind(email.as_str())
    .fetch_one(conn)
    .await
}

async fn forget_erasure(conn: &mut PgConnection, email: &SubscriberEmail) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY}"
    )))
    .bind(email.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends to the subscriber's history.
pub async fn record_event(
    conn: &mut PgConnection,
    subscriber_id: i64,
    kind: EventKind,
    method: &str,
    detail: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO subscriber_event (subscriber_id, kind, method, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(subscriber_id)
    .bind(kind.as_str())
    .bind(method)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Looks a subscriber up by address, in any letter case.
pub async fn find<'e, E>(conn: E, email: &SubscriberEmail) -> sqlx::Result<Option<SubscriberRow>>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriber WHERE {EMAIL_KEY} = {EMAIL_KEY_OF_PARAM}"
    )))
    .bind(email.as_str())
    .fetch_optional(conn)
    .await
}

/// A subscriber's history, oldest first. A subscriber added by a bulk import has no event row
/// for it (one `subscriber_import` record stands for the whole file, migration 7); its
/// `subscribed` entry is made from that record.
pub async fn events(pool: &PgPool, subscriber_id: i64) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT kind, method, detail, created_at FROM ( \
             SELECT kind, method, detail, created_at, subscriber_event_id AS seq \
             FROM subscriber_event WHERE subscriber_id = $1 \
             UNION ALL \
             SELECT 'subscribed', 'import', i.source, i.created_at, 0 \
             FROM subscriber s JOIN subscriber_import i ON i.import_id = s.import_id \
             WHERE s.subscriber_id = $1) e \
         ORDER BY created_at, seq",
    )
    .bind(subscriber_id)
    .fetch_all(pool)
    .await
}

/// Streams subscribers in id order, optionally of one status: memory stays flat at any size.
pub fn list(
    pool: &PgPool,
    status: Option<SubscriberStatus>,
) -> impl Stream<Item = sqlx::Result<SubscriberRow>> + '_ {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriber WHERE $1::text IS NULL OR status = $1 \
         ORDER BY subscriber_id"
    )))
    .bind(status.map(SubscriberStatus::as_str))
    .fetch(pool)
}

/// What an admin removal did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// The subscriber was active or pending and is now unsubscribed.
    Unsubscribed,
    /// Nothing to do: they had already left (or bounced, or complained).
    AlreadyInactive(SubscriberStatus),
    /// No such address.
    NotFound,
}

/// Unsubscribes by admin action, recording it in the history.
pub async fn unsubscribe_by_admin(pool: &PgPool, email: &SubscriberEmail) -> sqlx::Result<Removal> {
    let mut tx = pool.begin().await?;
    let Some(row) = find(&mut *tx, email).await? else {
        return Ok(Removal::NotFound);
    };
    if !matches!(
        row.status,
        SubscriberStatus::Active | SubscriberStatus::Pending
    ) {
        return Ok(Removal::AlreadyInactive(row.status));
    }
    sqlx::query(
        "UPDATE subscriber SET status = 'unsubscribed', unsubscribed_at = now() \
         WHERE subscriber_id = $1",
    )
    .bind(row.subscriber_id)
    .execute(&mut *tx)
    .await?;
    record_event(
        &mut tx,
        row.subscriber_id,
        EventKind::Unsubscribed,
        "admin",
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Removal::Unsubscribed)
}

/// Erases a subscriber's personal data (row and history) and keeps only the hash of the address
/// in `suppression`, so an erased address is not re-imported by accident. Returns false when
/// there was no such subscriber.
pub async fn purge(pool: &PgPool, email: &SubscriberEmail) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    // An issue being made may have fanned out to this subscriber without committing: the
    // delete below would not see that row, and a delivery without its subscriber can never be
    // claimed, nor the issue finish. Issue creation's lock waits for it.
    super::issues::lock_issue_creation(&mut tx).await?;
    // delivery has no foreign key (fan-out speed, see migration 6): its rows go first.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM delivery WHERE subscriber_id IN \
         (SELECT subscriber_id FROM subscriber WHERE {EMAIL_KEY} = {EMAIL_KEY_OF_PARAM})"
    )))
    .bind(email.as_str())
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM subscriber WHERE {EMAIL_KEY} = {EMAIL_KEY_OF_PARAM}"
    )))
    .bind(email.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Ok(false);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO suppression (email_sha256, reason) VALUES ({SUPPRESSION_KEY}, 'erased') \
         ON CONFLICT DO NOTHING"
    )))
    .bind(email.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
