//! Tip bodies from Markdown to email-safe HTML (raw HTML neutralised, only http(s) and mailto
//! links, images turned into links) and to readable, wrapped plain text with numbered links.

use pulldown_cmark::{Event, HeadingLevel, LinkType, Options, Parser, Tag, TagEnd};

/// Width of the plain-text part (RFC 3676 suggests under 80; 78 leaves room for quoting).
pub const TEXT_WIDTH: usize = 78;

fn parser(src: &str) -> Parser<'_> {
    Parser::new_ext(src, Options::ENABLE_STRIKETHROUGH)
}

fn safe_link(dest: &str) -> bool {
    let lower = dest.trim().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:")
}

/// Where a link goes: an email autolink (`<editor@example.com>`) comes with the bare address,
/// and pulldown-cmark adds `mailto:` only as it writes HTML.
fn target(link_type: LinkType, dest: &str) -> String {
    if link_type == LinkType::Email {
        format!("mailto:{dest}")
    } else {
        dest.to_owned()
    }
}

/// Markdown to HTML for the email and the web view. Raw HTML in the source is shown as text,
/// links other than http(s)/mailto lose their `href`, images become links with their alt text
/// (no remote images: they track readers and are blocked by most clients anyway).
pub fn to_html(src: &str) -> String {
    let mut skip_link_end = Vec::new();
    let events = parser(src).filter_map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Some(Event::Text(raw)),
        // An image becomes a link to it; a link with an unsafe target keeps only its text.
        Event::Start(
            Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }
            | Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            },
        ) => {
            let ok = safe_link(&target(link_type, &dest_url));
            skip_link_end.push(!ok);
            ok.then_some(Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }))
        }
        Event::End(TagEnd::Link | TagEnd::Image) => {
            if skip_link_end.pop().unwrap_or(false) {
                None
            } else {
                Some(Event::End(TagEnd::Link))
            }
        }
        other => Some(other),
    });
    let mut html = String::with_capacity(src.len() * 2);
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// Collects links for the "Links" list at the end of the plain-text part.
#[derive(Debug, Default)]
pub struct LinkList {
    urls: Vec<String>,
}

impl LinkList {
    /// Registers a URL and returns its 1-based number (a URL seen before keeps its number).
    pub fn add(&mut self, url: &str) -> usize {
        if let Some(i) = self.urls.iter().position(|u| u == url) {
            return i + 1;
        }
        self.urls.push(url.to_owned());
        self.urls.len()
    }

    /// The links in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        self.urls
            .iter()
            .enumerate()
            .map(|(i, u)| (i + 1, u.as_str()))
    }
}

struct Block {
    first: String,
    rest: String,
    text: String,
    preformatted: bool,
    /// List items follow each other without a blank line.
    is_item: bool,
}

/// The blocks of the plain-text rendering being built, and where the parser is in lists and
/// quotes.
#[derive(Default)]
struct TextBlocks {
    blocks: Vec<Block>,
    current: String,
    list_stack: Vec<Option<u64>>,
    item_prefix: Option<String>,
    quote_depth: usize,
}

impl TextBlocks {
    /// Ends the text gathered so far as a block, indented for the lists and quotes it is in.
    fn flush(&mut self, preformatted: bool) {
        if self.current.trim().is_empty() && self.item_prefix.is_none() {
            self.current.clear();
            return;
        }
        let quote_prefix = "> ".repeat(self.quote_depth);
        let indent = "  ".repeat(self.list_stack.len().saturating_sub(1));
        let is_item = self.item_prefix.is_some();
        let (first, rest) = match self.item_prefix.take() {
            Some(p) => (
                format!("{quote_prefix}{indent}{p}"),
                format!("{quote_prefix}{indent}{}", " ".repeat(p.chars().count())),
            ),
            None => (
                format!("{quote_prefix}{indent}"),
                format!("{quote_prefix}{indent}"),
            ),
        };
        self.blocks.push(Block {
            first,
            rest,
            text: std::mem::take(&mut self.current).trim_end().to_owned(),
            preformatted,
            is_item,
        });
    }
}

/// Markdown to plain text wrapped at [`TEXT_WIDTH`]: paragraphs, `- ` and `1. ` lists, indented
/// code, and `text [n]` for links, whose URLs are added to `links`.
pub fn to_text(src: &str, links: &mut LinkList) -> String {
    let mut w = TextBlocks::default();
    let mut link_dests: Vec<Option<String>> = Vec::new();
    let mut in_code = false;

    for event in parser(src) {
        match event {
            Event::Start(Tag::List(start)) => {
                w.flush(false);
                w.list_stack.push(start);
            }
            Event::End(TagEnd::List(_)) => {
                w.flush(false);
                w.list_stack.pop();
            }
            Event::Start(Tag::Item) => {
                w.flush(false);
                let prefix = match w.list_stack.last_mut() {
                    Some(Some(n)) => {
                        let p = format!("{n}. ");
                        *n += 1;
                        p
                    }
                    _ => "- ".to_owned(),
                };
                w.item_prefix = Some(prefix);
            }
            Event::End(TagEnd::Item) => {
                w.flush(false);
            }
            Event::Start(Tag::BlockQuote(_)) => {
                w.flush(false);
                w.quote_depth += 1;
            }
            Event::End(TagEnd::BlockQuote(_)) => {
                w.flush(false);
                w.quote_depth = w.quote_depth.saturating_sub(1);
            }
            Event::Start(Tag::CodeBlock(_)) => {
                w.flush(false);
                in_code = true;
            }
            Event::End(TagEnd::CodeBlock) => {
                let code: String = w
                    .current
                    .trim_end_matches('\n')
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect();
                w.current = code;
                w.flush(true);
                in_code = false;
            }
            Event::End(TagEnd::Paragraph) => {
                w.flush(false);
            }
            Event::Start(Tag::Heading { level, .. }) => {
                w.flush(false);
                if level <= HeadingLevel::H2 {
                    w.current.push_str("## ");
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                w.flush(false);
            }
            Event::Start(
                Tag::Link {
                    link_type,
                    dest_url,
                    ..
                }
                | Tag::Image {
                    link_type,
                    dest_url,
                    ..
                },
            ) => {
                let dest = target(link_type, &dest_url);
                link_dests.push(safe_link(&dest).then_some(dest));
            }
            Event::End(TagEnd::Link | TagEnd::Image) => {
                if let Some(Some(url)) = link_dests.pop() {
                    let n = links.add(&url);
                    w.current.push_str(&format!(" [{n}]"));
                }
            }
            Event::Start(Tag::Emphasis | Tag::Strong)
            | Event::End(TagEnd::Emphasis | TagEnd::Strong) => {
                w.current.push('*');
            }
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => w.current.push_str(&t),
            Event::Code(c) => {
                w.current.push('`');
                w.current.push_str(&c);
                w.current.push('`');
            }
            Event::SoftBreak => w.current.push(if in_code { '\n' } else { ' ' }),
            Event::HardBreak => w.current.push('\n'),
            Event::Rule => {
                w.flush(false);
                w.current.push_str("----");
                w.flush(false);
            }
            _ => {}
        }
    }
    w.flush(false);

    let mut out = String::new();
    let mut previous_was_item = false;
    for b in &w.blocks {
        let tight = b.is_item && previous_was_item;
        if !out.is_empty() && !tight {
            out.push('\n');
        }
        previous_was_item = b.is_item;
        if b.preformatted {
            for line in b.text.lines() {
                out.push_str(&b.first);
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        out.push_str(&wrap(&b.text, &b.first, &b.rest));
    }
    out.trim_end().to_owned()
}

/// Wraps text at [`TEXT_WIDTH`] with the given first-line and hanging indents. Hard line breaks
/// in the text are kept; words longer than a line (URLs) are never split.
pub fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    for (i, line) in text.split('\n').enumerate() {
        let opts = textwrap::Options::new(TEXT_WIDTH)
            .initial_indent(if i == 0 { first } else { rest })
            .subsequent_indent(rest)
            .break_words(false)
            .word_splitter(textwrap::WordSplitter::NoHyphenation);
        for l in textwrap::wrap(line, opts) {
            out.push_str(l.trim_end());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_html_is_shown_not_run() {
        let html = to_html("Hi <script>alert(1)</script> and <img src=x onerror=alert(1)>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn only_web_and_mail_links_keep_their_href() {
        let html = to_html(
            "[ok](https://example.com) [bad](javascript:alert(1)) ![pic](https://example.com/p.png)",
        );
        assert!(html.contains("href=\"https://example.com\""), "{html}");
        assert!(!html.contains("javascript"), "{html}");
        assert!(html.contains(">bad<") || html.contains(" bad "), "{html}");
        assert!(!html.contains("<img"), "{html}");
    }

    #[test]
    fn an_email_autolink_is_a_mailto_link_in_both_parts() {
        let html = to_html("Write to <editor@example.com>.");
        assert!(
            html.contains("href=\"mailto:editor@example.com\""),
            "{html}"
        );
        let mut links = LinkList::default();
        let text = to_text("Write to <editor@example.com>.", &mut links);
        assert!(text.contains("editor@example.com [1]"), "{text}");
        assert_eq!(
            links.iter().collect::<Vec<_>>(),
            vec![(1, "mailto:editor@example.com")]
        );
    }

    #[test]
    fn plain_text_numbers_links_and_wraps() {
        let mut links = LinkList::default();
        let src = "Read [the guide](https://example.com/guide) today. ".repeat(4)
            + "\n\n- first item\n- second item with `code`\n\n1. one\n2. two";
        let text = to_text(&src, &mut links);
        assert!(
            text.lines().all(|l| l.chars().count() <= TEXT_WIDTH),
            "{text}"
        );
        assert!(text.contains("the guide [1]"), "{text}");
        assert!(
            text.contains("\n- first item\n- second item with `code`\n"),
            "{text}"
        );
        assert!(text.contains("1. one\n2. two"), "{text}");
        assert_eq!(links.iter().count(), 1);
    }

    #[test]
    fn a_lone_dot_line_survives() {
        let mut links = LinkList::default();
        let text = to_text("before\n\n.\n\nafter", &mut links);
        assert_eq!(text, "before\n\n.\n\nafter");
    }
}
