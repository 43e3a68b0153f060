//! Bounce and complaint webhooks of hosted relays on `serve`: `POST /hooks/<provider>` for
//! Amazon SES through SNS, Postmark, Mailgun, SendGrid and a generic signed JSON form. Each
//! request must prove its sender (signature or basic auth), be fresh and not seen before, or it
//! gets 401 and changes nothing (503 while an earlier attempt of the same request is still
//! being recorded, so the provider comes back); what it reports goes through the same rules
//! as a DSN or ARF by mail (`inbound::record`), matched to a delivery by our Message-ID or
//! VERP tag only.

mod generic;
mod mailgun;
mod postmark;
mod sendgrid;
pub mod sns;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::http::AppState;
use crate::inbound::{self, Event, Reference};
use crate::store;
use crate::store::hooks::Claim;

/// The largest body a webhook may send; more gets 413. SendGrid's batches stay well under it.
pub const MAX_BODY: usize = 1024 * 1024;

/// How old a signed timestamp may be (and how far ahead of our clock): Mailgun, SendGrid and
/// the generic form.
const FRESH: Duration = Duration::from_secs(5 * 60);

/// What this process keeps between webhook requests: SNS signing certificates.
pub struct Hooks {
    pub sns: sns::Certificates,
}

impl Hooks {
    /// Certificates fetched from AWS itself (the only way the `digestif` binary builds it).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sns: sns::Certificates::new(sns::CertFetcher::aws()?),
        })
    }

    /// With this certificate fetcher (tests: see [`sns::CertFetcher::for_tests`]).
    pub fn with_fetcher(fetcher: sns::CertFetcher) -> Self {
        Self {
            sns: sns::Certificates::new(fetcher),
        }
    }
}

/// Why a request is turned away.
#[derive(Debug)]
pub(crate) enum Refused {
    /// 401: not proved to come from the provider, stale, or a replay. The reason goes to the
    /// log only; the answer says no more than "unauthorized".
    Unauthorized(String),
    /// 400: authentic, but not something we can read.
    Malformed(String),
    /// 503: not proved yet because something it needs did not answer (SNS's certificate):
    /// the provider tries again.
    Unavailable(String),
}

impl Refused {
    fn unauthorized(why: impl Into<String>) -> Self {
        Self::Unauthorized(why.into())
    }
}

/// An authenticated request: what it reports, and the token that marks it as used.
pub(crate) struct Verified {
    /// `(token, how long to remember it)`: a second request with it is a replay.
    pub replay: Option<(String, Duration)>,
    pub events: Vec<Event>,
    /// An SNS subscription to confirm (by GET) once the request is claimed.
    pub subscribe: Option<url::Url>,
}

/// `POST /hooks/{provider}`.
pub async fn receive(
    State(app): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let hooks = &app.settings.hooks;
    let configured = match provider.as_str() {
        "ses" => hooks.ses.is_some(),
        "postmark" => hooks.postmark.is_some(),
        "mailgun" => hooks.mailgun.is_some(),
        "sendgrid" => hooks.sendgrid.is_some(),
        "generic" => hooks.generic.is_some(),
        _ => false,
    };
    if !configured {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return too_large();
    };
    let now = chrono::Utc::now();
    let verdict = match provider.as_str() {
        "ses" => sns::verify(&app, &body, now).await,
        "postmark" => postmark::verify(&app.settings.hooks, &headers, &body),
        "mailgun" => mailgun::verify(&app.settings.hooks, &body, now),
        "sendgrid" => sendgrid::verify(&app.settings.hooks, &headers, &body, now),
        _ => generic::verify(&app.settings.hooks, &headers, &body, now),
    };
    let verified = match verdict {
        Ok(v) => v,
        Err(Refused::Unauthorized(why)) => return unauthorized(&provider, &why),
        Err(Refused::Malformed(why)) => {
            tracing::warn!(provider, "webhook refused (400): {why}");
            return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
        }
        Err(Refused::Unavailable(why)) => {
            tracing::warn!(provider, "webhook answered 503 to come back: {why}");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response();
        }
    };
    // On a task of its own: a request cut short (its timeout, the provider hanging up) must
    // not leave its replay token claimed with its events undone, or the provider's retry of
    // the very same request would be refused as a replay and the events lost.
    let task = tokio::spawn(async move {
        let pool = &app.pool;
        let mut claim = None;
        if let Some((token, _)) = &verified.replay {
            match store::hooks::claim(pool, &provider, token).await {
                Ok(Claim::New(id)) => claim = Some((token, id)),
                Ok(Claim::Replay) => {
                    return unauthorized(&provider, "a replay: this request was seen before");
                }
                // Not a 401: the attempt in progress may yet fail, and a provider that takes
                // a 401 as final would never send the events again.
                Ok(Claim::InProgress) => {
                    return unavailable(
                        &provider,
                        &anyhow::anyhow!("an earlier attempt of this request is still running"),
                    );
                }
                Err(e) => return unavailable(&provider, &e.into()),
            }
        }
        match act(&app, &provider, &verified).await {
            Ok(summary) => {
                if let Some((token, keep)) = &verified.replay
                    && let Err(e) = store::hooks::acted_on(pool, &provider, token, *keep).await
                {
                    // Recorded all the same; a replay after the claim's short hold is acted
                    // on again, which counts nothing twice.
                    tracing::warn!(provider, "webhook: cannot mark its token used: {e}");
                }
                (StatusCode::OK, summary).into_response()
            }
            Err(e) => {
                // Not acted on: the provider's retry of this very request must get through.
                if let Some((token, id)) = claim
                    && let Err(release) = store::hooks::release(pool, &provider, token, id).await
                {
                    tracing::warn!(
                        provider,
                        "webhook: cannot release its replay token: {release}"
                    );
                }
                unavailable(&provider, &e)
            }
        }
    });
    match task.await {
        Ok(response) => response,
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not recorded: {e}\n"),
        )
            .into_response(),
    }
}

/// Does what an authenticated request says: confirms an SNS subscription, records each event.
async fn act(app: &AppState, provider: &str, verified: &Verified) -> anyhow::Result<String> {
    if let Some(url) = &verified.subscribe {
        app.hooks.sns.confirm(url).await?;
        tracing::info!(provider, "webhook: SNS subscription confirmed");
        return Ok("subscription confirmed\n".into());
    }
    let mut recorded = 0;
    for event in &verified.events {
        let handled = inbound::record(&app.pool, &app.settings, &app.keys, event).await?;
        if !matches!(
            handled,
            inbound::Handled::Ignored(_) | inbound::Handled::Delayed(_)
        ) {
            recorded += 1;
        }
        tracing::info!(provider, "webhook: {handled}");
    }
    Ok(format!(
        "ok: {} event(s), {recorded} recorded\n",
        verified.events.len()
    ))
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONNECTION, "close")],
        format!("body larger than {MAX_BODY} bytes\n"),
    )
        .into_response()
}

fn unauthorized(provider: &str, why: &str) -> Response {
    tracing::warn!(provider, "webhook refused (401): {why}");
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    if provider == "postmark" {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"digestif hooks\""),
        );
    }
    response
}

/// 503, so the provider tries again later.
fn unavailable(provider: &str, e: &anyhow::Error) -> Response {
    if e.downcast_ref::<inbound::NotYetRecorded>().is_some() {
        // Expected now and then (a bounce that outruns its `sent` record), not a fault.
        tracing::info!(provider, "webhook answered 503 to come back: {e}");
    } else {
        tracing::error!(provider, "webhook failed: {e:#}");
    }
    (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
}

// ---- shared by the providers ------------------------------------------------------------------

/// Parses a JSON body; not JSON is 400.
fn json(body: &[u8]) -> Result<Value, Refused> {
    serde_json::from_slice(body).map_err(|e| Refused::Malformed(format!("not JSON: {e}")))
}

/// A Unix time in seconds that is within [`FRESH`] of `now`, else 401.
fn fresh_unix(raw: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, Refused> {
    let t: i64 = raw
        .trim()
        .parse()
        .map_err(|_| Refused::unauthorized("a timestamp that is not a number"))?;
    let age = now.timestamp().saturating_sub(t);
    if age.unsigned_abs() > FRESH.as_secs() {
        return Err(Refused::unauthorized(format!(
            "stale: signed {age} s from now, more than {} s",
            FRESH.as_secs()
        )));
    }
    Ok(t)
}

/// A header's value as text (a missing or non-ASCII header is 401: it was to carry the proof).
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Refused> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refused::unauthorized(format!("no {name} header")))
}

/// Bytes from hex digits (spaces around them allowed), or `None`.
fn unhex(s: &str) -> Option<Vec<u8>> {
    crate::domain::unhex(s.trim())
}

/// `Ok` when `signature` is HMAC-SHA256 of `parts` (concatenated) under `key`; constant-time.
fn hmac_ok(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    let Ok(mut mac) = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(signature).is_ok()
}

/// A JSON string field, or `None`.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Our references in a raw message or headers a provider passes on (a bounce dump, an ARF
/// report): every `Message-ID:` header, and every word that could be our VERP address. Only
/// those that verify will count.
fn references_in(raw: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    for line in raw.lines() {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("message-id")
        {
            found.push(Reference::MessageId(value.trim().to_owned()));
        }
    }
    found.extend(
        raw.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ';' | ':'))
            .filter(|w| w.contains('+') && w.contains('@'))
            .take(20)
            .map(|w| Reference::ReturnPath(w.to_owned())),
    );
    found.truncate(40);
    found
}

/// An RFC 3463 status for a provider that reports only a reply code and text: the enhanced
/// code in the text, else `default`.
fn status_from(text: Option<&str>, default: &str) -> String {
    text.and_then(crate::send::classify::enhanced_code)
        .unwrap_or_else(|| default.to_owned())
}
