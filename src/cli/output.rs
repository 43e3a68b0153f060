//! Listing output for every command: an aligned table for people, CSV safe to open in a
//! spreadsheet, or JSON for scripts. Each streams row by row, so memory stays flat (a table
//! takes its column widths from its first rows).

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
    Table(W, Table),
    Csv(Box<csv::Writer<W>>),
    Json(W),
}

impl<W: Write, R: Record> Listing<W, R> {
    /// Starts a listing on `out`.
    pub fn new(format: Format, mut out: W) -> io::Result<Self> {
        let sink = match format {
            Format::Table => Sink::Table(out, Table::new(R::HEADERS)),
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
            Sink::Table(out, table) => table.push(out, &record.cells())?,
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
            Sink::Table(mut out, mut table) => {
                table.flush(&mut out)?;
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

/// Rows a table holds back to measure its columns; the rows after them are printed as they come
/// in those widths (a longer cell then pushes the rest of its line along).
const TABLE_WIDTH_ROWS: usize = 1000;

/// An aligned table printed as it goes: a million rows held at once took over a gigabyte.
struct Table {
    headers: Vec<String>,
    held: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            held: Vec::new(),
            widths: None,
        }
    }

    fn push(&mut self, out: &mut impl Write, cells: &[String]) -> io::Result<()> {
        // Cells come from outside (bounce texts, names stored by older versions): no escape
        // sequence reaches the terminal.
        let row: Vec<String> = cells.iter().map(|c| clip(c)).collect();
        match &self.widths {
            Some(widths) => write_line(out, widths, &row),
            None => {
                self.held.push(row);
                if self.held.len() >= TABLE_WIDTH_ROWS {
                    self.flush(out)?;
                }
                Ok(())
            }
        }
    }

    /// Prints the header and the rows held back, once their widths are known.
    fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.widths.is_some() {
            return Ok(());
        }
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.held {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        write_line(out, &widths, &self.headers)?;
        for row in std::mem::take(&mut self.held) {
            write_line(out, &widths, &row)?;
        }
        self.widths = Some(widths);
        Ok(())
    }
}

/// A cell cut to [`MAX_TABLE_CELL`] characters, escaped for the terminal.
fn clip(s: &str) -> String {
    let s = crate::domain::on_terminal(s);
    if s.chars().count() > MAX_TABLE_CELL {
        let cut: String = s.chars().take(MAX_TABLE_CELL - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn write_line(out: &mut impl Write, widths: &[usize], cells: &[String]) -> io::Result<()> {
    let mut text = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            text.push_str("  ");
        }
        text.push_str(cell);
        text.extend(std::iter::repeat_n(
            ' ',
            w.saturating_sub(cell.chars().count()),
        ));
    }
    writeln!(out, "{}", text.trim_end())
}

/// Neutralises a CSV cell that a spreadsheet would otherwise evaluate as a formula (OWASP "CSV
/// injection"): a leading `= + - @`, tab or CR gets a `'` in front, and so does a leading `'`.
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(crate::import::GUARDED) {
        format!("'{cell}").into()
    } else {
        cell.into()
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

    #[derive(Serialize)]
    struct Pair(String, String);

    impl Record for Pair {
        const HEADERS: &'static [&'static str] = &["id", "name"];
        fn cells(&self) -> Vec<String> {
            vec![self.0.clone(), self.1.clone()]
        }
    }

    #[test]
    fn a_long_table_is_aligned_by_its_first_rows_and_keeps_every_row() {
        let mut out = Vec::new();
        let mut listing = Listing::new(Format::Table, &mut out).unwrap();
        let n = TABLE_WIDTH_ROWS + 500;
        for i in 0..n {
            let name = if i == n - 1 {
                "a much longer name"
            } else {
                "ann"
            };
            listing.push(&Pair(i.to_string(), name.into())).unwrap();
        }
        assert_eq!(listing.finish().unwrap(), n);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), n + 1);
        // Widths from the first 1,000 rows (ids up to 999); a longer cell after them pushes
        // its line along.
        assert_eq!(lines[0], "id   name");
        assert_eq!(lines[1], "0    ann");
        assert_eq!(lines[1000], "999  ann");
        assert_eq!(lines[n - 1], format!("{}  ann", n - 2));
        assert_eq!(lines[n], format!("{}  a much longer name", n - 1));
        // A short table is aligned on all of its rows.
        let mut out = Vec::new();
        let mut listing = Listing::new(Format::Table, &mut out).unwrap();
        listing.push(&Pair("1".into(), "x".into())).unwrap();
        listing.push(&Pair("1234567".into(), "y".into())).unwrap();
        listing.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id       name\n1        x\n1234567  y\n"
        );
    }

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(spreadsheet_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(spreadsheet_safe("+1"), "'+1");
        assert_eq!(spreadsheet_safe("-2"), "'-2");
        assert_eq!(spreadsheet_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(spreadsheet_safe("bob@example.com"), "bob@example.com");
        assert_eq!(spreadsheet_safe("'quoted"), "''quoted");
    }
}
