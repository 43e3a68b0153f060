//! SendGrid's signed event webhook: an ECDSA P-256 signature (ASN.1 DER, base64, header
//! `X-Twilio-Email-Event-Webhook-Signature`) over SHA-256 of the timestamp header followed by
//! the raw body, checked with ring against the verification key in `[hooks]`; a timestamp
//! within five minutes; the same signature never accepted twice. `bounce` and `dropped` are
//! bounces (by their status), `deferred` a delay, `spamreport` a complaint. SendGrid passes on
//! our Message-ID as `smtp-id`.

use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

use super::{FRESH, Refused, Verified, fresh_unix, header_text, json, status_from, text};
use crate::config::HookSettings;
use crate::inbound::{Event, Reference, Report};

const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";

pub(super) fn verify(
    hooks: &HookSettings,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, Refused> {
    let Some(point) = &hooks.sendgrid else {
        return Err(Refused::unauthorized("hooks.sendgrid_public_key not set"));
    };
    let signature = header_text(headers, SIGNATURE)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Refused::unauthorized("a signature that is not base64"))?;
    let timestamp = header_text(headers, TIMESTAMP)?;
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(&signed, &signature)
        .map_err(|_| Refused::unauthorized("the SendGrid signature does not verify"))?;
    fresh_unix(timestamp, now)?;
    let events = json(body)?;
    let Some(events) = events.as_array() else {
        return Err(Refused::Malformed(
            "a SendGrid batch is a JSON array".into(),
        ));
    };
    // The request is named by what was signed, not by the signature: an ECDSA signature has
    // a twin (s and n - s) that verifies as well, and would pass for a new request.
    let token: String = sha2::Sha256::digest(&signed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Verified {
        replay: Some((token, FRESH * 2 + Duration::from_secs(60))),
        events: events.iter().filter_map(sendgrid_event).collect(),
        subscribe: None,
    })
}

fn sendgrid_event(event: &Value) -> Option<Event> {
    let reason = text(event, "reason").map(str::to_owned);
    let given = text(event, "status")
        .map(str::trim)
        .filter(|s| crate::send::classify::enhanced_code(s).as_deref() == Some(*s))
        .map(str::to_owned);
    let report = match text(event, "event").unwrap_or_default() {
        "bounce" => {
            let status = given.unwrap_or_else(|| status_from(reason.as_deref(), "5.0.0"));
            Report::Bounce {
                status,
                diagnostic: reason,
            }
        }
        "dropped" => {
            // Not sent at all. "Bounced Address": SendGrid's suppression list, after a hard
            // bounce; anything else (unsubscribed, invalid, spam reporter) fails the delivery
            // and keeps the subscriber.
            let status = if reason.as_deref() == Some("Bounced Address") {
                "5.1.1"
            } else {
                "5.0.0"
            };
            Report::Bounce {
                status: status.into(),
                diagnostic: reason.map(|r| format!("dropped: {r}")),
            }
        }
        "deferred" => Report::Delay {
            status: given.unwrap_or_else(|| status_from(reason.as_deref(), "4.0.0")),
        },
        "spamreport" => Report::Complaint {
            detail: "spam report".into(),
        },
        _ => return None,
    };
    let references = text(event, "smtp-id")
        .map(|id| vec![Reference::MessageId(id.to_owned())])
        .unwrap_or_default();
    Some(Event {
        report,
        references,
        via: "sendgrid",
    })
}
