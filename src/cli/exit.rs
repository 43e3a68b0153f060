//! Exit codes beyond 0, 1 and 2: what a timer, cron or a monitor can tell apart without reading
//! the output (README "Exit codes", `digestif man`).

use sqlx::PgPool;

use super::output::Output;
use crate::digest::deliver::Report;
use crate::store::issues;

/// The exit codes as `digestif --help` and the man page list them (README has the same table).
pub const TABLE: &str = "Exit status:
  0   done
  1   the command failed (bad input, a failed doctor check, a database error)
  2   usage error (unknown command or flag)
  3   an issue is paused by the breaker (the relay refused or could not be reached)
  4   deliveries failed permanently in this run (hard bounces do not count)
  5   run --fail-on-missed: a slot was missed (later than schedule.grace, or passed over)
  75  inbound: try again later (the MTA keeps the mail; with --imap, the mailbox does)
  78  configuration error: fix it before starting again";

/// sysexits.h EX_TEMPFAIL: try again later (the database could not be reached, or a bounce is
/// about a message whose result is still being recorded). MTAs keep the mail on it.
pub const EX_TEMPFAIL: u8 = 75;
/// sysexits.h EX_CONFIG: fix the configuration before starting again; the units do not restart.
pub const EX_CONFIG: u8 = 78;
/// An issue is paused by the breaker (the relay refused or could not be reached): nothing more
/// of it goes out until its cool-down ends or `issue resume`.
pub const EX_PAUSED: u8 = 3;
/// Deliveries failed permanently in this run (refused for good or given up after retries).
/// Hard bounces do not count: they are the subscriber's address, handled by suppression.
pub const EX_FAILED: u8 = 4;
/// `run --fail-on-missed`: a slot was missed and not sent: later than `schedule.grace`, or
/// passed over for a newer one.
pub const EX_MISSED: u8 = 5;

/// A command that did its work and printed its summary, but must not read as success.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Unfinished {
    /// The exit code.
    pub code: u8,
    message: String,
}

/// What a delivery run left undone, and the exit code it earns.
#[derive(Debug)]
pub struct Verdict {
    /// The issues paused by the breaker now.
    pub paused: Vec<issues::IssueRow>,
    /// The exit code: 0, [`EX_PAUSED`], [`EX_FAILED`] or [`EX_MISSED`].
    pub code: u8,
    message: String,
}

impl Verdict {
    /// Ok for 0; otherwise the error `main` prints and exits with.
    pub fn into_result(self) -> anyhow::Result<()> {
        match self.code {
            0 => Ok(()),
            code => Err(Unfinished {
                code,
                message: self.message,
            }
            .into()),
        }
    }
}

/// Judges a delivery run: a paused issue first (nothing of it goes out), then permanent
/// failures, then a missed slot when the operator asked. With text output, says for each
/// paused issue why, when it resumes on its own and how to resume it now.
pub async fn after_delivery(
    pool: &PgPool,
    schedule: &crate::domain::Schedule,
    report: &Report,
    missed: Option<&str>,
    fail_on_missed: bool,
    format: Output,
) -> anyhow::Result<Verdict> {
    let paused = issues::paused(pool).await?;
    if format == Output::Text {
        for issue in &paused {
            let n = issue.number.unwrap_or_default();
            let until = issue
                .paused_until
                .map(|t| format!(" at {}", schedule.local(t)))
                .unwrap_or_default();
            println!(
                "issue #{n} is paused by the breaker: {}; it resumes on its own{until} \
                 (delivery.breaker_cooldown), or now with `digestif issue resume {n}`",
                issue
                    .status_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            );
        }
    }
    let failed = report.outcomes.failed;
    let (code, message) = if !paused.is_empty() {
        let numbers: Vec<String> = paused
            .iter()
            .map(|i| format!("#{}", i.number.unwrap_or_default()))
            .collect();
        (
            EX_PAUSED,
            format!("paused by the breaker: issue {}", numbers.join(", ")),
        )
    } else if failed > 0 {
        (
            EX_FAILED,
            format!(
                "{failed} deliver{} failed permanently in this run (`digestif issue status N` lists them by status)",
                if failed == 1 { "y" } else { "ies" }
            ),
        )
    } else if let Some(missed) = missed.filter(|_| fail_on_missed) {
        (EX_MISSED, missed.to_owned())
    } else {
        (0, String::new())
    };
    Ok(Verdict {
        paused,
        code,
        message,
    })
}
