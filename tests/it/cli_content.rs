//! `digestif tips …` and `digestif articles …` against a real database, with the sample content.

use sqlx::PgPool;

use crate::helpers::{Digestif, arg, file_with};

#[sqlx::test]
async fn the_sample_content_imports_once(pool: PgPool) {
    let d = Digestif::new(&pool);
    let first = d.ok(&["tips", "import", "config/sample/tips"]).stdout();
    assert!(first.starts_with("imported 18 tips"), "{first}");
    let again = d.ok(&["tips", "import", "config/sample/tips"]).stdout();
    assert!(again.starts_with("imported 0 tips"), "{again}");
    let themes: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tags[1] FROM tip ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        themes,
        [
            "business",
            "collaboration",
            "craft",
            "learning",
            "mentors",
            "side-projects"
        ]
    );

    d.ok(&["articles", "import", "config/sample/articles.csv"]);
    let json = d.ok(&["articles", "list", "--format", "json"]).stdout();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6);
    d.ok(&["subscribers", "import", "config/sample/subscribers.csv"]);
}

#[sqlx::test]
async fn a_retired_tip_leaves_the_rotation_list(pool: PgPool) {
    let d = Digestif::new(&pool);
    let out = d
        .ok(&[
            "tips",
            "add",
            "--title",
            "Write it down",
            "--body",
            "Keep a *work log*.",
            "--tag",
            "craft",
        ])
        .stdout();
    let id = out
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    d.ok(&["tips", "retire", &id]);
    assert_eq!(
        d.ok(&["tips", "list", "--format", "csv"])
            .stdout()
            .lines()
            .count(),
        1
    );
    assert_eq!(
        d.ok(&["tips", "list", "--all", "--format", "csv"])
            .stdout()
            .lines()
            .count(),
        2
    );
    d.fails(&["tips", "retire", "999999"], "no tip 999999");
}

#[sqlx::test]
async fn hostile_content_is_refused_before_storage(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.fails(
        &[
            "tips",
            "add",
            "--title",
            "Hello\r\nBcc: x@evil.example",
            "--body",
            "b",
        ],
        "title 'Hello\\r\\nBcc: x@evil.example' contains a control character",
    );
    d.fails(
        &[
            "articles",
            "add",
            "--title",
            "Click",
            "--url",
            "javascript:alert(1)",
        ],
        "url 'javascript:alert(1)' is not an http or https URL",
    );
    let (_dir, path) = file_with(
        "articles.csv",
        b"title,url,summary,author,published_at\nGood,https://example.com/a,,,2026-11-01\nBad,data:text/html;x,,,2026-11-02\nWhen,https://example.com/b,,,yesterday\n",
    );
    let run = d.run(&["articles", "import", arg(&path)]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("line 3: url 'data:text/html;x' is not an http or https URL"),
        "{run}"
    );
    assert!(
        run.stderr()
            .contains("line 4: published_at 'yesterday' is not a date"),
        "{run}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM article")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let (_dir2, tips) = file_with(
        "bad.md",
        b"+++\ntitle = \"x\"\ntags = [\"Bad Tag\"]\n+++\nbody\n",
    );
    d.fails(
        &["tips", "import", arg(&tips)],
        "1 invalid tip file; nothing imported",
    );
}

/// Mistakes in how a command is called are named once: a tip without a body names both ways
/// to give one; an articles file with the wrong header is one error, not one per row.
#[sqlx::test]
async fn a_missing_body_or_a_wrong_header_is_one_clear_error(pool: PgPool) {
    let d = Digestif::new(&pool);
    let run = d.run(&["tips", "add", "--title", "T"]);
    assert_eq!(run.output.status.code(), Some(2), "{run}");
    assert!(run.stderr().contains("--body-file"), "{run}");

    let (_dir, path) = file_with(
        "articles.csv",
        b"name,link,published_at\nA,https://example.com/a,2026-11-01\nB,https://example.com/b,2026-11-02\n",
    );
    let line = d.fails(
        &["articles", "import", arg(&path)],
        "line 1: the header has no 'title', 'url' columns",
    );
    assert!(
        line.contains("expected `title,url,summary,author,published_at`"),
        "{line}"
    );
}

/// A quote opened in the last column and never closed: the CSV reader takes the rest of the
/// file as that field, and the articles after it were lost without a word.
#[sqlx::test]
async fn an_unclosed_quote_in_an_article_file_is_an_error(pool: PgPool) {
    let d = Digestif::new(&pool);
    let (_dir, path) = file_with(
        "articles.csv",
        b"title,url,published_at,summary\n\
          A,https://a.example.com/a,2026-11-01T00:00:00Z,\"unclosed\n\
          B,https://a.example.com/b,2026-11-02T00:00:00Z,fine\n",
    );
    d.fails(
        &["articles", "import", arg(&path)],
        "line 2: a quoted field begins here and is never closed",
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM article")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// Text from outside (a feed's title, a bounce's detail, a name) printed in a table or a status
/// line: a bidi override (U+202E) in it would make the rest of the operator's line read
/// backwards, so it is shown escaped.
#[sqlx::test]
async fn a_bidi_override_in_a_title_is_shown_escaped(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&[
        "articles",
        "add",
        "--title",
        "Invoice \u{202e}fdp.exe",
        "--url",
        "https://example.com/invoice",
    ]);
    let table = d.ok(&["articles", "list"]).stdout();
    assert!(!table.contains('\u{202e}'), "{table}");
    assert!(table.contains("Invoice \\u{202e}fdp.exe"), "{table}");
}
