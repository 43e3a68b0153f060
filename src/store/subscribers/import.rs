//! The bulk import: validated rows streamed through `COPY` into a temporary table, checked
//! there against each other and the stored subscribers, and inserted in one statement.

use futures_util::Stream;
use sqlx::postgres::PgCopyIn;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::{SubscriberEmail, SubscriberName};

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
    /// Left out because the file says so (its `status` column), and why.
    LeftOut(String),
    /// Not a valid row, and why (staged with the rest so every note comes in line order).
    Invalid(String),
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
        // makes checking a million of them quick (migration 7). Lower-cased by Postgres, as the
        // stored addresses are: Rust's rules differ for a few letters ('İ').
        // A refused line is staged too, with its reason and no address, so the notes about
        // every line come back in line order from one query (memory stays flat).
        sqlx::query(
            r#"CREATE TEMP TABLE import_row (line bigint NOT NULL, email text,
               email_key text COLLATE "C" GENERATED ALWAYS AS (lower(email)) STORED,
               name text, reason text, left_out text) ON COMMIT DROP"#,
        )
        .execute(&mut *tx)
        .await?;
        Ok(Self { tx })
    }

    /// Opens the COPY stream into the staging table; feed it with [`Import::encode`]d rows.
    pub async fn copy_in(&mut self) -> sqlx::Result<PgCopyIn<&mut PgConnection>> {
        self.tx
            .copy_in_raw(
                "COPY import_row (line, email, name, reason, left_out) FROM STDIN (FORMAT csv)",
            )
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
        // An empty unquoted CSV field is NULL for COPY: exactly "no name".
        buf.write_record([
            line.as_str(),
            email.as_str(),
            name.map_or("", SubscriberName::as_str),
            "",
            "",
        ])
    }

    /// Appends a line left out on purpose (the file marks it as not active), with why: it
    /// comes back among the notes, in order, and takes no part in any other check.
    pub fn encode_left_out(
        buf: &mut csv::Writer<Vec<u8>>,
        line: u64,
        email: &str,
        why: &str,
    ) -> csv::Result<()> {
        let line = line.to_string();
        buf.write_record([line.as_str(), email, "", "", why])
    }

    /// Appends a refused line, with why, to `buf`: it comes back among the notes, in order.
    pub fn encode_refused(
        buf: &mut csv::Writer<Vec<u8>>,
        line: u64,
        reason: &str,
    ) -> csv::Result<()> {
        let line = line.to_string();
        // Empty unquoted fields are NULL; the reason is never empty.
        buf.write_record([line.as_str(), "", "", reason, ""])
    }

    /// Streams the rows that will not be imported, in line order.
    pub fn notes(&mut self) -> impl Stream<Item = sqlx::Result<ImportNote>> + '_ {
        use futures_util::TryStreamExt;
        // Inner joins only: with an empty suppression list Postgres never hashes a single
        // address, which an anti-join would do for every row.
        sqlx::query_as::<_, (i64, String, String, Option<String>, Option<i64>)>(
            r#"SELECT line, email, 'duplicate', NULL, first_line FROM (
                 SELECT line, email, min(line) OVER (PARTITION BY email_key) AS first_line
                 FROM import_row WHERE reason IS NULL AND left_out IS NULL) d
                 WHERE line <> first_line
             UNION ALL
             SELECT r.line, r.email, 'stored', s.status, NULL FROM import_row r
                 JOIN subscriber s ON lower(s.email) COLLATE "C" = r.email_key
                 WHERE r.left_out IS NULL
             UNION ALL
             SELECT r.line, r.email, 'erased', NULL, NULL FROM import_row r
                 JOIN suppression p ON p.email_sha256 = sha256(convert_to(r.email_key, 'UTF8'))
                 WHERE r.left_out IS NULL
             UNION ALL
             SELECT line, '', 'invalid', reason, NULL FROM import_row WHERE reason IS NOT NULL
             UNION ALL
             SELECT line, coalesce(email, ''), 'left out', left_out, NULL FROM import_row
                 WHERE left_out IS NOT NULL
             ORDER BY 1"#,
        )
        .fetch(&mut *self.tx)
        .map_ok(|(line, email, kind, status, first)| ImportNote {
            line,
            email,
            kind: match kind.as_str() {
                "duplicate" => NoteKind::DuplicateOf(first.unwrap_or(0)),
                "stored" => NoteKind::AlreadyStored(status.unwrap_or_default()),
                "invalid" => NoteKind::Invalid(status.unwrap_or_default()),
                "left out" => NoteKind::LeftOut(status.unwrap_or_default()),
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
             WHERE p.email_sha256 = sha256(convert_to(r.email_key, 'UTF8')) \
               AND r.left_out IS NULL"
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
             WHERE r.reason IS NULL AND r.left_out IS NULL AND NOT EXISTS (SELECT 1 FROM subscriber s \
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
