//! The operator's command line (DESIGN.md §7): argument parsing and one module per command
//! group. Each clap variant's `///` comment is its `--help` text.

mod articles;
mod issue;
pub mod output;
mod subscribers;
mod tips;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::store;

/// digestif: a weekly newsletter digest mailer.
///
/// Keeps subscribers, tips and articles in PostgreSQL, renders a weekly digest and sends it
/// over SMTP. Configuration: config/digestif.toml, overridable by DIGESTIF_<SECTION>__<KEY>
/// environment variables and DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "digestif", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file [default: config/digestif.toml if present, else built-in defaults]
    #[arg(long, global = true, env = "DIGESTIF_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed and apply schema migrations (safe to run repeatedly)
    Migrate,
    /// Add, import, list, export, show and remove subscribers
    #[command(subcommand)]
    Subscribers(subscribers::Command),
    /// Add, import, list and retire tips
    #[command(subcommand)]
    Tips(tips::Command),
    /// Add, import and list articles
    #[command(subcommand)]
    Articles(articles::Command),
    /// Preview and list issues of the digest
    #[command(subcommand)]
    Issue(issue::Command),
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => {
            store::migrate(&settings.database).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Subscribers(cmd) => subscribers::run(cmd, &settings).await,
        Command::Tips(cmd) => tips::run(cmd, &settings).await,
        Command::Articles(cmd) => articles::run(cmd, &settings).await,
        Command::Issue(cmd) => issue::run(cmd, &settings).await,
    }
}
