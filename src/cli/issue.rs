//! `digestif issue …`: preview, send, list, inspect, resume and test-send issues.

use crate::domain::on_terminal;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{Format, Listing, Output, Record, print_json, time_cell};
use crate::clock;
use crate::config::{Settings, TransportKind};
use crate::digest::{self, deliver};
use crate::domain::SubscriberEmail;
use crate::store::{self, deliveries, issues};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Render the next issue as .html, .txt and .eml files without sending or storing anything
    Preview {
        /// Folder for the files
        #[arg(long, default_value = "preview")]
        out: PathBuf,
        /// Output format: one JSON object naming the issue and the files
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// Create the due issue (or reuse it) and deliver until nothing is ready
    ///
    /// Without a flag, as `digestif run` does: the issue of the latest scheduled slot, if it is
    /// within schedule.grace. Deliveries of earlier issues whose retry time has come are sent
    /// too. Retries due within two minutes are waited for; later ones are left to the next run.
    /// Running any form of it again, after a crash or not, finishes what is open and never
    /// creates a second issue for the same period.
    Send {
        /// Do not wait for the schedule: send this period's issue (the latest slot, however
        /// late) if it was not sent yet. While an issue is unfinished it only finishes that one
        #[arg(long, conflicts_with = "next_slot")]
        now: bool,
        /// Send the next slot's issue ahead of its time; refused while an issue is unfinished
        /// or this period's issue was sent, unless --force
        #[arg(long)]
        next_slot: bool,
        /// With --next-slot: send it even if that makes two issues in one period
        #[arg(long, requires = "next_slot")]
        force: bool,
        /// Output format: one JSON object with the issue, the outcomes and the exit code
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// List issues, newest first, with their status (skipped and paused ones say why)
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one issue with its deliveries counted per status
    Status {
        /// The issue number
        number: i32,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: StatusFormat,
    },
    /// Resume an issue paused by the breaker, then deliver it; also sends again what the relay
    /// refused of an issue no longer paused (resumed by its cool-down, or finished)
    Resume {
        /// The issue number
        number: i32,
    },
    /// Send the next issue's rendering to one address, outside the queue (nothing is stored)
    TestSend {
        /// Where to send it
        #[arg(long)]
        to: String,
    },
}

impl Command {
    /// Whether this command may send mail.
    pub fn sends_mail(&self) -> bool {
        matches!(
            self,
            Command::Send { .. } | Command::Resume { .. } | Command::TestSend { .. }
        )
    }
}

/// Formats for `issue status`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusFormat {
    /// Readable text.
    Table,
    /// One JSON object.
    Json,
}

/// How long `issue send` waits for retries and other workers' leases before leaving the rest
/// to the next run.
const WAIT_WITHIN: Duration = Duration::from_secs(120);

pub async fn run(cmd: Command, settings: &Settings) -> anyhow::Result<()> {
    let pool = store::connect_current(&settings.database).await?;
    match cmd {
        Command::Preview { out, format } => {
            let preview = digest::preview(&pool, settings, clock::now(), &out).await?;
            if format == Output::Json {
                return print_json(&match &preview {
                    digest::Next::Issue(p) => serde_json::json!({
                        "number": p.content.number,
                        "slot": p.content.slot,
                        "subject": p.rendered.subject(),
                        "files": p.files,
                        "items": p.content.items.iter().map(|i| serde_json::json!({
                            "kind": match i.kind {
                                crate::domain::ItemKind::Tip => "tip",
                                crate::domain::ItemKind::Article => "article",
                            },
                            "title": i.title,
                            "url": i.url,
                        })).collect::<Vec<_>>(),
                    }),
                    digest::Next::Skipped(reason) => serde_json::json!({ "skipped": reason }),
                });
            }
            match preview {
                digest::Next::Issue(p) => {
                    println!(
                        "issue #{} for {} ({}):",
                        p.content.number,
                        settings.schedule.cron.local(p.content.slot),
                        p.rendered.subject()
                    );
                    for f in &p.files {
                        println!("  {}", f.display());
                    }
                }
                digest::Next::Skipped(reason) => {
                    println!("the next slot would be skipped: {reason}")
                }
            }
            Ok(())
        }
        Command::Send {
            now,
            next_slot,
            force,
            format,
        } => {
            let text = format == Output::Text;
            let mut json = serde_json::Map::new();
            let request = match (now, next_slot) {
                (true, _) => digest::SendRequest::Now,
                (_, true) => digest::SendRequest::NextSlot { force },
                _ => digest::SendRequest::Due,
            };
            match digest::plan_send(&pool, settings, clock::now(), request).await? {
                digest::SendPlan::Create(slot) => {
                    let started = std::time::Instant::now();
                    // On the database's clock, as `created_at` is: this machine's may differ.
                    let asked_at = crate::store::db_now(&pool).await?;
                    let issue = digest::create_issue(&pool, settings, slot).await?;
                    let took = started.elapsed();
                    // Another process may have made it first; then this one took no time.
                    let made_here = issue.created_at >= asked_at;
                    let local = settings.schedule.cron.local(slot);
                    let total: i64 = deliveries::counts(&pool, issue.issue_id)
                        .await?
                        .iter()
                        .map(|(_, n)| n)
                        .sum();
                    json.insert("created_here".into(), made_here.into());
                    json.insert("deliveries".into(), total.into());
                    json.insert("issue".into(), serde_json::to_value(&issue)?);
                    match (issue.number, issue.status.as_str()) {
                        _ if !text => {}
                        (None, _) => println!(
                            "the slot {local} is skipped: {}",
                            issue.status_reason.unwrap_or_default()
                        ),
                        (Some(n), status) => {
                            let how = if made_here {
                                format!("created in {:.2} s", took.as_secs_f64())
                            } else {
                                "created earlier".to_owned()
                            };
                            println!(
                                "issue #{n} ({status}) for the slot {local}: {} ({total} deliveries; {how})",
                                issue.subject,
                            );
                        }
                    }
                }
                digest::SendPlan::Nothing(why) if text => {
                    println!("{why}; delivering what is ready")
                }
                digest::SendPlan::Nothing(why) => {
                    json.insert("nothing_created".into(), why.into());
                }
            }
            deliver_and_report(pool, settings, format, json).await
        }
        Command::Status { number, format } => {
            let Some(issue) = issues::find_by_number(&pool, number).await? else {
                bail!("no issue #{number}");
            };
            let counts = deliveries::counts(&pool, issue.issue_id).await?;
            let by_relay = deliveries::counts_by_relay(&pool, issue.issue_id).await?;
            match format {
                StatusFormat::Json => {
                    let mut v = serde_json::to_value(&issue)?;
                    let map: serde_json::Map<String, serde_json::Value> = counts
                        .iter()
                        .map(|(k, n)| (k.clone(), serde_json::Value::from(*n)))
                        .collect();
                    v["deliveries"] = serde_json::Value::Object(map);
                    let mut relays = serde_json::Map::new();
                    for (relay, status, n) in &by_relay {
                        relays
                            .entry(relay.clone())
                            .or_insert_with(|| serde_json::json!({}))[status] =
                            serde_json::Value::from(*n);
                    }
                    v["relays"] = serde_json::Value::Object(relays);
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                StatusFormat::Table => {
                    println!(
                        "issue #{number}: {} ({})",
                        on_terminal(&issue.subject),
                        issue.status
                    );
                    if let Some(reason) = &issue.status_reason {
                        println!("reason: {}", on_terminal(reason));
                    }
                    println!("slot: {}", time_cell(Some(issue.slot)));
                    let total: i64 = counts.iter().map(|(_, n)| n).sum();
                    println!("deliveries: {total}");
                    for (status, n) in &counts {
                        println!("  {status:<9} {n}");
                    }
                    let mut relay = None;
                    for (name, status, n) in &by_relay {
                        if relay != Some(name) {
                            println!("relay {}:", on_terminal(name));
                            relay = Some(name);
                        }
                        println!("  {status:<9} {n}");
                    }
                    if issue.reclaimed > 0 {
                        println!(
                            "reclaimed from workers that died or ran out their lease: {}",
                            issue.reclaimed
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Resume { number } => {
            let Some(issue) = issues::find_by_number(&pool, number).await? else {
                bail!("no issue #{number}");
            };
            let Some(requeued) = deliveries::resume(&pool, issue.issue_id).await? else {
                bail!(
                    "issue #{number} is not paused (it is {}) and the relay refused none of its deliveries",
                    issue.status
                );
            };
            match requeued {
                0 => println!("issue #{number} resumed"),
                1 => println!("issue #{number} resumed; 1 delivery the relay refused goes again"),
                n => println!("issue #{number} resumed; {n} deliveries the relay refused go again"),
            }
            deliver_and_report(pool, settings, Output::Text, serde_json::Map::new()).await
        }
        Command::TestSend { to } => {
            let to = SubscriberEmail::parse(&to)?;
            match digest::test_send(&pool, settings, clock::now(), &to).await? {
                digest::Next::Issue(copy) => println!(
                    "sent issue #{} to {to}{}",
                    copy.number,
                    if copy.own_copy {
                        " (their own copy: its unsubscribe link works)"
                    } else {
                        " (not a subscriber: its unsubscribe link changes nothing)"
                    }
                ),
                digest::Next::Skipped(reason) => bail!("the next slot would be skipped: {reason}"),
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

/// Delivers what is ready with a progress bar on a terminal and a summary line when piped.
/// With JSON output, prints one object: `json` (what the command did before delivering) with
/// the run's report, the paused issues and the exit code added.
async fn deliver_and_report(
    pool: sqlx::PgPool,
    settings: &Settings,
    format: Output,
    mut json: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let total = deliveries::open_count(&pool).await?;
    let bar = if io::stderr().is_terminal() {
        let bar = ProgressBar::new(total.max(0) as u64);
        let style =
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} · {per_sec} · ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let deliverer = deliver::Deliverer::new(pool.clone(), Arc::new(settings.clone())).await?;
    // Ctrl-C stops claiming and lets messages in flight finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let started = std::time::Instant::now();
    let report = deliverer
        .run_until_idle(
            stop_rx,
            deliver::Patience {
                wait_within: WAIT_WITHIN,
            },
            &|line: &str| {
                bar.inc(1);
                bar.set_message(line.to_owned());
            },
        )
        .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if format == Output::Json {
        let verdict = super::exit::after_delivery(
            &pool,
            &settings.schedule.cron,
            &report,
            None,
            false,
            format,
        )
        .await?;
        json.insert("report".into(), serde_json::to_value(&report)?);
        json.insert("seconds".into(), secs.into());
        json.insert("paused".into(), serde_json::to_value(&verdict.paused)?);
        json.insert("exit_code".into(), verdict.code.into());
        print_json(&json)?;
        return verdict.into_result();
    }
    println!(
        "{} in {:.1} s ({:.0} msg/s)",
        report.outcomes,
        secs,
        report.outcomes.attempts() as f64 / secs.max(0.001)
    );
    if let Some(line) = report.taken_over_line() {
        println!("{line}");
    }
    for n in &report.finished {
        println!("issue #{n} is complete");
    }
    if let Some(t) = report.next_due {
        println!(
            "more deliveries are waiting; the next is due at {}",
            settings.schedule.cron.local(t)
        );
    }
    if settings.delivery.transport == TransportKind::File {
        println!("messages are in {}/", settings.delivery.outbox.display());
    }
    super::exit::after_delivery(&pool, &settings.schedule.cron, &report, None, false, format)
        .await?
        .into_result()
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
            self.status.to_string(),
            self.subject.clone(),
            self.status_reason.clone().unwrap_or_default(),
            time_cell(self.finished_at),
        ]
    }
}
