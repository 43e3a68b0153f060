//! `digestif subscribers import`: every bad line reported, all or nothing, duplicates never
//! doubled, erased addresses refused.

use sqlx::PgPool;

use crate::helpers::{Digestif, arg, file_with, subscriber_count};

const MIXED: &str = "email,name,plan\n\
    ada@example.com,Ada,gold\n\
    bob@,Bob,\n\
    carol@example.org,\"Carol, C.\",silver\n\
    not an email,X,\n\
    ADA@example.com,Ada again,\n\
    dan@example.org,\"Dan\nMultiline\",\n\
    erin@example.com,,\n";

#[sqlx::test]
async fn every_bad_line_is_reported_and_nothing_is_imported(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with("subscribers.csv", MIXED.as_bytes());
    let run = d.run(&["subscribers", "import", arg(&path)]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let err = run.stderr();
    let p = path.display();
    assert!(
        err.contains(&format!("{p}: line 3: 'bob@' is not a valid email address")),
        "{run}"
    );
    assert!(
        err.contains(&format!(
            "{p}: line 5: 'not an email' is not a valid email address"
        )),
        "{run}"
    );
    assert!(
        err.contains(&format!(
            "{p}: line 7: name 'Dan\\nMultiline' contains a control character"
        )),
        "{run}"
    );
    assert!(
        err.contains(&format!("{p}: line 6: 'ADA@example.com' duplicates line 2")),
        "{run}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with(&format!("digestif: {p}: 3 invalid lines; nothing imported")),
        "{run}"
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn skip_invalid_imports_the_good_rows_once(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with("subscribers.csv", MIXED.as_bytes());
    let out = d
        .ok(&["subscribers", "import", arg(&path), "--skip-invalid"])
        .stdout();
    assert!(out.starts_with("imported 3 subscribers"), "{out}");
    let emails: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT email, name FROM subscriber ORDER BY email")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        emails,
        vec![
            ("ada@example.com".into(), Some("Ada".into())),
            ("carol@example.org".into(), Some("Carol, C.".into())),
            ("erin@example.com".into(), None),
        ]
    );
    // The consent evidence: the file, in each imported subscriber's history.
    let shown = d.ok(&["subscribers", "show", "carol@example.org"]).stdout();
    assert!(
        shown.contains(&format!("subscribed via import ({})", path.display())),
        "{shown}"
    );
    let added: Vec<(String, i64)> = sqlx::query_as("SELECT source, added FROM subscriber_import")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(added, vec![(path.display().to_string(), 3)]);

    // Importing again adds nobody and says why.
    let again = d.ok(&["subscribers", "import", arg(&path), "--skip-invalid"]);
    assert!(
        again.stdout().starts_with("imported 0 subscribers"),
        "{again}"
    );
    assert!(
        again
            .stderr()
            .contains("'ada@example.com' is already a subscriber (active); left as it is"),
        "{again}"
    );
    assert_eq!(subscriber_count(&pool).await, 3);
}

/// A quote opened in a column we do not read and never closed: a CSV reader takes the rest of
/// the file as that one field, so the rows after it would be dropped without a word.
#[sqlx::test]
async fn an_unclosed_quote_is_an_error_not_lost_rows(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with(
        "stray.csv",
        b"email,name,note\na@example.com,Ann,\"met at conf\nb@example.com,Bob,\nc@example.com,Cy,ok\n",
    );
    for extra in [None, Some("--skip-invalid")] {
        let mut args = vec!["subscribers", "import", arg(&path)];
        args.extend(extra);
        let line = d.fails(
            &args,
            "line 2: a quoted field begins here and is never closed",
        );
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert_eq!(subscriber_count(&pool).await, 0);
    }
    // Quotes that are fine: a quoted header after a byte-order mark, a closed note over two
    // lines, a quote inside an unquoted field, and a doubled quote inside a quoted one.
    let (_dir, ok) = file_with(
        "ok.csv",
        b"\xef\xbb\xbf\"email\",name,note\r\na@example.com,Ann,\"met at\r\nconf\"\r\nb@example.com,Bob,5\" screen\r\nc@example.com,\"Cy \"\"C\"\"\",ok\r\n",
    );
    let out = d.ok(&["subscribers", "import", arg(&ok)]).stdout();
    assert!(out.starts_with("imported 3 subscribers"), "{out}");
}

#[sqlx::test]
async fn dry_run_changes_nothing(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with("ok.csv", b"email,name\nx@example.com,X\ny@example.com,Y\n");
    let out = d
        .ok(&["subscribers", "import", arg(&path), "--dry-run"])
        .stdout();
    assert!(out.contains("would import 2 subscribers"), "{out}");
    assert_eq!(subscriber_count(&pool).await, 0);
    let (_dir2, bad) = file_with("bad.csv", MIXED.as_bytes());
    d.fails(
        &["subscribers", "import", arg(&bad), "--dry-run"],
        "3 invalid lines",
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_nul_byte_and_invalid_utf8_are_reported_by_line(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with(
        "nul.csv",
        b"email,name\nok@example.com,Ok\nnul@example.com,Nu\0l\nbad@example.com,\xff\xfe\n",
    );
    let run = d.run(&["subscribers", "import", arg(&path)]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("line 3: name 'Nu\\0l' contains a control character"),
        "{run}"
    );
    assert!(run.stderr().contains("line 4: not valid UTF-8"), "{run}");
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_stored_unsubscribed_address_is_not_re_subscribed(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "left@example.com"]);
    d.ok(&["subscribers", "remove", "left@example.com"]);
    let (_dir, path) = file_with("s.csv", b"email\nLEFT@example.com\n");
    let run = d.ok(&["subscribers", "import", arg(&path)]);
    assert!(
        run.stderr().contains("already a subscriber (unsubscribed)"),
        "{run}"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM subscriber")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "unsubscribed");
}

#[sqlx::test]
async fn an_erased_address_is_refused_unless_allowed(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "gone@example.com"]);
    d.ok(&["subscribers", "remove", "gone@example.com", "--purge"]);
    let (_dir, path) = file_with(
        "s.csv",
        b"email,name\nnew@example.com,New\nGone@Example.com,Back\n",
    );
    let run = d.run(&["subscribers", "import", arg(&path)]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("line 3: 'Gone@example.com' was erased on request"),
        "{run}"
    );
    assert_eq!(subscriber_count(&pool).await, 0);
    d.ok(&["subscribers", "import", arg(&path), "--allow-erased"]);
    assert_eq!(subscriber_count(&pool).await, 2);
}

#[sqlx::test]
async fn a_missing_file_or_header_is_one_line(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.fails(
        &["subscribers", "import", "no-such-file.csv"],
        "no-such-file.csv: cannot open: No such file or directory",
    );
    let (_dir, path) = file_with("h.csv", b"mail,name\nx@example.com,X\n");
    d.fails(
        &["subscribers", "import", arg(&path)],
        "line 1: the header has no 'email' column",
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn an_address_added_while_the_import_inserts_is_skipped_not_an_error(pool: PgPool) {
    use digestif::domain::SubscriberEmail;
    use digestif::store::subscribers::Import;

    // Someone else adds ada@ and has not committed yet.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO subscriber (email, status, consent_source) \
         VALUES ('Ada@example.com', 'active', 'cli')",
    )
    .execute(&mut *other)
    .await
    .unwrap();

    let mut import = Import::begin(&pool).await.unwrap();
    {
        let mut buf = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        for (line, email) in [(2, "ada@example.com"), (3, "bob@example.com")] {
            let email = SubscriberEmail::parse(email).unwrap();
            Import::encode(&mut buf, line, &email, None).unwrap();
        }
        let mut copy = import.copy_in().await.unwrap();
        copy.send(buf.into_inner().unwrap()).await.unwrap();
        copy.finish().await.unwrap();
    }
    let inserting = tokio::spawn(async move {
        let added = import.insert("race.csv", false).await?;
        import.commit().await?;
        Ok::<u64, sqlx::Error>(added)
    });

    // The import's INSERT now waits on the other transaction's row; let that one commit.
    let mut waited = 0;
    while waited < 200 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if blocked > 0 {
            break;
        }
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(waited < 200, "the import never waited for the other insert");
    other.commit().await.unwrap();

    let added = inserting.await.unwrap().expect("the import succeeds");
    assert_eq!(added, 1, "bob is added, ada was taken meanwhile");
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT email, consent_source FROM subscriber ORDER BY email")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![
            ("Ada@example.com".into(), "cli".into()),
            ("bob@example.com".into(), "import".into()),
        ]
    );
}

/// Every line left out is reported in line order, whatever the reason: a bad address found
/// while reading and a duplicate found in the database afterwards come out as in the file.
#[sqlx::test]
async fn lines_left_out_are_reported_in_line_order(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["subscribers", "add", "stored@example.com"]);
    let (_dir, csv) = file_with(
        "subscribers.csv",
        b"email,name\nada@example.com,Ada\nada@example.com,Ada again\nbob@,Bob\nstored@example.com,\nnot an address,\ncy@example.com,Cy\n",
    );
    let run = d.run(&["subscribers", "import", arg(&csv), "--skip-invalid"]);
    assert!(run.output.status.success(), "{run}");
    let lines: Vec<u64> = run
        .stderr()
        .lines()
        .filter_map(|l| l.split(": line ").nth(1)?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(lines, [3, 4, 5, 6], "{run}");
    assert!(run.stdout().contains("imported 2 subscribers"), "{run}");
}
