//! Amazon SES notifications through SNS: the SNS message signature (SignatureVersion 1,
//! SHA1withRSA, and 2, SHA256withRSA) checked with the certificate at `SigningCertURL`, fetched
//! over https from `sns.<region>.amazonaws.com` only and cached; only the topics in
//! `hooks.ses_topic_arns` count (anyone can have SNS sign a message of a topic of their own);
//! subscription confirmations followed (GET `SubscribeURL`, host-checked the same way); and
//! the SES bounce and complaint inside a notification mapped onto a report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm, alg_id,
};
use serde_json::Value;

use super::{Refused, Verified, json, status_from, text};
use crate::http::AppState;
use crate::inbound::{Event, Reference, Report};

/// How old an SNS message may be: SNS retries a delivery with the message's original
/// timestamp, for up to an hour under a custom delivery policy.
const SNS_FRESH: Duration = Duration::from_secs(3600);

/// The most a certificate download may be.
const MAX_CERT: usize = 64 * 1024;

/// Certificates kept at most; the cache starts over when full (AWS uses a handful).
const MAX_CACHED: usize = 32;

/// How an SNS URL's host must look: `sns.<region>.amazonaws.com` and nothing else.
pub fn is_sns_host(host: &str) -> bool {
    host.strip_prefix("sns.")
        .and_then(|rest| rest.strip_suffix(".amazonaws.com"))
        .is_some_and(|region| {
            !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `raw` as an https URL on an SNS host (default port, no user or password), or why not.
pub fn sns_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|_| "not a URL".to_owned())?;
    let host = url.host_str().unwrap_or_default().to_owned();
    if url.scheme() != "https"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some_and(|p| p != 443)
        || !matches!(url.host(), Some(url::Host::Domain(_)))
        || !is_sns_host(&host)
    {
        return Err(format!(
            "{}: not an https URL on sns.<region>.amazonaws.com",
            crate::domain::shown(&crate::send::classify::truncate(raw, 200))
        ));
    }
    Ok(url)
}

/// A certificate URL names one of SNS's signing certificates
/// (`/SimpleNotificationService-<id>.pem`, no query): any other path on an SNS host would be a
/// fetch a stranger who knows our topic could make us do, and an entry pushing the real
/// certificate out of the cache.
fn cert_path(url: url::Url) -> Result<url::Url, String> {
    let id = url
        .path()
        .strip_prefix("/SimpleNotificationService-")
        .and_then(|rest| rest.strip_suffix(".pem"));
    match id {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric())
                && url.query().is_none()
                && url.fragment().is_none() =>
        {
            Ok(url)
        }
        _ => Err(format!(
            "{}: not the path of an SNS signing certificate",
            crate::domain::shown(&crate::send::classify::truncate(url.path(), 200))
        )),
    }
}

/// How certificates (and subscription confirmations) are fetched.
pub struct CertFetcher {
    client: reqwest::Client,
}

impl CertFetcher {
    /// From AWS over https, trusting the system's roots: the only fetcher the `digestif`
    /// binary makes.
    pub fn aws() -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            client: builder()
                .build()
                .context("cannot set up the HTTP client for SNS certificates")?,
        })
    }

    /// For tests only, and unreachable from any setting or environment variable: every host
    /// name resolves to `at`, and only the CA in `root_pem` is trusted. The URL checks stay
    /// exactly those of [`CertFetcher::aws`], so `at` must serve https with a certificate for
    /// the `sns.<region>.amazonaws.com` name the test uses.
    #[doc(hidden)]
    pub fn for_tests(root_pem: &[u8], at: SocketAddr) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = reqwest::Certificate::from_pem(root_pem).context("test CA")?;
        Ok(Self {
            client: builder()
                .tls_certs_only([root])
                .dns_resolver(Arc::new(Everything(at)))
                .build()
                .context("test client")?,
        })
    }

    /// GETs `url` (already checked), at most `cap` bytes; anything but 200 is an error, and
    /// [`Unreachable`] when asking again later may do.
    async fn get(&self, url: &url::Url, cap: usize) -> anyhow::Result<Vec<u8>> {
        let unreachable = |e: reqwest::Error| Unreachable(crate::fetch::reason(&e));
        let mut resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Unreachable(format!("answered {status}")).into());
        }
        if status != reqwest::StatusCode::OK {
            bail!("answered {status}");
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            body.extend_from_slice(&chunk);
            if body.len() > cap {
                bail!("more than {cap} bytes");
            }
        }
        Ok(body)
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("digestif/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
}

/// AWS did not answer for now (no connection, a timeout, a 5xx or a 429): the request that
/// needed it gets a 503, after which SNS tries again; a 4xx would make it drop the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreachable(String);

/// The test resolver: every name is `at`.
struct Everything(SocketAddr);

impl reqwest::dns::Resolve for Everything {
    fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let at = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(at)) as reqwest::dns::Addrs) })
    }
}

/// SNS signing certificates by URL, fetched once.
pub struct Certificates {
    fetcher: CertFetcher,
    cache: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Certificates {
    pub fn new(fetcher: CertFetcher) -> Self {
        Self {
            fetcher,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The DER certificate at `url` (checked by the caller), from the cache or fetched.
    async fn get(&self, url: &url::Url) -> anyhow::Result<Arc<Vec<u8>>> {
        let key = url.as_str().to_owned();
        if let Some(der) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(der);
        }
        let pem = self.fetcher.get(url, MAX_CERT).await?;
        let der =
            CertificateDer::from_pem_slice(&pem).map_err(|_| anyhow!("not a PEM certificate"))?;
        let der = Arc::new(der.as_ref().to_vec());
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key, der.clone());
        }
        Ok(der)
    }

    /// Confirms a subscription: GET its `SubscribeURL` (checked by the caller).
    pub async fn confirm(&self, url: &url::Url) -> anyhow::Result<()> {
        self.fetcher
            .get(url, MAX_CERT)
            .await
            .map(|_| ())
            .context("cannot confirm the SNS subscription")
    }
}

/// RSA PKCS#1 v1.5 with SHA-1 (SignatureVersion 1) or SHA-256 (2), by ring, for webpki's
/// certificate parser.
#[derive(Debug)]
struct Rsa {
    sha1: bool,
}

impl SignatureVerificationAlgorithm for Rsa {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let params = if self.sha1 {
            &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
        } else {
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
        };
        ring::signature::UnparsedPublicKey::new(params, public_key)
            .verify(message, signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        // Only named in webpki's error for a key that is not RSA.
        alg_id::RSA_PKCS1_SHA256
    }
}

/// The text SNS signs: the listed fields, each as `name\nvalue\n`, in this order; `Subject`
/// only when the message has one.
fn string_to_sign(msg: &Value, kind: &str) -> Result<String, Refused> {
    let fields: &[&str] = match kind {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        _ => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
    };
    let mut out = String::new();
    for name in fields {
        match msg.get(*name) {
            Some(Value::String(v)) => {
                out.push_str(name);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            None | Some(Value::Null) if *name == "Subject" => {}
            _ => return Err(Refused::unauthorized(format!("SNS message without {name}"))),
        }
    }
    Ok(out)
}

/// Verifies an SNS message and reads what it carries.
pub(super) async fn verify(
    app: &AppState,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Verified, Refused> {
    let Some(ses) = &app.settings.hooks.ses else {
        return Err(Refused::unauthorized("hooks.ses_topic_arns is empty"));
    };
    let msg = json(body).map_err(|_| Refused::unauthorized("not an SNS message (not JSON)"))?;
    let kind = text(&msg, "Type").unwrap_or_default().to_owned();
    if !matches!(
        kind.as_str(),
        "Notification" | "SubscriptionConfirmation" | "UnsubscribeConfirmation"
    ) {
        return Err(Refused::unauthorized("not an SNS message (no known Type)"));
    }
    let to_sign = string_to_sign(&msg, &kind)?;
    let sha1 = match text(&msg, "SignatureVersion") {
        Some("1") => true,
        Some("2") => false,
        _ => return Err(Refused::unauthorized("SignatureVersion is not 1 or 2")),
    };
    let signature = text(&msg, "Signature")
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| Refused::unauthorized("no Signature in base64"))?;
    let cert_url = sns_url(text(&msg, "SigningCertURL").unwrap_or_default())
        .and_then(cert_path)
        .map_err(|why| Refused::unauthorized(format!("SigningCertURL {why}")))?;
    // The topic is checked before anything is fetched: a stranger's topic costs us nothing.
    let topic = text(&msg, "TopicArn").unwrap_or_default();
    if !ses.topic_arns.iter().any(|t| t == topic) {
        return Err(Refused::unauthorized(format!(
            "topic {} is not in hooks.ses_topic_arns",
            crate::domain::shown(&crate::send::classify::truncate(topic, 200))
        )));
    }
    let der = app.hooks.sns.get(&cert_url).await.map_err(|e| {
        let why = format!("cannot get the SNS certificate at {cert_url}: {e:#}");
        if e.is::<Unreachable>() {
            Refused::Unavailable(why)
        } else {
            Refused::unauthorized(why)
        }
    })?;
    let der = CertificateDer::from(der.as_slice());
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Refused::unauthorized(format!("the SNS certificate does not parse: {e}")))?;
    cert.verify_signature(&Rsa { sha1 }, to_sign.as_bytes(), &signature)
        .map_err(|_| Refused::unauthorized("the SNS signature does not verify"))?;

    let stamp = text(&msg, "Timestamp").unwrap_or_default();
    let stamp = chrono::DateTime::parse_from_rfc3339(stamp)
        .map_err(|_| Refused::unauthorized("a Timestamp that is not RFC 3339"))?;
    let age = now.signed_duration_since(stamp).num_seconds();
    if age > SNS_FRESH.as_secs() as i64 || age < -300 {
        return Err(Refused::unauthorized(format!(
            "stale: an SNS message from {age} s ago"
        )));
    }
    let message_id = text(&msg, "MessageId").unwrap_or_default();
    let replay = Some((message_id.to_owned(), SNS_FRESH + Duration::from_secs(600)));

    match kind.as_str() {
        "SubscriptionConfirmation" => {
            let url = sns_url(text(&msg, "SubscribeURL").unwrap_or_default())
                .map_err(|why| Refused::unauthorized(format!("SubscribeURL {why}")))?;
            Ok(Verified {
                replay,
                events: Vec::new(),
                subscribe: Some(url),
            })
        }
        "UnsubscribeConfirmation" => Ok(Verified {
            replay,
            events: Vec::new(),
            subscribe: None,
        }),
        _ => {
            let inner = text(&msg, "Message").unwrap_or_default();
            let ses: Value = serde_json::from_str(inner).map_err(|_| {
                Refused::Malformed("the SNS Message is not an SES notification (not JSON)".into())
            })?;
            Ok(Verified {
                replay,
                events: ses_events(&ses),
                subscribe: None,
            })
        }
    }
}

/// The report in an SES notification (`notificationType`, or `eventType` from a configuration
/// set's event destination). A Permanent bounce is a hard bounce unless its recipient's DSN
/// status says otherwise (then the status decides, as for a DSN by mail); a Transient one
/// changes nothing; Delivery and the rest are not reports.
pub(super) fn ses_events(ses: &Value) -> Vec<Event> {
    let kind = text(ses, "notificationType")
        .or_else(|| text(ses, "eventType"))
        .unwrap_or_default();
    let report = match kind {
        "Bounce" => {
            let bounce = ses.get("bounce").unwrap_or(&Value::Null);
            let recipient = bounce
                .get("bouncedRecipients")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .unwrap_or(&Value::Null);
            let diagnostic = text(recipient, "diagnosticCode").map(str::to_owned);
            let permanent = text(bounce, "bounceType") == Some("Permanent");
            let sub = text(bounce, "bounceSubType").unwrap_or_default();
            let default = match (permanent, sub) {
                // "NoEmail": the address does not exist; "Suppressed": on SES's suppression
                // list because it bounced hard before.
                (true, "NoEmail" | "Suppressed" | "OnAccountSuppressionList") => "5.1.1",
                (true, _) => "5.0.0",
                (false, _) => "4.0.0",
            };
            let status = text(recipient, "status")
                .map(|s| s.trim().to_owned())
                .filter(|s| crate::send::classify::enhanced_code(s).as_deref() == Some(s))
                .unwrap_or_else(|| status_from(diagnostic.as_deref(), default));
            if permanent {
                Report::Bounce { status, diagnostic }
            } else {
                Report::Delay { status }
            }
        }
        "Complaint" => {
            let complaint = ses.get("complaint").unwrap_or(&Value::Null);
            let feedback = text(complaint, "complaintFeedbackType").unwrap_or("abuse");
            Report::Complaint {
                detail: format!(
                    "complaint {}",
                    crate::send::classify::truncate(feedback, 50)
                ),
            }
        }
        _ => return Vec::new(),
    };
    let mail = ses.get("mail").unwrap_or(&Value::Null);
    let mut references = Vec::new();
    if let Some(id) = mail.get("commonHeaders").and_then(|h| text(h, "messageId")) {
        references.push(Reference::MessageId(id.to_owned()));
    }
    for h in mail
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = text(h, "name").unwrap_or_default();
        let value = text(h, "value").unwrap_or_default();
        if name.eq_ignore_ascii_case("message-id") {
            references.push(Reference::MessageId(value.to_owned()));
        } else if name.eq_ignore_ascii_case("return-path") {
            references.push(Reference::ReturnPath(value.to_owned()));
        }
    }
    // The envelope sender as we gave it to SES: our VERP address.
    if let Some(source) = text(mail, "source") {
        references.push(Reference::ReturnPath(source.to_owned()));
    }
    vec![Event {
        report,
        references,
        via: "ses",
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_on_sns_hosts_count() {
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.eu-west-1.amazonaws.com:443/x.pem",
            "https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem",
        ] {
            assert!(sns_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://evilsns.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us.east.1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://s3.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.co/x.pem",
            "",
        ] {
            assert!(sns_url(bad).is_err(), "{bad}");
        }
        let cert = |raw: &str| sns_url(raw).and_then(cert_path);
        assert!(cert("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem").is_ok());
        for bad in [
            "https://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a/../b.pem",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1",
            "https://sns.us-east-1.amazonaws.com/?Action=Subscribe",
        ] {
            assert!(cert(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ses_bounce_types_map_onto_reports() {
        let bounce = |kind: &str, sub: &str, status: Option<&str>| {
            let mut r = serde_json::json!({"emailAddress": "a@example.org"});
            if let Some(s) = status {
                r["status"] = s.into();
            }
            let v = serde_json::json!({
                "notificationType": "Bounce",
                "bounce": {"bounceType": kind, "bounceSubType": sub, "bouncedRecipients": [r]},
                "mail": {"commonHeaders": {"messageId": "<x@y>"}}
            });
            ses_events(&v).remove(0).report
        };
        assert!(matches!(bounce("Permanent", "General", Some("5.1.1")),
            Report::Bounce { status, .. } if status == "5.1.1"));
        assert!(matches!(bounce("Permanent", "NoEmail", None),
            Report::Bounce { status, .. } if status == "5.1.1"));
        assert!(matches!(bounce("Permanent", "General", None),
            Report::Bounce { status, .. } if status == "5.0.0"));
        assert!(matches!(
            bounce("Transient", "MailboxFull", Some("4.2.2")),
            Report::Delay { .. }
        ));
        let delivery = serde_json::json!({"notificationType": "Delivery", "mail": {}});
        assert!(ses_events(&delivery).is_empty());
    }
}
