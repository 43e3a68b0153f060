//! A feed's entries as articles: RSS 0.9x/1.0/2.0, Atom 1.0 and JSON Feed 1.1, parsed by
//! feed-rs, each entry reduced to what the article store holds. Feed text is data: titles
//! and summaries become plain text (tags dropped, entities decoded, whitespace collapsed), and
//! an entry whose link is not http(s) is left out, never stored.

use chrono::{DateTime, Utc};
use url::Url;

use crate::domain::{NewArticle, shown};

pub use crate::domain::FeedArticle;

/// What reading a feed gave: the articles, and the entries left out with why.
#[derive(Debug, Default)]
pub struct Entries {
    pub articles: Vec<FeedArticle>,
    pub skipped: Vec<String>,
}

/// Why a document is not a feed.
#[derive(Debug, thiserror::Error)]
#[error("not a feed (RSS, Atom or JSON Feed): {0}")]
pub struct NotAFeed(String);

/// Query parameters that track a click rather than name a page: dropped, so the same article
/// reached through two campaigns is one URL.
const TRACKING: &[&str] = &[
    "fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid", "_hsenc",
    "_hsmi", "mkt_tok", "ref_src",
];

/// The URL an article is known by: no fragment, no `utm_*` or other tracking parameters, the
/// remaining parameters in their order.
pub fn canonical_url(url: &Url) -> Url {
    let mut out = url.clone();
    out.set_fragment(None);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !k.starts_with("utm_") && !TRACKING.contains(&k.as_str())
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        out.set_query(None);
    } else {
        out.query_pairs_mut().clear().extend_pairs(kept);
    }
    out
}

/// Feed text as one line of plain text: when it holds markup (a tag or an entity), tags and
/// scripts are dropped and entities decoded; whitespace is collapsed and bidi embeddings,
/// overrides and isolates dropped either way (see `is_direction_override`). Text without
/// markup is kept as it is, so "a < b" stays whole.
pub fn plain_text(text: &str) -> String {
    let bytes = text.as_bytes();
    let tag = bytes
        .windows(2)
        .any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/' || w[1] == b'!'));
    let entity = text.split('&').skip(1).any(|rest| {
        rest.split_once(';').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.len() <= 10
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '#')
        })
    });
    let text = if tag || entity {
        mail_parser::decoders::html::html_to_text(text)
    } else {
        text.to_owned()
    };
    let text: String = text
        .chars()
        .filter(|c| !crate::domain::is_direction_override(*c))
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` cut to at most `max` characters at a word boundary, with "…" when cut.
pub fn truncate_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let budget = max.saturating_sub(1);
    let mut out = String::new();
    for word in text.split(' ') {
        let next = if out.is_empty() {
            word.chars().count()
        } else {
            out.chars().count() + 1 + word.chars().count()
        };
        if next > budget {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_empty() {
        // One word longer than the whole budget: cut inside it.
        out = text.chars().take(budget).collect();
    }
    out.push('…');
    out
}

/// The most entries read from one feed document.
const MAX_ENTRIES: usize = 1_000;

/// The most characters of an entry id stored as given (the column's limit).
const MAX_GUID_CHARS: usize = 1_000;
/// The most bytes of an entry id stored as given: the entry index holds about 2,700 bytes a
/// row, and 1,000 characters of CJK text are 3,000.
const MAX_GUID_BYTES: usize = 2_000;

/// How an entry is known across fetches: its id as given, unless the database cannot store it
/// (too long, or a NUL); then a digest of it, the same at every fetch. An id of 2,001 to about
/// 2,700 bytes that compressed into the index before is now a digest too: such an entry's
/// edits stop reaching its article (its link still keeps it from being stored twice).
fn entry_key(id: &str) -> String {
    if id.len() <= MAX_GUID_BYTES && id.chars().count() <= MAX_GUID_CHARS && !id.contains('\0') {
        return id.to_owned();
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Reads the feed fetched from `source` (relative links resolve against it) from `bytes`. `seen_at` is
/// the publication time of an entry that gives neither a published nor an updated time (the
/// first time we saw it); `summary_chars` caps each summary.
pub fn read(
    bytes: &[u8],
    source: &Url,
    seen_at: DateTime<Utc>,
    summary_chars: usize,
) -> Result<Entries, NotAFeed> {
    let feed = feed_rs::parser::Builder::new()
        .base_uri(Some(source.as_str()))
        .build()
        .parse(bytes)
        .map_err(|e| NotAFeed(crate::domain::one_line(&e.to_string())))?;
    // A relative link resolves against where the feed came from, the document's URI (RFC
    // 3986; feed-rs does so for XML feeds, this does it for JSON Feed).
    let base = source;
    let mut out = Entries::default();
    let mut entries = feed.entries;
    if entries.len() > MAX_ENTRIES {
        // 5 MiB holds over 100,000 bare entries, each a row to store at every fetch, and an
        // issue takes a few of the newest. A feed may list them in any order (an archive,
        // oldest first): the newest dated ones are kept, then undated ones in the feed's order.
        out.skipped.push(format!(
            "{} entries: only the newest {MAX_ENTRIES} are read",
            entries.len()
        ));
        entries.sort_by_key(|e| std::cmp::Reverse(e.published.or(e.updated)));
        entries.truncate(MAX_ENTRIES);
    }
    for entry in entries {
        let title = entry
            .title
            .as_ref()
            .map(|t| plain_text(&t.content))
            .unwrap_or_default();
        let link = entry
            .links
            .iter()
            .find(|l| l.rel.as_deref().is_none_or(|r| r == "alternate"))
            .or(entry.links.first())
            .map(|l| l.href.trim().to_owned());
        let Some(link) = link else {
            out.skipped.push(format!("'{}': no link", shown(&title)));
            continue;
        };
        let url = match base.join(&link) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => canonical_url(&u),
            _ => {
                out.skipped.push(format!(
                    "'{}': its link is not an http(s) URL",
                    shown(&title)
                ));
                continue;
            }
        };
        let summary = entry
            .summary
            .as_ref()
            .map(|s| s.content.clone())
            .or_else(|| entry.content.as_ref().and_then(|c| c.body.clone()))
            .map(|html| truncate_words(&plain_text(&html), summary_chars))
            .unwrap_or_default();
        let author = entry
            .authors
            .iter()
            .find_map(|p| p.name.as_deref().or(p.email.as_deref()))
            .map(|name| truncate_words(&plain_text(name), 200))
            .unwrap_or_default();
        let published = entry.published.or(entry.updated).unwrap_or(seen_at);
        let title = if title.is_empty() {
            url.as_str().to_owned()
        } else {
            title
        };
        match NewArticle::parse(
            &truncate_words(&title, 200),
            url.as_str(),
            &summary,
            &author,
            &published.to_rfc3339(),
        ) {
            Ok(article) => out.articles.push(FeedArticle {
                guid: entry_key(&entry.id),
                article,
            }),
            Err(e) => out.skipped.push(format!("'{}': {e}", shown(&title))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn source() -> Url {
        Url::parse("https://blog.example.com/feed.xml").unwrap()
    }

    #[test]
    fn tracking_parameters_and_fragments_go() {
        let u = Url::parse(
            "https://blog.example.com/post?id=7&utm_source=rss&UTM_Medium=x&fbclid=abc&page=2#top",
        )
        .unwrap();
        assert_eq!(
            canonical_url(&u).as_str(),
            "https://blog.example.com/post?id=7&page=2"
        );
        let bare = Url::parse("https://blog.example.com/post?utm_campaign=weekly").unwrap();
        assert_eq!(
            canonical_url(&bare).as_str(),
            "https://blog.example.com/post"
        );
    }

    #[test]
    fn summaries_are_plain_text_cut_at_a_word() {
        assert_eq!(
            plain_text(
                "<p>Use <b>EXPLAIN</b>&nbsp;&amp; read\n the <script>alert(1)</script>plan</p>"
            ),
            "Use EXPLAIN & read the plan"
        );
        assert_eq!(plain_text("a < b &  c"), "a < b & c");
        assert_eq!(plain_text("Tom &amp;amp; Jerry"), "Tom &amp; Jerry");
        // A direction override, raw or as an entity, would reorder what follows it in the
        // email (every later title in the inbox preview).
        assert_eq!(
            plain_text("Release notes\u{202e}txt.exe"),
            "Release notestxt.exe"
        );
        assert_eq!(plain_text("<b>a</b>&#x2067;b"), "ab");
        assert_eq!(plain_text("שלום \u{200f}world"), "שלום \u{200f}world");
        assert_eq!(truncate_words("one two three four", 12), "one two…");
        assert_eq!(truncate_words("short", 12), "short");
        assert_eq!(truncate_words("abcdefghijklmnop", 5), "abcd…");
    }

    #[test]
    fn only_the_newest_thousand_entries_are_read() {
        // An archive, oldest first.
        let items: Vec<String> = (0..1500)
            .map(|n| {
                let at = at("2020-01-01T00:00:00Z") + chrono::Duration::hours(n);
                format!(
                    r#"{{"id": "{n}", "url": "https://b.example.com/{n}", "date_published": "{}"}}"#,
                    at.to_rfc3339()
                )
            })
            .collect();
        let json = format!(
            r#"{{"version": "https://jsonfeed.org/version/1.1", "title": "B", "items": [{}]}}"#,
            items.join(",")
        );
        let got = read(json.as_bytes(), &source(), at("2026-11-23T10:00:00Z"), 300).unwrap();
        assert_eq!(got.articles.len(), 1000);
        assert_eq!(got.articles[0].guid, "1499");
        assert_eq!(got.articles[999].guid, "500");
        assert_eq!(got.skipped, ["1500 entries: only the newest 1000 are read"]);
    }

    #[test]
    fn rss_atom_and_json_feed_give_the_same_articles() {
        let rss = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>B</title>
            <link>https://blog.example.com/</link>
            <item><title>Indexes &amp; you</title><link>/posts/indexes?utm_source=rss</link>
              <guid>post-1</guid><pubDate>Mon, 23 Nov 2026 10:00:00 +0000</pubDate>
              <description>&lt;p&gt;Read &lt;b&gt;this&lt;/b&gt;&lt;/p&gt;</description>
              <author>ann@example.com (Ann)</author></item>
            </channel></rss>"#;
        let atom = br#"<?xml version="1.0" encoding="utf-8"?>
            <feed xmlns="http://www.w3.org/2005/Atom"><title>B</title><id>urn:b</id>
            <link href="https://blog.example.com/"/><updated>2026-11-23T10:00:00Z</updated>
            <entry><title type="html">Indexes &amp;amp; you</title><id>post-1</id>
              <link href="https://blog.example.com/posts/indexes"/>
              <published>2026-11-23T10:00:00Z</published><updated>2026-11-24T10:00:00Z</updated>
              <summary type="html">&lt;p&gt;Read &lt;b&gt;this&lt;/b&gt;&lt;/p&gt;</summary>
              <author><name>Ann</name></author></entry></feed>"#;
        let json = br#"{"version": "https://jsonfeed.org/version/1.1", "title": "B",
            "home_page_url": "https://blog.example.com/",
            "items": [{"id": "post-1", "url": "https://blog.example.com/posts/indexes#comments",
              "title": "Indexes & you", "content_html": "<p>Read <b>this</b></p>",
              "date_published": "2026-11-23T10:00:00Z", "authors": [{"name": "Ann"}]}]}"#;
        for (what, bytes) in [("rss", &rss[..]), ("atom", &atom[..]), ("json", &json[..])] {
            let got = read(bytes, &source(), at("2026-11-30T08:00:00Z"), 200).unwrap();
            assert!(got.skipped.is_empty(), "{what}: {:?}", got.skipped);
            let [a] = got.articles.as_slice() else {
                panic!("{what}: {:?}", got.articles)
            };
            assert_eq!(a.guid, "post-1", "{what}");
            assert_eq!(a.article.title.as_str(), "Indexes & you", "{what}");
            assert_eq!(
                a.article.url.as_str(),
                "https://blog.example.com/posts/indexes",
                "{what}"
            );
            assert_eq!(a.article.summary, "Read this", "{what}");
            assert_eq!(a.article.published_at, at("2026-11-23T10:00:00Z"), "{what}");
            assert!(
                a.article
                    .author
                    .as_deref()
                    .is_some_and(|x| x.contains("Ann")),
                "{what}"
            );
        }
    }

    #[test]
    fn hostile_entries_are_text_or_left_out() {
        let rss = br#"<rss version="2.0"><channel><title>x</title>
            <item><title>&lt;script&gt;alert(1)&lt;/script&gt;Hi</title>
              <link>javascript:alert(1)</link><guid>a</guid></item>
            <item><title>&lt;img src=x onerror=alert(1)&gt;Fine</title>
              <link>https://blog.example.com/ok</link><guid>b</guid>
              <description>&lt;script&gt;steal()&lt;/script&gt;Body</description></item>
            <item><title>No date</title><link>https://blog.example.com/nodate</link></item>
            </channel></rss>"#;
        let seen = at("2026-11-30T08:00:00Z");
        let got = read(rss, &source(), seen, 200).unwrap();
        assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
        assert!(
            got.skipped[0].contains("not an http(s) URL"),
            "{:?}",
            got.skipped
        );
        assert_eq!(got.articles.len(), 2);
        let fine = &got.articles[0].article;
        assert_eq!(fine.title.as_str(), "Fine");
        assert_eq!(fine.summary, "Body");
        // Neither a published nor an updated time: the first time we saw it.
        assert_eq!(got.articles[1].article.published_at, seen);
    }

    /// The demo's sample feeds (config/sample/feeds/) read as the demo expects: every entry an
    /// article, published when first seen, the cross-posted page under one URL.
    #[test]
    fn the_sample_feeds_read_whole() {
        let seen = at("2026-11-30T08:00:00Z");
        let mut urls = Vec::new();
        for (name, bytes) in [
            (
                "backend-notes.xml",
                &include_bytes!("../../config/sample/feeds/backend-notes.xml")[..],
            ),
            (
                "postgres-weekly.atom",
                &include_bytes!("../../config/sample/feeds/postgres-weekly.atom")[..],
            ),
            (
                "queue-digest.json",
                &include_bytes!("../../config/sample/feeds/queue-digest.json")[..],
            ),
        ] {
            let source = Url::parse(&format!("http://127.0.0.1:8000/{name}")).unwrap();
            let got = read(bytes, &source, seen, 300).unwrap();
            assert!(got.skipped.is_empty(), "{name}: {:?}", got.skipped);
            assert_eq!(got.articles.len(), 2, "{name}");
            for a in &got.articles {
                assert_eq!(a.article.published_at, seen, "{name}");
                urls.push(a.article.url.as_str().to_owned());
            }
        }
        assert!(
            urls.contains(&"https://pg.example.org/posts/explain-buffers".to_owned()),
            "{urls:?}"
        );
        let jitter = urls
            .iter()
            .filter(|u| *u == "https://notes.example.com/retries-need-jitter")
            .count();
        assert_eq!(jitter, 2, "both feeds name the one page: {urls:?}");
    }

    #[test]
    fn what_is_not_a_feed_says_so_in_one_line() {
        let err = read(
            b"<html><body>hello</body></html>",
            &source(),
            Utc::now(),
            200,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("not a feed"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
