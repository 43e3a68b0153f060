//! The operator's command line (docs/ARCHITECTURE.md §7): argument parsing and one module per
//! command group. Each clap variant's `///` comment is its `--help` text.

mod articles;
mod doctor;
pub mod exit;
mod feeds;
mod issue;
pub mod output;
mod run;
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
#[command(
    name = "digestif",
    version,
    propagate_version = true,
    after_long_help = exit::TABLE
)]
pub struct Cli {
    /// Configuration file [default: config/digestif.toml if present, else built-in defaults]
    #[arg(
        long,
        global = true,
        env = "DIGESTIF_CONFIG",
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,

    /// Log format on stderr: human-readable text, one JSON object per line, or journald's
    /// (each line's severity as a <N> prefix, no timestamp); journald is the default when
    /// stderr is the journal (JOURNAL_STREAM), text otherwise
    #[arg(long, global = true, value_enum, help_heading = "Global options")]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
    /// Lines with their syslog severity as a `<N>` prefix, which journald turns into each
    /// entry's PRIORITY (so `journalctl -p warning` works), and no timestamp of our own.
    Journald,
}

impl LogFormat {
    /// `--log-format`, or journald's when stderr is connected to the journal: systemd says so
    /// in `JOURNAL_STREAM` (the device and inode of that stream), which a child whose stderr
    /// was redirected also inherits, hence the comparison.
    pub fn chosen(flag: Option<Self>) -> Self {
        flag.unwrap_or_else(|| {
            if stderr_is_journal() {
                Self::Journald
            } else {
                Self::Text
            }
        })
    }
}

fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
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
    /// Add, list, remove and fetch the RSS, Atom and JSON feeds articles come from
    #[command(subcommand)]
    Feeds(feeds::Command),
    /// Preview, send, list, inspect and resume issues of the digest
    #[command(subcommand)]
    Issue(issue::Command),
    /// Show the schedule
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// One shot for cron and systemd timers: create the due issue, deliver what is ready, exit
    ///
    /// Only a slot within schedule.grace is sent; an older missed slot is reported, not sent.
    /// Running it again, or twice at once, does nothing more. SIGTERM stops claiming and lets
    /// messages in flight finish within delivery.shutdown_grace.
    Run {
        /// Exit 5 when a slot was missed and not sent (later than schedule.grace, or passed over)
        #[arg(long)]
        fail_on_missed: bool,
        /// Output format: one JSON object with the issue, the outcomes and the exit code
        #[arg(long, value_enum, default_value = "text")]
        format: output::Output,
    },
    /// Long-running: the schedule, delivery, the HTTP server (health, metrics, links) and the
    /// bounce mailbox (inbound.imap_url, read every inbound.poll_interval)
    ///
    /// Sleeps until the next slot or the next retry is due. SIGTERM or SIGINT: stop claiming,
    /// let messages in flight finish within delivery.shutdown_grace, give back unstarted
    /// claims, exit 0. Several `serve` processes may share one database.
    Serve {
        /// Serve HTTP only (no schedule, no delivery, no bounce mailbox)
        #[arg(long)]
        no_schedule: bool,
    },
    /// Read one message on stdin: a bounce (RFC 3464), a complaint (RFC 5965) or an
    /// unsubscribe request by mail, and record what it says
    ///
    /// For an MTA to pipe the bounce address to; `digestif doctor --postfix` prints the Postfix
    /// configuration that does.
    /// Exit code 0 when handled or deliberately ignored, 75 (temporary failure, the MTA retries)
    /// when the database cannot be reached or a feedback loop's DKIM key gets no DNS answer in
    /// time.
    ///
    /// With --imap: one pass over the bounce mailbox (inbound.imap_url) instead of stdin, for
    /// cron; `serve` does the same every inbound.poll_interval. One line per message; each is
    /// moved to inbound.processed_folder once handled. Exit code 1 when the mailbox cannot be
    /// reached or logged into, 75 when the database cannot be reached or a message was left
    /// for the next pass.
    Inbound {
        /// The envelope recipient the MTA delivered to (the VERP address)
        #[arg(long, conflicts_with = "imap")]
        recipient: Option<String>,
        /// Read the bounce mailbox over IMAP (one pass) instead of one message on stdin
        #[arg(long)]
        imap: bool,
    },
    /// Print a shell completion script (bash: `digestif completions bash >
    /// /etc/bash_completion.d/digestif`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, roff (`digestif man > digestif.1; man ./digestif.1`)
    Man,
    /// Check the configuration, database, SMTP server, DKIM key and bounce mailbox; print the
    /// DNS records to publish. Exit code 1 if any check fails
    Doctor {
        /// Print the Postfix configuration that pipes the bounce address to `digestif inbound`
        /// (for this binary, this --config and bounces.address) instead of checking
        #[arg(long)]
        postfix: bool,
        /// Output format: one JSON object with every check
        #[arg(long, value_enum, default_value = "text", conflicts_with = "postfix")]
        format: output::Output,
    },
}

impl Cli {
    /// Whether the command serves HTTP to the public (`serve`), beside anything else it does.
    pub fn serves_http(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

impl Command {
    /// Commands that may send mail, and so need the transport and the DKIM keys.
    fn sends_mail(&self) -> bool {
        match self {
            Command::Issue(cmd) => cmd.sends_mail(),
            Command::Run { .. } => true,
            Command::Serve { no_schedule } => !no_schedule,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Print the coming slots in the configured time zone and in UTC
    Next {
        /// How many slots (1 to 10000)
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=10_000))]
        count: u16,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        format: output::Output,
    },
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Generated from the argument definitions; they need no configuration or database.
    match &cli.command {
        // Into a buffer first: clap_complete panics when its writer fails (`| head`).
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "digestif", &mut script);
            return print_all(&script);
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page)?;
            return print_all(&page);
        }
        _ => {}
    }
    crate::clock::init()?;
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) if matches!(cli.command, Command::Doctor { .. }) => {
            let format = match cli.command {
                Command::Doctor { format, .. } => format,
                _ => output::Output::Text,
            };
            return Err(doctor::config_failed(&e, format));
        }
        // Run by the MTA: a configuration the operator can fix must not lose the mail, so the
        // MTA is told to try again later rather than to bounce or drop it.
        Err(e) if matches!(cli.command, Command::Inbound { imap: false, .. }) => {
            return Err(TempFail(anyhow::Error::new(e)).into());
        }
        Err(e) => return Err(ConfigFail(anyhow::Error::new(e)).into()),
    };
    if cli.command.sends_mail() {
        // Every key is read and checked before the database is touched, so a bad key never
        // leaves an issue created and fanned out with nobody able to send it.
        crate::send::Mailer::from_settings(&settings).map_err(ConfigFail)?;
    }
    match cli.command {
        Command::Migrate => {
            let m = store::migrate(&settings.database).await?;
            if m.created {
                println!("created the database {}", m.place);
            }
            match m.applied.as_slice() {
                [] => println!(
                    "the database at {} is up to date (schema version {})",
                    m.place, m.version
                ),
                applied => {
                    for (version, description) in applied {
                        println!("applied migration {version}: {description}");
                    }
                    println!(
                        "the database at {} is at schema version {} ({} migration{} applied now)",
                        m.place,
                        m.version,
                        applied.len(),
                        if applied.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(())
        }
        Command::Subscribers(cmd) => subscribers::run(cmd, &settings).await,
        Command::Tips(cmd) => tips::run(cmd, &settings).await,
        Command::Articles(cmd) => articles::run(cmd, &settings).await,
        Command::Feeds(cmd) => feeds::run(cmd, &settings).await,
        Command::Issue(cmd) => issue::run(cmd, &settings).await,
        Command::Schedule(ScheduleCommand::Next { count, format }) => {
            run::schedule_next(&settings, count.into(), format)
        }
        Command::Run {
            fail_on_missed,
            format,
        } => run::run(&settings, fail_on_missed, format).await,
        Command::Serve { no_schedule } => run::serve(&settings, no_schedule).await,
        Command::Inbound { imap: true, .. } => inbound_imap(&settings).await,
        Command::Inbound { recipient, .. } => inbound(&settings, recipient.as_deref()).await,
        Command::Doctor { postfix: true, .. } => {
            doctor::postfix_recipe(&settings, cli.config.as_deref())
        }
        Command::Doctor {
            postfix: false,
            format,
        } => doctor::run(&settings, format).await,
        // Answered before the configuration was read.
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// Writes `bytes` to stdout; a closed pipe is an error main() knows to ignore.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// The database could not be reached: the MTA should try again later (EX_TEMPFAIL).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct TempFail(anyhow::Error);

pub use exit::{EX_CONFIG, EX_TEMPFAIL};

/// The configuration (file, environment, keys it names) is wrong: starting again will not help
/// until the operator fixes it, so the units name this code in `RestartPreventExitStatus=`.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConfigFail(anyhow::Error);

async fn inbound(settings: &Settings, recipient: Option<&str>) -> anyhow::Result<()> {
    use std::io::Read;
    // A bounce carries at most the returned message; 10 MiB is far beyond a newsletter. The
    // read happens before anything else, so blocking here stalls nothing.
    let mut raw = Vec::new();
    std::io::stdin()
        .lock()
        .take(10 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| anyhow::anyhow!("cannot read the message on stdin: {e}"))?;
    let pool = store::connect_current(&settings.database)
        .await
        .map_err(TempFail)?;
    let keys = crate::digest::token_keys(settings, &pool)
        .await
        .map_err(TempFail)?;
    let handled = crate::inbound::handle(&pool, settings, &keys, &raw, recipient)
        .await
        .map_err(TempFail)?;
    tracing::info!("inbound: {handled}");
    println!("{handled}");
    Ok(())
}

/// `digestif inbound --imap`: one pass over the bounce mailbox.
async fn inbound_imap(settings: &Settings) -> anyhow::Result<()> {
    use crate::inbound::imap::{self, PassError};
    let Some(mailbox) = &settings.inbound.imap else {
        return Err(ConfigFail(anyhow::anyhow!(
            "config: inbound.imap_url: not set (--imap reads the mailbox it names)"
        ))
        .into());
    };
    let pool = store::connect_current(&settings.database)
        .await
        .map_err(TempFail)?;
    let done = match imap::pass(&pool, settings, mailbox, None).await {
        Ok(done) => done,
        Err(PassError::Database(e)) => return Err(TempFail(e).into()),
        Err(e) => return Err(e.into()),
    };
    if done.busy {
        println!(
            "{}: another digestif is reading it now; nothing done",
            mailbox.mailbox()
        );
        return Ok(());
    }
    for line in &done.lines {
        println!("{line}");
    }
    if done.left > 0 {
        return Err(TempFail(anyhow::anyhow!(
            "{}: {} message{} left for the next pass (the log says why)",
            mailbox.mailbox(),
            done.left,
            if done.left == 1 { "" } else { "s" }
        ))
        .into());
    }
    if done.lines.is_empty() {
        println!("{}: no messages", mailbox.mailbox());
    }
    Ok(())
}
