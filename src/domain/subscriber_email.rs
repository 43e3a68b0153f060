//! `SubscriberEmail`: an address that has passed a real RFC 5322 parser and our own limits.

use std::fmt;

use email_address::{EmailAddress, Options};

use super::{is_forbidden_char, shown};

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
const MAX_LEN: usize = 254;

/// Why an address was refused; the message names the value so a CSV report reads on one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    /// Nothing but white space was given.
    #[error("the email address is empty")]
    Empty,
    /// CR, LF, NUL and friends would let a value forge mail headers.
    #[error("'{0}' contains a control character")]
    ControlCharacter(String),
    /// Longer than SMTP allows.
    #[error("'{0}' is longer than {MAX_LEN} characters")]
    TooLong(String),
    /// The parser refused it; the second field says why.
    #[error("'{0}' is not a valid email address ({1})")]
    Invalid(String, &'static str),
}

/// A subscriber's address: trimmed, with the domain lower-cased and in its ASCII form (an
/// internationalised domain as `xn--…`; domains are case-insensitive;
/// the local part is kept as given, since a few servers still treat it as case-sensitive).
/// Uniqueness in the store is on the lower-cased whole, so `Bob@x` and `bob@x` are one person.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriberEmail(String);

impl SubscriberEmail {
    /// Validates and normalises an address typed by a person or read from a file.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.chars().any(is_forbidden_char) {
            return Err(EmailError::ControlCharacter(shown(raw)));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > MAX_LEN {
            return Err(EmailError::TooLong(shown(trimmed)));
        }
        let options = Options {
            // A newsletter address needs a routable domain: `bob@localhost` is refused.
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            // `Bob <bob@x>` belongs in the name column, not here.
            allow_display_text: false,
            allow_long_local_parts: false,
        };
        let parsed = EmailAddress::parse_with_options(trimmed, options)
            .map_err(|e| EmailError::Invalid(shown(trimmed), reason(&e)))?;
        let local = parsed.local_part();
        if local.starts_with('"') {
            // Quoted local parts are legal but mangled by many clients and spreadsheets.
            return Err(EmailError::Invalid(
                shown(trimmed),
                "quoted local parts are not accepted",
            ));
        }
        // One form per domain, and the one every relay takes without SMTPUTF8: `bücher.example`
        // and `xn--bcher-kva.example` are one subscriber, stored as the latter (UTS #46, which
        // also lower-cases and refuses malformed labels).
        let domain = idna::domain_to_ascii_strict(parsed.domain())
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or(EmailError::Invalid(
                shown(trimmed),
                "the domain is not a valid internationalised name",
            ))?;
        Ok(Self(format!("{local}@{domain}")))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two addresses are compared in, here. The database lower-cases its own (its
    /// rules differ for a few letters), so this is never sent to it as a key.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

fn reason(e: &email_address::Error) -> &'static str {
    use email_address::Error as E;
    match e {
        E::MissingSeparator => "no '@'",
        E::LocalPartEmpty => "nothing before the '@'",
        E::LocalPartTooLong => "the part before the '@' is too long",
        E::DomainEmpty => "nothing after the '@'",
        E::DomainTooLong | E::SubDomainTooLong => "the domain is too long",
        E::DomainTooFew => "the domain has no dot",
        E::SubDomainEmpty | E::DomainInvalidSeparator => "the domain is malformed",
        E::UnsupportedDomainLiteral | E::InvalidIPAddress => "IP-address domains are not accepted",
        E::UnsupportedDisplayName | E::MissingDisplayName | E::MissingEndBracket => {
            "give only the address, without a display name"
        }
        E::InvalidCharacter => "it contains a character not allowed there",
        _ => "malformed",
    }
}

impl fmt::Display for SubscriberEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SubscriberEmail {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_normalised() {
        let e = SubscriberEmail::parse("  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "Ada.Lovelace@example.com");
        assert_eq!(e.key(), "ada.lovelace@example.com");
        assert!(SubscriberEmail::parse("zoë+tips@bücher.example").is_ok());
    }

    #[test]
    fn invalid_addresses_are_refused_with_the_value_named() {
        for bad in [
            "bob@",
            "not an email",
            "@example.com",
            "bob@localhost",
            "bob@@example.com",
            "Bob <bob@example.com>",
            "bob@[127.0.0.1]",
            "\"bob\"@example.com",
        ] {
            let err = SubscriberEmail::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
        assert_eq!(SubscriberEmail::parse("  "), Err(EmailError::Empty));
    }

    #[test]
    fn control_characters_are_refused_and_shown_escaped() {
        let err = SubscriberEmail::parse("bob@example.com\r\nBcc: x@evil.example").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
        assert!(msg.contains("\\r\\n"), "{msg}");
        assert!(SubscriberEmail::parse("bob\0@example.com").is_err());
    }

    #[test]
    fn overlong_addresses_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            SubscriberEmail::parse(&long),
            Err(EmailError::TooLong(_))
        ));
        let local = format!("{}@example.com", "a".repeat(65));
        assert!(SubscriberEmail::parse(&local).is_err());
    }
}
