//! The exit codes a timer, cron or monitor reads (README "Exit codes"), through the binary:
//! 3 for an issue paused by the breaker, 4 for permanent failures in this run, 5 for a missed
//! slot when asked, and 0 when hard bounces are all that went wrong.

use sqlx::PgPool;

use crate::helpers::{Digestif, MONDAY_MORNING, Run, seed};
use crate::smtp_server::{Policy, SmtpServer};

fn through(pool: &PgPool, server: &SmtpServer) -> Digestif {
    Digestif::new(pool)
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_SMTP__TIMEOUT", "5s")
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "4")
}

fn code(run: &Run) -> Option<i32> {
    run.output.status.code()
}

/// A relay that refuses everything by policy: the breaker pauses the issue, the command says
/// which issue and how to resume it (its real number, not a placeholder), and exits 3; so does
/// the next run while the issue stays paused.
#[sqlx::test]
async fn a_paused_issue_exits_3_and_names_itself(pool: PgPool) {
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    seed(&pool, 60).await;
    let d = through(&pool, &server);
    let run = d.run_async(&["issue", "send", "--now"]).await;
    assert_eq!(code(&run), Some(3), "{run}");
    let out = run.stdout();
    assert!(
        out.contains("issue #1 is paused by the breaker")
            && out.contains("`digestif issue resume 1`"),
        "{out}"
    );
    assert!(
        run.stderr()
            .contains("digestif: paused by the breaker: issue #1"),
        "{run}"
    );
    let again = d.run_async(&["run"]).await;
    assert_eq!(code(&again), Some(3), "{again}");
}

/// One recipient refused for good (not a bounce, not policy): the rest go out, the summary is
/// printed, and the exit code is 4.
#[sqlx::test]
async fn a_permanent_failure_exits_4_after_sending_the_rest(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().rcpt(|addr, _| {
        (addr == "user3@example.com").then(|| "554 5.6.0 content rejected".to_owned())
    }))
    .await;
    seed(&pool, 10).await;
    let run = through(&pool, &server)
        .run_async(&["issue", "send", "--now"])
        .await;
    assert_eq!(code(&run), Some(4), "{run}");
    assert!(
        run.stdout()
            .contains("sent 9, deferred 0, bounced 0, failed 1"),
        "{run}"
    );
    assert!(
        run.stderr()
            .contains("1 delivery failed permanently in this run"),
        "{run}"
    );
    assert_eq!(server.accepted().len(), 9);
}

/// Hard bounces are list hygiene (the address is gone, the subscriber is counted and
/// suppressed), not a failed run.
#[sqlx::test]
async fn hard_bounces_alone_exit_0(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().rcpt(|addr, _| {
        (addr == "user2@example.com").then(|| "550 5.1.1 no such user".to_owned())
    }))
    .await;
    seed(&pool, 5).await;
    let run = through(&pool, &server).run_async(&["run"]).await;
    assert_eq!(code(&run), Some(0), "{run}");
    assert!(
        run.stdout().contains("sent 4, deferred 0, bounced 1"),
        "{run}"
    );
}

/// A slot missed by more than schedule.grace is reported; it fails the run only when the
/// operator asks with --fail-on-missed.
#[sqlx::test]
async fn a_missed_slot_exits_5_only_when_asked(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 2).await;
    // Monday 30 November, 20:00 UTC: eleven hours after the 09:00 Berlin slot, grace is 6h.
    let d = Digestif::new(&pool)
        .env("DIGESTIF_NOW", "2026-11-30T20:00:00Z")
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_SCHEDULE__GRACE", "6h");
    // The database must predate the slot for it to count as missed.
    sqlx::query("UPDATE _sqlx_migrations SET installed_on = '2026-11-01'")
        .execute(&pool)
        .await
        .unwrap();
    let plain = d.run_async(&["run"]).await;
    assert_eq!(code(&plain), Some(0), "{plain}");
    assert!(
        plain
            .stdout()
            .contains("missed the slot Mon 2026-11-30 09:00 CET by 12h"),
        "{plain}"
    );
    let strict = d.run_async(&["run", "--fail-on-missed"]).await;
    assert_eq!(code(&strict), Some(5), "{strict}");
    assert!(
        strict.stderr().contains("digestif: missed the slot"),
        "{strict}"
    );
    assert!(server.accepted().is_empty());
}

/// The README's table, `--help` and the man page list the same codes.
#[test]
fn the_readme_and_the_man_page_list_the_same_exit_codes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split_once("Exit codes:")
        .expect("README has an exit codes table")
        .1;
    let in_readme: Vec<String> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1).map(|c| c.trim().to_owned()))
        .filter(|c| c.parse::<u8>().is_ok())
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_digestif"))
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    let section = man
        .split_once("Exit status:")
        .expect("the man page has an exit status section")
        .1;
    let in_man: Vec<String> = section
        .lines()
        .take_while(|l| !l.starts_with(".SH"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c.parse::<u8>().is_ok())
        .collect();
    assert_eq!(in_readme, in_man);
    assert_eq!(in_readme, ["0", "1", "2", "3", "4", "5", "75", "78"]);
}
