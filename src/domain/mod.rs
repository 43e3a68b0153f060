//! Validated domain types: the only door through which outside data (CLI arguments, CSV files,
//! config values, HTTP forms) reaches the store, the renderer or the mailer.

mod content;
mod lifecycle;
mod schedule;
mod subscriber_email;
mod subscriber_name;
mod subscriber_status;
mod token;

pub use content::{
    ArticleUrl, ContentError, FeedArticle, FeedSelection, Item, ItemKind, NewArticle, NewTip,
    TipBody, Title,
};
pub use lifecycle::{DeliveryStatus, EventKind, IssueStatus};
pub use schedule::{Schedule, ScheduleError};
pub use subscriber_email::{EmailError, SubscriberEmail};
pub use subscriber_name::{NameError, SubscriberName};
pub use subscriber_status::SubscriberStatus;
pub(crate) use token::unhex;
pub use token::{MIN_SECRET_LEN, Purpose, TokenKey, TokenKeys};

/// Renders untrusted text for an error message on one line: control characters (CR, LF, NUL…)
/// and the marks that reorder a line (U+202E and the other bidi controls) come out escaped, so
/// a hostile value cannot forge extra lines in a terminal or a log, nor make one read backwards.
pub(crate) fn shown(raw: &str) -> String {
    shown_within(raw, 80)
}

/// Like [`shown`], cut at `max` characters.
pub(crate) fn shown_within(raw: &str, max: usize) -> String {
    let escaped: String = raw
        .chars()
        .map(|c| {
            if is_forbidden_char(c) || is_bidi_control(c) {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if escaped.chars().count() > max {
        let cut: String = escaped.chars().take(max).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

/// True for characters that must never reach a header or a terminal: C0/C1 controls (CR, LF,
/// NUL, ESC…), DEL, and the Unicode line and paragraph separators that some clients honour.
pub(crate) fn is_forbidden_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Unicode's bidi embeddings, overrides and isolates: each reorders everything after it up to
/// its terminator or the end of the paragraph. One left open in a feed's title reversed every
/// later title in the inbox preview, which joins them.
pub(crate) fn is_direction_override(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The invisible marks that change the direction of the text after them (Unicode's bidi
/// embeddings, overrides, isolates and marks).
fn is_bidi_control(c: char) -> bool {
    is_direction_override(c) || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// Outside text for the operator's terminal: one line (as [`one_line`]), with the marks that
/// reorder a line escaped (as [`shown`]), uncut.
pub fn on_terminal(s: &str) -> String {
    one_line(s)
        .chars()
        .map(|c| {
            if is_bidi_control(c) {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Control characters (CR, LF, NUL, ESC…) become spaces: what goes into a header, a log line
/// or an admin's terminal stays one line and cannot carry escape sequences.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if is_forbidden_char(c) { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_escapes_controls_and_the_characters_that_reorder_a_line() {
        // U+202E turns the rest of a terminal line around: "gpj.exe" reads "exe.jpg".
        let hostile = "Status: 5.1.1\u{1b}[2J\u{202e}gpj.exe\u{2066}x\u{2069}\u{200f}";
        let out = shown(hostile);
        assert_eq!(
            out,
            "Status: 5.1.1\\u{1b}[2J\\u{202e}gpj.exe\\u{2066}x\\u{2069}\\u{200f}"
        );
        assert_eq!(shown("Crème brûlée, 東京"), "Crème brûlée, 東京");
    }
}
