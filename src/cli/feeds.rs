//! `digestif feeds …`: add, list, remove and fetch the feeds articles come from.

use std::io;

use anyhow::bail;

use super::output::{Format, Listing, Output, Record, print_json, time_cell};
use crate::config::Settings;
use crate::domain::FeedSelection;
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
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Change a feed added by command: its name, tags, or which of its articles an issue takes
    ///
    /// Options not given keep their value. Feeds listed in the config file are changed there.
    Edit {
        /// The feed's id (`feeds list`)
        id: i64,
        /// A new name (an empty one shows the URL again)
        #[arg(long)]
        name: Option<String>,
        /// Replace the tags with these (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Remove every include and exclude keyword
        #[arg(long, conflicts_with_all = ["include", "exclude"])]
        no_keywords: bool,
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

/// Which of a feed's articles go into an issue.
#[derive(Debug, clap::Args)]
pub struct SelectionArgs {
    /// At most this many of its articles per issue, its newest (0: no limit)
    #[arg(long, value_name = "N")]
    max_per_issue: Option<u32>,
    /// Only articles whose title or summary holds one of these words, case-insensitive
    /// (repeatable; on `edit`, replaces the list)
    #[arg(long, value_name = "WORD")]
    include: Vec<String>,
    /// Never articles whose title or summary holds one of these words (repeatable; on
    /// `edit`, replaces the list)
    #[arg(long, value_name = "WORD")]
    exclude: Vec<String>,
}

fn http_url(raw: &str) -> anyhow::Result<url::Url> {
    url::Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "'{}' is not an http or https URL",
                crate::domain::on_terminal(raw)
            )
        })
}

fn feed_name(raw: String) -> anyhow::Result<Option<String>> {
    let name = raw.trim().to_owned();
    if name.chars().count() > 200 {
        bail!("--name: longer than 200 characters");
    }
    if name.chars().any(crate::domain::is_forbidden_char) {
        bail!("--name: contains a control character");
    }
    Ok((!name.is_empty()).then_some(name))
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    match cmd {
        Command::Add {
            url,
            name,
            tags,
            selection,
        } => {
            let parsed = http_url(&url)?;
            let name = name.map(feed_name).transpose()?.flatten();
            let selection = FeedSelection::parse(
                selection.max_per_issue,
                &selection.include,
                &selection.exclude,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            match db::add(&pool, parsed.as_str(), name.as_deref(), &tags, &selection).await? {
                Some(feed) => println!("added feed {}: {}", feed.feed_id, feed.url),
                None => bail!("the feed {} is already listed", parsed),
            }
            Ok(())
        }
        Command::Edit {
            id,
            name,
            tags,
            selection: args,
            no_keywords,
        } => {
            let Some(feed) = db::find(&pool, id).await? else {
                bail!("no feed {id}");
            };
            if feed.from_config {
                bail!(
                    "feed {id} is listed in the config file ([[feeds.sources]]): change it there"
                );
            }
            let old = &feed.selection;
            let keep = |given: Vec<String>, was: &[String]| {
                if no_keywords {
                    Vec::new()
                } else if given.is_empty() {
                    was.to_vec()
                } else {
                    given
                }
            };
            let selection = FeedSelection::parse(
                args.max_per_issue
                    .or(old.max_per_issue.and_then(|n| u32::try_from(n).ok())),
                &keep(args.include, &old.include),
                &keep(args.exclude, &old.exclude),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let name = name.map(feed_name).transpose()?;
            let tags = (!tags.is_empty()).then_some(tags);
            let Some(feed) = db::edit(
                &pool,
                id,
                name.as_ref().map(Option::as_deref),
                tags.as_deref(),
                &selection,
            )
            .await?
            else {
                bail!("no feed {id}");
            };
            let shown = feed.selection.summary();
            println!(
                "feed {id}: {}",
                if shown.is_empty() {
                    "every new article goes into the next issue".to_owned()
                } else {
                    shown
                }
            );
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
            let reports = crate::feeds::fetch_due(&pool, settings, id, &|| {}).await?;
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
        "selection",
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
            self.selection.summary(),
        ]
    }
}
