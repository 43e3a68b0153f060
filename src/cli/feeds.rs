//! `digestif feeds …`: add, list, remove and fetch the feeds articles come from.

use std::io;

use anyhow::bail;

use super::output::{Format, Listing, Output, Record, print_json, time_cell};
use crate::config::Settings;
use crate::store::{self, feeds as db};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a feed (RSS, Atom or JSON Feed); it is fetched with the next `feeds fetch`
    Add {
        /// The feed's http(s) URL
        url: String,
        /// A name to show instead of the URL
        #[arg(long)]
        name: Option<String>,
        /// A tag (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// List the feeds: last fetch, its outcome, entries taken, next fetch
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove a feed (the articles it brought stay)
    Remove {
        /// The feed's id (`feeds list`)
        id: i64,
    },
    /// Fetch the feeds that are due now, or one feed by id whether due or not
    ///
    /// One line per feed. A feed that fails keeps its error (shown by `feeds list`) and is
    /// tried again later, waiting longer after each failure; the others go on. Exit code 1
    /// when any feed failed.
    Fetch {
        /// Only this feed
        id: Option<i64>,
        /// Output format: one JSON object per feed, one line each
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    match cmd {
        Command::Add { url, name, tags } => {
            let parsed = url::Url::parse(url.trim())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            let Some(parsed) = parsed else {
                bail!(
                    "'{}' is not an http or https URL",
                    crate::domain::one_line(&url)
                );
            };
            let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
                bail!("--name: longer than 200 characters");
            }
            match db::add(&pool, parsed.as_str(), name.as_deref(), &tags).await? {
                Some(feed) => println!("added feed {}: {}", feed.feed_id, feed.url),
                None => bail!("the feed {} is already listed", parsed),
            }
            Ok(())
        }
        Command::List { format } => {
            db::sync_config(&pool, &settings.feeds.sources).await?;
            let mut listing = Listing::new(format, io::stdout().lock())?;
            for feed in db::list(&pool).await? {
                listing.push(&feed)?;
            }
            listing.finish()?;
            Ok(())
        }
        Command::Remove { id } => {
            if db::from_config(&pool, id).await? {
                bail!(
                    "feed {id} is listed in the config file ([[feeds.sources]]): remove it there"
                );
            }
            if !db::remove(&pool, id).await? {
                bail!("no feed {id}");
            }
            println!("removed feed {id}; the articles it brought stay");
            Ok(())
        }
        Command::Fetch { id, format } => {
            let reports = crate::feeds::fetch_due(&pool, settings, id).await?;
            if id.is_some() && reports.is_empty() {
                bail!("no feed {}", id.unwrap_or_default());
            }
            for r in &reports {
                if format == Output::Json {
                    print_json(r)?;
                    continue;
                }
                if r.ok {
                    println!(
                        "feed {} {}: {} ({} new article{})",
                        r.feed_id,
                        r.url,
                        r.status,
                        r.added,
                        if r.added == 1 { "" } else { "s" }
                    );
                } else {
                    println!("feed {} {}: FAILED: {}", r.feed_id, r.url, r.status);
                }
                for s in &r.skipped {
                    eprintln!("feed {}: left out {s}", r.feed_id);
                }
            }
            if format == Output::Text && reports.is_empty() {
                println!("no feed is due");
            }
            let failed = reports.iter().filter(|r| !r.ok).count();
            if failed > 0 {
                bail!(
                    "{failed} of {} feeds failed (see `digestif feeds list`)",
                    reports.len()
                );
            }
            Ok(())
        }
    }
}

impl Record for db::FeedRow {
    const HEADERS: &'static [&'static str] = &[
        "id",
        "name",
        "url",
        "last_fetch",
        "last_status",
        "entries_taken",
        "next_fetch",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.feed_id.to_string(),
            self.name.clone().unwrap_or_default(),
            self.url.clone(),
            time_cell(self.last_fetch_at),
            self.last_status.clone().unwrap_or_default(),
            self.entries_taken.to_string(),
            time_cell(Some(self.next_fetch_at)),
        ]
    }
}
