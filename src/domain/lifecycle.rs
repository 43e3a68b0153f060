//! The issue and delivery lifecycles of docs/ARCHITECTURE.md §3.3 and §3.4 as types: each
//! state's text is written once here, and it is the text the SQL CHECK constraints allow.

use std::fmt;
use std::str::FromStr;

/// An enum whose variants are stored as fixed lower-case words.
macro_rules! stored_as_text {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every state, in the order written here.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " '{}'"), super::shown(other))),
                }
            }
        }

        /// For `#[sqlx(try_from = "String")]`: rows decode straight into the type.
        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_as_text! {
    /// Where one subscriber's copy of an issue stands (`delivery.status`).
    DeliveryStatus, "delivery status" {
        /// Waiting to be claimed.
        Pending => "pending",
        /// Claimed by a worker, which may be sending it now.
        Sending => "sending",
        /// The server took it (250 after the final dot).
        Sent => "sent",
        /// A temporary failure; tried again at `next_attempt_at`.
        Deferred => "deferred",
        /// The mailbox does not exist: counts toward suppression.
        Bounced => "bounced",
        /// Refused for good, or given up on; the subscriber is kept.
        Failed => "failed",
        /// Not sent: the subscriber left after fan-out.
        Skipped => "skipped",
    }
}

stored_as_text! {
    /// Where an issue stands (`issue.status`).
    IssueStatus, "issue status" {
        /// Deliveries are being worked.
        Sending => "sending",
        /// Every delivery is settled.
        Sent => "sent",
        /// The breaker stopped it; it resumes on its own or with `issue resume`.
        Paused => "paused",
        /// The slot had nothing to send; no deliveries.
        Skipped => "skipped",
    }
}

stored_as_text! {
    /// What happened to a subscriber (`subscriber_event.kind`): their consent and lifecycle
    /// history, kept as evidence.
    EventKind, "event kind" {
        /// Added (by an operator, an import or the sign-up form; pending when unconfirmed).
        Subscribed => "subscribed",
        /// Double opt-in completed.
        Confirmed => "confirmed",
        /// Left (a link, one-click, a mail, or an operator).
        Unsubscribed => "unsubscribed",
        /// Confirmed again after leaving.
        Resubscribed => "resubscribed",
        /// A hard bounce (at send time or a later DSN), with the suppression it caused.
        Bounced => "bounced",
        /// A spam complaint (ARF); suppressed for good.
        Complained => "complained",
        /// Allowed by the schema; nothing records it yet.
        NameChanged => "name_changed",
        /// A confirmation mail went out.
        ConfirmationSent => "confirmation_sent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_text() {
        use DeliveryStatus as D;
        for &s in D::ALL {
            assert_eq!(s.as_str().parse::<D>(), Ok(s));
        }
        for &s in IssueStatus::ALL {
            assert_eq!(IssueStatus::try_from(s.to_string()), Ok(s));
        }
        for &k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            // JSON output spells each kind as the database does.
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(
            "lost".parse::<D>(),
            Err("unknown delivery status 'lost'".to_owned())
        );
    }
}
