//! Rendering an issue: the askama templates are rendered and their CSS inlined once per issue;
//! each subscriber's message only fills in their greeting and unsubscribe link, and is built
//! with lettre's typed headers.

mod encoded;
pub mod markdown;
pub mod palette;

use askama::Template;
use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::config::Newsletter;
use crate::domain::{Purpose, TokenKeys};
use markdown::{LinkList, TEXT_WIDTH};

/// Why an issue or a message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template failed (a bug, not bad input: templates are compiled in).
    #[error("template: {0}")]
    Template(#[from] askama::Error),
    /// The CSS inliner refused the HTML.
    #[error("inlining CSS: {0}")]
    Css(String),
    /// A stored address that lettre will not put in a header.
    #[error("subscriber {0}: the address cannot be used in a To header")]
    Address(i64),
    /// lettre refused the message.
    #[error("building the message: {0}")]
    Message(#[from] lettre::error::Error),
}

pub use crate::domain::{Item, ItemKind};

/// What an issue carries, ready to render.
#[derive(Debug, Clone)]
pub struct IssueContent {
    /// Issue number (1, 2, …).
    pub number: i32,
    pub slot: DateTime<Utc>,
    /// Tips first, then articles, in order.
    pub items: Vec<Item>,
}

impl IssueContent {
    /// The subject line: newsletter name, issue number and the lead item's title.
    pub fn subject(&self, newsletter: &Newsletter) -> String {
        match self.items.first() {
            Some(lead) => format!("{} #{}: {}", newsletter.name, self.number, lead.title),
            None => format!("{} #{}", newsletter.name, self.number),
        }
    }
}

/// A subscriber as the renderer needs them.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Key; also part of the Message-ID.
    pub subscriber_id: i64,
    pub email: String,
    /// Display name, if known.
    pub name: Option<String>,
}

/// Markers left in the rendered issue where each message puts its own values: plain ASCII
/// that neither HTML escaping nor the CSS inliner changes, with a random part drawn for each
/// render, so no tip or article, written before, can contain one and be handed each
/// recipient's unsubscribe link or name.
struct Marks {
    unsubscribe: String,
    greeting: String,
}

impl Marks {
    fn new() -> Self {
        let nonce = fastrand::u128(..);
        Self {
            unsubscribe: format!("__digestif_{nonce:032x}_unsubscribe__"),
            greeting: format!("__digestif_{nonce:032x}_greeting__"),
        }
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Lit(String),
    Unsubscribe,
    Greeting,
}

fn segments(rendered: &str, marks: &Marks) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = rendered;
    loop {
        let next = [
            (
                rest.find(&marks.unsubscribe),
                marks.unsubscribe.as_str(),
                Segment::Unsubscribe,
            ),
            (
                rest.find(&marks.greeting),
                marks.greeting.as_str(),
                Segment::Greeting,
            ),
        ]
        .into_iter()
        .filter_map(|(at, mark, seg)| at.map(|i| (i, mark, seg)))
        .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, mark, seg)) => {
                out.push(Segment::Lit(rest[..i].to_owned()));
                out.push(seg);
                rest = &rest[i + mark.len()..];
            }
            None => {
                out.push(Segment::Lit(rest.to_owned()));
                return out;
            }
        }
    }
}

fn fill(segments: &[Segment], unsubscribe: &str, greeting: &str, cap: usize) -> String {
    let mut s = String::with_capacity(cap);
    for seg in segments {
        match seg {
            Segment::Lit(t) => s.push_str(t),
            Segment::Unsubscribe => s.push_str(unsubscribe),
            Segment::Greeting => s.push_str(greeting),
        }
    }
    s
}

struct TipView {
    title: String,
    heading: String,
    body_html: String,
    body_text: String,
    source_url: Option<String>,
}

struct ArticleView {
    title: String,
    url: String,
    summary: String,
    author: Option<String>,
    date: String,
    text: String,
}

#[derive(Template)]
#[template(path = "digest.html")]
struct DigestHtml<'a> {
    title: &'a str,
    preheader: &'a str,
    newsletter_name: &'a str,
    number: i32,
    date_line: &'a str,
    web_url: &'a str,
    greeting: &'a str,
    tips: &'a [TipView],
    articles: &'a [ArticleView],
    unsubscribe_url: &'a str,
    postal_address: &'a str,
}

#[derive(Template)]
#[template(path = "digest.txt")]
struct DigestText<'a> {
    newsletter_name: &'a str,
    number: i32,
    date_line: &'a str,
    web_url: &'a str,
    greeting: &'a str,
    tips: &'a [TipView],
    articles: &'a [ArticleView],
    links: &'a [(usize, String)],
    unsubscribe_url: &'a str,
    postal_address: &'a str,
}

/// An issue rendered once, from which every subscriber's message is cut.
#[derive(Debug, Clone)]
pub struct RenderedIssue {
    number: i32,
    subject: String,
    /// The two parts, with the marks where each recipient's values go, and encoded for the
    /// wire but for the lines those values are in.
    html: encoded::EncodedPart,
    text: encoded::EncodedPart,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    list_id: HeaderValue,
    /// The Subject when lettre may not write it ([`encoded_subject`]).
    encoded_subject: Option<HeaderValue>,
    unsubscribe_base: String,
    unsubscribe_mailbox: lettre::Address,
    domain: String,
    keys: TokenKeys,
}

/// Renders `content` for `newsletter` in the schedule's zone `zone`. `unsubscribe_mailbox` is
/// the bounce mailbox: the List-Unsubscribe mailto address is a tagged form of it
/// (`bounces+u.<tag>@…`), which the bounce pipe handles, so From and Reply-To stay for
/// people.
pub fn render_issue(
    newsletter: &Newsletter,
    keys: &TokenKeys,
    zone: chrono_tz::Tz,
    content: &IssueContent,
    unsubscribe_mailbox: &lettre::Address,
) -> Result<RenderedIssue, RenderError> {
    let mut links = LinkList::default();
    let tips: Vec<TipView> = content
        .items
        .iter()
        .filter(|i| i.kind == ItemKind::Tip)
        .map(|i| {
            let body_text = markdown::to_text(&i.body, &mut links);
            let source = i.url.as_ref().map(|u| links.add(u));
            let body_text = match source {
                Some(n) => format!("{body_text}\n\nSource: [{n}]"),
                None => body_text,
            };
            TipView {
                title: i.title.clone(),
                heading: markdown::wrap(&format!("* {}", i.title), "", "  ")
                    .trim_end()
                    .to_owned(),
                body_html: markdown::to_html(&i.body),
                body_text,
                source_url: i.url.clone(),
            }
        })
        .collect();
    let articles: Vec<ArticleView> = content
        .items
        .iter()
        .filter(|i| i.kind == ItemKind::Article)
        .map(|i| {
            let url = i.url.clone().unwrap_or_default();
            let n = links.add(&url);
            let date = i
                .published_at
                .map(|t| t.with_timezone(&zone).format("%-d %B %Y").to_string())
                .unwrap_or_default();
            let mut text = markdown::wrap(&format!("* {} [{n}]", i.title), "", "  ");
            let byline = match &i.author {
                Some(a) => format!("{a} · {date}"),
                None => date.clone(),
            };
            text.push_str(&markdown::wrap(&byline, "  ", "  "));
            if !i.body.is_empty() {
                text.push_str(&markdown::wrap(&i.body, "  ", "  "));
            }
            ArticleView {
                title: i.title.clone(),
                url,
                summary: i.body.clone(),
                author: i.author.clone(),
                date,
                text,
            }
        })
        .collect();
    let links: Vec<(usize, String)> = links.iter().map(|(n, u)| (n, u.to_owned())).collect();

    let subject = content.subject(newsletter);
    let date_line = content
        .slot
        .with_timezone(&zone)
        .format("%-d %B %Y")
        .to_string();
    let base = newsletter
        .base_url
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let web_url = format!("{base}/issues/{}", content.number);
    let preheader: String = {
        let titles: Vec<&str> = content.items.iter().map(|i| i.title.as_str()).collect();
        let joined = titles.join(" · ");
        if joined.chars().count() > 140 {
            format!("{}…", joined.chars().take(139).collect::<String>())
        } else {
            joined
        }
    };

    let marks = Marks::new();
    let html = DigestHtml {
        title: &subject,
        preheader: &preheader,
        newsletter_name: &newsletter.name,
        number: content.number,
        date_line: &date_line,
        web_url: &web_url,
        greeting: &marks.greeting,
        tips: &tips,
        articles: &articles,
        unsubscribe_url: &marks.unsubscribe,
        postal_address: &newsletter.postal_address,
    }
    .render()?;
    let html = inline_css(&html)?;

    let text = DigestText {
        newsletter_name: &newsletter.name,
        number: content.number,
        date_line: &date_line,
        web_url: &web_url,
        greeting: &marks.greeting,
        tips: &tips,
        articles: &articles,
        links: &links,
        unsubscribe_url: &marks.unsubscribe,
        postal_address: &newsletter.postal_address,
    }
    .render()?;
    let text = tidy_text(&text);

    let domain = newsletter.from.email.domain().to_owned();
    Ok(RenderedIssue {
        number: content.number,
        encoded_subject: encoded_subject(&one_line(&subject)),
        subject,
        html: encoded::EncodedPart::new(&html, &marks),
        text: encoded::EncodedPart::new(&text, &marks),
        from: newsletter.from.clone(),
        reply_to: newsletter.reply_to.clone(),
        list_id: list_id_header(&newsletter.name, &newsletter.list_id),
        unsubscribe_base: format!("{base}/unsubscribe/"),
        unsubscribe_mailbox: unsubscribe_mailbox.clone(),
        domain,
        keys: keys.clone(),
    })
}

/// Moves the `<style>` rules into `style` attributes, as mail clients that drop `<style>`
/// (Gmail's older apps, Outlook) need; `@media` rules (dark mode, phones) stay in a `<style>`.
fn inline_css(html: &str) -> Result<String, RenderError> {
    css_inline::CSSInliner::options()
        .load_remote_stylesheets(false)
        .keep_at_rules(true)
        .build()
        .inline(html)
        .map_err(|e| RenderError::Css(e.to_string()))
}

/// Collapses the blank-line runs that template tags leave behind and trims trailing spaces.
fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        // "-- " is the signature separator (RFC 3676 §4.3): mail clients fold or dim what
        // follows only when its space is there.
        let line = if line == "-- " { line } else { line.trim_end() };
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_start_matches('\n').to_owned()
}

/// `List-Id: "Backend Tips" <backend-tips.example.com>` (RFC 2919). The phrase is encoded
/// whole, as lettre encodes a mailbox's name: one quoted string, or one encoded word when
/// it is not ASCII. lettre's encoder for a free-form value would encode only the accented
/// words, inside the quotes, where RFC 2047 does not allow them.
fn list_id_header(name: &str, id: &str) -> HeaderValue {
    const NAME: &str = "List-Id";
    let encoded = encode_header(NAME, |w| {
        email_encoding::headers::quoted_string::encode(name, w)
    });
    HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(NAME),
        format!("{name} <{id}>"),
        format!("{encoded} <{id}>"),
    )
}

/// The Subject encoded whole, when it holds what a mail client would take for an encoded word
/// (`=?`): lettre writes an all-ASCII word as it is, and a title "=?utf-8?b?…?=" was then shown
/// decoded, control characters included. Otherwise `None`, and lettre writes it.
fn encoded_subject(subject: &str) -> Option<HeaderValue> {
    const NAME: &str = "Subject";
    if !subject.contains("=?") {
        return None;
    }
    let encoded = encode_header(NAME, |w| {
        email_encoding::headers::rfc2047::encode(subject, w)
    });
    Some(HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(NAME),
        subject.to_owned(),
        encoded,
    ))
}

/// A header value as `write` encodes it, folded for a header named `name`.
fn encode_header(
    name: &str,
    write: impl FnOnce(&mut email_encoding::headers::writer::EmailWriter<'_>) -> std::fmt::Result,
) -> String {
    let mut encoded = String::new();
    // Writing to a String cannot fail.
    let _ = write(&mut email_encoding::headers::writer::EmailWriter::new(
        &mut encoded,
        name.len() + 2,
        0,
        false,
    ));
    encoded
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl RenderedIssue {
    /// The issue number.
    pub fn number(&self) -> i32 {
        self.number
    }

    /// The subject line.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The one-click unsubscribe URL for a subscriber.
    pub fn unsubscribe_url(&self, subscriber_id: i64) -> String {
        format!(
            "{}{}",
            self.unsubscribe_base,
            self.keys.sign(Purpose::Unsubscribe, subscriber_id)
        )
    }

    /// The Message-ID of this issue for a subscriber: deterministic, so a resend after a crash
    /// carries the same one and a duplicate is recognisable; signed, so nobody can name
    /// another subscriber's copy in a forged complaint.
    pub fn message_id(&self, subscriber_id: i64) -> String {
        format!(
            "<{}@{}>",
            self.keys.sign_message_id(self.number, subscriber_id),
            self.domain
        )
    }

    pub(crate) fn greeting(r: &Recipient) -> String {
        match &r.name {
            Some(n) => format!("Hi {n},"),
            None => "Hi there,".to_owned(),
        }
    }

    /// The HTML part for one subscriber.
    pub fn html_for(&self, r: &Recipient) -> String {
        let url = self.unsubscribe_url(r.subscriber_id);
        self.html
            .filled(&html_escape(&url), &html_escape(&Self::greeting(r)))
    }

    /// The plain-text part for one subscriber.
    pub fn text_for(&self, r: &Recipient) -> String {
        let url = self.unsubscribe_url(r.subscriber_id);
        self.text.filled(&url, &Self::greeting(r))
    }

    /// The issue as a web page: no greeting by name, no token; the footer link leads to a page
    /// that explains how to unsubscribe.
    pub fn web_html(&self) -> String {
        let unsubscribe = self.unsubscribe_base.trim_end_matches('/');
        self.html.filled(unsubscribe, "Hi there,")
    }

    /// The complete message for one subscriber.
    pub fn message(&self, r: &Recipient) -> Result<Message, RenderError> {
        self.build(r, Bodies::Encoded, None)
    }

    /// The message, its parts either put together from the lines encoded once per issue
    /// (`Bodies::Encoded`, what is sent) or encoded whole by lettre (`Bodies::Lettre`, which
    /// the first must equal byte for byte). `fixed`: a boundary and date instead of fresh ones,
    /// so two builds can be compared.
    fn build(
        &self,
        r: &Recipient,
        bodies: Bodies,
        fixed: Option<(&str, std::time::SystemTime)>,
    ) -> Result<Message, RenderError> {
        let address = r
            .email
            .parse()
            .map_err(|_| RenderError::Address(r.subscriber_id))?;
        // Names are validated on the way in, but a row written by other means must not be able
        // to break a header (lettre panics on a line break in a display name).
        let to = Mailbox::new(r.name.as_deref().map(one_line), address);
        let token = self.keys.sign(Purpose::Unsubscribe, r.subscriber_id);
        let list_unsubscribe = format!(
            "<{}{}>, <mailto:{}+{}@{}?subject=unsubscribe>",
            self.unsubscribe_base,
            token,
            self.unsubscribe_mailbox.user(),
            self.keys.sign_unsubscribe_mail(r.subscriber_id),
            self.unsubscribe_mailbox.domain()
        );
        let mut builder = Message::builder().from(self.from.clone()).to(to);
        builder = match &self.encoded_subject {
            Some(header) => builder.raw_header(header.clone()),
            None => builder.subject(one_line(&self.subject)),
        };
        let mut builder = builder
            .message_id(Some(self.message_id(r.subscriber_id)))
            .raw_header(self.list_id.clone())
            .raw_header(raw("List-Unsubscribe", list_unsubscribe))
            .raw_header(raw(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".to_owned(),
            ));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let url = format!("{}{token}", self.unsubscribe_base);
        let greeting = Self::greeting(r);
        let (url_html, greeting_html) = (html_escape(&url), html_escape(&greeting));
        let (text, html) = match bodies {
            Bodies::Encoded => (
                match self.text.body(&url, &greeting) {
                    Ok(body) => SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(body),
                    Err(whole) => SinglePart::plain(whole),
                },
                match self.html.body(&url_html, &greeting_html) {
                    Ok(body) => SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(body),
                    Err(whole) => SinglePart::html(whole),
                },
            ),
            Bodies::Lettre => (
                SinglePart::plain(self.text.filled(&url, &greeting)),
                SinglePart::html(self.html.filled(&url_html, &greeting_html)),
            ),
        };
        let mut parts = MultiPart::alternative();
        if let Some((boundary, date)) = fixed {
            parts = parts.boundary(boundary);
            builder = builder.date(date);
        }
        Ok(builder.multipart(parts.singlepart(text).singlepart(html))?)
    }
}

/// How [`RenderedIssue::build`] encodes the two parts.
#[derive(Debug, Clone, Copy)]
enum Bodies {
    Encoded,
    #[cfg_attr(not(test), allow(dead_code))]
    Lettre,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmHtml<'a> {
    newsletter_name: &'a str,
    greeting: &'a str,
    confirm_url: &'a str,
    postal_address: &'a str,
}

#[derive(Template)]
#[template(path = "confirm.txt")]
struct ConfirmText<'a> {
    newsletter_name: &'a str,
    greeting: &'a str,
    confirm_url: &'a str,
    postal_address: &'a str,
}

/// The double opt-in email: one link that confirms this request (and no other).
pub fn confirmation_message(
    newsletter: &Newsletter,
    keys: &TokenKeys,
    r: &Recipient,
    nonce: i64,
) -> Result<Message, RenderError> {
    let base = newsletter.base_url.as_str().trim_end_matches('/');
    let confirm_url = format!(
        "{base}/confirm/{}",
        keys.sign_confirm(r.subscriber_id, nonce)
    );
    // Never the name: anyone can type anything into the sign-up form ("Hi Claim your prize at
    // evil.example,"), and this mail goes to whatever address they typed, signed with our key.
    let greeting = "Hi there,";
    let html = ConfirmHtml {
        newsletter_name: &newsletter.name,
        greeting,
        confirm_url: &confirm_url,
        postal_address: &newsletter.postal_address,
    }
    .render()?;
    let html = inline_css(&html)?;
    let text = ConfirmText {
        newsletter_name: &newsletter.name,
        greeting,
        confirm_url: &confirm_url,
        postal_address: &newsletter.postal_address,
    }
    .render()?;
    let address = r
        .email
        .parse()
        .map_err(|_| RenderError::Address(r.subscriber_id))?;
    let domain = newsletter.from.email.domain();
    let mut builder = Message::builder()
        .from(newsletter.from.clone())
        .to(Mailbox::new(None, address))
        .subject(one_line(&format!(
            "Confirm your subscription to {}",
            newsletter.name
        )))
        .message_id(Some(format!(
            "<confirm.s{}.{nonce}@{domain}>",
            r.subscriber_id
        )));
    if let Some(reply_to) = &newsletter.reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    Ok(builder.multipart(MultiPart::alternative_plain_html(text, html))?)
}

pub use crate::domain::one_line;

fn raw(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// Lines of the text part are wrapped at this width (URLs excepted).
pub const TEXT_PART_WIDTH: usize = TEXT_WIDTH;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenKey;

    fn content() -> IssueContent {
        let item = |kind, title: &str, body: &str| Item {
            kind,
            title: title.into(),
            body: body.into(),
            url: Some("https://example.org/a?b=c&d=e".into()),
            author: Some("Zoë Ümlaut".into()),
            published_at: None,
        };
        IssueContent {
            number: 7,
            slot: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            items: vec![
                item(
                    ItemKind::Tip,
                    "Read the source",
                    "Pick a library and read its **core**.\n\n. a dot line\n\n```\n  code   \n```",
                ),
                item(
                    ItemKind::Tip,
                    "Ünïcödé everywhere — «quotes»",
                    "日本語のテキスト and = signs = more",
                ),
                item(
                    ItemKind::Article,
                    "An article",
                    "A summary that is long enough to be wrapped somewhere past seventy-six characters, surely.",
                ),
            ],
        }
    }

    /// What is sent is, byte for byte, what lettre builds from the same parts: the once-per-issue
    /// encoding changes the cost, never the message.
    #[test]
    fn messages_from_parts_encoded_once_equal_lettres_own() {
        let settings = crate::config::Settings::from_toml("").expect("defaults");
        let keys = TokenKeys::new(TokenKey::new(&[7u8; 32]).expect("key"), vec![]);
        let rendered = render_issue(
            &settings.newsletter,
            &keys,
            chrono_tz::UTC,
            &content(),
            &settings.bounces.address,
        )
        .expect("render");
        let names = [
            None,
            Some("Ada Reader"),
            Some("Zoë \"Zed\" O'Brien <x>"),
            Some("漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字"),
            Some("A name long enough that the greeting line itself passes seventy-six characters"),
            Some("Trailing space "),
            Some("Two\nlines"),
        ];
        let date =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for (i, name) in names.into_iter().enumerate() {
            let r = Recipient {
                subscriber_id: 1000 + i as i64,
                email: format!("reader{i}@example.org"),
                name: name.map(str::to_owned),
            };
            let fixed = Some(("0123456789abcdefghijABCDEFGHIJ0123456789", date));
            let ours = rendered.build(&r, Bodies::Encoded, fixed).expect("ours");
            let lettre = rendered.build(&r, Bodies::Lettre, fixed).expect("lettre");
            assert_eq!(
                String::from_utf8_lossy(&ours.formatted()),
                String::from_utf8_lossy(&lettre.formatted()),
                "{name:?}"
            );
        }
    }
}
