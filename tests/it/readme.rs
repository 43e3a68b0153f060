//! README statements that no other module tests, one test each, against the real binary and a
//! real Postgres: usage errors, a CSV with a BOM, links in tips, `schedule next`,
//! `serve --no-schedule`, JSON logs, and `inbound` with the database down.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{
    Digestif, MONDAY_MORNING, arg, db_url, file_with, http_get, seed, sigterm, wait_for,
};
use crate::smtp_server::{DataAction, Policy, SmtpServer};

#[sqlx::test]
async fn usage_errors_exit_2(pool: PgPool) {
    let d = Digestif::new(&pool);
    for (args, needle) in [
        (
            &["--no-such-flag", "schedule", "next"][..],
            "--no-such-flag",
        ),
        (&["issue", "send", "--force"][..], "--next-slot"),
        (&["subscribers", "add"][..], "EMAIL"),
        (&["no-such-command"][..], "no-such-command"),
    ] {
        let run = d.run(args);
        assert_eq!(run.output.status.code(), Some(2), "{run}");
        assert!(run.stderr().contains(needle), "{run}");
        assert!(run.stdout().is_empty(), "{run}");
    }
    let issues: i64 = sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(issues, 0, "a usage error touches nothing");
}

#[sqlx::test]
async fn a_utf8_bom_at_the_start_of_an_import_is_accepted(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with(
        "excel.csv",
        "\u{feff}email,name\r\nann@example.com,Ann\r\nbob@example.org,Bob\r\n".as_bytes(),
    );
    d.ok(&["subscribers", "import", arg(&path)]);
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT email, name FROM subscriber ORDER BY email")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![
            ("ann@example.com".into(), Some("Ann".into())),
            ("bob@example.org".into(), Some("Bob".into())),
        ]
    );
}

#[sqlx::test]
async fn tip_markdown_keeps_mailto_and_https_links_and_drops_javascript(pool: PgPool) {
    let d = Digestif::new(&pool);
    sqlx::query(
        "INSERT INTO tip (title, body) VALUES ('Links', \
         'Write [to us](mailto:help@example.com), read [the docs](https://example.com/docs), \
         do not [click](javascript:alert(1)).')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    d.ok(&["issue", "preview", "--out", arg(dir.path())]);
    let html = std::fs::read_to_string(dir.path().join("issue-1.html")).expect("the preview");
    assert!(html.contains("href=\"mailto:help@example.com\""), "{html}");
    assert!(html.contains("href=\"https://example.com/docs\""), "{html}");
    assert!(!html.to_ascii_lowercase().contains("javascript:"), "{html}");
    assert!(html.contains("click"), "the link text stays: {html}");
}

#[sqlx::test]
async fn schedule_next_prints_the_coming_slots_in_local_time_and_utc(pool: PgPool) {
    let d = Digestif::new(&pool)
        .env("DIGESTIF_SCHEDULE__CRON", "0 9 * * MON")
        .env("DIGESTIF_SCHEDULE__TIMEZONE", "Europe/Berlin")
        // The Friday before summer time starts in Berlin (Sunday 29 March 2026).
        .env("DIGESTIF_NOW", "2026-03-20T12:00:00Z");
    let out = d.ok(&["schedule", "next", "--count", "3"]).stdout();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "schedule: 0 9 * * MON in Europe/Berlin",
            "Mon 2026-03-23 09:00 CET   2026-03-23 08:00 UTC",
            "Mon 2026-03-30 09:00 CEST   2026-03-30 07:00 UTC",
            "Mon 2026-04-06 09:00 CEST   2026-04-06 07:00 UTC",
        ]
    );
}

/// `digestif serve` (with `extra` arguments) at the default slot's Monday morning, so a slot
/// is due, sending over SMTP to `server`.
fn serve(pool: &PgPool, server: &SmtpServer, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_digestif"));
    cmd.args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DIGESTIF_CONFIG")
        .env("DATABASE_URL", db_url(pool))
        .env("DIGESTIF_NOW", MONDAY_MORNING)
        .env("DIGESTIF_SCHEDULE__CRON", "0 9 * * MON")
        .env("DIGESTIF_SCHEDULE__TIMEZONE", "Europe/Berlin")
        .env("DIGESTIF_SCHEDULE__GRACE", "6h")
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", server.url())
        .env("DIGESTIF_SMTP__TIMEOUT", "5s")
        .env("DIGESTIF_HTTP__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Everything the child writes on stderr, collected as it comes.
fn collect_stderr(child: &mut tokio::process::Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    log
}

#[sqlx::test]
async fn serve_no_schedule_serves_http_and_sends_nothing_even_with_a_slot_due(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 3).await;
    let mut child = serve(&pool, &server, &["serve", "--no-schedule"])
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    let addr = wait_for("serve to listen", Duration::from_secs(30), || async {
        let log = log.lock().unwrap();
        log.split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .map(|a| a.trim().to_owned())
    })
    .await;
    // Logged where the scheduler would otherwise start: that branch was not taken.
    wait_for(
        "the --no-schedule notice",
        Duration::from_secs(30),
        || async {
            log.lock()
                .unwrap()
                .contains("--no-schedule: serving HTTP only")
                .then_some(())
        },
    )
    .await;
    let health = http_get(&addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let archive = http_get(&addr, "/issues").await;
    assert!(archive.contains("No issues yet."), "{archive}");

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    let issues: i64 = sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(issues, 0, "{log}");
    assert!(server.accepted().is_empty(), "{log}");

    // The slot was due: the same setup without --no-schedule sends it.
    let out = serve(&pool, &server, &["run"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.accepted().len(), 3);
}

#[sqlx::test]
async fn log_format_json_writes_one_json_object_per_line(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 2).await;
    let out = serve(
        &pool,
        &server,
        &["--log-format", "json", "issue", "send", "--now"],
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(server.accepted().len(), 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        for key in ["timestamp", "level", "fields"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
    }
}

#[sqlx::test]
async fn inbound_exits_75_when_the_database_cannot_be_reached(pool: PgPool) {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let d = Digestif::new(&pool)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/digestif")
        .env("DIGESTIF_DATABASE__CONNECT_TIMEOUT", "5s");
    let run = d.run_with_stdin(
        &["inbound", "--recipient", "bounces@example.com"],
        b"From: mailer-daemon@example.net\r\nTo: bounces@example.com\r\nSubject: hello\r\n\r\nhi\r\n",
    );
    assert_eq!(run.output.status.code(), Some(75), "{run}");
    let stderr = run.stderr();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("digestif: cannot connect to the database at 127.0.0.1:1/digestif"),
        "{run}"
    );
}

#[sqlx::test]
async fn doctor_reports_a_successful_auth(pool: PgPool) {
    let server =
        SmtpServer::start(Policy::default().require_auth("mailer", "s3cret pass", "PLAIN LOGIN"))
            .await;
    let web = crate::web::App::start(&pool, "").await;
    let run = Digestif::new(&pool)
        .links_to(&web)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
        .env("DIGESTIF_SMTP__PASSWORD", "s3cret pass")
        .run_async(&["doctor"])
        .await;
    assert!(run.output.status.success(), "{run}");
    let out = run.stdout();
    assert!(out.contains("ok    smtp: connected, EHLO, AUTH"), "{run}");
    assert!(
        !out.contains("s3cret") && !run.stderr().contains("s3cret"),
        "{run}"
    );
    assert_eq!(server.logins(), ["PLAIN mailer"], "{run}");
}

#[sqlx::test]
async fn a_send_through_a_server_that_requires_auth_login_arrives(pool: PgPool) {
    let server =
        SmtpServer::start(Policy::default().require_auth("mailer", "s3cret pass", "LOGIN")).await;
    seed(&pool, 2).await;
    let out = serve(&pool, &server, &["issue", "send", "--now"])
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
        .env("DIGESTIF_SMTP__PASSWORD", "s3cret pass")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rcpts: Vec<String> = server.accepted().into_iter().map(|a| a.rcpt).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["user1@example.com", "user2@example.com"]);
    let logins = server.logins();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l == "LOGIN mailer"),
        "{logins:?}"
    );
}

/// README: `doctor` checks the database.
#[sqlx::test]
async fn doctor_fails_when_the_database_cannot_be_reached(pool: PgPool) {
    let ok = Digestif::new(&pool).run_async(&["doctor"]).await;
    assert!(
        ok.stdout()
            .contains("ok    database: reachable, schema up to date"),
        "{ok}"
    );
    let down = Digestif::new(&pool)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/digestif")
        .run_async(&["doctor"])
        .await;
    assert_eq!(down.output.status.code(), Some(1), "{down}");
    assert!(down.stdout().contains("FAIL  database"), "{down}");
}

/// README: `digestif run` serves no HTTP, so an install without `digestif-web.service` sends
/// mail whose unsubscribe links lead nowhere: `doctor` fetches `<base_url>/healthz` and fails
/// unless a digestif that reaches its database answers there.
#[sqlx::test]
async fn doctor_fails_when_no_digestif_answers_at_the_base_url(pool: PgPool) {
    let web_line = |out: &str| {
        out.lines()
            .find(|l| l.contains("web: "))
            .unwrap_or_default()
            .to_owned()
    };
    // Nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let run = Digestif::new(&pool)
        .env("DIGESTIF_NEWSLETTER__BASE_URL", &dead)
        .run_async(&["doctor"])
        .await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let line = web_line(&run.stdout());
    assert!(
        line.starts_with(&format!("FAIL  web: {dead}/healthz: ")),
        "{run}"
    );
    assert!(line.contains("digestif-web.service"), "{run}");

    // Something else answers there (a default web server page).
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = other.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nIt works!\r\n")
                .await;
        }
    });
    let run = Digestif::new(&pool)
        .env(
            "DIGESTIF_NEWSLETTER__BASE_URL",
            &format!("{other_url}/news/"),
        )
        .run_async(&["doctor"])
        .await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let line = web_line(&run.stdout());
    assert!(
        line.starts_with(&format!(
            "FAIL  web: {other_url}/news/healthz: answered 200 but not as digestif does"
        )),
        "{run}"
    );

    // digestif's own web server.
    let web = crate::web::App::start(&pool, "").await;
    let run = Digestif::new(&pool)
        .links_to(&web)
        .run_async(&["doctor"])
        .await;
    assert_eq!(
        web_line(&run.stdout()),
        format!(
            "ok    web: {}/healthz answers: a digestif that reaches its database",
            web.url()
        ),
        "{run}"
    );
}

/// README: `serve` "sleeps until the next slot or the next retry": a deferred message goes out
/// again seconds later, not after the minute-long nap.
#[sqlx::test]
async fn serve_wakes_for_a_retry(pool: PgPool) {
    let server = SmtpServer::start(
        Policy::default().rcpt(|_, nth| (nth == 1).then(|| "451 4.3.0 try again".to_owned())),
    )
    .await;
    seed(&pool, 2).await;
    let mut child = serve(&pool, &server, &["serve"])
        .env("DIGESTIF_DELIVERY__RETRY_BASE", "1s")
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    let started = Instant::now();
    while server.accepted().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the retries did not go out within 30 s: {}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("serve stops")
        .unwrap();
    assert!(status.success());
}

/// README: SIGTERM "lets messages in flight finish within `delivery.shutdown_grace`"; when they
/// do not, `run` still exits 0, says so (it used to print "no slot is due" for the issue it had
/// just made), and the next run sends them, each once.
#[sqlx::test]
async fn shutdown_grace_running_out_leaves_the_messages_in_flight_to_the_next_run(pool: PgPool) {
    // The first copy of each message is read and never answered.
    let server = SmtpServer::start(Policy::default().data(|_, nth| {
        if nth == 1 {
            DataAction::Stall
        } else {
            DataAction::Accept
        }
    }))
    .await;
    seed(&pool, 3).await;
    let run = || {
        let mut cmd = serve(&pool, &server, &["run"]);
        cmd.env("DIGESTIF_DELIVERY__SHUTDOWN_GRACE", "1s")
            .env("DIGESTIF_SMTP__TIMEOUT", "60s");
        cmd
    };
    let mut child = run().spawn().unwrap();
    let log = collect_stderr(&mut child);
    let started = Instant::now();
    while server
        .commands()
        .iter()
        .filter(|c| c.eq_ignore_ascii_case("DATA"))
        .count()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never got to DATA"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&child);
    let stopped = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("run stops after the grace period")
        .unwrap();
    assert!(out.status.success());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    assert!(server.accepted().is_empty());
    let said = log.lock().unwrap().clone();
    assert!(
        said.contains("did not finish within delivery.shutdown_grace"),
        "{said}"
    );
    // It made this slot's issue and sent none of it: the summary must not say otherwise.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("no slot is due") && stdout.contains("stopped before this run finished"),
        "{stdout}"
    );

    // The next timer run comes once the stopped process's database session has ended (its
    // worker lock goes with it, and with it its claims on the messages left in flight).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM live_workers($1)")
            .bind(digestif::store::deliveries::WORKER_LOCK_CLASS)
            .fetch_one(&pool)
            .await
            .unwrap();
        if live == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped worker's session lingers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = run().output().await.unwrap();
    assert!(again.status.success());
    let mut rcpts: Vec<String> = server.accepted().into_iter().map(|a| a.rcpt).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "user1@example.com",
            "user2@example.com",
            "user3@example.com"
        ]
    );
}

/// The unit gives `serve` `TimeoutStopSec=60s` with the default 30 s `delivery.shutdown_grace`:
/// messages in flight and the bounce mailbox share one grace. They used to wait one after the
/// other (30 + 30 + 5 s for HTTP), so systemd killed a `serve` that a hung relay and a hung IMAP
/// server held, and marked the unit failed.
#[sqlx::test]
async fn serve_stops_within_one_grace_when_a_delivery_and_the_mailbox_both_hang(pool: PgPool) {
    let server = SmtpServer::start(Policy::default().data(|_, _| DataAction::Stall)).await;
    seed(&pool, 1).await;
    // An IMAP server that takes the connection and never greets.
    let imap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("imap://{}", imap.local_addr().unwrap());
    let held = std::thread::spawn(move || imap.accept().map(|(conn, _)| conn));
    let mut cmd = serve(&pool, &server, &["serve"]);
    cmd.env("DIGESTIF_DELIVERY__SHUTDOWN_GRACE", "4s")
        .env("DIGESTIF_SMTP__TIMEOUT", "60s")
        .env("DIGESTIF_INBOUND__IMAP_URL", &url)
        .env("DIGESTIF_INBOUND__IMAP_USER", "bounces")
        .env("DIGESTIF_INBOUND__IMAP_PASSWORD", "not-a-secret")
        .env("DIGESTIF_INBOUND__TIMEOUT", "60s");
    let mut child = cmd.spawn().unwrap();
    let log = collect_stderr(&mut child);
    let started = Instant::now();
    while !held.is_finished()
        || !server
            .commands()
            .iter()
            .any(|c| c.eq_ignore_ascii_case("DATA"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the mailbox and the relay were never both reached:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(&child);
    let stopping = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("serve stops")
        .unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "{}", log.lock().unwrap());
    // One grace (4 s) and a little; waiting twice takes 8 s.
    assert!(took < Duration::from_secs(6), "{took:?}");
    drop(held);
}

/// Every unit a `systemctl` command in the README names is one we ship: an operator pastes
/// these lines, and `systemctl stop digestif.timer` (a unit that does not exist) failed and left
/// the real timer starting `run` during a migration.
#[test]
fn every_unit_the_readme_tells_systemctl_about_exists() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut named = 0;
    for line in readme.lines() {
        let Some((_, rest)) = line.split_once("systemctl ") else {
            continue;
        };
        // The command ends at the closing backquote of inline code, or at a comment.
        let command = rest.split(['`', '#']).next().unwrap_or_default();
        for word in command.split_whitespace() {
            let unit = word.trim_end_matches([',', ')', ';']);
            if !unit.starts_with("digestif") {
                continue;
            }
            let file = if unit.contains('.') {
                unit.to_owned()
            } else {
                format!("{unit}.service")
            };
            let path = format!("{}/config/systemd/{file}", env!("CARGO_MANIFEST_DIR"));
            assert!(
                std::path::Path::new(&path).exists(),
                "README names the unit {unit}, which config/systemd/ does not have: {line}"
            );
            named += 1;
        }
    }
    assert!(named >= 5, "only {named} units found");
}
