//! Configuration errors reach the operator as one line naming the key, before anything runs.

use sqlx::PgPool;

use crate::helpers::{Digestif, arg, file_with, subscriber_count};

#[sqlx::test]
async fn a_bad_environment_value_names_the_key_and_writes_nothing(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__CONCURRENCY", "0");
    let line = d.config_fails(
        &["subscribers", "add", "ok@example.com"],
        "delivery.concurrency",
    );
    assert_eq!(
        line,
        "digestif: config: delivery.concurrency: 0 is out of range (1 to 64)"
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_bad_file_value_names_the_key_and_the_file(pool: PgPool) {
    let (_dir, path) = file_with(
        "digestif.toml",
        b"[schedule]\ntimezone = \"Mars/Olympus_Mons\"\n",
    );
    let d = Digestif::new(&pool);
    d.config_fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: schedule.timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
    );
    let (_dir2, typo) = file_with("digestif.toml", b"[smtp]\nurll = \"smtp://x\"\n");
    d.config_fails(
        &["--config", arg(&typo), "subscribers", "list"],
        "config: smtp.urll: unknown key; did you mean `url`? (set in ",
    );
    d.config_fails(
        &["--config", "nope.toml", "migrate"],
        "config: --config: nope.toml: no such file",
    );
}

#[sqlx::test]
async fn the_smtp_password_never_appears_in_an_error(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_SMTP__URL", "ftp://user:hunter2@mail.example.com");
    let line = d.config_fails(&["subscribers", "list"], "config: smtp.url");
    assert!(!line.contains("hunter2"), "{line}");
}

/// The field report: a password of digits stopped start-up with the password in the error.
#[sqlx::test]
async fn secrets_are_text_whatever_they_look_like_and_never_shown(pool: PgPool) {
    let server = crate::smtp_server::SmtpServer::start(
        crate::smtp_server::Policy::default().require_auth("mailer", "84736251", "PLAIN"),
    )
    .await;
    let web = crate::web::App::start(&pool, "").await;
    let d = Digestif::new(&pool)
        .links_to(&web)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
        .env("DIGESTIF_SMTP__PASSWORD", "84736251");
    let run = d.run_async(&["doctor"]).await;
    assert!(run.output.status.success(), "{run}");
    assert_eq!(server.logins(), ["PLAIN mailer"], "{run}");
    assert!(!run.stdout().contains("84736251") && !run.stderr().contains("84736251"));

    // In a file a bare number is a TOML integer: refused, without showing it.
    let (_dir, path) = file_with("digestif.toml", b"[smtp]\npassword = 84736251\n");
    let line = Digestif::new(&pool).config_fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: smtp.password: not a valid value (not shown",
    );
    assert!(!line.contains("84736251"), "{line}");

    // The same for a relay's password and URL, whose keys carry the relay's index.
    let (_dir, path) = file_with(
        "digestif.toml",
        b"[[smtp.relays]]\nurl = \"smtp://r.example:25\"\npassword = 84736251\n",
    );
    let line = Digestif::new(&pool).config_fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: smtp.relays[1].password: not a valid value (not shown",
    );
    assert!(!line.contains("84736251"), "{line}");
    // A list of URLs where a list of tables belongs: the error is at `smtp.relays`.
    let (_dir, path) = file_with(
        "digestif.toml",
        b"[smtp]\nrelays = [\"smtp://u:84736251@r.example\"]\n",
    );
    let line = Digestif::new(&pool).config_fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: smtp.relays",
    );
    assert!(!line.contains("84736251"), "{line}");
    let (_dir, path) = file_with("digestif.toml", b"[[smtp.relays]]\nurl = 84736251\n");
    let line = Digestif::new(&pool).config_fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: smtp.relays[1].url: not a valid value (not shown",
    );
    assert!(!line.contains("84736251"), "{line}");
}

#[sqlx::test]
async fn secrets_can_come_from_files(pool: PgPool) {
    let server = crate::smtp_server::SmtpServer::start(
        crate::smtp_server::Policy::default().require_auth("mailer", "from a file", "PLAIN"),
    )
    .await;
    // As systemd's LoadCredential= and Docker secrets write them: with a final line break.
    let (_dir, secret) = file_with("password", b"from a file\n");
    let web = crate::web::App::start(&pool, "").await;
    let base = || {
        Digestif::new(&pool)
            .links_to(&web)
            .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
            .env("DIGESTIF_SMTP__URL", &server.url())
            .env("DIGESTIF_SMTP__USERNAME", "mailer")
            .env("DIGESTIF_SMTP__ALLOW_PLAINTEXT_AUTH", "true")
    };
    let run = base()
        .env("DIGESTIF_SMTP__PASSWORD_FILE", arg(&secret))
        .run_async(&["doctor"])
        .await;
    assert!(run.output.status.success(), "{run}");
    let toml = format!("[smtp]\npassword_file = \"{}\"\n", arg(&secret));
    let (_dir2, config) = file_with("digestif.toml", toml.as_bytes());
    let run = base()
        .run_async(&["--config", arg(&config), "doctor"])
        .await;
    assert!(run.output.status.success(), "{run}");
    assert_eq!(server.logins(), ["PLAIN mailer", "PLAIN mailer"]);

    base()
        .env("DIGESTIF_SMTP__PASSWORD_FILE", "/nonexistent/password")
        .config_fails(
            &["subscribers", "list"],
            "config: smtp.password: /nonexistent/password: cannot read the secret",
        );
    base()
        .env("DIGESTIF_SMTP__PASSWORD_FILE", arg(&secret))
        .env("DIGESTIF_SMTP__PASSWORD", "x")
        .config_fails(
            &["subscribers", "list"],
            "both DIGESTIF_SMTP__PASSWORD and DIGESTIF_SMTP__PASSWORD_FILE are set",
        );
}

/// Rotation from the environment: one previous secret per line (here from a file, as systemd
/// credentials give it); an old link in an unsubscribe mail still works; a short entry stops
/// start-up without showing any value.
#[sqlx::test]
async fn previous_token_secrets_come_from_the_environment_one_per_line(pool: PgPool) {
    const OLD: &str = "an-old-secret-from-before-the-rotation-42";
    const OLDER: &str = "an-even-older-secret-from-the-year-before";
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO subscriber (email, status, consent_source) \
         VALUES ('ann@example.org', 'active', 'test') RETURNING subscriber_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let older = digestif::domain::TokenKeys::new(
        digestif::domain::TokenKey::new(OLDER.as_bytes()).unwrap(),
        vec![],
    );
    let token = older.sign(digestif::domain::Purpose::Unsubscribe, id);
    let (_dir, file) = file_with("previous", format!("{OLD}\n{OLDER}\n").as_bytes());
    let d = Digestif::new(&pool)
        .env(
            "DIGESTIF_HTTP__TOKEN_SECRET",
            "the-current-secret-0123456789abcdef",
        )
        .env("DIGESTIF_HTTP__PREVIOUS_TOKEN_SECRETS_FILE", arg(&file));
    let mail = format!(
        "From: ann@example.org\r\nTo: unsubscribe@example.com\r\nSubject: unsubscribe {token}\r\n\r\n"
    );
    let run = d.run_with_stdin(&["inbound"], mail.as_bytes());
    assert!(run.output.status.success(), "{run}");
    let status = crate::helpers::subscriber_status(&pool, id).await;
    assert_eq!(status, "unsubscribed", "{run}");

    let line = Digestif::new(&pool)
        .env("DIGESTIF_HTTP__PREVIOUS_TOKEN_SECRETS", "tiny-secret-xyz")
        .config_fails(
            &["subscribers", "list"],
            "config: http.previous_token_secrets: every entry must be at least",
        );
    assert!(!line.contains("tiny-secret-xyz"), "{line}");
}

/// The README's old pipe line had no --config and counted on an environment Postfix never
/// gives a pipe: `doctor --postfix` prints lines that carry everything, for this binary, this
/// config file and this bounce address, and warns when the database URL would be missing.
#[sqlx::test]
async fn doctor_prints_a_postfix_recipe_that_needs_no_environment(pool: PgPool) {
    let (_dir, config) = file_with(
        "digestif.toml",
        b"[bounces]\naddress = \"bounce@news.example.org\"\n",
    );
    let run = Digestif::new(&pool).run(&["--config", arg(&config), "doctor", "--postfix"]);
    assert!(run.output.status.success(), "{run}");
    let out = run.stdout();
    let config = std::fs::canonicalize(&config).unwrap();
    for line in [
        "recipient_delimiter = +",
        "digestif_destination_recipient_limit = 1",
        "bounce@news.example.org    digestif:",
        &format!(
            "--config {} inbound --recipient ${{recipient}}",
            config.display()
        ),
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.contains("the pipe does not see"),
        "DATABASE_URL from the environment is flagged: {out}"
    );
}

/// Crontab as cronie runs it (issue 15): a step in a day field is kept, and a schedule that
/// can never fire stops start-up instead of silently never sending.
#[sqlx::test]
async fn schedules_are_read_as_cronie_reads_them(pool: PgPool) {
    let next = Digestif::new(&pool)
        .env("DIGESTIF_SCHEDULE__CRON", "0 9 * * */2")
        .env("DIGESTIF_SCHEDULE__TIMEZONE", "UTC")
        .env("DIGESTIF_NOW", "2026-11-30T12:00:00Z")
        .ok(&["schedule", "next", "--count", "3"])
        .stdout();
    for day in ["Tue 2026-12-01", "Thu 2026-12-03", "Sat 2026-12-05"] {
        assert!(next.contains(day), "{day} missing from:\n{next}");
    }
    assert!(!next.contains("Wed 2026-12-02"), "{next}");
    Digestif::new(&pool)
        .env("DIGESTIF_SCHEDULE__CRON", "0 0 30 2 *")
        .config_fails(&["schedule", "next"], "'0 0 30 2 *' never fires");
}

/// `schedule next` with a count no one means (it used to ask for that much memory at once and
/// panic) is refused in one line; one read by `head` ends quietly when `head` has had enough.
#[sqlx::test]
async fn schedule_next_refuses_an_absurd_count_and_stops_at_a_closed_pipe(pool: PgPool) {
    let d = Digestif::new(&pool);
    for count in ["18446744073709551615", "0", "10001"] {
        let run = d.run(&["schedule", "next", "--count", count]);
        assert_eq!(run.output.status.code(), Some(2), "{run}");
        assert!(!run.stderr().contains("panicked"), "{run}");
        assert!(run.stderr().contains("--count"), "{run}");
    }
    // Far more lines than a pipe holds, and the reader gone after the first.
    let mut child = d
        .command(&["schedule", "next", "--count", "10000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.starts_with("schedule: "), "{first}");
    drop(out);
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(done.status.code(), Some(0), "{err}");
    // The same as one line of JSON, the reader gone after its first bytes.
    let mut child = d
        .command(&["schedule", "next", "--count", "10000", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"{");
    drop(out);
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{err}");
}

/// A duration far beyond any use (a typo, a unit mistaken) is refused at start-up, naming its
/// key; it used to be taken, and the time arithmetic on it panicked later, mid-run.
#[sqlx::test]
async fn durations_beyond_a_year_are_refused_at_start(pool: PgPool) {
    for (var, key) in [
        ("DIGESTIF_FEEDS__INTERVAL", "feeds.interval"),
        (
            "DIGESTIF_DELIVERY__BREAKER_COOLDOWN",
            "delivery.breaker_cooldown",
        ),
        ("DIGESTIF_SMTP__TIMEOUT", "smtp.timeout"),
    ] {
        Digestif::new(&pool).env(var, "300000y").config_fails(
            &["feeds", "list"],
            &format!("config: {key}: '300000y' is out of range (at most 366d)"),
        );
    }
}

/// `doctor` says whose complaints count.
#[sqlx::test]
async fn doctor_says_whose_complaints_count(pool: PgPool) {
    let out = Digestif::new(&pool)
        .env(
            "DIGESTIF_BOUNCES__COMPLAINT_SENDERS",
            "[\"fbl.example-isp.net\"]",
        )
        .run_async(&["doctor"])
        .await
        .stdout();
    assert!(
        out.contains(
            "ok    complaints: counted with our VERP tag, or DKIM-verified from fbl.example-isp.net"
        ),
        "{out}"
    );
    let out = Digestif::new(&pool)
        .env("DIGESTIF_BOUNCES__VERP", "false")
        .run_async(&["doctor"])
        .await
        .stdout();
    assert!(out.contains("no complaint will ever count"), "{out}");
}

/// `inbound` runs under the MTA: a configuration error (the pipe user cannot read the file, a
/// bad value) is one the operator fixes, so the MTA must keep the mail and retry (exit 75),
/// not bounce or drop it.
#[sqlx::test]
async fn inbound_with_a_broken_config_asks_the_mta_to_retry(pool: PgPool) {
    let run = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "0")
        .run_with_stdin(&["inbound"], b"Subject: hello\r\n\r\nhi\r\n");
    assert_eq!(run.output.status.code(), Some(75), "{run}");
    assert_eq!(run.stderr().trim().lines().count(), 1, "{run}");
    assert!(run.stderr().contains("delivery.concurrency"), "{run}");
}

/// Shell completions and the manual page come from the argument definitions, and need no
/// configuration: a broken one does not stop them.
#[sqlx::test]
async fn completions_and_the_man_page_need_no_configuration(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__CONCURRENCY", "0");
    let bash = d.run(&["completions", "bash"]);
    assert!(bash.output.status.success(), "{bash}");
    let script = bash.stdout();
    assert!(script.contains("complete -F _digestif"), "{bash}");
    for word in ["subscribers", "issue", "doctor", "--config"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        let run = d.run(&["completions", shell]);
        assert!(
            run.output.status.success() && run.stdout().contains("digestif"),
            "{run}"
        );
    }
    let man = d.run(&["man"]);
    assert!(man.output.status.success(), "{man}");
    let page = man.stdout();
    assert!(page.contains(".TH digestif 1"), "{man}");
    assert!(page.contains("newsletter digest mailer"), "{man}");
}

/// `migrate` says what it did: the database it created (where), each migration it applied,
/// and, run again, that there was nothing to do.
#[sqlx::test]
async fn migrate_says_what_it_created_and_applied(pool: PgPool) {
    let fresh = format!("digestif_migrate_{}", std::process::id());
    let o = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{fresh}",
        o.get_username(),
        o.get_host(),
        o.get_port()
    );
    let place = format!("{}:{}/{fresh}", o.get_host(), o.get_port());
    let d = Digestif::new(&pool).env("DATABASE_URL", &url);
    let first = d.ok(&["migrate"]).stdout();
    let second = d.ok(&["migrate"]).stdout();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {fresh} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let latest = digestif::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    assert!(
        first.starts_with(&format!("created the database {place}\n")),
        "{first}"
    );
    assert_eq!(
        first.matches("applied migration ").count(),
        digestif::store::MIGRATOR.iter().count(),
        "{first}"
    );
    assert!(
        first.contains(&format!("is at schema version {latest} (")),
        "{first}"
    );
    assert_eq!(
        second.trim(),
        format!("the database at {place} is up to date (schema version {latest})")
    );
}

/// `doctor` checks that the file transport could write its outbox without creating it: a
/// check changes nothing (it used to leave an `outbox/` in whatever folder it ran in).
#[sqlx::test]
async fn doctor_checks_the_outbox_without_creating_it(pool: PgPool) {
    let web = crate::web::App::start(&pool, "").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let run = Digestif::new(&pool)
        .links_to(&web)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.to_str().unwrap())
        .run_async(&["doctor"])
        .await;
    assert!(run.output.status.success(), "{run}");
    assert!(
        run.stdout().contains(&format!(
            "ok    transport: file, into {}/ (writable)",
            outbox.display()
        )),
        "{run}"
    );
    assert!(!outbox.exists(), "doctor created {}", outbox.display());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "doctor left a file"
    );

    // A folder that cannot be made: the check fails and says where.
    let run = Digestif::new(&pool)
        .links_to(&web)
        .env("DIGESTIF_DELIVERY__OUTBOX", "/proc/digestif-outbox")
        .run_async(&["doctor"])
        .await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(
        run.stdout()
            .contains("/proc/digestif-outbox: does not exist, and /proc cannot be written"),
        "{run}"
    );
}
