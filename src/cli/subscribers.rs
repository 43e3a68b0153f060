//! `digestif subscribers …`: add, import, list, export, show and remove subscribers.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use futures_util::TryStreamExt;
use sqlx::PgPool;

use super::output::{Format, Listing, Output, Record, print_json, progress, time_cell};
use crate::config::Settings;
use crate::digest;
use crate::domain::{SubscriberEmail, SubscriberName, SubscriberStatus, on_terminal};
use crate::store::{self, subscribers as db};

/// `--status`: the lifecycle states, spelled as the CLI takes them (the domain type knows
/// nothing of clap).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusArg {
    /// Not confirmed yet.
    Pending,
    /// Receives the digest.
    Active,
    /// Opted out.
    Unsubscribed,
    /// Suppressed after hard bounces.
    Bounced,
    /// Reported the mail as spam.
    Complained,
}

impl From<StatusArg> for SubscriberStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => Self::Pending,
            StatusArg::Active => Self::Active,
            StatusArg::Unsubscribed => Self::Unsubscribed,
            StatusArg::Bounced => Self::Bounced,
            StatusArg::Complained => Self::Complained,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add one subscriber: active at once, or with --confirm pending until they click the link
    /// in a confirmation email (double opt-in)
    Add {
        /// Their email address
        email: String,
        /// Their name, used in the To header and the greeting
        #[arg(long)]
        name: Option<String>,
        /// Allow an address that was erased on request (they asked to come back)
        #[arg(long)]
        allow_erased: bool,
        /// Double opt-in: store them as pending and email a confirmation link
        #[arg(long)]
        confirm: bool,
    },
    /// Import subscribers from a CSV file with the header `email,name` (other columns ignored but
    /// `status`: rows of an export that are not active are left out)
    ///
    /// Every bad line is reported with its line number. By default the import is all or
    /// nothing: one bad line and nothing is imported. Duplicates (within the file, or already
    /// stored, in any letter case) are reported and never create a second subscriber; stored
    /// subscribers are left as they are, so an unsubscribed address stays unsubscribed.
    Import {
        /// The CSV file
        file: PathBuf,
        /// Import the valid rows and report the invalid ones instead of importing nothing
        #[arg(long)]
        skip_invalid: bool,
        /// Only validate and report what would happen; change nothing
        #[arg(long)]
        dry_run: bool,
        /// Import addresses that were erased on request (they asked to come back)
        #[arg(long)]
        allow_erased: bool,
        /// Output format: JSON lines on stdout, one per line left out ({"line", "text"}), then
        /// one with the totals
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// List subscribers
    List {
        /// Only subscribers with this status
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Export every subscriber with all stored fields (CSV is safe to open in a spreadsheet)
    Export {
        /// Output format
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
    /// Show one subscriber: status, consent and the full event history
    Show {
        /// Their email address (any letter case)
        email: String,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ShowFormat,
    },
    /// Unsubscribe a subscriber (recorded as an admin action); --purge erases them
    Remove {
        /// Their email address (any letter case)
        email: String,
        /// Erase all personal data (GDPR Art. 17); only an anonymous hash stays, so the address
        /// is not re-imported by accident
        #[arg(long)]
        purge: bool,
    },
}

/// Formats for `export`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// CSV with a header row.
    Csv,
    /// A JSON array.
    Json,
}

/// Formats for `show`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShowFormat {
    /// Readable text.
    Table,
    /// One JSON object with the history in `events`.
    Json,
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        Command::Add {
            email,
            name,
            allow_erased,
            confirm,
        } => {
            let email = SubscriberEmail::parse(&email)?;
            let name = name
                .as_deref()
                .map(SubscriberName::parse_optional)
                .transpose()?
                .flatten();
            let pool = store::connect_current(&settings.database).await?;
            if confirm {
                let keys = digest::token_keys(settings, &pool).await?;
                let outcome = digest::send_confirmation(
                    &pool,
                    settings,
                    &keys,
                    &email,
                    name.as_ref(),
                    db::Asker::Operator { allow_erased },
                )
                .await?;
                match outcome {
                    db::ConfirmRequest::Send {
                        subscriber_id,
                        status: SubscriberStatus::Unsubscribed,
                        ..
                    } => println!(
                        "{email} stays unsubscribed until they click the confirmation link just sent (subscriber {subscriber_id})"
                    ),
                    db::ConfirmRequest::Send { subscriber_id, .. } => println!(
                        "{email} is pending (subscriber {subscriber_id}); a confirmation link was sent"
                    ),
                    db::ConfirmRequest::AlreadyActive => {
                        bail!("'{email}' is already an active subscriber")
                    }
                    db::ConfirmRequest::Suppressed(status) => {
                        bail!("'{email}' is suppressed ({status}); not mailing them")
                    }
                    db::ConfirmRequest::Erased => bail!(
                        "'{email}' was erased on request; add --allow-erased if they asked to come back"
                    ),
                    db::ConfirmRequest::AskedRecently => {
                        bail!("'{email}' was sent a confirmation link moments ago")
                    }
                }
                return Ok(());
            }
            let id = db::add(
                &pool,
                &email,
                name.as_ref(),
                SubscriberStatus::Active,
                "cli",
                allow_erased,
            )
            .await?;
            println!("added {email} (subscriber {id})");
            Ok(())
        }
        Command::Import {
            file,
            skip_invalid,
            dry_run,
            allow_erased,
            format,
        } => {
            let pool = store::connect_current(&settings.database).await?;
            import(&pool, &file, skip_invalid, dry_run, allow_erased, format).await
        }
        Command::List { status, format } => {
            let pool = store::connect_current(&settings.database).await?;
            let mut listing = Listing::new(format, io::stdout().lock())?;
            let mut rows = db::list(&pool, status.map(SubscriberStatus::from));
            while let Some(row) = rows.try_next().await? {
                listing.push(&row)?;
            }
            listing.finish()?;
            Ok(())
        }
        Command::Export { format } => {
            let pool = store::connect_current(&settings.database).await?;
            let format = match format {
                ExportFormat::Csv => Format::Csv,
                ExportFormat::Json => Format::Json,
            };
            let mut listing = Listing::new(format, io::BufWriter::new(io::stdout().lock()))?;
            let mut rows = db::list(&pool, None);
            while let Some(row) = rows.try_next().await? {
                listing.push(&row)?;
            }
            listing.finish()?;
            Ok(())
        }
        Command::Show { email, format } => {
            let email = SubscriberEmail::parse(&email)?;
            let pool = store::connect_current(&settings.database).await?;
            let Some(row) = db::find(&pool, &email).await? else {
                bail!("no subscriber '{email}'");
            };
            let events = db::events(&pool, row.subscriber_id).await?;
            let mut out = io::stdout().lock();
            match format {
                ShowFormat::Json => {
                    let mut value = serde_json::to_value(&row)?;
                    value["events"] = serde_json::to_value(&events)?;
                    serde_json::to_writer_pretty(&mut out, &value)?;
                    writeln!(out)?;
                }
                ShowFormat::Table => {
                    for (header, cell) in SubscriberRow::HEADERS.iter().zip(row.cells()) {
                        writeln!(out, "{header:<16}{}", on_terminal(&cell))?;
                    }
                    writeln!(out, "history:")?;
                    for e in events {
                        writeln!(
                            out,
                            "  {}  {} via {}{}",
                            time_cell(Some(e.created_at)),
                            e.kind,
                            e.method,
                            e.detail
                                .map(|d| format!(" ({})", on_terminal(&d)))
                                .unwrap_or_default()
                        )?;
                    }
                }
            }
            Ok(())
        }
        Command::Remove { email, purge } => {
            let email = SubscriberEmail::parse(&email)?;
            let pool = store::connect_current(&settings.database).await?;
            if purge {
                if !db::purge(&pool, &email).await? {
                    bail!("no subscriber '{email}'");
                }
                println!(
                    "erased {email}: personal data deleted, an anonymous suppression entry kept"
                );
                return Ok(());
            }
            match db::unsubscribe_by_admin(&pool, &email).await? {
                db::Removal::Unsubscribed => println!("unsubscribed {email}"),
                db::Removal::AlreadyInactive(status) => {
                    println!("{email} was already {status}; nothing changed")
                }
                db::Removal::NotFound => bail!("no subscriber '{email}'"),
            }
            Ok(())
        }
    }
}

use db::SubscriberRow;

impl Record for SubscriberRow {
    const HEADERS: &'static [&'static str] = &[
        "id",
        "email",
        "name",
        "status",
        "consent_source",
        "consent_at",
        "confirmed_at",
        "unsubscribed_at",
        "hard_bounces",
        "created_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.subscriber_id.to_string(),
            self.email.clone(),
            self.name.clone().unwrap_or_default(),
            self.status.to_string(),
            self.consent_source.clone(),
            time_cell(Some(self.consent_at)),
            time_cell(self.confirmed_at),
            time_cell(self.unsubscribed_at),
            self.hard_bounces.to_string(),
            time_cell(Some(self.created_at)),
        ]
    }
}

async fn import(
    pool: &PgPool,
    path: &Path,
    skip_invalid: bool,
    dry_run: bool,
    allow_erased: bool,
    format: Output,
) -> anyhow::Result<()> {
    let shown = path.display().to_string();
    let json = format == Output::Json;
    let file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress(len, "importing");
    let mut stderr = io::stderr().lock();
    let options = crate::import::Options {
        skip_invalid,
        dry_run,
        allow_erased,
    };
    let outcome = crate::import::subscribers_csv(
        pool,
        &shown,
        BufReader::with_capacity(1 << 16, file),
        options,
        &mut |remark| {
            if json {
                return print_json(&remark).map_err(std::io::Error::other);
            }
            bar.suspend(|| writeln!(stderr, "{shown}: line {}: {}", remark.line, remark.text))
        },
        &|read| bar.set_position(read),
    )
    .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let refused = outcome.refused;
    if json {
        print_json(&serde_json::json!({
            "file": shown,
            "dry_run": dry_run,
            "totals": outcome,
        }))?;
        if dry_run && refused > 0 {
            return Err(anyhow!(
                "{shown}: {refused} invalid line{}",
                plural(refused)
            ));
        }
        return Ok(());
    }
    let summary = format!(
        "{} {} subscriber{} from {shown} ({} row{} read: {} duplicate{} in the file, {} already stored, {}{} invalid{})",
        if dry_run { "would import" } else { "imported" },
        outcome.added,
        plural(outcome.added),
        outcome.read,
        plural(outcome.read),
        outcome.duplicates,
        plural(outcome.duplicates),
        outcome.stored,
        if outcome.not_active > 0 {
            format!("{} not active in the file, ", outcome.not_active)
        } else {
            String::new()
        },
        refused,
        if refused > 0 && !dry_run {
            ", skipped"
        } else {
            ""
        },
    );
    if dry_run {
        println!("dry run: {summary}; nothing was changed");
        if refused > 0 {
            return Err(anyhow!(
                "{shown}: {refused} invalid line{}",
                plural(refused)
            ));
        }
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
