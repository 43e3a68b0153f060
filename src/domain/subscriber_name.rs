//! `SubscriberName`: a display name that is safe to put in a `To:` header and an HTML page.

use std::fmt;

use super::{is_forbidden_char, shown};

/// Longest name we keep, in characters; longer values are almost always pasted by mistake.
const MAX_CHARS: usize = 100;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// CR/LF/NUL and other controls would let a name forge headers.
    #[error("name '{0}' contains a control character")]
    ControlCharacter(String),
    /// Longer than we keep.
    #[error("name '{0}' is longer than {MAX_CHARS} characters")]
    TooLong(String),
}

/// A trimmed, non-empty display name without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberName(String);

impl SubscriberName {
    /// Validates a name; an empty or blank value means "no name" and yields `Ok(None)`.
    pub fn parse_optional(raw: &str) -> Result<Option<Self>, NameError> {
        if raw.chars().any(is_forbidden_char) {
            return Err(NameError::ControlCharacter(shown(raw)));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().count() > MAX_CHARS {
            return Err(NameError::TooLong(shown(trimmed)));
        }
        Ok(Some(Self(trimmed.to_owned())))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_blank_means_none() {
        let n = SubscriberName::parse_optional("  Zoë Müller ")
            .unwrap()
            .unwrap();
        assert_eq!(n.as_str(), "Zoë Müller");
        assert_eq!(SubscriberName::parse_optional("   ").unwrap(), None);
    }

    #[test]
    fn header_injection_is_refused() {
        let err = SubscriberName::parse_optional("Eve\r\nBcc: x@evil.example").unwrap_err();
        assert_eq!(
            err.to_string(),
            "name 'Eve\\r\\nBcc: x@evil.example' contains a control character"
        );
        assert!(SubscriberName::parse_optional("Eve\0").is_err());
        assert!(SubscriberName::parse_optional("Eve\u{2028}x").is_err());
    }

    #[test]
    fn overlong_names_are_refused() {
        assert!(SubscriberName::parse_optional(&"x".repeat(101)).is_err());
        assert!(SubscriberName::parse_optional(&"x".repeat(100)).is_ok());
    }
}
