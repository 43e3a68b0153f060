//! `digestif issue …`: preview and list issues.

use std::io;
use std::path::PathBuf;

use super::output::{Format, Listing, Record, time_cell};
use crate::config::Settings;
use crate::digest;
use crate::store::{self, issues};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Render the next issue as .html, .txt and .eml files without sending or storing anything
    Preview {
        /// Folder for the files
        #[arg(long, default_value = "preview")]
        out: PathBuf,
    },
    /// List issues, newest first, with their status (skipped slots say why)
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    match cmd {
        Command::Preview { out } => {
            match digest::preview(&pool, settings, chrono::Utc::now(), &out).await? {
                Ok(p) => {
                    println!(
                        "issue #{} for {} ({}):",
                        p.content.number,
                        p.content
                            .slot
                            .with_timezone(&settings.schedule.schedule.zone())
                            .format("%a %-d %b %Y %H:%M %Z"),
                        p.rendered.subject()
                    );
                    for f in &p.files {
                        println!("  {}", f.display());
                    }
                }
                Err(reason) => println!("the next slot would be skipped: {reason}"),
            }
            Ok(())
        }
        Command::List { format } => {
            let mut listing = Listing::new(format, io::stdout().lock())?;
            for row in issues::list(&pool).await? {
                listing.push(&row)?;
            }
            listing.finish()?;
            Ok(())
        }
    }
}

impl Record for issues::IssueRow {
    const HEADERS: &'static [&'static str] = &[
        "number",
        "slot",
        "status",
        "subject",
        "reason",
        "finished_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.number
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            time_cell(Some(self.slot)),
            self.status.clone(),
            self.subject.clone(),
            self.status_reason.clone().unwrap_or_default(),
            time_cell(self.finished_at),
        ]
    }
}
