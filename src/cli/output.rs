//! Listing output for every command: an aligned table for people, CSV safe to open in a
//! spreadsheet, or JSON for scripts. CSV and JSON stream row by row, so memory stays flat.

use std::io::{self, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How a listing is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading in a terminal.
    Table,
    /// RFC 4180 CSV with a header row; cells a spreadsheet would run as formulas are neutralised.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// How a command reports what it did (`--format`): lines for people, or one JSON object on
/// stdout for scripts (documented in README "Output for scripts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Lines for reading.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    // As an io::Error, so that a reader that stopped early (`| head`) is seen as such.
    serde_json::to_writer(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// A row that can be listed: JSON takes its serde form, table and CSV take `cells`.
pub trait Record: Serialize {
    /// Column names for table and CSV output.
    const HEADERS: &'static [&'static str];
    /// One cell per header.
    fn cells(&self) -> Vec<String>;
}

/// Writes records in one format; call [`Listing::finish`] at the end.
pub struct Listing<W: Write, R: Record> {
    sink: Sink<W>,
    rows: usize,
    _record: std::marker::PhantomData<R>,
}

enum Sink<W: Write> {
    Table(W, Vec<Vec<String>>),
    Csv(Box<csv::Writer<W>>),
    Json(W),
}

impl<W: Write, R: Record> Listing<W, R> {
    /// Starts a listing on `out`.
    pub fn new(format: Format, mut out: W) -> io::Result<Self> {
        let sink = match format {
            Format::Table => Sink::Table(out, Vec::new()),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(R::HEADERS)?;
                Sink::Csv(Box::new(w))
            }
            Format::Json => {
                out.write_all(b"[")?;
                Sink::Json(out)
            }
        };
        Ok(Self {
            sink,
            rows: 0,
            _record: std::marker::PhantomData,
        })
    }

    /// Adds one record.
    pub fn push(&mut self, record: &R) -> io::Result<()> {
        match &mut self.sink {
            Sink::Table(_, rows) => rows.push(record.cells()),
            Sink::Csv(w) => w.write_record(
                record
                    .cells()
                    .iter()
                    .map(|c| spreadsheet_safe(c).into_owned()),
            )?,
            Sink::Json(out) => {
                let sep: &[u8] = if self.rows == 0 { b"\n  " } else { b",\n  " };
                out.write_all(sep)?;
                serde_json::to_writer(&mut *out, record)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends the listing (closing the JSON array, aligning the table) and returns the row count.
    pub fn finish(self) -> io::Result<usize> {
        match self.sink {
            Sink::Table(mut out, rows) => {
                write_table(&mut out, R::HEADERS, &rows)?;
                out.flush()?;
            }
            Sink::Csv(mut w) => w.flush()?,
            Sink::Json(mut out) => {
                let end: &[u8] = if self.rows == 0 { b"]\n" } else { b"\n]\n" };
                out.write_all(end)?;
                out.flush()?;
            }
        }
        Ok(self.rows)
    }
}

/// Longest cell shown in a table; the full value is in CSV and JSON output.
const MAX_TABLE_CELL: usize = 60;

fn write_table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    // Cells come from outside (bounce texts, names stored by older versions): no escape
    // sequence reaches the terminal.
    let clip = |s: &str| -> String {
        let s = crate::domain::on_terminal(s);
        if s.chars().count() > MAX_TABLE_CELL {
            let cut: String = s.chars().take(MAX_TABLE_CELL - 1).collect();
            format!("{cut}…")
        } else {
            s
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in &rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Neutralises a CSV cell that a spreadsheet would otherwise evaluate as a formula (OWASP "CSV
/// injection"): a leading `= + - @`, tab or CR gets a `'` in front.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// A progress bar on stderr when it is a terminal; hidden when piped or in a log.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// An optional timestamp as a table cell.
pub fn time_cell(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(spreadsheet_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(spreadsheet_safe("+1"), "'+1");
        assert_eq!(spreadsheet_safe("-2"), "'-2");
        assert_eq!(spreadsheet_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(spreadsheet_safe("bob@example.com"), "bob@example.com");
    }
}
