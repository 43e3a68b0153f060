//! The generic webhook, for a relay or a script of your own: a JSON body signed with the shared
//! secret in `hooks.generic_secret`, `X-Digestif-Signature: t=<unix time>,v1=<hex>` where v1 is
//! HMAC-SHA256 of `<t>.<body>`; t within five minutes; the same signature never accepted twice.
//!
//! The body: `{"events": [{"type": "bounce" | "delay" | "complaint", "message_id": "<our
//! Message-ID>", "return_path": "<our VERP address>", "status": "5.1.1", "diagnostic": "smtp;
//! 550 5.1.1 user unknown"}]}` (or one such object alone); `message_id` or `return_path` names
//! the delivery.

use std::time::Duration;

use axum::http::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{FRESH, Refused, Verified, fresh_unix, header_text, hmac_ok, json, text, unhex};
use crate::config::HookSettings;
use crate::inbound::{Event, Reference, Report};

pub const HEADER: &str = "x-digestif-signature";

pub(super) fn verify(
    hooks: &HookSettings,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, Refused> {
    let Some(secret) = &hooks.generic else {
        return Err(Refused::unauthorized("hooks.generic_secret not set"));
    };
    let header = header_text(headers, HEADER)?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim()),
            Some(("v1", v)) => v1 = unhex(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(Refused::unauthorized(format!(
            "{HEADER} without t= and v1="
        )));
    };
    if !hmac_ok(
        secret.expose_secret().as_bytes(),
        &[t.as_bytes(), b".", body],
        &v1,
    ) {
        return Err(Refused::unauthorized("the signature does not verify"));
    }
    fresh_unix(t, now)?;
    let payload = json(body)?;
    let list = match payload.get("events") {
        Some(Value::Array(events)) => events.iter().collect(),
        _ => vec![&payload],
    };
    let events = list
        .into_iter()
        .map(generic_event)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verified {
        replay: Some((
            v1.iter().map(|b| format!("{b:02x}")).collect(),
            FRESH * 2 + Duration::from_secs(60),
        )),
        events,
        subscribe: None,
    })
}

fn generic_event(event: &Value) -> Result<Event, Refused> {
    let status = text(event, "status").map(|s| s.trim().to_owned());
    let diagnostic = text(event, "diagnostic").map(str::to_owned);
    let report = match text(event, "type").unwrap_or_default() {
        "bounce" => Report::Bounce {
            status: status.ok_or_else(|| Refused::Malformed("a bounce without a status".into()))?,
            diagnostic,
        },
        "delay" => Report::Delay {
            status: status.unwrap_or_else(|| "4.0.0".into()),
        },
        "complaint" => Report::Complaint {
            detail: "complaint".into(),
        },
        other => {
            return Err(Refused::Malformed(format!(
                "type '{}': expected bounce, delay or complaint",
                crate::domain::shown(&crate::send::classify::truncate(other, 40))
            )));
        }
    };
    let mut references = Vec::new();
    if let Some(id) = text(event, "message_id") {
        references.push(Reference::MessageId(id.to_owned()));
    }
    if let Some(path) = text(event, "return_path") {
        references.push(Reference::ReturnPath(path.to_owned()));
    }
    Ok(Event {
        report,
        references,
        via: "generic",
    })
}
