//! `--format json` for scripts, through the binary: each command prints one JSON object on
//! stdout (JSON lines for the import's per-line report), parsed here and its fields checked.

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{Digestif, MONDAY_MORNING, Run, file_with, seed};
use crate::smtp_server::{Policy, SmtpServer};

fn json(run: &Run) -> Value {
    let out = run.stdout();
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_else(|| panic!("no output\n{run}"));
    assert!(lines.next().is_none(), "one line of JSON expected\n{run}");
    serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}\n{run}"))
}

fn outbox_digestif(pool: &PgPool, outbox: &tempfile::TempDir) -> Digestif {
    Digestif::new(pool)
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap())
}

#[sqlx::test]
async fn schedule_next_lists_the_slots(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_NOW", MONDAY_MORNING);
    let v = json(&d.ok(&["schedule", "next", "--count", "3", "--format", "json"]));
    assert_eq!(v["expression"], "0 9 * * MON");
    assert_eq!(v["timezone"], "Europe/Berlin");
    let slots = v["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 3);
    assert_eq!(slots[0]["utc"], "2026-12-07T08:00:00+00:00");
    assert_eq!(slots[0]["local"], "2026-12-07T09:00:00+01:00");
}

#[sqlx::test]
async fn run_and_issue_send_report_the_issue_the_outcomes_and_the_exit_code(pool: PgPool) {
    seed(&pool, 3).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = outbox_digestif(&pool, &outbox);
    let v = json(&d.ok_async(&["run", "--format", "json"]).await);
    assert_eq!(v["issue"]["number"], 1);
    assert_eq!(v["issue"]["status"], "sending");
    assert_eq!(v["report"]["sent"], 3);
    assert_eq!(v["report"]["taken_over"], 0, "{v}");
    assert_eq!(v["report"]["failed"], 0);
    assert_eq!(v["report"]["finished"], serde_json::json!([1]));
    assert_eq!(v["missed"], Value::Null);
    assert_eq!(v["paused"], serde_json::json!([]));
    assert_eq!(v["interrupted"], false);
    assert_eq!(v["finished_in_flight"], true);
    assert_eq!(v["unfinished_issues"], serde_json::json!([]));
    assert_eq!(v["exit_code"], 0);

    // The period's issue exists: issue send creates nothing and says why.
    let v = json(
        &d.ok_async(&["issue", "send", "--now", "--format", "json"])
            .await,
    );
    assert!(
        v["nothing_created"]
            .as_str()
            .is_some_and(|s| s.contains("already covers this period")),
        "{v}"
    );
    assert_eq!(v["report"]["sent"], 0);
    assert_eq!(v["exit_code"], 0);
    assert!(v["seconds"].as_f64().is_some());
}

#[sqlx::test]
async fn a_paused_send_says_so_in_json_with_exit_code_3(pool: PgPool) {
    let server = SmtpServer::start(Policy::refusing_by_policy()).await;
    seed(&pool, 60).await;
    let run = Digestif::new(&pool)
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .run_async(&["issue", "send", "--now", "--format", "json"])
        .await;
    assert_eq!(run.output.status.code(), Some(3), "{run}");
    let v = json(&run);
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["issue"]["number"], 1);
    assert_eq!(v["deliveries"], 60);
    assert_eq!(v["created_here"], true);
    assert_eq!(v["paused"][0]["number"], 1);
    assert_eq!(v["paused"][0]["status"], "paused");
    assert!(v["paused"][0]["paused_until"].is_string(), "{v}");
    assert!(
        v["paused"][0]["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("5.7.1")),
        "{v}"
    );
}

#[sqlx::test]
async fn issue_preview_names_the_issue_and_its_files(pool: PgPool) {
    seed(&pool, 1).await;
    let out = tempfile::tempdir().unwrap();
    let v = json(
        &Digestif::new(&pool)
            .env("DIGESTIF_NOW", MONDAY_MORNING)
            .ok(&[
                "issue",
                "preview",
                "--out",
                out.path().to_str().unwrap(),
                "--format",
                "json",
            ]),
    );
    assert_eq!(v["number"], 1);
    assert!(v["subject"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3, "{v}");
    for f in files {
        assert!(std::path::Path::new(f.as_str().unwrap()).is_file(), "{f}");
    }
}

#[sqlx::test]
async fn doctor_reports_every_check(pool: PgPool) {
    let web = crate::web::App::start(&pool, "").await;
    let outbox = tempfile::tempdir().unwrap();
    let run = outbox_digestif(&pool, &outbox)
        .links_to(&web)
        .run_async(&["doctor", "--format", "json"])
        .await;
    assert!(run.output.status.success(), "{run}");
    let v = json(&run);
    assert_eq!(v["ok"], true);
    let checks = v["checks"].as_array().unwrap();
    let find = |prefix: &str| {
        checks
            .iter()
            .find(|c| c["check"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no {prefix} check in {v}"))
    };
    assert_eq!(find("database")["status"], "ok");
    assert_eq!(find("web")["status"], "ok");
    assert!(checks.iter().all(|c| c["status"] != "fail"), "{v}");

    // Without the web pages: a failed check, with its fix, and exit 1.
    let run = outbox_digestif(&pool, &outbox)
        .env("DIGESTIF_NEWSLETTER__BASE_URL", "http://127.0.0.1:1")
        .run_async(&["doctor", "--format", "json"])
        .await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let v = json(&run);
    assert_eq!(v["ok"], false);
    let web = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "fail")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(web["check"].as_str().unwrap().starts_with("web: "), "{v}");
    assert!(
        web["fix"].as_str().unwrap().contains("digestif serve"),
        "{v}"
    );
}

#[sqlx::test]
async fn the_import_reports_each_line_left_out_then_the_totals(pool: PgPool) {
    let (_dir, csv) = file_with(
        "subscribers.csv",
        b"email,name\nada@example.com,Ada\nbob@,Bob\nada@example.com,Ada again\ncy@example.com,\n",
    );
    let run = Digestif::new(&pool).run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--skip-invalid",
        "--format",
        "json",
    ]);
    assert!(run.output.status.success(), "{run}");
    let lines: Vec<Value> = run
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{run}");
    assert_eq!(lines[0]["line"], 3);
    assert!(
        lines[0]["text"].as_str().unwrap().contains("'bob@'"),
        "{run}"
    );
    assert_eq!(lines[1]["line"], 4);
    let totals = &lines[2]["totals"];
    assert_eq!(totals["added"], 2);
    assert_eq!(totals["read"], 4);
    assert_eq!(totals["duplicates"], 1);
    assert_eq!(totals["refused"], 1);
    assert_eq!(lines[2]["dry_run"], false);
}

/// `created_here` says whether this command made the issue. It compared the database's
/// `created_at` with this machine's clock, so on a machine a second or more ahead of the
/// database an issue the command had just made read as made by someone else.
#[sqlx::test]
async fn created_here_holds_on_a_machine_whose_clock_runs_ahead(pool: PgPool) {
    if !crate::helpers::faketime_installed() {
        return;
    }
    seed(&pool, 2).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap());
    let mut send = tokio::process::Command::from(d.command_under(
        &["faketime", "-f", "+1h"],
        &["issue", "send", "--now", "--format", "json"],
    ));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        send.env("FAKETIME_DONT_FAKE_MONOTONIC", "1").output(),
    )
    .await
    .expect("issue send under faketime ends")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["created_here"], true, "{v}");
}
