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
/// come out escaped, so a hostile value cannot forge extra lines in a terminal or a log.
pub(crate) fn shown(raw: &str) -> String {
    shown_within(raw, 80)
}

/// Like [`shown`], cut at `max` characters.
pub(crate) fn shown_within(raw: &str, max: usize) -> String {
    let escaped: String = raw
        .chars()
        .map(|c| {
            if is_forbidden_char(c) {
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

/// Control characters (CR, LF, NUL, ESC…) become spaces: what goes into a header, a log line
/// or an admin's terminal stays one line and cannot carry escape sequences.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if is_forbidden_char(c) { ' ' } else { c })
        .collect()
}
