//! Logs as journald reads them: with stderr on the journal (systemd's `JOURNAL_STREAM` names
//! it) every line, the final error included, starts with its syslog severity (`<4>` warning),
//! which journald stores as PRIORITY so `journalctl -p warning` finds it; anywhere else, the
//! usual text with timestamps.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use sqlx::PgPool;

use crate::helpers::{Digestif, MONDAY_MORNING, seed};
use crate::smtp_server::{Policy, SmtpServer};

/// Runs `issue send --now` against a relay that refuses everything (a warning, then an error)
/// with stderr in a file; `journal` says whether JOURNAL_STREAM names that file.
async fn log_of_a_paused_send(pool: &PgPool, server: &SmtpServer, journal: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let m = file.metadata().unwrap();
    // Not on the journal: the variable is inherited but names another stream.
    let stream = if journal {
        format!("{}:{}", m.dev(), m.ino())
    } else {
        format!("{}:{}", m.dev(), m.ino() + 1)
    };
    let mut cmd = Digestif::new(pool)
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("JOURNAL_STREAM", &stream)
        .command(&["issue", "send", "--now"]);
    cmd.stdout(Stdio::null()).stderr(file);
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    std::fs::read_to_string(&path).unwrap()
}

#[sqlx::test]
async fn on_the_journal_every_line_carries_its_severity(pool: PgPool) {
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    seed(&pool, 60).await;
    let log = log_of_a_paused_send(&pool, &server, true).await;
    for line in log.lines() {
        let severity = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(severity, Some("3" | "4" | "6" | "7")),
            "a line without a severity: {line:?}\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4>") && l.contains("issue paused by the breaker")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l == "<3>digestif: paused by the breaker: issue #1"),
        "{log}"
    );
    // journald stamps each entry itself.
    assert!(
        !log.contains(&format!("{}T", chrono::Utc::now().format("%Y-%m-%d"))),
        "{log}"
    );
}

#[sqlx::test]
async fn elsewhere_lines_are_text_with_timestamps(pool: PgPool) {
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    seed(&pool, 60).await;
    let log = log_of_a_paused_send(&pool, &server, false).await;
    assert!(!log.contains("<4>") && !log.contains("<6>"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("issue paused by the breaker")),
        "{log}"
    );
}
