//! Tip and article content: titles, Markdown bodies and http(s) links, checked before storage.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{is_forbidden_char, shown};

const MAX_TITLE_CHARS: usize = 200;
const MAX_BODY_CHARS: usize = 20_000;
const MAX_SUMMARY_CHARS: usize = 2_000;
/// As long as links get in practice (the message builder folds them): past about 2,700 bytes
/// an article's URL no longer fits its unique index, and the insert would fail.
const MAX_URL_CHARS: usize = 2_048;
const MAX_TAG_CHARS: usize = 40;

/// Why a piece of content was refused; the first field names which one (`title`, `url`…).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    /// A required field is blank.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A one-line field holds a control character (header injection, terminal escapes).
    #[error("{0} '{1}' contains a control character")]
    ControlCharacter(&'static str, String),
    /// Too long for the field.
    #[error("{0} is longer than {1} characters")]
    TooLong(&'static str, usize),
    /// Not an absolute http or https URL.
    #[error("{0} '{1}' is not an http or https URL")]
    BadUrl(&'static str, String),
    /// Neither RFC 3339 nor `YYYY-MM-DD`.
    #[error("published_at '{0}' is not a date (use 2026-11-20 or 2026-11-20T08:30:00Z)")]
    BadTime(String),
    /// A tag with characters other than lower-case letters, digits and dashes.
    #[error("tag '{0}' must be lower-case letters, digits and dashes")]
    BadTag(String),
}

/// A one-line title (tips and articles): trimmed, non-empty, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    /// Validates a title.
    pub fn parse(raw: &str) -> Result<Self, ContentError> {
        one_line("title", raw, MAX_TITLE_CHARS).map(Self)
    }

    /// The title as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Title {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tip body in Markdown. Line breaks and tabs are allowed; other control characters are not.
/// Raw HTML inside it is neutralised when it is rendered, not here, so the source stays as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TipBody(String);

impl TipBody {
    /// Validates a body; CRLF line ends become LF so the renderer sees one convention.
    pub fn parse(raw: &str) -> Result<Self, ContentError> {
        let text = raw.replace("\r\n", "\n");
        let text = text.trim_matches('\n').trim_end();
        if text.trim().is_empty() {
            return Err(ContentError::Empty("body"));
        }
        if text.chars().count() > MAX_BODY_CHARS {
            return Err(ContentError::TooLong("body", MAX_BODY_CHARS));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| c != '\n' && c != '\t' && is_forbidden_char(c))
        {
            return Err(ContentError::ControlCharacter(
                "body",
                c.escape_debug().to_string(),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The Markdown source.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute `http` or `https` URL with a host; anything else (javascript:, data:, file:,
/// relative paths) is refused, because it ends up in an `href` in every subscriber's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArticleUrl(String);

impl ArticleUrl {
    /// Validates a link; `what` names the field in errors (`url`, `source_url`).
    pub fn parse(what: &'static str, raw: &str) -> Result<Self, ContentError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ContentError::Empty(what));
        }
        if raw.chars().any(is_forbidden_char) {
            return Err(ContentError::ControlCharacter(what, shown(raw)));
        }
        if trimmed.chars().count() > MAX_URL_CHARS {
            return Err(ContentError::TooLong(what, MAX_URL_CHARS));
        }
        let url =
            url::Url::parse(trimmed).map_err(|_| ContentError::BadUrl(what, shown(trimmed)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(ContentError::BadUrl(what, shown(trimmed)));
        }
        // Measured again as stored: percent-encoding makes a typed character up to 9 bytes.
        if url.as_str().len() > MAX_URL_CHARS {
            return Err(ContentError::TooLong(what, MAX_URL_CHARS));
        }
        Ok(Self(url.to_string()))
    }

    /// The URL as text (as normalised by the URL parser: percent-encoded where needed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ArticleUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tip ready to be stored.
#[derive(Debug, Clone)]
pub struct NewTip {
    /// One-line title, also used in the subject when the tip leads an issue.
    pub title: Title,
    /// Markdown body.
    pub body: TipBody,
    /// Lower-case theme tags.
    pub tags: Vec<String>,
    /// Where the idea came from, if anywhere.
    pub source_url: Option<ArticleUrl>,
}

impl NewTip {
    /// Validates every field of a tip.
    pub fn parse(
        title: &str,
        body: &str,
        tags: &[String],
        source_url: Option<&str>,
    ) -> Result<Self, ContentError> {
        let tags = tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            title: Title::parse(title)?,
            body: TipBody::parse(body)?,
            tags,
            source_url: source_url
                .filter(|s| !s.trim().is_empty())
                .map(|s| ArticleUrl::parse("source_url", s))
                .transpose()?,
        })
    }
}

fn parse_tag(raw: &str) -> Result<String, ContentError> {
    let tag = raw.trim();
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_CHARS
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(tag.to_owned())
    } else {
        Err(ContentError::BadTag(shown(raw)))
    }
}

/// An article ready to be stored.
#[derive(Debug, Clone)]
pub struct NewArticle {
    /// One-line title.
    pub title: Title,
    /// Where it lives.
    pub url: ArticleUrl,
    /// A sentence or two; may be empty.
    pub summary: String,
    /// Who wrote it, if known.
    pub author: Option<String>,
    /// When it was published; decides which issue carries it.
    pub published_at: DateTime<Utc>,
}

impl NewArticle {
    /// Validates every field of an article. `published_at` is RFC 3339 or a plain `YYYY-MM-DD`
    /// (taken as midnight UTC).
    pub fn parse(
        title: &str,
        url: &str,
        summary: &str,
        author: &str,
        published_at: &str,
    ) -> Result<Self, ContentError> {
        let summary = summary.trim();
        if summary.chars().any(|c| c != '\n' && is_forbidden_char(c)) {
            return Err(ContentError::ControlCharacter("summary", shown(summary)));
        }
        if summary.chars().count() > MAX_SUMMARY_CHARS {
            return Err(ContentError::TooLong("summary", MAX_SUMMARY_CHARS));
        }
        let author = author.trim();
        let author = if author.is_empty() {
            None
        } else {
            Some(one_line("author", author, MAX_TITLE_CHARS)?)
        };
        Ok(Self {
            title: Title::parse(title)?,
            url: ArticleUrl::parse("url", url)?,
            summary: summary.to_owned(),
            author,
            published_at: parse_time(published_at)?,
        })
    }
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, ContentError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ContentError::Empty("published_at"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| ContentError::BadTime(shown(raw)))
}

fn one_line(what: &'static str, raw: &str, max: usize) -> Result<String, ContentError> {
    if raw.chars().any(is_forbidden_char) {
        return Err(ContentError::ControlCharacter(what, shown(raw)));
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(ContentError::Empty(what));
    }
    if trimmed.chars().count() > max {
        return Err(ContentError::TooLong(what, max));
    }
    Ok(trimmed.to_owned())
}

/// A feed's entry ready to store: its identity within the feed and the article (its URL
/// canonical: `feeds::entry::canonical_url`).
#[derive(Debug, Clone)]
pub struct FeedArticle {
    /// The entry's id (GUID in RSS, `id` in Atom and JSON Feed; feed-rs derives one from the
    /// link and title when the feed gives none): one entry is stored once per feed.
    pub guid: String,
    pub article: NewArticle,
}

/// The most of one feed's articles an issue may hold.
pub const MAX_PER_ISSUE: u32 = 100;
const MAX_KEYWORD_CHARS: usize = 100;
const MAX_KEYWORDS: usize = 50;

/// Which of a feed's articles go into an issue: its newest `max_per_issue`, among those whose
/// title or summary holds one of `include` (when there are any) and none of `exclude`, each
/// matched as whole words, case-insensitive ("rust" does not match "trust").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct FeedSelection {
    pub max_per_issue: Option<i32>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl FeedSelection {
    /// Checks a selection; `max_per_issue` 0 means no limit.
    pub fn parse(
        max_per_issue: Option<u32>,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, String> {
        let max_per_issue = match max_per_issue {
            None | Some(0) => None,
            Some(n) if n <= MAX_PER_ISSUE => i32::try_from(n).ok(),
            Some(n) => return Err(format!("max_per_issue {n} is above {MAX_PER_ISSUE}")),
        };
        Ok(Self {
            max_per_issue,
            include: keywords("include", include)?,
            exclude: keywords("exclude", exclude)?,
        })
    }

    /// The selection as one short cell: `3 newest, +rust -hiring`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.max_per_issue {
            parts.push(format!("{n} newest"));
        }
        let words: Vec<String> = (self.include.iter().map(|k| format!("+{k}")))
            .chain(self.exclude.iter().map(|k| format!("-{k}")))
            .collect();
        if !words.is_empty() {
            parts.push(words.join(" "));
        }
        parts.join(", ")
    }
}

fn keywords(which: &str, raw: &[String]) -> Result<Vec<String>, String> {
    if raw.len() > MAX_KEYWORDS {
        return Err(format!("more than {MAX_KEYWORDS} {which} keywords"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for k in raw {
        let k = k.split_whitespace().collect::<Vec<_>>().join(" ");
        if k.is_empty() {
            return Err(format!("an empty {which} keyword"));
        }
        if k.chars().any(is_forbidden_char) {
            return Err(format!(
                "{which} keyword '{}' contains a control character",
                shown(&k)
            ));
        }
        if k.chars().count() > MAX_KEYWORD_CHARS {
            return Err(format!(
                "{which} keyword '{}' is longer than {MAX_KEYWORD_CHARS} characters",
                shown(&k)
            ));
        }
        if !out.iter().any(|o| o.to_lowercase() == k.to_lowercase()) {
            out.push(k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_measured_as_it_is_stored() {
        // 1,000 characters typed, 9,000 bytes once percent-encoded: over the index's limit.
        let wide = format!("https://example.com/{}", "東".repeat(1000));
        assert_eq!(
            ArticleUrl::parse("url", &wide),
            Err(ContentError::TooLong("url", MAX_URL_CHARS))
        );
        let longest = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS - 20));
        assert!(ArticleUrl::parse("url", &longest).is_ok());
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        assert!(ArticleUrl::parse("url", "https://example.com/a?b=c").is_ok());
        assert!(ArticleUrl::parse("url", "http://example.org").is_ok());
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "/relative",
            "ftp://example.com/x",
            "https://",
        ] {
            assert!(ArticleUrl::parse("url", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn titles_are_one_line() {
        assert!(Title::parse("Hello\r\nBcc: x@evil.example").is_err());
        assert_eq!(Title::parse("  Hi  ").unwrap().as_str(), "Hi");
        assert_eq!(Title::parse(" "), Err(ContentError::Empty("title")));
    }

    #[test]
    fn bodies_keep_lines_but_not_other_controls() {
        let b = TipBody::parse("one\r\n.\r\ntwo\n").unwrap();
        assert_eq!(b.as_str(), "one\n.\ntwo");
        assert!(TipBody::parse("bell\u{7}").is_err());
    }

    #[test]
    fn article_dates_accept_rfc3339_and_plain_dates() {
        let a = NewArticle::parse("T", "https://example.com", "", "", "2026-11-20").unwrap();
        assert_eq!(a.published_at.to_rfc3339(), "2026-11-20T00:00:00+00:00");
        assert!(NewArticle::parse("T", "https://example.com", "", "", "last week").is_err());
    }

    #[test]
    fn feed_selection_checks_its_keywords() {
        let s = FeedSelection::parse(Some(3), &["  Rust  lang ".into(), "rust LANG".into()], &[])
            .unwrap();
        assert_eq!(s.include, ["Rust lang"]);
        assert_eq!(s.summary(), "3 newest, +Rust lang");
        assert_eq!(
            FeedSelection::parse(Some(0), &[], &[])
                .unwrap()
                .max_per_issue,
            None
        );
        assert!(FeedSelection::parse(Some(101), &[], &[]).is_err());
        assert!(FeedSelection::parse(None, &[" ".into()], &[]).is_err());
        let err = FeedSelection::parse(None, &[], &["a\u{1b}[2J".into()]).unwrap_err();
        assert!(err.contains("exclude") && !err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn tags_are_slugs() {
        assert!(NewTip::parse("t", "b", &["side-projects".into()], None).is_ok());
        assert!(NewTip::parse("t", "b", &["Side Projects".into()], None).is_err());
    }
}

/// What a piece of an issue is: the `kind` column of `issue_item` (its CHECK constraint names
/// the same two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ItemKind {
    /// A tip: Markdown body, optional source URL.
    Tip,
    /// An article: summary, link, author, publication time.
    Article,
}

/// One piece of content as it appears in an issue (a snapshot, see `issue_item`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    /// Tip or article.
    pub kind: ItemKind,
    /// One-line title.
    pub title: String,
    /// Markdown body for tips, summary for articles.
    pub body: String,
    /// Source URL for tips, link for articles.
    pub url: Option<String>,
    /// Article author.
    pub author: Option<String>,
    /// Article publication time.
    pub published_at: Option<DateTime<Utc>>,
}
