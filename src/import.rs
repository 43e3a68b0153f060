//! The subscriber import use case: read a CSV of `email,name`, validate every line, stage the
//! valid ones through COPY, and add what is new in one transaction; every line left out is
//! reported with why. The policy (all or nothing unless told to skip, erased addresses only
//! when allowed, a dry run that changes nothing) lives here; the CLI only prints.

use std::io::Read;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use sqlx::PgPool;

use crate::domain::{SubscriberEmail, SubscriberName, shown};
use crate::store::subscribers as db;

/// Rows sent to Postgres per COPY message: big enough to amortise round trips, small enough to
/// keep memory flat.
const COPY_CHUNK: usize = 1 << 20;

/// How to import.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Import the valid lines even when some are refused.
    pub skip_invalid: bool,
    /// Check everything, change nothing.
    pub dry_run: bool,
    /// Take back addresses erased on request before.
    pub allow_erased: bool,
}

/// One line left out, and why (for the operator, after `<file>: line N: `).
#[derive(Debug, serde::Serialize)]
pub struct Remark {
    /// The line in the file.
    pub line: u64,
    /// Why it was left out.
    pub text: String,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Subscribers added.
    pub added: u64,
    /// Data rows read.
    pub read: u64,
    /// Rows repeating an earlier row of the file.
    pub duplicates: u64,
    /// Rows naming an address already stored.
    pub stored: u64,
    /// Rows refused: invalid, or erased without `allow_erased`.
    pub refused: u64,
    /// Rows the file's `status` column marks as not active (unsubscribed, bounced, complained,
    /// pending: as `subscribers export` writes them), left out.
    pub not_active: u64,
}

/// Imports the CSV read from `input` (named `source` in messages and in the stored consent
/// evidence). `remark` hears of every line left out, `progress` of the bytes read so far.
/// Unless `skip_invalid` (or `dry_run`), one refused line means nothing is imported, and the
/// error says so.
pub async fn subscribers_csv(
    pool: &PgPool,
    source: &str,
    input: impl Read,
    options: Options,
    remark: &mut dyn FnMut(Remark) -> std::io::Result<()>,
    progress: &dyn Fn(u64),
) -> anyhow::Result<Outcome> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(QuoteWatch::new(input));
    let headers = reader
        .byte_headers()
        .with_context(|| format!("{source}: cannot read the header line"))?
        .clone();
    let column = |want: &str| {
        headers.iter().position(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .eq_ignore_ascii_case(want)
        })
    };
    let Some(email_col) = column("email") else {
        bail!("{source}: line 1: the header has no 'email' column (expected `email,name`)");
    };
    let name_col = column("name");
    // An export's: whoever it says is not active must not come back active.
    let status_col = column("status");

    let mut outcome = Outcome::default();
    let (mut invalid, mut erased) = (0u64, 0u64);
    let mut import = db::Import::begin(pool).await?;
    {
        let mut copy = import.copy_in().await?;
        let chunk = || {
            csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::with_capacity(COPY_CHUNK + 4096))
        };
        let mut buf = chunk();
        let mut record = csv::ByteRecord::new();
        loop {
            let more = match reader.read_byte_record(&mut record) {
                Ok(more) => more,
                Err(e) => {
                    // A file that cannot be read on (an I/O error, say): nothing of it is kept.
                    let line = e.position().map_or(0, |p| p.line());
                    let _ = copy.abort("unreadable input").await;
                    bail!(
                        "{source}: line {line}: cannot be read as CSV: {}",
                        csv_reason(&e)
                    );
                }
            };
            if !more {
                if let Err(e) = reader.get_ref().all_closed(source) {
                    let _ = copy.abort("unclosed quote").await;
                    return Err(e);
                }
                break;
            }
            outcome.read += 1;
            let line = record.position().map_or(0, |p| p.line());
            match status_col.map_or(Ok(None), |i| left_out(&record, i)) {
                Ok(Some(status)) => {
                    // Shown, never checked: NUL is the one character COPY cannot take.
                    let email = String::from_utf8_lossy(record.get(email_col).unwrap_or_default())
                        .replace('\0', "\u{fffd}");
                    let why = format!("is {status} in the file; not imported");
                    db::Import::encode_left_out(&mut buf, line, unguarded(&email), &why)?;
                }
                Ok(None) => match parse_row(&record, email_col, name_col) {
                    Ok((email, name)) => {
                        db::Import::encode(&mut buf, line, &email, name.as_ref())?;
                    }
                    Err(text) => {
                        invalid += 1;
                        db::Import::encode_refused(&mut buf, line, &text)?;
                    }
                },
                Err(text) => {
                    invalid += 1;
                    db::Import::encode_refused(&mut buf, line, &text)?;
                }
            }
            if buf.get_ref().len() >= COPY_CHUNK {
                let full = std::mem::replace(&mut buf, chunk());
                copy.send(full.into_inner().map_err(|e| e.into_error())?)
                    .await?;
                progress(record.position().map_or(0, |p| p.byte()));
            }
        }
        let rest = buf.into_inner().map_err(|e| e.into_error())?;
        if !rest.is_empty() {
            copy.send(rest).await?;
        }
        copy.finish().await?;
    }

    {
        let mut notes = import.notes();
        while let Some(note) = notes.try_next().await? {
            let (line, email) = (note.line.max(0) as u64, shown(&note.email));
            let text = match note.kind {
                db::NoteKind::DuplicateOf(first) => {
                    outcome.duplicates += 1;
                    format!("'{email}' duplicates line {first}; skipped")
                }
                db::NoteKind::AlreadyStored(status) => {
                    outcome.stored += 1;
                    format!("'{email}' is already a subscriber ({status}); left as it is")
                }
                // Counted when it was read.
                db::NoteKind::Invalid(reason) => reason,
                db::NoteKind::LeftOut(why) => {
                    outcome.not_active += 1;
                    format!("'{email}' {why}")
                }
                db::NoteKind::Erased if options.allow_erased => continue,
                db::NoteKind::Erased => {
                    erased += 1;
                    format!(
                        "'{email}' was erased on request; pass --allow-erased if they asked to come back"
                    )
                }
            };
            remark(Remark { line, text })?;
        }
    }

    outcome.refused = invalid + erased;
    let refused = outcome.refused;
    if refused > 0 && !options.skip_invalid && !options.dry_run {
        import.rollback().await?;
        bail!(
            "{source}: {refused} invalid line{}; nothing imported (fix {}, or pass --skip-invalid to import the valid rows)",
            if refused == 1 { "" } else { "s" },
            if refused == 1 { "it" } else { "them" }
        );
    }
    outcome.added = import.insert(source, options.allow_erased).await?;
    if options.dry_run {
        import.rollback().await?;
    } else {
        import.commit().await?;
    }
    Ok(outcome)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => e.to_string(),
    }
}

/// Follows the input's quoting as the CSV reader applies it (RFC 4180: a quote opens a field
/// only as its first character, and a doubled quote inside stands for one), to notice a quoted
/// field still open at the end of the input. The reader ends such a field there without an
/// error, so one stray quote would silently take every row after it as part of one field.
pub(crate) struct QuoteWatch<R> {
    inner: R,
    state: Quoting,
    line: u64,
    opened_on: u64,
    read: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: its end, or the first of a doubled quote.
    QuoteInQuoted,
}

impl<R> QuoteWatch<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            state: Quoting::FieldStart,
            line: 1,
            opened_on: 0,
            read: 0,
        }
    }

    /// Once the reader has read all of `source`: an error naming the line where a quoted
    /// field opened that is still open.
    pub(crate) fn all_closed(&self, source: &str) -> anyhow::Result<()> {
        if self.state == Quoting::Quoted {
            bail!(
                "{source}: line {}: a quoted field begins here and is never closed (the rows after it would be read as part of it)",
                self.opened_on
            );
        }
        Ok(())
    }

    fn watch(&mut self, byte: u8) {
        const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
        let at = self.read;
        self.read += 1;
        // The reader skips a byte-order mark, so a quote right after it opens a field.
        if at < 3 && self.state == Quoting::FieldStart && byte == BOM[at as usize] {
            return;
        }
        let ends_field = matches!(byte, b',' | b'\n' | b'\r');
        self.state = match (self.state, byte) {
            (Quoting::FieldStart, b'"') => {
                self.opened_on = self.line;
                Quoting::Quoted
            }
            (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
            (Quoting::Quoted, _) => Quoting::Quoted,
            (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
            (_, _) if ends_field => Quoting::FieldStart,
            (_, _) => Quoting::Unquoted,
        };
        if byte == b'\n' {
            self.line += 1;
        }
    }
}

impl<R: Read> Read for QuoteWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            self.watch(byte);
        }
        Ok(n)
    }
}

/// What a CSV cell may begin with that `subscribers export` puts a `'` in front of
/// (`output::spreadsheet_safe`): what a spreadsheet would run as a formula, and the `'` itself,
/// so that the import can take the guard off again without ever taking a `'` that was there.
pub const GUARDED: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// A cell as it was before `subscribers export` guarded it against spreadsheets (a `'` before a
/// leading `= + - @ '`, tab or CR; `output::spreadsheet_safe`), so an export imports as it was.
fn unguarded(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(GUARDED) => rest,
        _ => cell,
    }
}

/// The row's status in column `i` when the file says to leave it out: one of digestif's
/// statuses but `active` (as `subscribers export` writes them). Blank or `active` is imported;
/// any other value is an error, since another tool's statuses (`enabled`, `blocklisted`) say
/// nothing digestif can be sure of.
fn left_out(record: &csv::ByteRecord, i: usize) -> Result<Option<&'static str>, String> {
    use crate::domain::SubscriberStatus;
    let raw = String::from_utf8_lossy(record.get(i).unwrap_or_default());
    let status = raw.trim().to_ascii_lowercase();
    if status.is_empty() {
        return Ok(None);
    }
    match status.parse::<SubscriberStatus>() {
        Ok(SubscriberStatus::Active) => Ok(None),
        Ok(other) => Ok(Some(other.as_str())),
        Err(_) => Err(format!(
            "the status '{}' is not one of digestif's (active, pending, unsubscribed, bounced, complained); fix it, or drop the status column",
            shown(&crate::send::classify::truncate(raw.trim(), 40))
        )),
    }
}

/// One row's address and name, or why the row is refused.
fn parse_row(
    record: &csv::ByteRecord,
    email_col: usize,
    name_col: Option<usize>,
) -> Result<(SubscriberEmail, Option<SubscriberName>), String> {
    let text = |i: usize| -> Result<&str, String> {
        let raw = record.get(i).unwrap_or_default();
        std::str::from_utf8(raw).map_err(|_| "not valid UTF-8 (save the file as UTF-8)".to_owned())
    };
    if record.len() <= email_col {
        return Err("the email column is missing".to_owned());
    }
    let email = SubscriberEmail::parse(unguarded(text(email_col)?)).map_err(|e| e.to_string())?;
    let name = match name_col {
        Some(i) => {
            SubscriberName::parse_optional(unguarded(text(i)?)).map_err(|e| e.to_string())?
        }
        None => None,
    };
    Ok((email, name))
}
