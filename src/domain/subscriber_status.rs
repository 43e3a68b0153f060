//! `SubscriberStatus`: where a subscriber stands in their lifecycle (docs/ARCHITECTURE.md §3.2).

use std::fmt;
use std::str::FromStr;

/// The lifecycle state stored in `subscriber.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum SubscriberStatus {
    /// Added with double opt-in and not confirmed yet: receives nothing.
    Pending,
    /// Receives the digest.
    Active,
    /// Opted out: receives nothing, and is never silently re-subscribed.
    Unsubscribed,
    /// Suppressed after hard bounces.
    Bounced,
    /// Reported the mail as spam: suppressed.
    Complained,
}

impl SubscriberStatus {
    /// The text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
        }
    }
}

impl FromStr for SubscriberStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "unsubscribed" => Self::Unsubscribed,
            "bounced" => Self::Bounced,
            "complained" => Self::Complained,
            other => {
                return Err(format!(
                    "unknown subscriber status '{}'",
                    super::shown(other)
                ));
            }
        })
    }
}

impl fmt::Display for SubscriberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
