//! Fetching feeds from a real HTTP server on 127.0.0.1:0: conditional GET (a 304 costs
//! nothing), the body cap, a server that stalls, redirect loops, Retry-After, and the address
//! check that keeps feed URLs away from loopback and private networks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use digestif::feeds::entry;
use digestif::feeds::fetch::{FetchError, Fetched, Fetcher, Validators};
use sqlx::PgPool;
use url::Url;

use crate::helpers::Digestif;

const RSS: &str = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>Blog</title>
<link>https://blog.example.com/</link>
<item><title>Indexes</title><link>https://blog.example.com/indexes?utm_source=rss</link>
<guid>p1</guid><pubDate>Mon, 23 Nov 2026 10:00:00 +0000</pubDate></item>
<item><title>Vacuum</title><link>https://blog.example.com/vacuum</link>
<guid>p2</guid><pubDate>Tue, 24 Nov 2026 10:00:00 +0000</pubDate></item>
</channel></rss>"#;

/// Another blog's Atom feed, sharing one article with RSS (the same page, another campaign).
const ATOM: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Other</title><id>urn:other</id>
<updated>2026-11-25T10:00:00Z</updated>
<entry><title>Indexes, again</title><id>urn:other:1</id>
<link href="https://blog.example.com/indexes?utm_source=atom&amp;utm_medium=feed"/>
<updated>2026-11-25T10:00:00Z</updated></entry>
<entry><title>The WAL</title><id>urn:other:2</id><link href="https://other.example.org/wal"/>
<updated>2026-11-26T10:00:00Z</updated></entry>
</feed>"#;

/// The request headers each request to /rss carried.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn rss(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some("\"v1\"");
    seen.lock().unwrap().push(headers);
    if unchanged {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::ETAG, "\"v1\""),
            (header::LAST_MODIFIED, "Mon, 23 Nov 2026 10:00:00 GMT"),
            (header::CONTENT_TYPE, "application/rss+xml"),
        ],
        RSS,
    )
        .into_response()
}

/// A redirect chain whose every hop takes 1.5 s.
async fn slow_hop(Path(n): Path<u32>) -> Response {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if n == 0 {
        return ([(header::CONTENT_TYPE, "application/rss+xml")], RSS).into_response();
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/slow-hops/{}", n - 1))],
    )
        .into_response()
}

async fn hop(Path(n): Path<u32>) -> Response {
    if n == 0 {
        return ([(header::CONTENT_TYPE, "application/rss+xml")], RSS).into_response();
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/hops/{}", n - 1))],
    )
        .into_response()
}

/// A feed server on 127.0.0.1:0 and the headers /rss saw.
async fn server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/rss", get(rss))
        .route("/hops/{n}", get(hop))
        .route("/slow-hops/{n}", get(slow_hop))
        .route("/big", get(|| async { "x".repeat(6 * 1024 * 1024) }))
        .route(
            "/stall",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                RSS
            }),
        )
        .route(
            "/atom",
            get(|| async { ([(header::CONTENT_TYPE, "application/atom+xml")], ATOM) }),
        )
        .route(
            "/broken",
            get(|| async { "<html><body>moved</body></html>" }),
        )
        .route(
            "/busy",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "120")],
                    "",
                )
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn fetcher(allow_private: bool) -> Fetcher {
    Fetcher::new(
        Duration::from_secs(2),
        5 * 1024 * 1024,
        allow_private,
        "digestif/test (+https://news.example.com/)",
    )
    .unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[tokio::test]
async fn a_second_fetch_sends_the_validators_and_a_304_costs_nothing() {
    let (base, seen) = server().await;
    let f = fetcher(true);
    let feed = url(&format!("{base}/rss"));
    let Fetched::Body {
        bytes, validators, ..
    } = f.get(&feed, &Validators::default()).await.unwrap()
    else {
        panic!("expected the feed");
    };
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    let entries = entry::read(&bytes, &feed, chrono::Utc::now(), 300).unwrap();
    let urls: Vec<&str> = entries
        .articles
        .iter()
        .map(|a| a.article.url.as_str())
        .collect();
    assert_eq!(
        urls,
        [
            "https://blog.example.com/indexes",
            "https://blog.example.com/vacuum"
        ]
    );

    let again = f.get(&feed, &validators).await.unwrap();
    assert!(matches!(again, Fetched::NotModified), "{again:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].get(header::IF_NONE_MATCH).is_none());
    assert_eq!(seen[1].get(header::IF_NONE_MATCH).unwrap(), "\"v1\"");
    assert_eq!(
        seen[1].get(header::IF_MODIFIED_SINCE).unwrap(),
        "Mon, 23 Nov 2026 10:00:00 GMT"
    );
    assert!(
        seen[0]
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("digestif/") && ua.contains("news.example.com")),
        "{:?}",
        seen[0]
    );
}

#[tokio::test]
async fn oversized_stalling_looping_and_busy_feeds_fail_in_one_line() {
    let (base, _) = server().await;
    let f = fetcher(true);
    let err = |e: FetchError| {
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        (e, line)
    };
    let (e, line) = err(f
        .get(&url(&format!("{base}/big")), &Validators::default())
        .await
        .unwrap_err());
    assert!(matches!(e, FetchError::TooLarge(_)), "{line}");

    let started = std::time::Instant::now();
    let (e, line) = err(f
        .get(&url(&format!("{base}/stall")), &Validators::default())
        .await
        .unwrap_err());
    assert!(matches!(e, FetchError::Timeout(_)), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // feeds.timeout is for the whole fetch, redirects included: four hops of 1.5 s each
    // used to take 6 s against a timeout of 2 s (and six of 20 s, two minutes).
    let started = std::time::Instant::now();
    let (e, line) = err(f
        .get(&url(&format!("{base}/slow-hops/3")), &Validators::default())
        .await
        .unwrap_err());
    assert!(matches!(e, FetchError::Timeout(_)), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let (e, line) = err(f
        .get(&url(&format!("{base}/hops/10")), &Validators::default())
        .await
        .unwrap_err());
    assert!(matches!(e, FetchError::TooManyRedirects), "{line}");
    // Five redirects are followed.
    let ok = f
        .get(&url(&format!("{base}/hops/5")), &Validators::default())
        .await
        .unwrap();
    let Fetched::Body { url: last, .. } = ok else {
        panic!("expected the feed")
    };
    assert!(last.path().ends_with("/hops/0"), "{last}");

    let (e, line) = err(f
        .get(&url(&format!("{base}/busy")), &Validators::default())
        .await
        .unwrap_err());
    assert!(
        matches!(e, FetchError::Status { status: 503, retry_after: Some(d) } if d == Duration::from_secs(120)),
        "{line}"
    );
}

/// Without feeds.allow_private, neither an address in the URL nor a name that resolves to one
/// reaches this machine or its network; other schemes are refused outright.
#[tokio::test]
async fn loopback_and_private_addresses_are_refused() {
    let (base, seen) = server().await;
    let f = fetcher(false);
    let port = base.rsplit(':').next().unwrap();
    for u in [
        format!("http://127.0.0.1:{port}/rss"),
        format!("http://[::1]:{port}/rss"),
        format!("http://localhost:{port}/rss"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/feed".to_owned(),
    ] {
        let e = f.get(&url(&u), &Validators::default()).await.unwrap_err();
        let line = e.to_string();
        assert!(line.contains("feeds.allow_private"), "{u}: {line}");
    }
    let e = f
        .get(&url("file:///etc/passwd"), &Validators::default())
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::NotHttp(_)), "{e}");
    assert!(seen.lock().unwrap().is_empty(), "a request got through");
}

/// The `feeds` commands through the binary against a real Postgres: each format stored, the
/// same article from two feeds (and two campaigns) stored once, a broken feed's error kept
/// while the others are fetched, a second fetch adding nothing, a 304, and loopback refused
/// unless allowed.
#[sqlx::test]
async fn feeds_fill_the_article_store_once_and_keep_their_errors(pool: PgPool) {
    let (base, seen) = server().await;
    let d = Digestif::new(&pool).env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true");
    d.ok(&["feeds", "add", &format!("{base}/rss")]);
    d.ok(&[
        "feeds",
        "add",
        &format!("{base}/atom"),
        "--name",
        "Other blog",
    ]);
    d.ok(&["feeds", "add", &format!("{base}/broken")]);
    d.fails(
        &["feeds", "add", &format!("{base}/rss")],
        "is already listed",
    );
    d.fails(
        &["feeds", "add", "javascript:alert(1)"],
        "is not an http or https URL",
    );

    let run = d.run_async(&["feeds", "fetch"]).await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let out = run.stdout();
    assert!(
        out.contains("feed 1 ") && out.contains(": ok (2 new articles)"),
        "{run}"
    );
    assert!(out.contains(": ok (1 new article)"), "{out}");
    assert!(
        out.contains("feed 3 ") && out.contains("FAILED: not a feed"),
        "{out}"
    );
    assert!(run.stderr().contains("1 of 3 feeds failed"), "{run}");
    let urls: Vec<String> = sqlx::query_scalar("SELECT url FROM article ORDER BY url")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        urls,
        [
            "https://blog.example.com/indexes",
            "https://blog.example.com/vacuum",
            "https://other.example.org/wal"
        ]
    );

    // Nothing is due again for feeds.interval; the failed one waits out its backoff.
    let again = d.ok_async(&["feeds", "fetch"]).await.stdout();
    assert_eq!(again.trim(), "no feed is due");
    // Asked for by id: fetched now, and the server says nothing changed.
    let one = d.ok_async(&["feeds", "fetch", "1"]).await.stdout();
    assert!(one.contains(": not modified (0 new articles)"), "{one}");
    assert_eq!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .get(header::IF_NONE_MATCH)
            .unwrap(),
        "\"v1\""
    );

    let list = d.ok(&["feeds", "list", "--format", "json"]).stdout();
    let feeds: serde_json::Value = serde_json::from_str(&list).unwrap();
    // Fetched side by side, either feed may be first to bring the shared article.
    let taken = |i: usize| feeds[i]["entries_taken"].as_i64().unwrap();
    assert_eq!(taken(0) + taken(1), 3, "{feeds}");
    assert!(taken(0) >= 1 && taken(1) >= 1, "{feeds}");
    assert_eq!(feeds[1]["name"], "Other blog");
    assert!(
        feeds[2]["last_status"]
            .as_str()
            .unwrap()
            .starts_with("not a feed"),
        "{feeds}"
    );
    assert_eq!(feeds[2]["failures"], 1);

    // The same feed without feeds.allow_private: refused before any request.
    let before = seen.lock().unwrap().len();
    let refused = Digestif::new(&pool)
        .run_async(&["feeds", "fetch", "1"])
        .await;
    assert_eq!(refused.output.status.code(), Some(1), "{refused}");
    assert!(
        refused.stdout().contains("feeds.allow_private"),
        "{refused}"
    );
    assert_eq!(seen.lock().unwrap().len(), before);

    // doctor names the broken feed and its error, as a note: the issue still goes out.
    let web = crate::web::App::start(&pool, "").await;
    let doctor = Digestif::new(&pool)
        .links_to(&web)
        .run_async(&["doctor"])
        .await;
    assert!(doctor.output.status.success(), "{doctor}");
    assert!(
        doctor.stdout().contains("note  feeds: feed 3 (")
            && doctor
                .stdout()
                .contains("failed 1 time in a row: not a feed"),
        "{doctor}"
    );

    d.ok(&["feeds", "remove", "3"]);
    d.fails(&["feeds", "remove", "3"], "no feed 3");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM article")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 3, "removing a feed keeps its articles");
}

/// `digestif run` with a due feed: the feed is fetched first, and the issue composed right
/// after holds its new entries.
#[sqlx::test]
async fn run_fetches_due_feeds_before_it_composes(pool: PgPool) {
    let (base, _) = server().await;
    crate::helpers::seed(&pool, 1).await;
    let outbox = tempfile::tempdir().unwrap();
    let d = Digestif::new(&pool)
        .env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true")
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap());
    d.ok(&["feeds", "add", &format!("{base}/atom")]);
    let run = d.ok_async(&["run"]).await;
    assert!(run.stdout().contains("issue #1"), "{run}");
    let titles: Vec<String> = sqlx::query_scalar(
        "SELECT i.title FROM issue_item i JOIN issue USING (issue_id) \
         WHERE i.kind = 'article' ORDER BY i.title",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        titles.iter().any(|t| t == "The WAL") && titles.iter().any(|t| t == "Indexes, again"),
        "{titles:?}\n{run}"
    );
    let mail = std::fs::read_dir(outbox.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .next()
        .unwrap();
    assert!(
        mail.contains("The WAL"),
        "the sent issue lists the fetched article"
    );
}

/// Feeds kept in the config file: listed, named as the file says (the file wins over the
/// table), gone when taken out of the file, and not removable by command (they would come back).
#[sqlx::test]
async fn feeds_in_the_config_file_follow_the_file(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("digestif.toml");
    let write = |toml: &str| std::fs::write(&config, toml).unwrap();
    let d = Digestif::new(&pool);
    let cfg = config.to_str().unwrap().to_owned();
    d.ok(&["feeds", "add", "https://mine.example.com/feed.xml"]);
    write(
        "[[feeds.sources]]\nurl = \"https://a.example.com/rss\"\nname = \"A\"\n\
         [[feeds.sources]]\nurl = \"https://b.example.com/atom\"\ntags = [\"pg\"]\n",
    );
    let list = d
        .ok(&["--config", &cfg, "feeds", "list", "--format", "json"])
        .stdout();
    let feeds: serde_json::Value = serde_json::from_str(&list).unwrap();
    let urls: Vec<&str> = feeds
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "https://mine.example.com/feed.xml",
            "https://a.example.com/rss",
            "https://b.example.com/atom"
        ]
    );
    assert_eq!(feeds[1]["name"], "A");
    assert_eq!(feeds[2]["tags"], serde_json::json!(["pg"]));
    d.fails(
        &["--config", &cfg, "feeds", "remove", "2"],
        "is listed in the config file",
    );
    // Syncing an unchanged file writes nothing (serve syncs at every pass).
    let version = || async {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM feed WHERE feed_id = 2")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = version().await;
    d.ok(&["--config", &cfg, "feeds", "list"]);
    assert_eq!(version().await, before, "an unchanged feed was rewritten");

    // Out of the file, out of the table; the feed added by command stays.
    write("[[feeds.sources]]\nurl = \"https://b.example.com/atom\"\nname = \"B\"\n");
    let list = d
        .ok(&["--config", &cfg, "feeds", "list", "--format", "csv"])
        .stdout();
    assert!(!list.contains("a.example.com"), "{list}");
    assert!(
        list.contains("mine.example.com") && list.contains(",B,"),
        "{list}"
    );

    write("[[feeds.sources]]\nurl = \"ftp://c.example.com/\"\n");
    Digestif::new(&pool).config_fails(
        &["--config", &cfg, "feeds", "list"],
        "config: feeds.sources: 'ftp://c.example.com/' is not an http or https URL",
    );
}

/// One feed with five posts, for the per-feed selection.
const SELECTIVE: &str = r#"{"version": "https://jsonfeed.org/version/1.1", "title": "Mixed",
 "items": [
  {"id": "m1", "url": "https://mixed.example.com/1", "title": "Rust and Postgres",
   "date_published": "2026-11-27T10:00:00Z"},
  {"id": "m2", "url": "https://mixed.example.com/2", "title": "Trust your planner",
   "content_html": "<p>Postgres <b>plans</b></p>", "date_published": "2026-11-27T11:00:00Z"},
  {"id": "m3", "url": "https://mixed.example.com/3", "title": "We are hiring: Rust",
   "date_published": "2026-11-27T12:00:00Z"},
  {"id": "m4", "url": "https://mixed.example.com/4", "title": "Learning C++ in 2026",
   "date_published": "2026-11-27T13:00:00Z"},
  {"id": "m5", "url": "https://mixed.example.com/5", "title": "Cooking pasta",
   "date_published": "2026-11-27T14:00:00Z"}
 ]}"#;

/// A feed written by an attacker: markup, a script and `javascript:` links in every field.
const HOSTILE: &str = r#"{"version": "https://jsonfeed.org/version/1.1", "title": "Evil",
 "items": [
  {"id": "h1", "url": "https://evil.example.com/post?x=\"><script>alert(0)</script>",
   "title": "<script>alert(1)</script>Tags &lt;script&gt;alert(2)&lt;/script&gt; here",
   "content_html": "<p>Hi <a href=\"javascript:alert(3)\">click</a><script>alert(4)</script> <img src=x onerror=alert(5)> &lt;iframe src=javascript:alert(6)&gt;</p>",
   "authors": [{"name": "<b onmouseover=alert(7)>Mallory</b>"}],
   "date_published": "2026-11-28T10:00:00Z"},
  {"id": "h2", "url": "javascript:alert(8)", "title": "A link that runs code",
   "date_published": "2026-11-28T11:00:00Z"}
 ]}"#;

/// What a feed left out is told to the operator's terminal, quoting the entry's title: the
/// title's control characters (an escape sequence that retitles the terminal or clears it, a
/// CR that hides the start of the line) come out escaped, each entry on its one line.
#[test]
fn a_left_out_entrys_title_cannot_carry_escape_sequences() {
    let feed = br#"{"version": "https://jsonfeed.org/version/1.1", "title": "Evil", "items": [
      {"id": "e1", "title": "\u001b]0;owned\u0007\u001b[2JNo link"},
      {"id": "e2", "url": "javascript:x", "title": "Bad\rlink\u009b31m"}]}"#;
    let base = url("https://evil.example.com/feed.json");
    let read = entry::read(feed, &base, chrono::Utc::now(), 300).unwrap();
    assert_eq!(read.skipped.len(), 2, "{:?}", read.skipped);
    for s in &read.skipped {
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
    assert!(
        read.skipped[0].contains(r"\u{1b}]0;owned"),
        "{:?}",
        read.skipped
    );
}

/// A server for one JSON Feed document.
async fn json_feed(body: &'static str) -> String {
    let app = Router::new().route(
        "/feed.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/feed+json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/feed.json")
}

/// The article titles the issue of `run` holds, in its order.
async fn issue_titles(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT title FROM issue_item WHERE kind = 'article' ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Per-feed `max_per_issue` and keywords decide what an issue takes from a feed, as whole
/// words ("rust" is not in "trust", "c++" means itself); articles added by hand are not
/// filtered; a changed selection applies to the next composition.
#[sqlx::test]
async fn a_feeds_limit_and_keywords_choose_what_an_issue_takes(pool: PgPool) {
    let feed = json_feed(SELECTIVE).await;
    crate::helpers::seed(&pool, 1).await;
    let d = Digestif::new(&pool)
        .env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true")
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING);
    d.ok(&[
        "feeds",
        "add",
        &feed,
        "--include",
        "rust",
        "--include",
        "C++",
        "--exclude",
        "HIRING",
    ]);
    d.ok(&[
        "articles",
        "add",
        "--title",
        "Cooking by hand",
        "--url",
        "https://hand.example.com/1",
        "--published-at",
        "2026-11-27",
    ]);
    let list = d.ok(&["feeds", "list"]).stdout();
    assert!(list.contains("+rust +C++ -HIRING"), "{list}");
    d.ok_async(&["feeds", "fetch"]).await;
    let preview = d.ok(&["issue", "preview", "--format", "json"]).stdout();
    let preview: serde_json::Value = serde_json::from_str(&preview).unwrap();
    let titles: Vec<&str> = preview["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{preview}"))
        .iter()
        .filter(|i| i["kind"] == "article")
        .map(|a| a["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "Learning C++ in 2026",
            "Rust and Postgres",
            "Cooking by hand"
        ]
    );

    // Now the newest one only, any subject.
    d.ok(&[
        "feeds",
        "edit",
        "1",
        "--no-keywords",
        "--max-per-issue",
        "1",
    ]);
    d.fails(
        &["feeds", "edit", "1", "--max-per-issue", "101"],
        "above 100",
    );
    d.fails(&["feeds", "edit", "9", "--max-per-issue", "1"], "no feed 9");
    d.fails(
        &["feeds", "edit", "1", "--include", " "],
        "empty include keyword",
    );
    let run = d.ok_async(&["run"]).await;
    assert_eq!(
        issue_titles(&pool).await,
        ["Cooking pasta", "Cooking by hand"],
        "{run}"
    );
}

/// The selection in the config file is the file's: synced, shown, and not editable by command.
#[sqlx::test]
async fn a_config_feeds_selection_comes_from_the_file(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("digestif.toml");
    let cfg = config.to_str().unwrap().to_owned();
    std::fs::write(
        &config,
        "[[feeds.sources]]\nurl = \"https://a.example.com/rss\"\nmax_per_issue = 2\n\
         include = [\"postgres\"]\nexclude = [\"ads\"]\n",
    )
    .unwrap();
    let d = Digestif::new(&pool);
    let list = d
        .ok(&["--config", &cfg, "feeds", "list", "--format", "json"])
        .stdout();
    let feeds: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(feeds[0]["max_per_issue"], 2, "{feeds}");
    assert_eq!(feeds[0]["include"], serde_json::json!(["postgres"]));
    assert_eq!(feeds[0]["exclude"], serde_json::json!(["ads"]));
    d.fails(
        &[
            "--config",
            &cfg,
            "feeds",
            "edit",
            "1",
            "--max-per-issue",
            "3",
        ],
        "change it there",
    );
    std::fs::write(
        &config,
        "[[feeds.sources]]\nurl = \"https://a.example.com/rss\"\nmax_per_issue = 200\n",
    )
    .unwrap();
    Digestif::new(&pool).config_fails(
        &["--config", &cfg, "feeds", "list"],
        "config: feeds.sources: https://a.example.com/rss: max_per_issue 200 is above 100",
    );
}

/// Feed text is data: whatever markup a feed carries, no output shows it as markup — the
/// HTML and text parts of the mail, the web view, the archive and the Atom feed.
#[sqlx::test]
async fn hostile_feed_text_never_reaches_any_output_as_markup(pool: PgPool) {
    let feed = json_feed(HOSTILE).await;
    crate::helpers::seed(&pool, 1).await;
    // No tip: the hostile title leads the issue, so it is the subject the archive and the
    // Atom feed show too.
    sqlx::query("DELETE FROM tip").execute(&pool).await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let d = Digestif::new(&pool)
        .env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true")
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING)
        .env("DIGESTIF_DELIVERY__OUTBOX", outbox.path().to_str().unwrap());
    d.ok(&["feeds", "add", &feed]);
    let fetch = d.ok_async(&["feeds", "fetch"]).await;
    assert!(
        fetch
            .stderr()
            .contains("'A link that runs code': its link is not an http(s) URL"),
        "the entry with a javascript: link is left out, and said so: {fetch}"
    );
    let run = d.ok_async(&["run"]).await;
    assert!(run.stdout().contains("issue #1"), "{run}");
    assert_eq!(issue_titles(&pool).await.len(), 1, "{run}");

    let raw = std::fs::read(
        std::fs::read_dir(outbox.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let mail = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let web = crate::web::App::start(&pool, "").await;
    let outputs = [
        (
            "the mail's HTML part",
            mail.body_html(0).unwrap().into_owned(),
        ),
        (
            "the web view",
            web.request("GET", "/issues/1", None).await.body,
        ),
        (
            "the archive",
            web.request("GET", "/issues", None).await.body,
        ),
        (
            "the Atom feed",
            web.request("GET", "/feed.xml", None).await.body,
        ),
    ];
    for (what, out) in &outputs {
        let lower = out.to_lowercase();
        for markup in [
            "<script",
            "<img",
            "<iframe",
            "<b ",
            "onerror=",
            "onmouseover=",
            "href=\"javascript:",
        ] {
            assert!(!lower.contains(markup), "{what} holds {markup}:\n{out}");
        }
        assert!(out.contains("Tags"), "{what} lacks the title:\n{out}");
    }
    // The text part is plain text: the title and summary are words, no link runs code.
    let text = mail.body_text(0).unwrap();
    assert!(text.contains("Tags"), "{text}");
    assert!(!text.contains("javascript:alert(3)"), "{text}");
    assert!(!text.contains("A link that runs code"), "{text}");
}

/// Characters a URL's path may hold, in an order nothing compresses.
fn incompressible(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// CJK characters (3 bytes each in UTF-8) in an order nothing compresses.
fn incompressible_cjk(n: usize) -> String {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_u32(0x4e00 + (x % 0x5000) as u32).unwrap_or('東')
        })
        .collect()
}

/// A feed's entry ids and links are the publisher's to choose: an id of 1,001 characters or
/// one with a NUL in it, and a link of 3,000 characters that no index can hold, each made the
/// whole fetch fail with a database error, storing none of the feed's good entries, recording
/// no error and no backoff, so `serve` fetched it again at every pass.
#[sqlx::test]
async fn hostile_entry_ids_and_links_cost_only_themselves(pool: PgPool) {
    let body = format!(
        r#"{{"version": "https://jsonfeed.org/version/1.1", "title": "H", "items": [
        {{"id": "{long_id}", "url": "https://h.example.com/long-id", "title": "Long id",
          "date_published": "2026-11-23T10:00:00Z"}},
        {{"id": "{wide_id}", "url": "https://h.example.com/wide-id", "title": "Wide id",
          "date_published": "2026-11-23T10:00:00Z"}},
        {{"id": "nul\u0000id", "url": "https://h.example.com/nul-id", "title": "Nul id",
          "date_published": "2026-11-23T10:00:00Z"}},
        {{"id": "long-url", "url": "https://h.example.com/{long_path}", "title": "Long link",
          "date_published": "2026-11-23T10:00:00Z"}},
        {{"id": "wide", "url": "https://h.example.com/{wide_path}", "title": "Wide link",
          "date_published": "2026-11-23T10:00:00Z"}},
        {{"id": "fine", "url": "https://h.example.com/fine", "title": "Fine",
          "date_published": "2026-11-23T10:00:00Z"}}]}}"#,
        long_id = "x".repeat(1001),
        // 950 characters but 2,850 bytes, in an order nothing compresses.
        wide_id = incompressible_cjk(950),
        long_path = incompressible(3000),
        // 1,000 characters, 9,000 bytes once percent-encoded as stored.
        wide_path = "東".repeat(1000),
    );
    let url = json_feed(Box::leak(body.into_boxed_str())).await;
    let d = Digestif::new(&pool).env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true");
    d.ok(&["feeds", "add", &url]);
    let first = d.ok_async(&["feeds", "fetch"]).await;
    assert!(first.stdout().contains(": ok (4 new articles)"), "{first}");
    for title in ["Long link", "Wide link"] {
        assert!(
            first.stderr().contains(&format!("left out '{title}'")),
            "the skipped entry is named: {first}"
        );
    }
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM article ORDER BY title")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(titles, ["Fine", "Long id", "Nul id", "Wide id"]);
    // The same entries fetched again are the same articles.
    let again = d.ok_async(&["feeds", "fetch", "1"]).await.stdout();
    assert!(again.contains(": ok (0 new articles)"), "{again}");
}

/// A feed whose entries the database refuses (here a trigger stands for any such refusal) is
/// one failed feed: recorded with its error and backoff, while the others are stored.
#[sqlx::test]
async fn a_feed_the_database_refuses_fails_alone_and_backs_off(pool: PgPool) {
    let (base, _) = server().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_vacuum() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.title = 'Vacuum' THEN RAISE EXCEPTION 'refused for the test'; END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER refuse_vacuum BEFORE INSERT ON article \
           FOR EACH ROW EXECUTE FUNCTION refuse_vacuum();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let d = Digestif::new(&pool).env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true");
    d.ok(&["feeds", "add", &format!("{base}/rss")]);
    d.ok(&["feeds", "add", &format!("{base}/atom")]);
    let run = d.run_async(&["feeds", "fetch"]).await;
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    let out = run.stdout();
    assert!(
        out.contains("feed 1 ") && out.contains("FAILED: ") && out.contains("refused for the test"),
        "{run}"
    );
    assert!(
        out.contains("feed 2 ") && out.contains(": ok (2 new articles)"),
        "{run}"
    );
    let (failures, backing_off): (i32, bool) = sqlx::query_as(
        "SELECT failures, next_fetch_at > now() + interval '1 minute' FROM feed WHERE feed_id = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((failures, backing_off), (1, true));
}

/// This machine's clock an hour behind the database's (a host whose NTP has failed): a failing
/// feed's backoff (30 minutes) was written as a time on this clock, already past on the
/// database's, so `serve` fetched the feed again at every pass. Waits are now added to the
/// database's clock.
#[sqlx::test]
async fn a_feeds_backoff_is_counted_on_the_databases_clock(pool: PgPool) {
    if !crate::helpers::faketime_installed() {
        return;
    }
    let (base, _) = server().await;
    let d = Digestif::new(&pool).env("DIGESTIF_FEEDS__ALLOW_PRIVATE", "true");
    d.ok(&["feeds", "add", &format!("{base}/broken")]);
    // Awaited, not blocked on: the feed server runs on this test's runtime.
    let mut fetch = tokio::process::Command::from(
        d.command_under(&["faketime", "-f", "-1h"], &["feeds", "fetch"]),
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        fetch.env("FAKETIME_DONT_FAKE_MONOTONIC", "1").output(),
    )
    .await
    .expect("feeds fetch under faketime ends")
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("FAILED: not a feed"), "{said}");
    let wait: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM next_fetch_at - now())::float8 FROM feed")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(wait > 20.0 * 60.0, "due again in {wait} s");
}
