//! `digestif tips …`: add, import, list and retire tips.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::output::{Format, Listing, Record, time_cell};
use crate::config::Settings;
use crate::domain::NewTip;
use crate::store::{self, content as db};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add one tip
    #[command(group = clap::ArgGroup::new("the_body").required(true).args(["body", "body_file"]))]
    Add {
        /// One-line title (also the subject line when the tip leads an issue)
        #[arg(long)]
        title: String,
        /// The body in Markdown
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// Read the Markdown body from this file
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
        /// A theme tag (repeatable), lower-case letters, digits and dashes
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Where the idea came from (http or https)
        #[arg(long)]
        source_url: Option<String>,
    },
    /// Import tips from a Markdown file or a folder of `.md` files (one tip per file)
    ///
    /// Each file starts with TOML front matter between `+++` lines (`title`, optional `tags`
    /// and `source_url`), followed by the Markdown body. All or nothing: one bad file and nothing
    /// is imported. Tips whose title is already stored are skipped, so importing twice is safe.
    Import {
        /// A `.md` file or a folder of them
        path: PathBuf,
    },
    /// List tips, least recently sent first as rotation would pick them
    List {
        /// Include retired tips
        #[arg(long)]
        all: bool,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Retire a tip: it stays in old issues but is never picked again
    Retire {
        /// The tip's id (see `tips list`)
        id: i64,
    },
}

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        Command::Add {
            title,
            body,
            body_file,
            tags,
            source_url,
        } => {
            let body = match (body, body_file) {
                (Some(b), _) => b,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("{}: cannot read", f.display()))?,
                (None, None) => bail!("give the body with --body or --body-file"),
            };
            let tip = NewTip::parse(&title, &body, &tags, source_url.as_deref())?;
            let pool = store::connect_current(&settings.database).await?;
            match db::insert_tip(&pool, &tip).await? {
                Some(id) => println!("added tip {id}: {}", tip.title),
                None => bail!("a tip titled '{}' is already stored", tip.title),
            }
            Ok(())
        }
        Command::Import { path } => {
            let files = markdown_files(&path)?;
            let mut tips = Vec::with_capacity(files.len());
            let mut bad = 0usize;
            for file in &files {
                match read_tip(file) {
                    Ok(tip) => tips.push(tip),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}: {e:#}", file.display());
                    }
                }
            }
            if bad > 0 {
                bail!(
                    "{}: {bad} invalid tip file{}; nothing imported",
                    path.display(),
                    if bad == 1 { "" } else { "s" }
                );
            }
            let pool = store::connect_current(&settings.database).await?;
            let added = db::insert_all(&pool, &tips).await?;
            println!(
                "imported {added} tip{} from {} ({} already stored)",
                if added == 1 { "" } else { "s" },
                path.display(),
                tips.len() - added
            );
            Ok(())
        }
        Command::List { all, format } => {
            let pool = store::connect_current(&settings.database).await?;
            let mut listing = Listing::new(format, io::stdout().lock())?;
            for tip in db::list_tips(&pool, all).await? {
                listing.push(&tip)?;
            }
            listing.finish()?;
            Ok(())
        }
        Command::Retire { id } => {
            let pool = store::connect_current(&settings.database).await?;
            if !db::retire_tip(&pool, id).await? {
                bail!("no tip {id}");
            }
            println!("retired tip {id}");
            Ok(())
        }
    }
}

fn markdown_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))?
    {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "md") && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        bail!("{}: no .md files found", path.display());
    }
    files.sort();
    Ok(files)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    title: String,
    #[serde(default)]
    tags: Vec<String>,
    source_url: Option<String>,
}

fn read_tip(path: &Path) -> anyhow::Result<NewTip> {
    let text = std::fs::read_to_string(path).context("cannot read (is it UTF-8?)")?;
    parse_tip(&text)
}

/// Splits `+++` TOML front matter from the Markdown body and validates both.
fn parse_tip(text: &str) -> anyhow::Result<NewTip> {
    let text = text.trim_start_matches('\u{feff}').replace("\r\n", "\n");
    let Some(rest) = text.strip_prefix("+++\n") else {
        bail!("does not start with a `+++` front matter line");
    };
    let Some((front, body)) = rest
        .split_once("\n+++\n")
        .or_else(|| rest.strip_suffix("\n+++").map(|f| (f, "")))
    else {
        bail!("the front matter has no closing `+++` line");
    };
    let front: FrontMatter =
        toml::from_str(front).map_err(|e| anyhow::anyhow!("front matter: {}", e.message()))?;
    Ok(NewTip::parse(
        &front.title,
        body,
        &front.tags,
        front.source_url.as_deref(),
    )?)
}

impl Record for db::TipRow {
    const HEADERS: &'static [&'static str] = &[
        "id",
        "title",
        "tags",
        "active",
        "times_sent",
        "last_sent_at",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.tip_id.to_string(),
            self.title.clone(),
            self.tags.join(" "),
            self.active.to_string(),
            self.times_sent.to_string(),
            time_cell(self.last_sent_at),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_and_body_are_split() {
        let tip =
            parse_tip("+++\ntitle = \"Hi\"\ntags = [\"craft\"]\n+++\nBody *here*.\n").unwrap();
        assert_eq!(tip.title.as_str(), "Hi");
        assert_eq!(tip.tags, vec!["craft"]);
        assert_eq!(tip.body.as_str(), "Body *here*.");
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        let no_front = parse_tip("just text").unwrap_err().to_string();
        assert!(no_front.contains("front matter"), "{no_front}");
        let unclosed = parse_tip("+++\ntitle = \"x\"\nbody")
            .unwrap_err()
            .to_string();
        assert!(unclosed.contains("closing"), "{unclosed}");
        let typo = parse_tip("+++\ntitel = \"x\"\n+++\nb")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("titel"), "{typo}");
    }
}
