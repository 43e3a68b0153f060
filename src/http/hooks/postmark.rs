//! Postmark's bounce and spam complaint webhooks: HTTP basic auth with the user name and
//! password in `[hooks]` (Postmark signs nothing), a record ID never accepted twice, and the
//! record mapped onto a report. Postmark's own `MessageID` is not ours: the delivery is found
//! by our Message-ID or VERP address in the record's `Metadata` or in its `Content` (the
//! bounce or complaint as received, sent when "Include bounce content" is ticked).

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Refused, Verified, references_in, status_from, text};
use crate::config::HookSettings;
use crate::inbound::{Event, Reference, Report};

/// How long a record ID is remembered: Postmark retries a failed webhook for about a day.
const KEEP: Duration = Duration::from_secs(3 * 24 * 3600);

pub(super) fn verify(
    hooks: &HookSettings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Refused> {
    let Some(cfg) = &hooks.postmark else {
        return Err(Refused::unauthorized("hooks.postmark_* not set"));
    };
    let given = super::header_text(headers, "authorization")?;
    let given = given
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .ok_or_else(|| Refused::unauthorized("Authorization is not Basic"))?;
    let expected = format!("{}:{}", cfg.username, cfg.password.expose_secret());
    // Compared as digests: the time taken says nothing about how much of it matched.
    if Sha256::digest(&given) != Sha256::digest(expected.as_bytes()) {
        return Err(Refused::unauthorized("wrong user name or password"));
    }
    let record = super::json(body)?;
    let kind = text(&record, "RecordType").unwrap_or_default();
    let report = match kind {
        "Bounce" => bounce_report(&record),
        "SpamComplaint" => Some(Report::Complaint {
            detail: "spam complaint".into(),
        }),
        _ => None,
    };
    let Some(report) = report else {
        // Deliveries, opens, clicks, soft types we do not act on: authentic, nothing to do.
        return Ok(Verified {
            replay: None,
            events: Vec::new(),
            subscribe: None,
        });
    };
    let id = match record.get("ID") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(Refused::Malformed("a Postmark record without an ID".into())),
    };
    let mut references: Vec<Reference> = record
        .get("Metadata")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_str)
        .take(20)
        .flat_map(|v| {
            [
                Reference::MessageId(v.to_owned()),
                Reference::ReturnPath(v.to_owned()),
            ]
        })
        .collect();
    if let Some(content) = text(&record, "Content") {
        references.extend(references_in(content));
    }
    Ok(Verified {
        replay: Some((format!("{kind}:{id}"), KEEP)),
        events: vec![Event {
            report,
            references,
            via: "postmark",
        }],
        subscribe: None,
    })
}

/// A Postmark bounce `Type`: HardBounce and BadEmailAddress are mailbox errors (5.1.1 unless
/// `Details` names another status), Blocked a policy block (5.7.1), SpamComplaint a complaint;
/// SoftBounce, Transient and DnsError change nothing; other types are not bounces of a message.
fn bounce_report(record: &Value) -> Option<Report> {
    let details = text(record, "Details").map(str::to_owned);
    let (default, delay) = match text(record, "Type").unwrap_or_default() {
        "HardBounce" | "BadEmailAddress" => ("5.1.1", false),
        "Blocked" => ("5.7.1", false),
        "SoftBounce" | "Transient" | "DnsError" => ("4.0.0", true),
        "SpamComplaint" => {
            return Some(Report::Complaint {
                detail: "spam complaint".into(),
            });
        }
        _ => return None,
    };
    let status = status_from(details.as_deref(), default);
    Some(if delay || status.starts_with("4.") {
        Report::Delay { status }
    } else {
        Report::Bounce {
            status,
            diagnostic: details,
        }
    })
}
