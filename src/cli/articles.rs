//! `digestif articles …`: add, import and list articles.

use std::io;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::output::{Format, Listing, Record, time_cell};
use crate::config::Settings;
use crate::domain::NewArticle;
use crate::store::{self, content as db};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add one article
    Add {
        /// One-line title
        #[arg(long)]
        title: String,
        /// Link to the article (http or https)
        #[arg(long)]
        url: String,
        /// A sentence or two shown under the title
        #[arg(long, default_value = "")]
        summary: String,
        /// Who wrote it
        #[arg(long, default_value = "")]
        author: String,
        /// Publication time, RFC 3339 or YYYY-MM-DD [default: now]
        #[arg(long)]
        published_at: Option<String>,
    },
    /// Import articles from a CSV file with the header `title,url,summary,author,published_at`
    ///
    /// All or nothing: every bad line is reported with its number and nothing is imported.
    /// Articles whose URL is already stored are skipped, so importing twice is safe.
    Import {
        /// The CSV file
        file: PathBuf,
    },
    /// List articles, newest first
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(serde::Deserialize)]
struct CsvArticle {
    title: String,
    url: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    author: String,
    published_at: String,
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        Command::Add {
            title,
            url,
            summary,
            author,
            published_at,
        } => {
            let published_at = published_at.unwrap_or_else(|| crate::clock::now().to_rfc3339());
            let article = NewArticle::parse(&title, &url, &summary, &author, &published_at)?;
            let pool = store::connect_current(&settings.database).await?;
            match db::insert_article(&pool, &article).await? {
                Some(id) => println!("added article {id}: {}", article.title),
                None => bail!(
                    "an article with the URL '{}' is already stored",
                    article.url
                ),
            }
            Ok(())
        }
        Command::Import { file } => {
            let shown = file.display().to_string();
            let input =
                std::fs::File::open(&file).with_context(|| format!("{shown}: cannot open"))?;
            let mut reader = csv::Reader::from_reader(crate::import::QuoteWatch::new(input));
            let headers = reader
                .headers()
                .with_context(|| format!("{shown}: cannot read the header line"))?
                .clone();
            // A wrong header is one mistake: say it once, not once for every row below it.
            let missing: Vec<&str> = ["title", "url", "published_at"]
                .into_iter()
                .filter(|want| {
                    !headers
                        .iter()
                        .any(|h| h.trim_start_matches('\u{feff}').trim() == *want)
                })
                .collect();
            if !missing.is_empty() {
                bail!(
                    "{shown}: line 1: the header has no {} column{} (expected `title,url,summary,author,published_at`; summary and author may be left out)",
                    missing
                        .iter()
                        .map(|m| format!("'{m}'"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if missing.len() == 1 { "" } else { "s" }
                );
            }
            let mut articles = Vec::new();
            let mut bad = 0usize;
            let mut record = csv::StringRecord::new();
            loop {
                match reader.read_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => {
                        reader.get_ref().all_closed(&shown)?;
                        break;
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        bail!("{shown}: line {line}: cannot be read as CSV: {e}");
                    }
                }
                let line = record.position().map_or(0, |p| p.line());
                let parsed = record
                    .deserialize::<CsvArticle>(Some(&headers))
                    .map_err(|e| match e.kind() {
                        csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
                        _ => e.to_string(),
                    })
                    .and_then(|a| {
                        NewArticle::parse(&a.title, &a.url, &a.summary, &a.author, &a.published_at)
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok(a) => articles.push(a),
                    Err(reason) => {
                        bad += 1;
                        eprintln!("{shown}: line {line}: {reason}");
                    }
                }
            }
            if bad > 0 {
                bail!(
                    "{shown}: {bad} invalid line{}; nothing imported",
                    if bad == 1 { "" } else { "s" }
                );
            }
            let pool = store::connect_current(&settings.database).await?;
            let added = db::insert_all(&pool, &articles).await?;
            println!(
                "imported {added} article{} from {shown} ({} already stored)",
                if added == 1 { "" } else { "s" },
                articles.len() - added
            );
            Ok(())
        }
        Command::List { format } => {
            let pool = store::connect_current(&settings.database).await?;
            let mut listing = Listing::new(format, io::stdout().lock())?;
            for a in db::list_articles(&pool).await? {
                listing.push(&a)?;
            }
            listing.finish()?;
            Ok(())
        }
    }
}

impl Record for db::ArticleRow {
    const HEADERS: &'static [&'static str] =
        &["id", "published_at", "title", "url", "author", "issue"];

    fn cells(&self) -> Vec<String> {
        // Where it went: out in an issue, left out by one (a limit, a feed's keywords), or
        // not yet considered.
        let issue = match (self.sent_in, self.considered_by, self.considered) {
            (Some(n), _, _) => format!("#{n}"),
            (None, Some(n), _) => format!("left out of #{n}"),
            (None, None, true) => "left out (skipped slot)".to_owned(),
            (None, None, false) => String::new(),
        };
        vec![
            self.article_id.to_string(),
            time_cell(Some(self.published_at)),
            self.title.clone(),
            self.url.clone(),
            self.author.clone().unwrap_or_default(),
            issue,
        ]
    }
}
