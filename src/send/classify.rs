//! What an SMTP reply (or its absence) means for a delivery: sent, retry later, bounced, or
//! failed for good, by reply code and RFC 3463 enhanced status code.

use crate::domain::one_line;

/// The fate of one send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility for the message (a 2xx after the final dot).
    Sent,
    /// Try again later: a 4xx reply, a dropped connection, a timeout.
    Transient(Failure),
    /// The mailbox does not exist or is disabled (5.1.x, 5.2.1): counts toward suppression.
    Bounced(Failure),
    /// Refused for good for another reason, policy (5.7.x) among them: the subscriber is kept.
    Failed(Failure),
}

/// Why an attempt did not succeed; kept on the delivery row, and fed to the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The SMTP reply code, when there was a reply.
    pub code: Option<u16>,
    /// The enhanced status code (`5.1.1`), when the server gave one.
    pub enhanced: Option<String>,
    /// What went wrong, short; the server's text may name the recipient, so it goes to the
    /// database row, never to the log.
    pub reason: String,
    /// The connection, the server's policy or something every recipient would get is the
    /// problem, or may be (a 5xx without an enhanced code), not this recipient: the breaker and
    /// the relay's health count these, and failover tries another relay.
    pub systemic: bool,
}

impl Failure {
    /// A refusal whose enhanced code says the reason is the relay's own (5.7, 5.3, 5.5, 5.6),
    /// not the subscriber's: resuming the issue sends it again. A bare 5xx counts for the
    /// breaker but may be one mailbox's (sent again on every resume, a list's dead addresses
    /// would trip the breaker again and again).
    pub fn relays_own(&self) -> bool {
        self.systemic && self.enhanced.is_some()
    }
}

/// Finds an RFC 3463 enhanced status code (`class.subject.detail`) in a reply text.
pub fn enhanced_code(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ':' | '(' | ')' | ',' | ';' | '[' | ']'))
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_owned)
}

/// Classifies a negative SMTP reply: `code` and the reply `text`.
pub fn classify_reply(code: u16, text: &str) -> Outcome {
    // The relay's text is stored and shown to the admin: one line, no escape sequences.
    let reason = truncate(&one_line(&format!("{code} {}", text.trim())), 400);
    classify(Some(code), enhanced_code(text), reason)
}

/// Classifies what a delivery status notification reports (RFC 3464: its `Status` and
/// `Diagnostic-Code`) by the same rules as the synchronous reply it stands for: a relayed
/// `5.7.1` fails the delivery and suppresses nobody, exactly as a `5.7.1` answered to us would.
pub fn classify_dsn(status: &str, diagnostic: Option<&str>) -> Outcome {
    // "smtp; 550 5.1.1 <bob@…>: user unknown": the reply code, when the MTA passed one on.
    let code = diagnostic.and_then(|d| {
        let reply = d.split_once(';').map_or(d, |(_, r)| r).trim_start();
        reply.get(..3)?.parse::<u16>().ok()
    });
    let enhanced = enhanced_code(status).or_else(|| diagnostic.and_then(enhanced_code));
    let reason = truncate(
        &one_line(&format!(
            "DSN {status}{}",
            diagnostic.map(|d| format!(": {d}")).unwrap_or_default()
        )),
        400,
    );
    match classify(code, enhanced, reason) {
        // Reported after the fact, a refusal of our sender ended that delivery; it is not
        // retried by a report, and it is still not the subscriber's bounce.
        Outcome::Transient(f) if f.enhanced.as_deref().is_some_and(about_the_sender) => {
            Outcome::Failed(f)
        }
        other => other,
    }
}

/// RFC 3463's X.1.7 (the sender's mailbox address is bad) and X.1.8 (the sender's system
/// address is bad): about our sender, wherever they come (Postfix refuses the sender at RCPT
/// by default), never about the recipient.
fn about_the_sender(enhanced: &str) -> bool {
    matches!(enhanced, "5.1.7" | "5.1.8")
}

/// The one rule for reply and DSN alike.
fn classify(code: Option<u16>, enhanced: Option<String>, reason: String) -> Outcome {
    let failure = |systemic| Failure {
        code,
        enhanced: enhanced.clone(),
        reason: reason.clone(),
        systemic,
    };
    if code.is_some_and(|c| (400..500).contains(&c)) {
        // A temporary failure about our sender (Postfix's 450 4.1.8 when the bounce domain's
        // DNS does not answer) is every message's: the breaker counts it.
        let sender = enhanced
            .as_deref()
            .is_some_and(|e| matches!(e, "4.1.7" | "4.1.8"));
        return Outcome::Transient(failure(sender));
    }
    match enhanced.as_deref() {
        Some(e) if e.starts_with("4.") => Outcome::Transient(failure(false)),
        // Retried once the operator has fixed the sender, and a sign of trouble for the
        // breaker, like a refusal of MAIL FROM.
        Some(e) if about_the_sender(e) => Outcome::Transient(failure(true)),
        Some(e) if e.starts_with("5.1.") || e == "5.2.1" => Outcome::Bounced(failure(false)),
        // A policy block (5.7), or a refusal of the message itself or of how we send it: the
        // relay's mail system (5.3: "552 5.3.4 message too big"), the protocol (5.5), the
        // content (5.6). Every recipient gets the same: the breaker counts them.
        Some(e)
            if ["5.7.", "5.3.", "5.5.", "5.6."]
                .iter()
                .any(|p| e.starts_with(p)) =>
        {
            Outcome::Failed(failure(true))
        }
        // Without an enhanced code a 5xx does not say whether the mailbox is gone or the
        // message was refused (a bare "550" is also what many spam filters answer), and
        // suppressing a real reader is the costlier mistake: it fails, the subscriber stays.
        // The breaker counts it: through a relay it is mostly the relay's own refusal (SES's
        // "554 Message rejected: Email address is not verified"), and only a run of them trips.
        None => Outcome::Failed(failure(true)),
        Some(_) => Outcome::Failed(failure(false)),
    }
}

/// A refusal of MAIL FROM is about our sender (a blocked account, the bounce domain's DNS),
/// never about the recipient, whatever its code says: Office 365 answers a
/// blocked account with "550 5.1.8". So it never counts toward the subscriber's suppression and
/// never fails the delivery for good: it is retried, and the breaker and failover count it.
pub fn refused_sender(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Sent => Outcome::Sent,
        Outcome::Transient(f) | Outcome::Bounced(f) | Outcome::Failed(f) => {
            Outcome::Transient(Failure {
                reason: truncate(
                    &format!("the relay refused our sender (MAIL FROM): {}", f.reason),
                    400,
                ),
                systemic: true,
                ..f
            })
        }
    }
}

/// A 3xx where a completion was due (the reply to the final dot): the relay has not said it
/// took the message, nor refused it. Retried like a connection failure, and a sign of a broken
/// relay for the breaker.
pub fn not_a_completion(code: u16, text: &str) -> Outcome {
    Outcome::Transient(Failure {
        code: Some(code),
        enhanced: None,
        reason: truncate(
            &one_line(&format!(
                "the relay answered the end of the message with {code} {}, not a completion",
                text.trim()
            )),
            400,
        ),
        systemic: true,
    })
}

/// A failure with no SMTP reply: refused connection, reset, timeout, TLS trouble. Always
/// worth retrying, and a sign of trouble for the breaker.
pub fn connection_failure(reason: &str) -> Outcome {
    Outcome::Transient(Failure {
        code: None,
        enhanced: None,
        // lettre's parse errors quote the relay's raw line: one line, no escape sequences.
        reason: truncate(&one_line(reason), 400),
        systemic: true,
    })
}

/// Shortens `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_or_dsn_with_escape_sequences_is_stored_as_one_plain_line() {
        for outcome in [
            classify_reply(550, "5.1.1 \u{1b}[2J\u{1b}]0;pwned\u{7}\r\nno such user"),
            classify_dsn("5.1.1", Some("smtp; 550 \u{1b}[31mgone\u{9b}1m")),
        ] {
            let Outcome::Bounced(f) = outcome else {
                panic!("{outcome:?}");
            };
            assert!(!f.reason.chars().any(char::is_control), "{:?}", f.reason);
        }
    }

    #[test]
    fn enhanced_codes_are_found_in_reply_text() {
        assert_eq!(
            enhanced_code("5.1.1 <bob@x>: user unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            enhanced_code("Requested action aborted (4.7.0)").as_deref(),
            Some("4.7.0")
        );
        assert_eq!(enhanced_code("mailbox unavailable"), None);
        assert_eq!(enhanced_code("version 1.2.3 of nothing"), None);
    }

    #[test]
    fn replies_map_to_outcomes() {
        assert!(matches!(
            classify_reply(450, "4.2.0 try later"),
            Outcome::Transient(_)
        ));
        assert!(matches!(
            classify_reply(421, "service closing"),
            Outcome::Transient(_)
        ));
        assert!(matches!(
            classify_reply(550, "5.1.1 user unknown"),
            Outcome::Bounced(_)
        ));
        assert!(matches!(
            classify_reply(550, "5.2.1 mailbox disabled"),
            Outcome::Bounced(_)
        ));
        match classify_reply(550, "no such user") {
            Outcome::Failed(f) => assert!(f.systemic, "a run of them trips the breaker"),
            other => panic!("without an enhanced code nobody is suppressed: {other:?}"),
        }
        match classify_reply(552, "5.2.2 mailbox full") {
            Outcome::Failed(f) => assert!(!f.systemic, "one mailbox's trouble"),
            other => panic!("{other:?}"),
        }
        for (code, text) in [
            (552, "5.3.4 Message size exceeds fixed limit"),
            (554, "5.6.0 Message content rejected"),
            (501, "5.5.2 Syntax error"),
        ] {
            match classify_reply(code, text) {
                Outcome::Failed(f) => assert!(f.systemic, "every recipient's: {text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match classify_reply(550, "5.7.1 rejected by policy") {
            Outcome::Failed(f) => assert!(f.systemic, "policy blocks trip the breaker"),
            other => panic!("{other:?}"),
        }
        // About our sender, whatever the step: every message's trouble, nobody's bounce.
        for (code, text) in [
            (550, "5.1.8 <bounces@example.com>: Sender address rejected"),
            (553, "5.1.7 bad sender address syntax"),
            (
                450,
                "4.1.8 <bounces@example.com>: Sender address rejected: Domain not found",
            ),
        ] {
            match classify_reply(code, text) {
                Outcome::Transient(f) => assert!(f.systemic, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for (status, diagnostic, bounced) in [
            (
                "5.1.1",
                Some("smtp; 550 5.1.1 <a@b>: Recipient address rejected"),
                true,
            ),
            ("5.2.1", None, true),
            (
                "5.7.1",
                Some("smtp; 554 5.7.1 <a@b>: Relay access denied"),
                false,
            ),
            (
                "5.2.0",
                Some("x-postfix; cannot update mailbox: Permission denied"),
                false,
            ),
            ("5.0.0", None, false),
        ] {
            let outcome = classify_dsn(status, diagnostic);
            assert_eq!(
                matches!(outcome, Outcome::Bounced(_)),
                bounced,
                "{status}: {outcome:?}"
            );
            if !bounced {
                assert!(
                    matches!(outcome, Outcome::Failed(_)),
                    "{status}: {outcome:?}"
                );
            }
        }
        assert!(matches!(classify_dsn("4.4.7", None), Outcome::Transient(_)));
        match connection_failure("connection reset") {
            Outcome::Transient(f) => assert!(f.systemic && f.code.is_none()),
            other => panic!("{other:?}"),
        }
    }
}
