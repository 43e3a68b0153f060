//! `digestif subscribers add | list | export | show | remove` against a real database.

use sqlx::PgPool;

use crate::helpers::{Digestif, subscriber_count};

#[sqlx::test]
async fn invalid_addresses_are_refused_with_one_line_and_nothing_is_written(pool: PgPool) {
    let d = Digestif::new(&pool);
    let line = d.fails(
        &["subscribers", "add", "bob@"],
        "'bob@' is not a valid email address",
    );
    assert_eq!(
        line,
        "digestif: 'bob@' is not a valid email address (nothing after the '@')"
    );
    d.fails(
        &["subscribers", "add", "not an email"],
        "'not an email' is not a valid email address",
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_name_with_cr_lf_is_refused_and_shown_escaped(pool: PgPool) {
    let d = Digestif::new(&pool);
    let line = d.fails(
        &[
            "subscribers",
            "add",
            "eve@example.com",
            "--name",
            "Eve\r\nBcc: x@evil.example",
        ],
        "contains a control character",
    );
    assert_eq!(
        line,
        "digestif: name 'Eve\\r\\nBcc: x@evil.example' contains a control character"
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn an_address_differing_only_in_letter_case_is_one_subscriber(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&[
        "subscribers",
        "add",
        "Ada.Lovelace@Example.com",
        "--name",
        "Ada",
    ]);
    d.fails(
        &["subscribers", "add", "ada.lovelace@EXAMPLE.COM"],
        "'Ada.Lovelace@example.com' is already a subscriber (status active)",
    );
    assert_eq!(subscriber_count(&pool).await, 1);
    let shown = d
        .ok(&["subscribers", "show", "ADA.LOVELACE@example.com"])
        .stdout();
    assert!(shown.contains("Ada.Lovelace@example.com"), "{shown}");
    assert!(shown.contains("subscribed via cli"), "{shown}");
}

#[sqlx::test]
async fn remove_unsubscribes_and_records_the_admin_action(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "bo@example.org"]);
    assert!(
        d.ok(&["subscribers", "remove", "bo@example.org"])
            .stdout()
            .contains("unsubscribed")
    );
    // Removing twice is harmless.
    assert!(
        d.ok(&["subscribers", "remove", "BO@example.org"])
            .stdout()
            .contains("already unsubscribed")
    );
    let (status, events): (String, i64) = sqlx::query_as(
        "SELECT s.status, (SELECT count(*) FROM subscriber_event e \
           WHERE e.subscriber_id = s.subscriber_id AND e.kind = 'unsubscribed' AND e.method = 'admin') \
         FROM subscriber s",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), events), ("unsubscribed", 1));
    d.fails(
        &["subscribers", "remove", "nobody@example.org"],
        "no subscriber 'nobody@example.org'",
    );
}

#[sqlx::test]
async fn purge_erases_personal_data_and_blocks_an_accidental_re_add(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&[
        "subscribers",
        "add",
        "gone@example.com",
        "--name",
        "Gone Person",
    ]);
    d.ok(&["subscribers", "remove", "gone@example.com", "--purge"]);
    assert_eq!(subscriber_count(&pool).await, 0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriber_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "the history is personal data too");
    // What remains holds no address, only its hash.
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(reason || encode(email_sha256, 'escape'), ',') FROM suppression",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!dump.contains("gone@example.com"));

    d.fails(
        &["subscribers", "add", "Gone@example.com"],
        "was erased on request",
    );
    assert_eq!(subscriber_count(&pool).await, 0);
    d.ok(&["subscribers", "add", "gone@example.com", "--allow-erased"]);
    assert_eq!(subscriber_count(&pool).await, 1);
}

#[sqlx::test]
async fn list_formats_and_spreadsheet_safe_export(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&[
        "subscribers",
        "add",
        "calc@example.com",
        "--name",
        "=HYPERLINK(\"http://evil.example\")",
    ]);
    d.ok(&[
        "subscribers",
        "add",
        "plain@example.com",
        "--name",
        "Plain Name",
    ]);
    d.ok(&["subscribers", "remove", "plain@example.com"]);

    let csv = d.ok(&["subscribers", "export"]).stdout();
    assert!(csv.starts_with("id,email,name,status,"), "{csv}");
    assert!(
        csv.contains("'=HYPERLINK"),
        "formula not neutralised: {csv}"
    );
    assert!(
        !csv.contains(",=HYPERLINK") && !csv.contains(",\"=HYPERLINK"),
        "{csv}"
    );

    let json = d
        .ok(&[
            "subscribers",
            "list",
            "--format",
            "json",
            "--status",
            "active",
        ])
        .stdout();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["email"], "calc@example.com");
    // JSON is data, not a spreadsheet: the name is kept exactly.
    assert_eq!(rows[0]["name"], "=HYPERLINK(\"http://evil.example\")");

    let table = d.ok(&["subscribers", "list"]).stdout();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("id  email"), "{table}");
    assert_eq!(lines.count(), 2, "{table}");
}

#[sqlx::test]
async fn an_unreachable_database_is_one_line_naming_the_host(pool: PgPool) {
    let d = Digestif::new(&pool).env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/digestif");
    let line = d.fails(
        &["subscribers", "list"],
        "cannot connect to the database at 127.0.0.1:1/digestif",
    );
    assert!(line.contains("refused"), "{line}");
}

#[sqlx::test]
async fn commands_refuse_a_database_without_the_schema(pool: PgPool) {
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(&pool)
        .await
        .unwrap();
    let d = Digestif::new(&pool);
    d.fails(&["subscribers", "list"], "run `digestif migrate`");
    // `migrate` on a database whose tables exist but whose bookkeeping is gone must not lose data;
    // here it fails loudly instead of guessing.
    d.ok(&["--help"]);
}

#[sqlx::test]
async fn purge_erases_pending_deliveries_and_the_issue_still_completes(pool: PgPool) {
    let outbox = tempfile::tempdir().unwrap();
    // Midweek, so the plain `issue send` below has no slot of its own to create.
    let d = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap())
        .env("DIGESTIF_NOW", "2026-12-02T12:00:00Z");
    d.ok(&["subscribers", "add", "stays@example.com"]);
    d.ok(&["subscribers", "add", "erased@example.com"]);
    d.ok(&["tips", "add", "--title", "T", "--body", "B"]);
    let settings = digestif::config::Settings::from_toml("").unwrap();
    let slot = chrono::DateTime::parse_from_rfc3339("2026-12-02T11:00:00Z")
        .unwrap()
        .to_utc();
    digestif::digest::create_issue(&pool, &settings, slot)
        .await
        .unwrap();
    d.ok(&["subscribers", "remove", "erased@example.com", "--purge"]);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery d WHERE NOT EXISTS \
         (SELECT 1 FROM subscriber s WHERE s.subscriber_id = d.subscriber_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "no delivery outlives its subscriber");
    let out = d.ok_async(&["issue", "send"]).await.stdout();
    assert!(
        out.contains("sent 1,") && out.contains("issue #1 is complete"),
        "{out}"
    );
}

/// Text that came from outside (a bounce's Diagnostic-Code, an ARF Feedback-Type, a relay's
/// reply) or from an older version that stored it unfiltered never reaches the admin's
/// terminal as escape sequences.
#[sqlx::test]
async fn terminal_escapes_in_stored_text_never_reach_the_terminal(pool: PgPool) {
    let evil = "550 5.1.1 \u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mgone\u{9b}31m\r\nX";
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO subscriber (email, name, status, consent_source) \
         VALUES ('eve@example.org', $1, 'bounced', 'test') RETURNING subscriber_id",
    )
    .bind(format!("Eve {evil}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO subscriber_event (subscriber_id, kind, method, detail) \
         VALUES ($1, 'bounced', 'dsn', $2)",
    )
    .bind(id)
    .bind(evil)
    .execute(&pool)
    .await
    .unwrap();
    let d = Digestif::new(&pool);
    for args in [
        &["subscribers", "show", "eve@example.org"][..],
        &["subscribers", "list"][..],
        &["subscribers", "list", "--status", "bounced"][..],
    ] {
        let out = d.ok(args).stdout();
        assert!(out.contains("gone"), "{args:?}: {out}");
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed control characters: {out:?}"
        );
    }
}

/// `bücher.example` and its ASCII form `xn--bcher-kva.example` are one domain: one subscriber,
/// stored in the form every relay can take.
#[sqlx::test]
async fn an_internationalised_domain_in_either_form_is_one_subscriber(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "bob@bücher.example"]);
    d.fails(
        &["subscribers", "add", "bob@xn--bcher-kva.example"],
        "'bob@xn--bcher-kva.example' is already a subscriber",
    );
    d.fails(
        &["subscribers", "add", "bob@BÜCHER.example"],
        "is already a subscriber",
    );
    assert_eq!(subscriber_count(&pool).await, 1);
    let shown = d
        .ok(&["subscribers", "show", "bob@bücher.example"])
        .stdout();
    assert!(shown.contains("bob@xn--bcher-kva.example"), "{shown}");
    d.fails(
        &["subscribers", "add", "bob@xn--a.example"],
        "'bob@xn--a.example' is not a valid email address",
    );
}

/// Inviting back someone who unsubscribed says where they stand: still unsubscribed until
/// they click (it said "pending", while `show` said unsubscribed).
#[sqlx::test]
async fn inviting_back_an_unsubscribed_address_says_it_stays_unsubscribed(pool: PgPool) {
    let outbox = tempfile::tempdir().unwrap();
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap());
    d.ok(&["subscribers", "add", "ada@example.com", "--name", "Ada"]);
    d.ok(&["subscribers", "remove", "ada@example.com"]);
    let out = d
        .ok_async(&["subscribers", "add", "ada@example.com", "--confirm"])
        .await
        .stdout();
    assert!(
        out.starts_with(
            "ada@example.com stays unsubscribed until they click the confirmation link just sent"
        ),
        "{out}"
    );
    assert!(!out.contains("pending"), "{out}");
    let show = d.ok(&["subscribers", "show", "ada@example.com"]).stdout();
    assert!(show.contains("unsubscribed"), "{show}");
    assert_eq!(std::fs::read_dir(outbox.path()).unwrap().count(), 1);
}

/// Look-ups lower-cased the address in Rust (Unicode's full rules: 'İ' becomes "i̇", two
/// characters) and compared it with Postgres's `lower()` of the stored one (one character at a
/// time: 'İ' becomes 'i'). An address with a dotted capital I could not be shown, removed or
/// erased, though typed exactly as stored: an erasure request the CLI could not carry out.
#[sqlx::test]
async fn an_address_whose_letters_lower_case_differently_can_be_found_removed_and_erased(
    pool: PgPool,
) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "İlker@example.com"]);
    let shown = d.ok(&["subscribers", "show", "İlker@example.com"]).stdout();
    assert!(shown.contains("İlker@example.com"), "{shown}");
    d.fails(
        &["subscribers", "add", "İLKER@example.com"],
        "is already a subscriber (status active)",
    );
    let (_dir, csv) =
        crate::helpers::file_with("more.csv", "email\nİlker@example.com\n".as_bytes());
    let out = d
        .ok(&["subscribers", "import", csv.to_str().unwrap()])
        .stdout();
    assert!(out.contains("1 already stored"), "{out}");
    d.ok(&["subscribers", "remove", "İlker@example.com", "--purge"]);
    assert_eq!(subscriber_count(&pool).await, 0);
    d.fails(
        &["subscribers", "add", "İlker@example.com"],
        "was erased on request",
    );
    let out = d.run(&["subscribers", "import", csv.to_str().unwrap()]);
    assert!(!out.output.status.success(), "{out}");
    assert_eq!(subscriber_count(&pool).await, 0);
}

/// An export is what an operator re-imports to move to a new database. The import read only
/// `email` and `name`, so everyone in it came back `active`: whoever had unsubscribed,
/// bounced, complained or never confirmed was mailed again. And the spreadsheet guard the
/// export puts before `= + - @` stayed in the address and the name, making a second subscriber
/// `'+news@example.com`, an address that does not exist.
#[sqlx::test]
async fn an_export_imported_again_keeps_who_opted_out_and_every_address_as_it_was(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "+news@example.com", "--name=-Ann-"]);
    d.ok(&[
        "subscribers",
        "add",
        "stays@example.com",
        "--name",
        "=Stays",
    ]);
    d.ok(&["subscribers", "add", "left@example.com"]);
    d.ok(&["subscribers", "remove", "left@example.com"]);
    d.ok(&["subscribers", "add", "unconfirmed@example.com", "--confirm"]);
    let export = d.ok(&["subscribers", "export"]).stdout();
    let (_dir, csv) = crate::helpers::file_with("export.csv", export.as_bytes());

    // The same database: nothing new, nothing changed.
    let again = d.ok(&["subscribers", "import", csv.to_str().unwrap()]);
    assert!(
        again.stdout().starts_with("imported 0 subscribers"),
        "{again}"
    );
    assert_eq!(subscriber_count(&pool).await, 4);

    // A new database: the active ones come back as they were, the others do not.
    sqlx::query("TRUNCATE subscriber, subscriber_event")
        .execute(&pool)
        .await
        .unwrap();
    let run = d.ok(&["subscribers", "import", csv.to_str().unwrap()]);
    assert!(run.stdout().starts_with("imported 2 subscribers"), "{run}");
    assert!(run.stdout().contains("2 not active in the file"), "{run}");
    assert!(
        run.stderr()
            .contains("'left@example.com' is unsubscribed in the file; not imported"),
        "{run}"
    );
    let rows: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT email, name, status FROM subscriber ORDER BY email")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "+news@example.com".into(),
                Some("-Ann-".into()),
                "active".into()
            ),
            (
                "stays@example.com".into(),
                Some("=Stays".into()),
                "active".into()
            ),
        ]
    );
}

/// A `status` column leaves out digestif's own statuses but `active`, even on a row with no
/// address, and refuses a value of another tool's (`enabled`), which says nothing digestif can
/// be sure of. A name that begins with `'` goes through export and import unchanged.
#[sqlx::test]
async fn an_import_status_column_is_read_as_digestifs_and_nothing_else(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, csv) = crate::helpers::file_with(
        "s.csv",
        b"email,name,status\n,Nobody,unsubscribed\nok@example.com,'quoted,active\nhuh@example.com,,enabled\n",
    );
    let path = csv.to_str().unwrap();
    let refused = d.run(&["subscribers", "import", path]);
    assert_eq!(refused.output.status.code(), Some(1), "{refused}");
    assert!(
        refused
            .stderr()
            .contains("line 4: the status 'enabled' is not one of digestif's"),
        "{refused}"
    );
    assert!(
        refused
            .stderr()
            .contains("line 2: '' is unsubscribed in the file; not imported"),
        "{refused}"
    );
    assert_eq!(subscriber_count(&pool).await, 0);

    let run = d.ok(&["subscribers", "import", path, "--skip-invalid"]);
    assert!(run.stdout().starts_with("imported 1 subscriber "), "{run}");
    let export = d.ok(&["subscribers", "export"]).stdout();
    assert!(export.contains(",''quoted,"), "{export}");
    let (_dir2, again) = crate::helpers::file_with("export.csv", export.as_bytes());
    sqlx::query("TRUNCATE subscriber, subscriber_event")
        .execute(&pool)
        .await
        .unwrap();
    d.ok(&["subscribers", "import", again.to_str().unwrap()]);
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("'quoted"));
}

/// sqlx warns of any statement that takes over a second, with its SQL, on stderr: a list of a
/// million subscribers (the statement lasts as long as its rows stream) or the fan-out of a big
/// issue put "WARN slow statement: execution time exceeded alert threshold" into every cron
/// mail. Such timings are for debugging (`RUST_LOG=debug`), not for the operator's output.
#[sqlx::test]
async fn a_slow_statement_does_not_warn_the_operator(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "ann@example.com"]);
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE subscriber IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let list = tokio::spawn({
        let d = Digestif::new(&pool);
        async move { d.run_async(&["subscribers", "list"]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    lock.commit().await.unwrap();
    let run = list.await.unwrap();
    assert!(run.output.status.success(), "{run}");
    assert!(run.stdout().contains("ann@example.com"), "{run}");
    assert_eq!(run.stderr(), "", "{run}");
}
