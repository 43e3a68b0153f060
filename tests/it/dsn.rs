//! Real DSNs as MTAs write them: folded fields, a base64-encoded delivery-status part, and
//! several recipient blocks in one report, through `digestif inbound` against a real Postgres.

use base64::Engine as _;
use chrono::DateTime;
use digestif::config::Settings;
use digestif::digest;
use sqlx::PgPool;

use crate::helpers::{Digestif, deliver_all, seed};

/// One subscriber sent issue 1 through the file transport; the VERP address of that delivery.
async fn sent_one(pool: &PgPool) -> (tempfile::TempDir, String) {
    let outbox = tempfile::tempdir().unwrap();
    let s = Settings::from_toml(&format!(
        "[delivery]\noutbox = \"{}\"\n",
        outbox.path().display()
    ))
    .unwrap();
    seed(pool, 1).await;
    let slot = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z").unwrap();
    digest::create_issue(pool, &s, slot.into()).await.unwrap();
    assert_eq!(
        deliver_all(pool, &s, std::time::Duration::ZERO)
            .await
            .outcomes
            .sent,
        1
    );
    let keys = digest::token_keys(&s, pool).await.unwrap();
    let issue_id: i64 = sqlx::query_scalar("SELECT issue_id FROM issue")
        .fetch_one(pool)
        .await
        .unwrap();
    (
        outbox,
        format!("bounces+{}@example.com", keys.sign_bounce(issue_id, 1)),
    )
}

fn report(verp: &str, status_part: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.org\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n\
         --B\r\n{status_part}\r\n\
         --B\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: Backend Tips #1\r\n\r\n--B--\r\n"
    )
}

/// `digestif inbound --recipient <verp>` fed the report whose delivery-status part is `part`.
fn pipe(d: &Digestif, verp: &str, part: &str) -> crate::helpers::Run {
    d.run_with_stdin(
        &["inbound", "--recipient", verp],
        report(verp, part).as_bytes(),
    )
}

/// The delivery-status part of a plain hard bounce of user1.
const USER_UNKNOWN: &str = "Content-Type: message/delivery-status\r\n\r\n\
                            Reporting-MTA: dns; mx.example.org\r\n\r\n\
                            Final-Recipient: rfc822; user1@example.com\r\n\
                            Action: failed\r\n\
                            Status: 5.1.1\r\n\
                            Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n";

async fn delivery(pool: &PgPool) -> (String, String, String) {
    sqlx::query_as(
        "SELECT d.status, coalesce(d.last_error, ''), s.status FROM delivery d \
         JOIN subscriber s USING (subscriber_id)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Postfix folds a long Diagnostic-Code; all of it is kept, and a relayed 5.7.1 fails the
/// delivery without suppressing the subscriber.
#[sqlx::test]
async fn a_folded_diagnostic_is_read_whole(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    let part = "Content-Type: message/delivery-status\r\n\r\n\
                Reporting-MTA: dns; mx.example.org\r\n\r\n\
                Final-Recipient: rfc822; user1@example.com\r\n\
                Action: failed\r\n\
                Status: 5.7.1\r\n\
                Diagnostic-Code: smtp; 554 5.7.1 <user1@example.com>:\r\n    \
                Recipient address rejected: Message rejected as spam by\r\n    \
                content filter\r\n";
    let out = pipe(&Digestif::new(&pool), &verp, part);
    assert!(out.output.status.success(), "{out}");
    let (delivery, error, subscriber) = delivery(&pool).await;
    assert_eq!(
        (delivery.as_str(), subscriber.as_str()),
        ("failed", "active")
    );
    assert!(
        error.ends_with("Message rejected as spam by content filter"),
        "{error}"
    );
}

/// A delivery-status part sent base64-encoded, holding two recipient blocks: a delay notice
/// and a permanent failure. The failure is what counts.
#[sqlx::test]
async fn a_base64_report_with_several_recipients_counts_the_failure(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    let fields = "Reporting-MTA: dns; mx.example.org\r\n\r\n\
                  Final-Recipient: rfc822; alias-a@example.org\r\n\
                  Action: delayed\r\nStatus: 4.4.1\r\n\r\n\
                  Final-Recipient: rfc822; user1@example.com\r\n\
                  Action: failed\r\nStatus: 5.1.1\r\n\
                  Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n";
    let encoded = base64::engine::general_purpose::STANDARD.encode(fields);
    let part = format!(
        "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
    );
    let out = pipe(&Digestif::new(&pool), &verp, &part);
    assert!(out.output.status.success(), "{out}");
    let (delivery, error, subscriber) = delivery(&pool).await;
    assert_eq!(
        (delivery.as_str(), subscriber.as_str()),
        ("bounced", "bounced"),
        "{out}"
    );
    assert!(error.contains("user unknown"), "{error}");
    // The subscriber's history says why they were suppressed, and that a DSN said so.
    let (method, detail): (String, String) =
        sqlx::query_as("SELECT method, detail FROM subscriber_event WHERE kind = 'bounced'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(method, "dsn");
    assert!(
        detail.starts_with("suppressed after 1 hard bounce(s): ")
            && detail.contains("user unknown"),
        "{detail}"
    );
    // The same report again counts nothing twice.
    let again = pipe(&Digestif::new(&pool), &verp, &part);
    assert!(again.output.status.success(), "{again}");
    let (hard_bounces, events): (i32, i64) = sqlx::query_as(
        "SELECT hard_bounces, (SELECT count(*) FROM subscriber_event WHERE kind = 'bounced') \
         FROM subscriber",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((hard_bounces, events), (1, 1));
}

/// The subscriber's address is an alias (or forwards) to several mailboxes, and one of them is
/// dead: the relay's DSN comes back to our VERP tag, but the mailbox it names as failed is not
/// the subscriber's. The others still read the issue, so the subscriber is not suppressed; the
/// delivery fails, saying which mailbox did.
#[sqlx::test]
async fn a_bounce_for_another_mailbox_behind_an_alias_does_not_suppress(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    let part = "Content-Type: message/delivery-status\r\n\r\n\
                Reporting-MTA: dns; mx.example.com\r\n\r\n\
                Final-Recipient: rfc822; alice@example.net\r\n\
                Original-Recipient: rfc822; user1@example.com\r\n\
                Action: delivered\r\nStatus: 2.0.0\r\n\r\n\
                Final-Recipient: rfc822; bob@example.net\r\n\
                Original-Recipient: rfc822; user1@example.com\r\n\
                Action: failed\r\nStatus: 5.1.1\r\n\
                Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n";
    let out = pipe(&Digestif::new(&pool), &verp, part);
    assert!(out.output.status.success(), "{out}");
    let (status, error, subscriber) = delivery(&pool).await;
    assert_eq!(
        (status.as_str(), subscriber.as_str()),
        ("failed", "active"),
        "{out}"
    );
    assert!(error.contains("bob@example.net"), "{error}");

    // The same report naming the subscriber's own address (any case, with a comment) does
    // suppress.
    let own = part
        .replace("bob@example.net", "<User1@Example.com> (User One)")
        .replace("alice@example.net", "user1@example.com");
    sqlx::query("UPDATE delivery SET status = 'sent', last_error = NULL")
        .execute(&pool)
        .await
        .unwrap();
    let out = pipe(&Digestif::new(&pool), &verp, &own);
    assert!(out.output.status.success(), "{out}");
    let (status, _, subscriber) = delivery(&pool).await;
    assert_eq!(
        (status.as_str(), subscriber.as_str()),
        ("bounced", "bounced"),
        "{out}"
    );
}

/// Anyone may mail the bounce address: what a report's fields say reaches the operator's
/// terminal (and the MTA's log) escaped, on one line, and cut short.
#[sqlx::test]
async fn a_reports_fields_reach_the_terminal_escaped_and_short(pool: PgPool) {
    let long = "x".repeat(5000);
    for (action, status) in [
        ("delayed", "4.\x1b]0;owned\x07".to_owned()),
        ("fai\rled", format!("2.\x1b[2J{long}")),
    ] {
        let part = format!(
            "Content-Type: message/delivery-status\r\n\r\n\
             Final-Recipient: rfc822; someone@example.org\r\n\
             Action: {action}\r\nStatus: {status}\r\n"
        );
        let out = pipe(&Digestif::new(&pool), "bounces@example.com", &part);
        assert!(out.output.status.success(), "{out}");
        let stdout = out.stdout();
        assert!(
            !stdout.contains('\x1b') && !stdout.contains('\r') && !stdout.contains('\x07'),
            "{stdout:?}"
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        let stderr = out.stderr();
        assert!(
            !stderr.contains('\x1b') && !stderr.contains('\r'),
            "{stderr:?}"
        );
        assert!(stdout.len() < 1000, "{} bytes", stdout.len());
    }
}

/// A local Postfix can bounce a message before the worker has written `sent` for it (the 250
/// came, the result is on its way): the bounce used to change nothing and exit 0, so the MTA
/// dropped it and the address was never suppressed. It now asks to be tried again (exit 75),
/// and counts once the result is written.
#[sqlx::test]
async fn a_bounce_that_outruns_the_sent_record_is_tried_again(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    // As it stands between the 250 and the write of its result.
    sqlx::query("UPDATE delivery SET status = 'sending', sent_at = NULL")
        .execute(&pool)
        .await
        .unwrap();
    let part = USER_UNKNOWN;
    let d = Digestif::new(&pool);
    let early = pipe(&d, &verp, part);
    assert_eq!(early.output.status.code(), Some(75), "{early}");
    sqlx::query("UPDATE delivery SET status = 'sent', sent_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let again = pipe(&d, &verp, part);
    assert!(again.output.status.success(), "{again}");
    let (delivery, _, subscriber) = delivery(&pool).await;
    assert_eq!(
        (delivery.as_str(), subscriber.as_str()),
        ("bounced", "bounced")
    );
}

/// A delivery whose result was lost (no answer to its final dot, so `deferred` and due to be
/// tried again) may have been handed over all the same, and a bounce for it proves it was. The
/// bounce used to change nothing, exit 0: the retry then mailed the dead mailbox again and the
/// address was never suppressed. It counts now, and nothing is tried again.
#[sqlx::test]
async fn a_bounce_for_a_delivery_whose_result_was_lost_counts(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    sqlx::query(
        "UPDATE delivery SET status = 'deferred', sent_at = NULL, \
         next_attempt_at = now() + interval '10 minutes', last_error = 'timed out after the dot'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let part = USER_UNKNOWN;
    let run = pipe(&Digestif::new(&pool), &verp, part);
    assert!(run.output.status.success(), "{run}");
    let (delivery, _, subscriber) = delivery(&pool).await;
    assert_eq!(
        (delivery.as_str(), subscriber.as_str()),
        ("bounced", "bounced"),
        "{run}"
    );
}

/// A report that our sender was refused further on (Office 365 sends "5.1.8 Access denied, bad
/// outbound sender" back as a bounce) says nothing of the subscriber: the delivery failed, the
/// subscriber stays.
#[sqlx::test]
async fn a_report_about_our_sender_suppresses_nobody(pool: PgPool) {
    let (_outbox, verp) = sent_one(&pool).await;
    let part = "Content-Type: message/delivery-status\r\n\r\n\
                Reporting-MTA: dns; mx.example.org\r\n\r\n\
                Final-Recipient: rfc822; user1@example.com\r\n\
                Action: failed\r\n\
                Status: 5.1.8\r\n\
                Diagnostic-Code: smtp; 550 5.1.8 Access denied, bad outbound sender\r\n";
    let out = pipe(&Digestif::new(&pool), &verp, part);
    assert!(out.output.status.success(), "{out}");
    let (delivery, error, subscriber) = delivery(&pool).await;
    assert_eq!(
        (delivery.as_str(), subscriber.as_str()),
        ("failed", "active")
    );
    assert!(error.contains("5.1.8"), "{error}");
}
