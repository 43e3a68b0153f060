//! `issue send --now` and `--next-slot` at every time of the week, with the clock pinned
//! (`DIGESTIF_NOW`): one issue per period, however often and whenever the operator asks.

use sqlx::PgPool;

use crate::helpers::{Digestif, MONDAY_MORNING, seed};

/// The default schedule (Mondays 09:00 Europe/Berlin), the file transport into `outbox`, and
/// the clock at `now`.
fn digestif_at(pool: &PgPool, outbox: &tempfile::TempDir, now: &str) -> Digestif {
    Digestif::new(pool)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap())
        .env("DIGESTIF_NOW", now)
}

async fn issue_slots(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT to_char(slot AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') FROM issue ORDER BY slot",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn files(outbox: &tempfile::TempDir) -> usize {
    std::fs::read_dir(outbox.path()).unwrap().count()
}

#[sqlx::test]
async fn send_now_sends_one_issue_per_period_at_any_time_of_the_week(pool: PgPool) {
    seed(&pool, 3).await;
    let outbox = tempfile::tempdir().unwrap();
    // Monday before the slot (08:59 Berlin), the slot's grace window, Monday afternoon,
    // Wednesday, and the last minute of Sunday: all one period, the one that began on Monday
    // 23 November at 09:00 Berlin, until the Monday morning itself.
    let week = [
        ("2026-11-30T07:59:00Z", vec!["2026-11-23 08:00"]),
        (MONDAY_MORNING, vec!["2026-11-23 08:00", "2026-11-30 08:00"]),
        (
            "2026-11-30T15:00:00Z",
            vec!["2026-11-23 08:00", "2026-11-30 08:00"],
        ),
        (
            "2026-12-02T12:00:00Z",
            vec!["2026-11-23 08:00", "2026-11-30 08:00"],
        ),
        (
            "2026-12-06T22:59:00Z",
            vec!["2026-11-23 08:00", "2026-11-30 08:00"],
        ),
    ];
    for (now, slots) in week {
        let d = digestif_at(&pool, &outbox, now);
        d.ok_async(&["issue", "send", "--now"]).await;
        let again = d.ok_async(&["issue", "send", "--now"]).await.stdout();
        assert!(again.contains("already covers this period"), "{again}");
        assert_eq!(issue_slots(&pool).await, slots, "at {now}");
        assert_eq!(files(&outbox), 3 * slots.len(), "at {now}");
    }
}

#[sqlx::test]
async fn send_now_after_a_crash_finishes_the_open_issue_and_creates_none(pool: PgPool) {
    seed(&pool, 4).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = digestif_at(&pool, &outbox, MONDAY_MORNING);
    // What a kill -9 leaves behind: the issue of today's slot created, half of it delivered.
    let settings = digestif::config::Settings::from_toml("").unwrap();
    let slot = chrono::DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z")
        .unwrap()
        .to_utc();
    digestif::digest::create_issue(&pool, &settings, slot)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE delivery SET status = 'sent', sent_at = now() \
         WHERE subscriber_id IN (SELECT subscriber_id FROM subscriber ORDER BY 1 LIMIT 2)",
    )
    .execute(&pool)
    .await
    .unwrap();

    let out = d.ok_async(&["issue", "send", "--now"]).await.stdout();
    assert!(out.contains("is not finished: finishing it"), "{out}");
    assert!(out.contains("sent 2,"), "{out}");
    assert_eq!(issue_slots(&pool).await, ["2026-11-30 08:00"]);
    let out = d.ok_async(&["issue", "send", "--now"]).await.stdout();
    assert!(out.contains("sent 0,"), "{out}");
    assert_eq!(issue_slots(&pool).await, ["2026-11-30 08:00"]);
    assert_eq!(files(&outbox), 2);
}

#[sqlx::test]
async fn the_next_slot_early_is_an_explicit_request_that_names_its_slot(pool: PgPool) {
    seed(&pool, 2).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = digestif_at(&pool, &outbox, MONDAY_MORNING);
    d.ok_async(&["issue", "send", "--now"]).await;

    // This period's issue went out: next week's early would be a second one this week.
    let line = d.fails(&["issue", "send", "--next-slot"], "pass --force");
    assert!(line.contains("Mon 2026-12-07 09:00 CET"), "{line}");
    assert_eq!(issue_slots(&pool).await, ["2026-11-30 08:00"]);
    // --force is only for --next-slot.
    let run = d.run(&["issue", "send", "--force"]);
    assert_eq!(run.output.status.code(), Some(2), "{run}");

    let out = d
        .ok_async(&["issue", "send", "--next-slot", "--force"])
        .await
        .stdout();
    assert!(
        out.contains("issue #2 (sending) for the slot Mon 2026-12-07 09:00 CET"),
        "{out}"
    );
    assert_eq!(
        issue_slots(&pool).await,
        ["2026-11-30 08:00", "2026-12-07 08:00"]
    );
    assert_eq!(files(&outbox), 4);
    // Asking again, or sending now, creates nothing more; nor does the timer at that slot.
    d.ok_async(&["issue", "send", "--next-slot"]).await;
    d.ok_async(&["issue", "send", "--now"]).await;
    digestif_at(&pool, &outbox, "2026-12-07T08:05:00Z")
        .ok_async(&["run"])
        .await;
    assert_eq!(issue_slots(&pool).await.len(), 2);
    assert_eq!(files(&outbox), 4);
}

#[sqlx::test]
async fn the_next_slot_waits_for_an_unfinished_issue(pool: PgPool) {
    seed(&pool, 2).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = digestif_at(&pool, &outbox, "2026-12-02T12:00:00Z");
    let settings = digestif::config::Settings::from_toml("").unwrap();
    let slot = chrono::DateTime::parse_from_rfc3339("2026-11-23T08:00:00Z")
        .unwrap()
        .to_utc();
    digestif::digest::create_issue(&pool, &settings, slot)
        .await
        .unwrap();
    d.fails(
        &["issue", "send", "--next-slot"],
        "issue #1 is still sending: finish it first",
    );
    assert_eq!(issue_slots(&pool).await, ["2026-11-23 08:00"]);
}

#[sqlx::test]
async fn a_bad_clock_value_is_one_line_naming_the_variable(pool: PgPool) {
    let outbox = tempfile::tempdir().unwrap();
    digestif_at(&pool, &outbox, "next monday").fails(
        &["issue", "send", "--now"],
        "DIGESTIF_NOW: 'next monday' is not an RFC 3339 time",
    );
}

/// A tip that went into an issue sent ahead of its slot shows when it was sent, not the
/// slot's future date.
#[sqlx::test]
async fn tips_sent_early_are_not_listed_as_sent_in_the_future(pool: PgPool) {
    seed(&pool, 1).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = digestif_at(&pool, &outbox, MONDAY_MORNING);
    d.ok_async(&["issue", "send", "--now"]).await;
    d.ok_async(&["issue", "send", "--next-slot", "--force"])
        .await;
    let latest: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(last_sent_at) FROM tip")
            .fetch_one(&pool)
            .await
            .unwrap();
    let next_slot = chrono::DateTime::parse_from_rfc3339("2026-12-07T08:00:00Z").unwrap();
    assert!(latest < next_slot, "{latest}");
    let listed = d.ok(&["tips", "list", "--format", "csv"]).stdout();
    assert!(!listed.contains("2026-12-07"), "{listed}");
}
