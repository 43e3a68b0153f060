//! Composing and rendering an issue: content selection against a real database, and the
//! message checked with a real MIME parser (mail-parser).

use digestif::config::Settings;
use digestif::digest;
use digestif::domain::{TokenKey, TokenKeys};
use digestif::render::{self, IssueContent, Item, ItemKind, Recipient};
use digestif::store::issues;
use mail_parser::MessageParser;
use sqlx::PgPool;

use crate::helpers::{Digestif, arg, at};

fn settings(extra: &str) -> Settings {
    let base = "[newsletter]\n\
        base_url = \"https://news.example.com\"\n\
        reply_to = \"The Editor <editor@example.com>\"\n\
        postal_address = \"Backend Tips, 1 Example Street, 12345 Example City\"\n";
    Settings::from_toml(&format!("{base}{extra}")).expect("test settings")
}

async fn tip(pool: &PgPool, title: &str, body: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO tip (title, body) VALUES ($1, $2) RETURNING tip_id")
        .bind(title)
        .bind(body)
        .fetch_one(pool)
        .await
        .expect("insert tip")
}

async fn article(pool: &PgPool, title: &str, url: &str, published: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO article (title, url, summary, author, published_at) \
         VALUES ($1, $2, 'A summary.', 'Ann Author', $3) RETURNING article_id",
    )
    .bind(title)
    .bind(url)
    .bind(at(published))
    .fetch_one(pool)
    .await
    .expect("insert article")
}

/// Creates the issue for `slot` and returns its content and titles in order.
async fn compose(pool: &PgPool, s: &Settings, slot: &str) -> Option<IssueContent> {
    let row = digest::create_issue(pool, s, at(slot))
        .await
        .expect("create issue");
    digest::stored_content(pool, &row)
        .await
        .expect("load issue")
}

fn titles(c: &IssueContent) -> Vec<&str> {
    c.items.iter().map(|i| i.title.as_str()).collect()
}

fn keys() -> TokenKeys {
    TokenKeys::new(TokenKey::new(&[42u8; 32]).expect("key"), vec![])
}

fn eve() -> Recipient {
    Recipient {
        subscriber_id: 7,
        email: "eve@example.org".into(),
        name: Some("Eve Example".into()),
    }
}

fn raw_message(s: &Settings, content: &IssueContent, r: &Recipient) -> Vec<u8> {
    render::render_issue(
        &s.newsletter,
        &keys(),
        s.schedule.cron.zone(),
        content,
        &s.bounces.address,
    )
    .expect("render")
    .message(r)
    .expect("message")
    .formatted()
}

fn header_count(raw: &str, name: &str) -> usize {
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

#[sqlx::test]
async fn the_message_has_every_header_and_text_before_html(pool: PgPool) {
    let s = settings("");
    tip(&pool, "Lead tip", "Body one.").await;
    article(
        &pool,
        "An article",
        "https://example.com/a",
        "2026-11-20T10:00:00Z",
    )
    .await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let raw = raw_message(&s, &content, &eve());
    let text = String::from_utf8(raw.clone()).expect("utf-8 message");
    let msg = MessageParser::default()
        .parse(&raw)
        .expect("parses as MIME");

    let from = msg.from().and_then(|a| a.first()).expect("From");
    assert_eq!(
        (from.name(), from.address()),
        (Some("Backend Tips"), Some("tips@example.com"))
    );
    let reply = msg.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!(reply.address(), Some("editor@example.com"));
    let to = msg.to().and_then(|a| a.first()).expect("To");
    assert_eq!(
        (to.name(), to.address()),
        (Some("Eve Example"), Some("eve@example.org"))
    );
    assert_eq!(msg.subject(), Some("Backend Tips #1: Lead tip"));
    assert!(msg.date().is_some(), "Date");
    // issue 1, subscriber 7, and a MAC only our key makes: deterministic, not guessable.
    let id = msg.message_id().expect("Message-ID");
    let (local, domain) = id.split_once('@').expect("local@domain");
    assert_eq!(domain, "example.com");
    assert!(local.starts_with("issue1.s7.") && local.len() == 34, "{id}");
    assert_eq!(keys().verify_message_id(local), Some((1, 7)));
    for (name, want) in [
        ("List-Id", "\"Backend Tips\" <backend-tips.example.com>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("MIME-Version", "1.0"),
    ] {
        let got = msg.header_raw(name).map(str::trim);
        assert_eq!(got, Some(want), "{name}");
    }
    let unsub_url = format!(
        "https://news.example.com/unsubscribe/{}",
        keys().sign(digestif::domain::Purpose::Unsubscribe, 7)
    );
    let list_unsub: String = msg
        .header_raw("List-Unsubscribe")
        .expect("List-Unsubscribe")
        .split_whitespace()
        .collect();
    assert_eq!(
        list_unsub,
        format!(
            "<{unsub_url}>,<mailto:bounces+{}@example.com?subject=unsubscribe>",
            keys().sign_unsubscribe_mail(7)
        ),
        "the mailto goes to the bounce pipe, not to the From address people reply to"
    );
    for name in [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Id",
        "List-Unsubscribe",
        "Reply-To",
    ] {
        assert_eq!(header_count(&text, name), 1, "{name} once");
    }

    assert!(
        text.contains("Content-Type: multipart/alternative"),
        "{text}"
    );
    let plain = text.find("Content-Type: text/plain").expect("text part");
    let html = text.find("Content-Type: text/html").expect("html part");
    assert!(plain < html, "text/plain must come first");

    let body_text = msg.body_text(0).expect("text body");
    let body_html = msg.body_html(0).expect("html body");
    for body in [&body_text, &body_html] {
        assert!(body.contains(&unsub_url), "unsubscribe link missing");
        assert!(
            body.contains("1 Example Street, 12345 Example City"),
            "postal address missing"
        );
    }
    assert!(
        body_html.contains("https://news.example.com/issues/1"),
        "view in browser link"
    );
}

#[sqlx::test]
async fn no_line_exceeds_998_octets_even_with_the_longest_url(pool: PgPool) {
    let s = settings("");
    tip(&pool, "Tip", "Body.").await;
    // 2,048 characters, the most a link may have.
    let long = format!("https://example.com/{}", "a".repeat(2048 - 20));
    article(&pool, "Long link", &long, "2026-11-20T10:00:00Z").await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let raw = raw_message(&s, &content, &eve());
    for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
        assert!(
            line.len() <= 998 + 1,
            "line {} is {} octets",
            i + 1,
            line.len()
        );
    }
    let msg = MessageParser::default().parse(&raw).expect("parses");
    assert!(
        msg.body_html(0).expect("html").contains(&long),
        "URL must survive intact"
    );
    assert!(
        msg.body_text(0).expect("text").contains(&long),
        "URL must survive intact"
    );
}

/// A newsletter name with accents or quotes: List-Id's phrase is one encoded word or one
/// quoted string (RFC 2047 forbids encoded words inside quotes, and lettre would encode the
/// accented word alone, inside them), so clients read the name and the list's id.
#[sqlx::test]
async fn a_non_ascii_or_quoted_newsletter_name_makes_a_well_formed_list_id(pool: PgPool) {
    tip(&pool, "Tip", "Body.").await;
    for (name, want) in [
        ("Le Café", "=?utf-8?b?TGUgQ2Fmw6k=?= <tips.example.com>"),
        (
            "Café Weekly",
            "=?utf-8?b?Q2Fmw6kgV2Vla2x5?= <tips.example.com>",
        ),
        (
            "The \\\"Backend\\\" Tips",
            "\"The \\\"Backend\\\" Tips\" <tips.example.com>",
        ),
    ] {
        let s = settings(&format!(
            "name = \"{name}\"\nlist_id = \"tips.example.com\"\n"
        ));
        let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
            .await
            .expect("an issue");
        let raw = raw_message(&s, &content, &eve());
        let msg = MessageParser::default().parse(&raw).expect("parses");
        assert_eq!(
            msg.header_raw("List-Id").map(str::trim),
            Some(want),
            "{name}"
        );
    }
}

/// lettre writes an all-ASCII word of a header as it is, so a title holding an encoded word
/// (a feed's, say) went out raw, and every mail client decoded it: the subject a reader saw
/// was not the title, and could hold what titles refuse (control characters, line breaks).
#[sqlx::test]
async fn a_title_that_looks_like_an_encoded_word_is_shown_as_written(pool: PgPool) {
    let s = settings("");
    // "=?utf-8?b?...?=" decodes to "Your account is locked\r\n".
    let title = "Read =?utf-8?b?WW91ciBhY2NvdW50IGlzIGxvY2tlZA0K?= today";
    tip(&pool, title, "Body.").await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let raw = raw_message(&s, &content, &eve());
    let msg = MessageParser::default().parse(&raw).expect("parses");
    assert_eq!(
        msg.subject(),
        Some(format!("Backend Tips #1: {title}").as_str())
    );
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(header_count(&text, "Subject"), 1, "{text}");
}

/// A feed entry without a title takes its URL as title (up to 2,048 characters, no space), and
/// a tip's source URL is shown whole: with nothing letting such a word break, it stretched the
/// 600 px card and phones scrolled the message sideways. Every place one can appear may break
/// it anywhere.
#[sqlx::test]
async fn a_long_unbroken_title_or_url_may_break_anywhere(pool: PgPool) {
    let s = settings("");
    let long = format!("https://blog.example.com/{}", "a".repeat(150));
    article(&pool, &long, &long, "2026-11-29T10:00:00Z").await;
    tip(&pool, &long, "Body.").await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let raw = raw_message(&s, &content, &eve());
    let msg = MessageParser::default().parse(&raw).expect("parses");
    let html = msg.body_html(0).expect("html").into_owned();
    for class in ["tip-title", "article-title"] {
        let tag = html
            .split(&format!("class=\"{class}\""))
            .nth(1)
            .and_then(|rest| rest.split('>').next())
            .unwrap_or_else(|| panic!("no {class} in {html}"));
        assert!(tag.contains("overflow-wrap: anywhere"), "{class}: {tag}");
    }
}

#[sqlx::test]
async fn hostile_titles_and_names_cannot_add_headers(pool: PgPool) {
    let s = settings("");
    // Stored directly, as if an old version or a hand-edited row let them in.
    tip(&pool, "Hello\r\nBcc: x@evil.example", "Body.").await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let r = Recipient {
        subscriber_id: 8,
        email: "eve@example.org".into(),
        name: Some("Eve\nBcc: y@evil.example".into()),
    };
    let raw = raw_message(&s, &content, &r);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(header_count(&text, "Subject"), 1, "{text}");
    assert_eq!(header_count(&text, "Bcc"), 0, "{text}");
    assert_eq!(header_count(&text, "To"), 1, "{text}");
    let msg = MessageParser::default().parse(&raw).expect("parses");
    assert!(msg.bcc().is_none());
    let to = msg.to().and_then(|a| a.first()).expect("To");
    assert_eq!(to.address(), Some("eve@example.org"));
}

#[sqlx::test]
async fn markup_in_titles_bodies_and_names_is_escaped_in_html_and_plain_in_text(pool: PgPool) {
    let s = settings("");
    let evil = "\"><img src=x onerror=alert(1)>";
    tip(
        &pool,
        &format!("<script>alert(1)</script> {evil}"),
        &format!("Body <script>alert(2)</script> {evil}"),
    )
    .await;
    article(
        &pool,
        &format!("Art {evil}"),
        "https://example.com/x",
        "2026-11-20T10:00:00Z",
    )
    .await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let r = Recipient {
        subscriber_id: 9,
        email: "m@example.org".into(),
        name: Some(format!("Mallory {evil}")),
    };
    let raw = raw_message(&s, &content, &r);
    let msg = MessageParser::default().parse(&raw).expect("parses");
    let html = msg.body_html(0).expect("html");
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("onerror=alert(1)>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    let text = msg.body_text(0).expect("text");
    assert!(
        text.contains("<script>alert(1)</script>"),
        "plain text keeps the characters: {text}"
    );
    assert!(text.contains(&format!("Hi Mallory {evil},")), "{text}");
    assert!(
        !text.contains("&lt;"),
        "no HTML entities in the text part: {text}"
    );
}

#[sqlx::test]
async fn lines_with_a_lone_dot_survive(pool: PgPool) {
    let s = settings("");
    tip(
        &pool,
        "Dots",
        "First paragraph.\n\n.\n\nSecond\n.\nline and ..\n\n..",
    )
    .await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let raw = raw_message(&s, &content, &eve());
    let msg = MessageParser::default().parse(&raw).expect("parses");
    let text = msg.body_text(0).expect("text");
    assert!(text.lines().any(|l| l == "."), "{text}");
    assert!(text.lines().any(|l| l == ".."), "{text}");
}

#[sqlx::test]
async fn tips_rotate_never_sent_first_then_least_recently_sent(pool: PgPool) {
    let s = settings("[content]\ntips_per_issue = 2\n");
    let names = ["A", "B", "C", "D", "E"];
    for n in names {
        tip(&pool, n, "Body.").await;
    }
    let mut seen = Vec::new();
    for slot in [
        "2026-11-02T08:00:00Z",
        "2026-11-09T08:00:00Z",
        "2026-11-16T08:00:00Z",
        "2026-11-23T08:00:00Z",
    ] {
        let c = compose(&pool, &s, slot).await.expect("issue");
        seen.push(titles(&c).join(""));
    }
    // Never-sent first in id order; then A (sent longest ago) and B…
    assert_eq!(seen, ["AB", "CD", "EA", "BC"]);
}

#[sqlx::test]
async fn retired_tips_are_never_picked(pool: PgPool) {
    let s = settings("[content]\ntips_per_issue = 3\n");
    let a = tip(&pool, "A", "Body.").await;
    tip(&pool, "B", "Body.").await;
    sqlx::query("UPDATE tip SET active = false WHERE tip_id = $1")
        .bind(a)
        .execute(&pool)
        .await
        .unwrap();
    article(
        &pool,
        "News",
        "https://example.com/n",
        "2026-11-20T10:00:00Z",
    )
    .await;
    let c = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&c), ["B", "News"]);
}

#[sqlx::test]
async fn articles_are_bounded_by_the_slot_capped_and_never_sent_twice(pool: PgPool) {
    let s = settings("[content]\nmax_articles = 3\n");
    tip(&pool, "T", "Body.").await;
    article(
        &pool,
        "old",
        "https://example.com/1",
        "2026-11-01T00:00:00Z",
    )
    .await;
    article(
        &pool,
        "at-prev-slot",
        "https://example.com/2",
        "2026-11-02T08:00:00Z",
    )
    .await;
    let first = compose(&pool, &s, "2026-11-02T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&first), ["T", "at-prev-slot", "old"]);
    article(
        &pool,
        "early",
        "https://example.com/3",
        "2026-11-03T00:00:00Z",
    )
    .await;
    article(
        &pool,
        "mid",
        "https://example.com/4",
        "2026-11-05T00:00:00Z",
    )
    .await;
    article(
        &pool,
        "newest",
        "https://example.com/5",
        "2026-11-08T00:00:00Z",
    )
    .await;
    article(
        &pool,
        "at-slot",
        "https://example.com/6",
        "2026-11-09T08:00:00Z",
    )
    .await;
    article(
        &pool,
        "future",
        "https://example.com/7",
        "2026-11-10T00:00:00Z",
    )
    .await;
    let second = compose(&pool, &s, "2026-11-09T08:00:00Z")
        .await
        .expect("issue");
    // Up to this slot (inclusive), newest first, capped at 3; nothing the first issue had.
    assert_eq!(titles(&second), ["T", "at-slot", "newest", "mid"]);
}

#[sqlx::test]
async fn an_article_that_arrives_after_its_issue_was_made_goes_in_the_next_one(pool: PgPool) {
    let s = settings("[content]\nmax_articles = 2\n");
    tip(&pool, "T", "Body.").await;
    article(
        &pool,
        "dropped",
        "https://example.com/1",
        "2026-10-31T00:00:00Z",
    )
    .await;
    article(&pool, "a2", "https://example.com/2", "2026-11-01T00:00:00Z").await;
    article(&pool, "a3", "https://example.com/3", "2026-11-01T12:00:00Z").await;
    let first = compose(&pool, &s, "2026-11-02T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&first), ["T", "a3", "a2"]);
    // A feed fetched after the issue was made brings a post dated before its slot, and a new
    // feed brings last month's archive.
    article(
        &pool,
        "late",
        "https://example.com/4",
        "2026-11-02T07:00:00Z",
    )
    .await;
    article(
        &pool,
        "archive",
        "https://example.com/5",
        "2026-10-01T00:00:00Z",
    )
    .await;
    article(
        &pool,
        "new",
        "https://example.com/6",
        "2026-11-05T00:00:00Z",
    )
    .await;
    let second = compose(&pool, &s, "2026-11-09T08:00:00Z")
        .await
        .expect("issue");
    // The late post goes out once, in the next issue; what the first issue weighed and left
    // out ("dropped", over max_articles) is not carried, and an archive is not mailed.
    assert_eq!(titles(&second), ["T", "new", "late"]);
    article(
        &pool,
        "newer",
        "https://example.com/7",
        "2026-11-10T00:00:00Z",
    )
    .await;
    // `articles list` tells the operator where each one went.
    let listed = Digestif::new(&pool)
        .ok(&["articles", "list", "--format", "json"])
        .stdout();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let fate = |title: &str| {
        let a = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["title"] == title)
            .unwrap_or_else(|| panic!("{title} not listed"));
        (a["sent_in"].clone(), a["considered_by"].clone())
    };
    use serde_json::json;
    assert_eq!(fate("late"), (json!(2), json!(2)));
    assert_eq!(fate("dropped"), (json!(null), json!(1)));
    assert_eq!(fate("archive"), (json!(null), json!(null)));
    assert_eq!(fate("newer"), (json!(null), json!(null)));
    let table = Digestif::new(&pool).ok(&["articles", "list"]).stdout();
    let line = |title: &str| {
        table
            .lines()
            .find(|l| l.contains(title))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("late").contains("#2"), "{table}");
    assert!(line("dropped").contains("left out of #1"), "{table}");
    let third = compose(&pool, &s, "2026-11-16T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&third), ["T", "newer"], "nothing goes out twice");
}

/// Weekdays only: Friday's issue, then Monday's, then Tuesday's. A post dated Saturday that a
/// feed brings after Monday's issue was made goes in Tuesday's, however short the gap to it.
#[sqlx::test]
async fn a_late_post_goes_out_whatever_the_gap_to_the_next_slot(pool: PgPool) {
    let s = settings("");
    tip(&pool, "T", "Body.").await;
    for slot in ["2026-11-27T08:00:00Z", "2026-11-30T08:00:00Z"] {
        compose(&pool, &s, slot).await.expect("issue");
    }
    article(
        &pool,
        "saturday",
        "https://example.com/1",
        "2026-11-28T14:00:00Z",
    )
    .await;
    let tuesday = compose(&pool, &s, "2026-12-01T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&tuesday), ["T", "saturday"]);
}

/// An issue made by a binary from before migration 19 (still running on another host during
/// an upgrade) records nothing it considered; what it sent must still never go out again.
#[sqlx::test]
async fn an_article_sent_in_an_issue_never_goes_out_again_even_unrecorded(pool: PgPool) {
    let s = settings("");
    tip(&pool, "T", "Body.").await;
    article(
        &pool,
        "sent",
        "https://example.com/1",
        "2026-11-01T12:00:00Z",
    )
    .await;
    let first = compose(&pool, &s, "2026-11-02T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&first), ["T", "sent"]);
    sqlx::query("DELETE FROM article_considered")
        .execute(&pool)
        .await
        .unwrap();
    let second = compose(&pool, &s, "2026-11-09T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&second), ["T"]);
}

#[sqlx::test]
async fn an_upgraded_database_does_not_send_the_last_issues_articles_again(pool: PgPool) {
    let s = settings("[content]\nmax_articles = 2\n");
    tip(&pool, "T", "Body.").await;
    let left_out = article(
        &pool,
        "left-out",
        "https://example.com/1",
        "2026-10-31T00:00:00Z",
    )
    .await;
    let sent = article(
        &pool,
        "sent",
        "https://example.com/2",
        "2026-11-01T12:00:00Z",
    )
    .await;
    let also_sent = article(
        &pool,
        "also-sent",
        "https://example.com/4",
        "2026-11-01T18:00:00Z",
    )
    .await;
    let first = compose(&pool, &s, "2026-11-02T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&first), ["T", "also-sent", "sent"]);
    // Stored after the first issue was made, though dated before its slot: never weighed.
    let late = article(
        &pool,
        "late",
        "https://example.com/5",
        "2026-11-02T07:00:00Z",
    )
    .await;
    let new = article(
        &pool,
        "new",
        "https://example.com/3",
        "2026-11-05T00:00:00Z",
    )
    .await;
    // As a database made before migration 19 holds it: nothing recorded.
    sqlx::query("DELETE FROM article_considered")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/20261201000020_article_considered_backfill.sql"
    ))
    .execute(&pool)
    .await
    .expect("backfill");
    let recorded: Vec<(i64, i64)> =
        sqlx::query_as("SELECT article_id, issue_id FROM article_considered ORDER BY article_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let first_id: i64 = sqlx::query_scalar("SELECT issue_id FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Not `late` (the first issue never saw it) nor `new` (after the last slot).
    assert_eq!(
        recorded,
        [
            (left_out, first_id),
            (sent, first_id),
            (also_sent, first_id)
        ],
        "late {late}, new {new}"
    );
    let second = compose(&pool, &s, "2026-11-09T08:00:00Z")
        .await
        .expect("issue");
    assert_eq!(titles(&second), ["T", "new", "late"]);
}

#[sqlx::test]
async fn when_empty_skip_records_the_slot_and_says_why(pool: PgPool) {
    let s = settings("[content]\nwhen_empty = \"skip\"\n");
    tip(&pool, "T", "Body.").await;
    assert!(compose(&pool, &s, "2026-11-30T08:00:00Z").await.is_none());
    let row = issues::find_by_slot(&pool, at("2026-11-30T08:00:00Z"))
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(row.status, digestif::domain::IssueStatus::Skipped);
    assert!(row.status_reason.unwrap().contains("no new articles"));
    let times_sent: i32 = sqlx::query_scalar("SELECT times_sent FROM tip")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(times_sent, 0, "a skipped slot does not use up tips");
    let d = Digestif::new(&pool);
    let list = d.ok(&["issue", "list"]).stdout();
    assert!(
        list.contains("skipped") && list.contains("no new articles"),
        "{list}"
    );
}

#[sqlx::test]
async fn when_empty_send_tips_only_sends_tips(pool: PgPool) {
    let s = settings("[content]\nwhen_empty = \"send_tips_only\"\n");
    tip(&pool, "T", "Body.").await;
    let c = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    assert_eq!(titles(&c), ["T"]);
}

#[sqlx::test]
async fn the_snapshot_survives_edits_and_one_slot_is_one_issue(pool: PgPool) {
    let s = settings("");
    let t = tip(&pool, "Original title", "Original body.").await;
    let first = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("issue");
    sqlx::query("UPDATE tip SET title = 'Edited', body = 'Edited body.' WHERE tip_id = $1")
        .bind(t)
        .execute(&pool)
        .await
        .unwrap();
    let again = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("same issue");
    assert_eq!(again.number, first.number);
    assert_eq!(titles(&again), ["Original title"]);
    assert_eq!(again.items[0].body, "Original body.");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

fn golden_content() -> IssueContent {
    IssueContent {
        number: 12,
        slot: at("2026-11-30T08:00:00Z"),
        items: vec![
            Item {
                kind: ItemKind::Tip,
                title: "Read one dependency's source each month".into(),
                body: "Pick a library you call every day and read its **core module**. You will \
                       find bugs, idioms and [design notes](https://example.com/notes) that \
                       documentation never mentions.\n\n- start with the public API\n- follow one \
                       request end to end\n- write down one surprise\n\nUse `git log -p` on the \
                       file you read."
                    .into(),
                url: Some("https://example.org/source".into()),
                author: None,
                published_at: None,
            },
            Item {
                kind: ItemKind::Tip,
                title: "A short one".into(),
                body: "Short.".into(),
                url: None,
                author: None,
                published_at: None,
            },
            Item {
                kind: ItemKind::Article,
                title: "Idempotency Keys Without the Headaches".into(),
                body: "A walkthrough of storing, expiring and replaying idempotency keys so \
                       retried payment requests never charge twice."
                    .into(),
                url: Some("https://example.com/articles/idempotency-keys".into()),
                author: Some("Marta Kowalczyk".into()),
                published_at: Some(at("2026-11-20T08:30:00Z")),
            },
        ],
    }
}

#[test]
fn the_plain_text_part_matches_the_golden_file() {
    let s = settings("");
    let rendered = render::render_issue(
        &s.newsletter,
        &keys(),
        s.schedule.cron.zone(),
        &golden_content(),
        &s.bounces.address,
    )
    .expect("render");
    let text = rendered.text_for(&eve());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/digest.txt");
    assert!(
        text.lines()
            .all(|l| l.chars().count() <= 78 || l.contains("https://")),
        "{text}"
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        // Comparing the file just written with itself would prove nothing: say what happened
        // and fail, so a run with UPDATE_GOLDEN never counts as a pass.
        std::fs::write(path, &text).expect("write golden");
        panic!("UPDATE_GOLDEN is set: rewrote {path}; review the diff, then run again without it");
    }
    let want = std::fs::read_to_string(path).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(text, want);
}

#[test]
fn the_html_references_nothing_external_and_every_image_has_alt() {
    let s = settings("");
    let rendered = render::render_issue(
        &s.newsletter,
        &keys(),
        s.schedule.cron.zone(),
        &golden_content(),
        &s.bounces.address,
    )
    .expect("render");
    let html = rendered.html_for(&eve());
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "no script");
    assert!(!lower.contains("<link"), "no external stylesheet");
    assert!(!lower.contains("@import"), "no imported CSS");
    for img in lower.split("<img").skip(1) {
        let tag = img.split('>').next().unwrap_or_default();
        assert!(tag.contains("alt="), "<img{tag}> has no alt");
    }
    assert!(
        html.contains("style=\""),
        "CSS is inlined into style attributes"
    );
    assert!(
        html.contains("max-width: 600px") || html.contains("max-width:600px"),
        "600px layout"
    );
    assert!(
        html.contains("prefers-color-scheme: dark"),
        "dark-mode rules kept"
    );
    assert!(html.contains("class=\"preheader\""), "preheader");
}

#[sqlx::test]
async fn preview_writes_three_files_and_creates_nothing(pool: PgPool) {
    let d = Digestif::new(&pool);
    d.ok(&["tips", "import", "config/sample/tips"]);
    let dir = tempfile::tempdir().unwrap();
    let out = d
        .ok(&["issue", "preview", "--out", arg(dir.path())])
        .stdout();
    assert!(out.contains("issue #1"), "{out}");
    for ext in ["html", "txt", "eml"] {
        let p = dir.path().join(format!("issue-1.{ext}"));
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 500)
                .unwrap_or(false),
            "{} missing",
            p.display()
        );
    }
    let issues: i64 = sqlx::query_scalar("SELECT count(*) FROM issue")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM tip WHERE times_sent > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((issues, sent), (0, 0));
    let eml = std::fs::read(dir.path().join("issue-1.eml")).unwrap();
    let msg = MessageParser::default()
        .parse(&eml)
        .expect("the .eml parses");
    assert!(
        msg.subject()
            .unwrap_or_default()
            .starts_with("Backend Tips #1: ")
    );
}

#[sqlx::test]
async fn content_cannot_pull_in_a_recipients_link_or_name(pool: PgPool) {
    let s = settings("");
    // The markers an earlier version filled per recipient, written into content.
    tip(
        &pool,
        "Greetings __DIGESTIF_GREETING__",
        "See __DIGESTIF_UNSUBSCRIBE_URL__ and __DIGESTIF_GREETING__.",
    )
    .await;
    article(
        &pool,
        "Link",
        "https://evil.example/collect?u=__DIGESTIF_UNSUBSCRIBE_URL__",
        "2026-11-29T10:00:00Z",
    )
    .await;
    let content = compose(&pool, &s, "2026-11-30T08:00:00Z")
        .await
        .expect("an issue");
    let rendered = render::render_issue(
        &s.newsletter,
        &keys(),
        s.schedule.cron.zone(),
        &content,
        &s.bounces.address,
    )
    .expect("render");
    let r = eve();
    let token = keys().sign(digestif::domain::Purpose::Unsubscribe, r.subscriber_id);
    for part in [rendered.text_for(&r), rendered.html_for(&r)] {
        assert_eq!(
            part.matches(&token).count(),
            1,
            "only the footer link: {part}"
        );
        assert!(
            part.contains("collect?u=__DIGESTIF_UNSUBSCRIBE_URL__"),
            "content shows as written: {part}"
        );
        assert_eq!(part.matches("Eve Example").count(), 1, "{part}");
    }
}

/// Mode bits of a path, without the file type.
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Outbox messages carry addresses and unsubscribe tokens, previews a token: only the owner
/// may read them, whatever the umask.
#[sqlx::test]
async fn outbox_and_preview_files_are_private(pool: PgPool) {
    let root = tempfile::tempdir().unwrap();
    let outbox = root.path().join("new/outbox");
    let preview = root.path().join("new/preview");
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__OUTBOX", arg(&outbox));
    d.ok(&["tips", "import", "config/sample/tips"]);
    d.ok(&["subscribers", "add", "ann@example.org"]);
    d.ok(&["issue", "preview", "--out", arg(&preview)]);
    d.ok(&["issue", "send", "--now"]);
    for dir in [&outbox, &preview, &root.path().join("new")] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let mut files = 0;
    for dir in [&outbox, &preview] {
        for f in std::fs::read_dir(dir).unwrap().flatten() {
            assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
            files += 1;
        }
    }
    assert_eq!(files, 4, "three preview files and one message");
}
