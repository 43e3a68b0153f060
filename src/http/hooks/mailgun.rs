//! Mailgun's webhooks: HMAC-SHA256 of `timestamp` + `token` under the webhook signing key, a
//! timestamp within five minutes, and a token never accepted twice (kept in Postgres, so a
//! restart or a second `serve` does not forget it). `failed` with severity `permanent` is a
//! bounce, `temporary` a delay, `complained` a complaint. Mailgun passes on our Message-ID
//! (`message.headers.message-id`) and the envelope sender we gave it (`envelope.sender`).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use super::{FRESH, Refused, Verified, fresh_unix, hmac_ok, json, status_from, text, unhex};
use crate::config::HookSettings;
use crate::inbound::{Event, Reference, Report};

pub(super) fn verify(
    hooks: &HookSettings,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, Refused> {
    let Some(key) = &hooks.mailgun else {
        return Err(Refused::unauthorized("hooks.mailgun_signing_key not set"));
    };
    let payload = json(body).map_err(|_| Refused::unauthorized("not JSON: no signature"))?;
    let signed = payload.get("signature").unwrap_or(&Value::Null);
    let timestamp =
        text(signed, "timestamp").ok_or_else(|| Refused::unauthorized("no signature.timestamp"))?;
    let token = text(signed, "token").ok_or_else(|| Refused::unauthorized("no signature.token"))?;
    let signature = text(signed, "signature")
        .and_then(unhex)
        .ok_or_else(|| Refused::unauthorized("no signature.signature in hex"))?;
    if !hmac_ok(
        key.expose_secret().as_bytes(),
        &[timestamp.as_bytes(), token.as_bytes()],
        &signature,
    ) {
        return Err(Refused::unauthorized(
            "the Mailgun signature does not verify",
        ));
    }
    fresh_unix(timestamp, now)?;
    // Mailgun signs only the timestamp and token, not the event: the event is trusted as
    // Mailgun's because the token is used once and only Mailgun could sign it.
    let event = payload.get("event-data").unwrap_or(&Value::Null);
    Ok(Verified {
        replay: Some((token.to_owned(), FRESH * 2 + Duration::from_secs(60))),
        events: mailgun_event(event).into_iter().collect(),
        subscribe: None,
    })
}

fn mailgun_event(event: &Value) -> Option<Event> {
    let report = match text(event, "event").unwrap_or_default() {
        "failed" => {
            let status = event.get("delivery-status").unwrap_or(&Value::Null);
            let code = status.get("code").and_then(Value::as_u64);
            let message = [text(status, "message"), text(status, "description")]
                .into_iter()
                .flatten()
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let diagnostic = match code {
                Some(c) if (200..600).contains(&c) => format!("smtp; {c} {message}"),
                _ => message,
            };
            let diagnostic = (!diagnostic.trim().is_empty()).then_some(diagnostic);
            if text(event, "severity") == Some("permanent") {
                let default = match text(event, "reason") {
                    // Mailgun did not send: the address bounced before (its suppression list).
                    Some("suppress-bounce") => "5.1.1",
                    _ => "5.0.0",
                };
                Report::Bounce {
                    status: status_from(diagnostic.as_deref(), default),
                    diagnostic,
                }
            } else {
                Report::Delay {
                    status: status_from(diagnostic.as_deref(), "4.0.0"),
                }
            }
        }
        "complained" => Report::Complaint {
            detail: "complaint".into(),
        },
        _ => return None,
    };
    let message = event.get("message").unwrap_or(&Value::Null);
    let mut references = Vec::new();
    if let Some(id) = message.get("headers").and_then(|h| text(h, "message-id")) {
        references.push(Reference::MessageId(id.to_owned()));
    }
    if let Some(sender) = event.get("envelope").and_then(|e| text(e, "sender")) {
        references.push(Reference::ReturnPath(sender.to_owned()));
    }
    Some(Event {
        report,
        references,
        via: "mailgun",
    })
}
