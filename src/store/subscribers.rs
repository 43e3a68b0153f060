//! SQL for `subscriber`, `subscriber_event` and `suppression`: adding, listing, removing,
//! erasing, and the bulk import that streams a CSV through `COPY`.

use chrono::{DateTime, Utc};
use futures_util::Stream;
use sqlx::postgres::PgCopyIn;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::{SubscriberEmail, SubscriberName, SubscriberStatus};

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
    /// When the row was created.
    pub created_at: DateTime<Utc>,
}

/// One entry of a subscriber's consent and lifecycle history.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventRow {
    /// What happened.
    pub kind: String,
    /// Through which channel.
    pub method: String,
    /// Evidence (file name, SMTP reply…).
    pub detail: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Why a subscriber could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The address (in any letter case) is already stored.
    #[error("'{email}' is already a subscriber (status {status})")]
    AlreadyStored {
        /// The stored address.
        email: String,
        /// Its status.
        status: String,
    },
    /// The address was erased on request before.
    #[error("'{0}' was erased on request; add --allow-erased if they asked to come back")]
    Erased(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "subscriber_id, email, name, status, consent_source, consent_at, \
                       confirmed_at, unsubscribed_at, hard_bounces, created_at";

/// The suppression key of a lower-cased address, computed by Postgres so that no copy of the
/// hashing lives in Rust.
const SUPPRESSION_KEY: &str = "sha256(convert_to($1, 'UTF8'))";

/// The expression of the unique index on addresses (migration 7): a query must name it exactly,
/// collation included, for Postgres to use the index (written out with `s.` where a join
/// needs it).
const EMAIL_KEY: &str = r#"lower(email) COLLATE "C""#;

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
    record_event(&mut tx, id, "subscribed", method, None).await?;
    tx.commit().await?;
    Ok(id)
}

async fn is_erased(conn: &mut PgConnection, email: &SubscriberEmail) -> sqlx::Result<bool> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY})"
    )))
    .bind(email.key())
    .fetch_one(conn)
    .await
}

async fn forget_erasure(conn: &mut PgConnection, email: &SubscriberEmail) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY}"
    )))
    .bind(email.key())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends to the subscriber's history.
pub async fn record_event(
    conn: &mut PgConnection,
    subscriber_id: i64,
    kind: &str,
    method: &str,
    detail: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO subscriber_event (subscriber_id, kind, method, detail) VALUES ($1, $2, $3, $4)",
    )
    .bind(subscriber_id)
    .bind(kind)
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
        "SELECT {COLUMNS} FROM subscriber WHERE {EMAIL_KEY} = $1"
    )))
    .bind(email.key())
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
    record_event(&mut tx, row.subscriber_id, "unsubscribed", "admin", None).await?;
    tx.commit().await?;
    Ok(Removal::Unsubscribed)
}

/// Erases a subscriber's personal data (row and history) and keeps only the hash of the address
/// in `suppression`, so an erased address is not re-imported by accident. Returns false when
/// there was no such subscriber.
pub async fn purge(pool: &PgPool, email: &SubscriberEmail) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    // delivery has no foreign key (fan-out speed, see migration 6): its rows go first.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM delivery WHERE subscriber_id IN \
         (SELECT subscriber_id FROM subscriber WHERE {EMAIL_KEY} = $1)"
    )))
    .bind(email.key())
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM subscriber WHERE {EMAIL_KEY} = $1"
    )))
    .bind(email.key())
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
    .bind(email.key())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

// ---- bulk import -----------------------------------------------------------------------------

/// A bulk import in one transaction: validated rows are streamed into a temporary table with
/// `COPY`, checked there against each other and the stored subscribers, then inserted with one
/// statement. Nothing is visible to anyone until `commit`.
pub struct Import {
    tx: Transaction<'static, Postgres>,
}

/// A row that will not be imported, found once every row is in the staging table.
#[derive(Debug)]
pub struct ImportNote {
    /// 1-based line number in the file.
    pub line: i64,
    /// The address on that line.
    pub email: String,
    /// Why it is left out.
    pub kind: NoteKind,
}

/// Why an import row is left out.
#[derive(Debug)]
pub enum NoteKind {
    /// The same address (any letter case) appears on an earlier line.
    DuplicateOf(i64),
    /// Already stored, with this status; left as it is (never silently re-subscribed).
    AlreadyStored(String),
    /// Erased on request before: an error unless `--allow-erased`.
    Erased,
}

impl Import {
    /// Starts the transaction and the staging table.
    pub async fn begin(pool: &PgPool) -> sqlx::Result<Self> {
        let mut tx = pool.begin().await?;
        // The duplicate checks sort every staged row; at 4 MB (the default) a million rows
        // spill to disk and take twice as long.
        sqlx::query("SET LOCAL work_mem = '64MB'")
            .execute(&mut *tx)
            .await?;
        // email_key in "C", like the unique index: sorting and comparing keys bytewise is what
        // makes checking a million of them quick (migration 7).
        sqlx::query(
            r#"CREATE TEMP TABLE import_row (line bigint NOT NULL, email text NOT NULL,
               email_key text COLLATE "C" NOT NULL, name text) ON COMMIT DROP"#,
        )
        .execute(&mut *tx)
        .await?;
        Ok(Self { tx })
    }

    /// Opens the COPY stream into the staging table; feed it with [`Import::encode`]d rows.
    pub async fn copy_in(&mut self) -> sqlx::Result<PgCopyIn<&mut PgConnection>> {
        self.tx
            .copy_in_raw("COPY import_row (line, email, email_key, name) FROM STDIN (FORMAT csv)")
            .await
    }

    /// Appends one validated row, CSV-encoded for COPY, to `buf`.
    pub fn encode(
        buf: &mut csv::Writer<Vec<u8>>,
        line: u64,
        email: &SubscriberEmail,
        name: Option<&SubscriberName>,
    ) -> csv::Result<()> {
        let line = line.to_string();
        let key = email.key();
        // An empty unquoted CSV field is NULL for COPY: exactly "no name".
        buf.write_record([
            line.as_str(),
            email.as_str(),
            key.as_str(),
            name.map_or("", SubscriberName::as_str),
        ])
    }

    /// Streams the rows that will not be imported, in line order within each kind.
    pub fn notes(&mut self) -> impl Stream<Item = sqlx::Result<ImportNote>> + '_ {
        use futures_util::TryStreamExt;
        // Inner joins only: with an empty suppression list Postgres never hashes a single
        // address, which an anti-join would do for every row.
        sqlx::query_as::<_, (i64, String, String, Option<String>, Option<i64>)>(
            r#"SELECT line, email, 'duplicate', NULL, first_line FROM (
                 SELECT line, email, min(line) OVER (PARTITION BY email_key) AS first_line
                 FROM import_row) d WHERE line <> first_line
             UNION ALL
             SELECT r.line, r.email, 'stored', s.status, NULL FROM import_row r
                 JOIN subscriber s ON lower(s.email) COLLATE "C" = r.email_key
             UNION ALL
             SELECT r.line, r.email, 'erased', NULL, NULL FROM import_row r
                 JOIN suppression p ON p.email_sha256 = sha256(convert_to(r.email_key, 'UTF8'))
             ORDER BY 1"#,
        )
        .fetch(&mut *self.tx)
        .map_ok(|(line, email, kind, status, first)| ImportNote {
            line,
            email,
            kind: match kind.as_str() {
                "duplicate" => NoteKind::DuplicateOf(first.unwrap_or(0)),
                "stored" => NoteKind::AlreadyStored(status.unwrap_or_default()),
                _ => NoteKind::Erased,
            },
        })
    }

    /// Inserts the new subscribers (first occurrence of each address) as active, recording the
    /// import once with `source` as the consent evidence. Erased addresses are inserted only
    /// when `allow_erased`, and then leave the suppression list. Returns how many were added.
    pub async fn insert(&mut self, source: &str, allow_erased: bool) -> sqlx::Result<u64> {
        let erased = if allow_erased {
            "DELETE FROM suppression p USING import_row r \
             WHERE p.email_sha256 = sha256(convert_to(r.email_key, 'UTF8'))"
        } else {
            "DELETE FROM import_row r USING suppression p \
             WHERE p.email_sha256 = sha256(convert_to(r.email_key, 'UTF8'))"
        };
        sqlx::query(erased).execute(&mut *self.tx).await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO subscriber_import (source) VALUES ($1) RETURNING import_id",
        )
        .bind(source)
        .fetch_one(&mut *self.tx)
        .await?;

        // A plain INSERT is a third faster than ON CONFLICT's speculative insertion, and the
        // NOT EXISTS already leaves out every stored address. Only an address added by someone
        // else while this statement runs can still collide: then the statement is undone and
        // run again, skipping whatever is stored by then.
        sqlx::query("SAVEPOINT import_insert")
            .execute(&mut *self.tx)
            .await?;
        let added = match self.insert_fresh(import_id, "").await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                sqlx::query("ROLLBACK TO SAVEPOINT import_insert")
                    .execute(&mut *self.tx)
                    .await?;
                self.insert_fresh(import_id, "ON CONFLICT DO NOTHING")
                    .await?
            }
            other => other?,
        };
        sqlx::query("UPDATE subscriber_import SET added = $2 WHERE import_id = $1")
            .bind(import_id)
            .bind(i64::try_from(added).unwrap_or(i64::MAX))
            .execute(&mut *self.tx)
            .await?;
        Ok(added)
    }

    async fn insert_fresh(&mut self, import_id: i64, on_conflict: &str) -> sqlx::Result<u64> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subscriber (email, name, status, consent_source, import_id) \
             SELECT DISTINCT ON (r.email_key) r.email, r.name, 'active', 'import', $1 \
             FROM import_row r \
             WHERE NOT EXISTS (SELECT 1 FROM subscriber s \
                 WHERE lower(s.email) COLLATE \"C\" = r.email_key) \
             ORDER BY r.email_key, r.line {on_conflict}"
        )))
        .bind(import_id)
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    /// Makes the import visible.
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }

    /// Throws everything away (dry run, or invalid lines without `--skip-invalid`).
    pub async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }
}

// ---- double opt-in and web unsubscribe ----------------------------------------------------

/// What a confirmation request leads to.
#[derive(Debug)]
pub enum ConfirmRequest {
    /// Send a confirmation email with this nonce.
    Send {
        /// The subscriber.
        subscriber_id: i64,
        /// Bound into the link; a newer request makes older links useless.
        nonce: i64,
    },
    /// Already receiving the digest: nothing to confirm.
    AlreadyActive,
    /// Suppressed after bounces or a complaint: never mailed again from a form.
    Suppressed(SubscriberStatus),
    /// Erased on request and `allow_erased` was not given.
    Erased,
    /// The form asked for this address within `http.signup_resend_after`: one mail is enough.
    AskedRecently,
}

/// Who asks for a confirmation mail, which decides what may be mailed.
#[derive(Debug, Clone, Copy)]
pub enum Asker {
    /// The operator (`subscribers add --confirm`): may invite an address that unsubscribed,
    /// and one erased on request with `allow_erased`.
    Operator {
        /// The person asked to come back after an erasure.
        allow_erased: bool,
    },
    /// The public sign-up form, which anyone can fill in with anyone's address: never mails
    /// an address that unsubscribed (or bounced, or complained), and mails one address at most
    /// once per `resend_after`. An erased address may come back: its owner must click.
    Form {
        /// How long one address's confirmation mail stands before another may go.
        resend_after: std::time::Duration,
    },
}

impl Asker {
    /// Kept as consent evidence.
    pub fn method(self) -> &'static str {
        match self {
            Asker::Operator { .. } => "cli",
            Asker::Form { .. } => "web",
        }
    }
}

/// Records a double opt-in request: a new address becomes `pending`; a pending one (or, for
/// the operator, an unsubscribed one) gets a fresh nonce (an unsubscribed subscriber stays
/// unsubscribed until they click).
pub async fn request_confirmation(
    pool: &PgPool,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
    asker: Asker,
) -> sqlx::Result<ConfirmRequest> {
    let method = asker.method();
    let mut tx = pool.begin().await?;
    let nonce = fastrand::i64(1..i64::MAX);
    let existing = find(&mut *tx, email).await?;
    let id = match (existing, asker) {
        (Some(row), _) if row.status == SubscriberStatus::Active => {
            return Ok(ConfirmRequest::AlreadyActive);
        }
        (Some(row), Asker::Form { resend_after }) if row.status == SubscriberStatus::Pending => {
            let recent: bool = sqlx::query_scalar(
                "SELECT coalesce(confirm_sent_at > now() - $2 * interval '1 second', false) \
                 FROM subscriber WHERE subscriber_id = $1 FOR UPDATE",
            )
            .bind(row.subscriber_id)
            .bind(resend_after.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            if recent {
                return Ok(ConfirmRequest::AskedRecently);
            }
            row.subscriber_id
        }
        (Some(row), Asker::Operator { .. })
            if matches!(
                row.status,
                SubscriberStatus::Pending | SubscriberStatus::Unsubscribed
            ) =>
        {
            row.subscriber_id
        }
        (Some(row), _) => return Ok(ConfirmRequest::Suppressed(row.status)),
        (None, _) => {
            let allow_erased = match asker {
                Asker::Operator { allow_erased } => allow_erased,
                Asker::Form { .. } => true,
            };
            if is_erased(&mut tx, email).await? && !allow_erased {
                return Ok(ConfirmRequest::Erased);
            }
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO subscriber (email, name, status, consent_source) \
                 VALUES ($1, $2, 'pending', $3) ON CONFLICT DO NOTHING RETURNING subscriber_id",
            )
            .bind(email.as_str())
            .bind(name.map(SubscriberName::as_str))
            .bind(method)
            .fetch_optional(&mut *tx)
            .await?;
            // A concurrent request for the same address won: treat it as pending.
            match id {
                Some(id) => {
                    record_event(
                        &mut tx,
                        id,
                        "subscribed",
                        method,
                        Some("pending confirmation"),
                    )
                    .await?;
                    id
                }
                None => return Ok(ConfirmRequest::AlreadyActive),
            }
        }
    };
    sqlx::query(
        "UPDATE subscriber SET confirm_nonce = $2, confirm_sent_at = now() WHERE subscriber_id = $1",
    )
    .bind(id)
    .bind(nonce)
    .execute(&mut *tx)
    .await?;
    record_event(&mut tx, id, "confirmation_sent", method, None).await?;
    tx.commit().await?;
    Ok(ConfirmRequest::Send {
        subscriber_id: id,
        nonce,
    })
}

/// What a click on a confirmation link did.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Now active.
    Confirmed,
    /// The link was used already, superseded, or predates an unsubscribe: nothing changed.
    Stale,
}

/// Confirms a double opt-in when `nonce` is the outstanding one and the request is newer than
/// any unsubscribe; records the consent evidence (`detail`: e.g. the client address).
pub async fn confirm(
    pool: &PgPool,
    subscriber_id: i64,
    nonce: i64,
    method: &str,
    detail: Option<&str>,
) -> sqlx::Result<Confirmation> {
    let mut tx = pool.begin().await?;
    let was: Option<(String, String)> = sqlx::query_as(
        "WITH old AS (SELECT subscriber_id, status FROM subscriber WHERE subscriber_id = $1 \
                      FOR UPDATE) \
         UPDATE subscriber s SET status = 'active', confirmed_at = now(), consent_at = now(), \
                unsubscribed_at = NULL, confirm_nonce = NULL, confirm_sent_at = NULL \
         FROM old WHERE s.subscriber_id = old.subscriber_id AND s.confirm_nonce = $2 \
           AND (s.status = 'pending' OR (s.status = 'unsubscribed' \
                AND s.confirm_sent_at > coalesce(s.unsubscribed_at, '-infinity'))) \
         RETURNING old.status, s.email",
    )
    .bind(subscriber_id)
    .bind(nonce)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((old_status, email)) = was else {
        return Ok(Confirmation::Stale);
    };
    let kind = if old_status == "unsubscribed" {
        "resubscribed"
    } else {
        "confirmed"
    };
    record_event(&mut tx, subscriber_id, kind, method, detail).await?;
    // Confirmed by the person themselves: an earlier erasure no longer blocks the address.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY}"
    )))
    .bind(email.to_lowercase())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Confirmation::Confirmed)
}

/// The subscriber a link points at, if they still exist.
pub async fn by_id(pool: &PgPool, subscriber_id: i64) -> sqlx::Result<Option<SubscriberRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriber WHERE subscriber_id = $1"
    )))
    .bind(subscriber_id)
    .fetch_optional(pool)
    .await
}

/// Unsubscribes through a link (`one-click` or `page`); repeating it changes nothing.
/// Returns false when there is no such subscriber.
pub async fn unsubscribe_by_link(
    pool: &PgPool,
    subscriber_id: i64,
    method: &str,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriber WHERE subscriber_id = $1 FOR UPDATE")
            .bind(subscriber_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(status) = exists else {
        return Ok(false);
    };
    if matches!(status.as_str(), "active" | "pending") {
        sqlx::query(
            "UPDATE subscriber SET status = 'unsubscribed', unsubscribed_at = now(), \
             confirm_nonce = NULL WHERE subscriber_id = $1",
        )
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?;
        record_event(&mut tx, subscriber_id, "unsubscribed", method, None).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Records a spam complaint (an ARF report): the subscriber is unsubscribed and suppressed
/// (status `complained`), once.
pub async fn record_complaint(pool: &PgPool, subscriber_id: i64, detail: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE subscriber SET status = 'complained', unsubscribed_at = coalesce(unsubscribed_at, now()) \
         WHERE subscriber_id = $1 AND status <> 'complained'",
    )
    .bind(subscriber_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 1 {
        record_event(
            &mut tx,
            subscriber_id,
            "complained",
            "complaint",
            Some(detail),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
