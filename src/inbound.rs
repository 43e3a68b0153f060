//! Bounce and complaint intake: one message (from `digestif inbound` on stdin, as an MTA pipes
//! it) is classified and attributed to a delivery or subscriber. RFC 3464 delivery status
//! notifications, RFC 5965 abuse reports, and mail to the List-Unsubscribe mailto address.
//! Anything that cannot be attributed is logged and left alone. A complaint counts only through
//! our VERP tag or from a feedback loop that proves who it is (`fbl.rs`).

use mail_parser::{MessageParser, MimeHeaders};
use sqlx::PgPool;

use crate::config::Settings;
use crate::domain::{Purpose, SubscriberEmail, TokenKeys, shown, shown_within};
use crate::render::one_line;
use crate::send::Outcome;
use crate::send::classify::classify_dsn;
use crate::store::{deliveries, issues, subscribers};

mod fbl;
use fbl::Sender;

pub mod imap;

/// What was done with one inbound message; `Display` is the one line `digestif inbound` prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// A hard bounce recorded against a delivery.
    Bounced {
        /// The subscriber.
        subscriber_id: i64,
        /// The DSN status code.
        status: String,
    },
    /// A permanent failure reported later (a relayed policy block, say): the delivery failed,
    /// the subscriber is kept.
    Failed {
        /// The subscriber.
        subscriber_id: i64,
        /// The DSN status code.
        status: String,
    },
    /// A DSN for a delivery that is not `sent` (already recorded, or never handed over):
    /// nothing counted twice, nothing made up.
    AlreadyBounced(i64),
    /// A delay notice (4.x.x): nothing changes.
    Delayed(String),
    /// An abuse report: unsubscribed and suppressed.
    Complaint(i64),
    /// An abuse report about a subscriber who already complained (the same report again,
    /// say): nothing counted twice.
    AlreadyComplained(i64),
    /// An unsubscribe request by mail.
    Unsubscribed(i64),
    /// Not attributable (or forged): left alone, with the reason.
    Ignored(String),
}

// Statuses and reasons may quote what anyone mailed to the bounce address: shown escaped and
// cut short, since this goes to the operator's terminal and the MTA's log.
impl std::fmt::Display for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bounced {
                subscriber_id,
                status,
            } => {
                write!(
                    f,
                    "hard bounce {} recorded for subscriber {subscriber_id}",
                    shown(status)
                )
            }
            Self::Failed {
                subscriber_id,
                status,
            } => write!(
                f,
                "permanent failure {} recorded for subscriber {subscriber_id} (not suppressed)",
                shown(status)
            ),
            Self::AlreadyBounced(id) => write!(
                f,
                "DSN for subscriber {id} changes nothing: already recorded, or never sent"
            ),
            Self::Delayed(status) => write!(f, "delay notice {}: nothing changes", shown(status)),
            Self::Complaint(id) => {
                write!(f, "complaint: subscriber {id} unsubscribed and suppressed")
            }
            Self::AlreadyComplained(id) => write!(
                f,
                "complaint about subscriber {id} changes nothing: already recorded"
            ),
            Self::Unsubscribed(id) => write!(f, "unsubscribe by mail: subscriber {id}"),
            Self::Ignored(why) => write!(f, "ignored: {}", shown_within(why, 400)),
        }
    }
}

/// The per-recipient fields of a DSN we act on.
#[derive(Debug, Default, Clone)]
struct Dsn {
    action: Option<String>,
    status: Option<String>,
    diagnostic: Option<String>,
    /// The mailbox the status is about (Final-Recipient) in its [`SubscriberEmail::key`]
    /// form, when it reads as an address.
    final_recipient: Option<String>,
}

/// Handles one raw message. `recipient` is the envelope recipient the MTA delivered it to
/// (Postfix: `${recipient}`); without it the Delivered-To / X-Original-To / To headers are used.
pub async fn handle(
    pool: &PgPool,
    settings: &Settings,
    keys: &TokenKeys,
    raw: &[u8],
    recipient: Option<&str>,
) -> anyhow::Result<Handled> {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Ok(Handled::Ignored("not a parsable message".into()));
    };
    let content_type = msg.content_type();
    let is_report = content_type.is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let report_type = content_type
        .and_then(|c| c.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    let text = String::from_utf8_lossy(raw);
    // Everything after the report's own header block: the DSN fields and the returned message.
    let body = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .map_or("", |(_, b)| b);

    // A mail client's List-Unsubscribe: to `bounces+u.<tag>@…`, whatever the message says.
    if let Some(tag) = addressed_to(&msg, recipient)
        .iter()
        .filter_map(|c| verp_tag(settings, c))
        .find(|t| t.starts_with("u."))
    {
        return Ok(match keys.verify_unsubscribe_mail(&tag) {
            Some(id) if subscribers::unsubscribe_by_link(pool, id, "mailto").await? => {
                Handled::Unsubscribed(id)
            }
            Some(_) => Handled::Ignored("unsubscribe mail for someone already gone".into()),
            None => Handled::Ignored("unsubscribe mail with a forged or altered address".into()),
        });
    }

    if is_report && report_type.as_deref() == Some("delivery-status") {
        // The delivery-status part as the MIME parser decoded it (base64, quoted-printable);
        // a report without one is read as plain text.
        let dsn = parse_dsn(delivery_status(&msg).as_deref().unwrap_or(body));
        let Some(status) = dsn.status.clone() else {
            return Ok(Handled::Ignored(
                "delivery report without a Status field".into(),
            ));
        };
        let action = dsn.action.clone().unwrap_or_default().to_ascii_lowercase();
        if status.starts_with("4.") || action == "delayed" {
            return Ok(Handled::Delayed(status));
        }
        if !status.starts_with("5.") || action != "failed" {
            return Ok(Handled::Ignored(format!(
                "delivery report with action '{action}', status {status}"
            )));
        }
        let target = match attribute_verp(settings, keys, &msg, recipient) {
            Verp::Valid(issue_id, subscriber_id) => Some((issue_id, subscriber_id)),
            Verp::Forged => {
                return Ok(Handled::Ignored(
                    "the VERP address does not verify (forged or altered)".into(),
                ));
            }
            // Anyone can mail the plain bounce address; with VERP on, every genuine bounce
            // comes back to a tagged one.
            Verp::Absent if settings.bounces.verp => {
                return Ok(Handled::Ignored(
                    "a bounce without our VERP tag (with bounces.verp on, only tagged bounces count)"
                        .into(),
                ));
            }
            Verp::Absent => attribute_by_message_id(pool, keys, body).await?,
        };
        let Some(delivery) = target else {
            return Ok(Handled::Ignored(
                "bounce that names no delivery of ours".into(),
            ));
        };
        // The subscriber's address is an alias or a forward, and the mailbox that failed is
        // one behind it: whoever else it reaches still reads the issue, so it is not a reason
        // to stop writing to the subscriber.
        if let Some(failed) = &dsn.final_recipient
            && let Some(subscriber) = subscribers::by_id(pool, delivery.1).await?
            && SubscriberEmail::parse(&subscriber.email).is_ok_and(|own| own.key() != *failed)
        {
            let detail = format!(
                "{status} for {failed}, a mailbox behind the subscriber's address (an alias or a forward): {}",
                dsn.diagnostic.as_deref().unwrap_or("no diagnostic")
            );
            return failed_only(pool, delivery, status, &detail).await;
        }
        let report = Report::Bounce {
            status,
            diagnostic: dsn.diagnostic,
        };
        return apply(pool, settings, delivery, &report, None).await;
    }

    if is_report && report_type.as_deref() == Some("feedback-report") {
        let feedback = field(body, "Feedback-Type").unwrap_or_else(|| "abuse".into());
        let feedback = crate::send::classify::truncate(&one_line(&feedback), 100);
        // Our VERP return path in the returned copy: only we can make one, so it counts
        // whoever forwards the report.
        if let Some(delivery) = verp_in(settings, keys, body) {
            let report = Report::Complaint {
                detail: format!("ARF {feedback}"),
            };
            return apply(pool, settings, delivery, &report, None).await;
        }
        // Anything else only from a feedback loop that proves who it is. Our signed Message-ID
        // alone is not enough: the recipient of the message can put it in a report of their
        // own making (or write to the abuse address in someone else's name).
        let domain = match fbl::authenticate(&settings.bounces, raw).await? {
            Sender::Authenticated(domain) => domain,
            Sender::Unknown(why) => {
                return Ok(Handled::Ignored(format!("{UNAUTHENTICATED} ({why})")));
            }
        };
        // The loop vouches for the report: our signed Message-ID names the subscriber, or,
        // when the loop redacted it, the recipient address the report names.
        let named = match message_id_in(keys, body) {
            Some((_, subscriber_id)) => Some(subscriber_id),
            None => reported_subscriber(pool, &msg).await?,
        };
        return match named {
            Some(subscriber_id) => {
                complaint(
                    pool,
                    subscriber_id,
                    &format!("ARF {feedback} from {domain}"),
                )
                .await
            }
            None => Ok(Handled::Ignored(format!(
                "complaint from {domain} that names no subscriber of ours"
            ))),
        };
    }

    // The List-Unsubscribe mailto of issues sent before the tagged address: "unsubscribe
    // <token>" in the subject, to the From address.
    if let Some(subject) = msg.subject()
        && let Some(token) = subject.trim().strip_prefix("unsubscribe ")
    {
        return Ok(match keys.verify(Purpose::Unsubscribe, token.trim()) {
            Some(id) if subscribers::unsubscribe_by_link(pool, id, "mailto").await? => {
                Handled::Unsubscribed(id)
            }
            _ => Handled::Ignored("unsubscribe mail with an invalid token".into()),
        });
    }
    Ok(Handled::Ignored(
        "not a bounce, complaint or unsubscribe request".into(),
    ))
}

/// What a report says happened to one delivery, whoever brought it: a DSN by mail or a
/// provider's webhook. [`apply`] is the one place these turn into database changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The message did not arrive: classified by its DSN status (`5.1.1`) and diagnostic
    /// (`smtp; 550 5.1.1 user unknown`) by the same rules as a synchronous SMTP reply.
    Bounce {
        status: String,
        diagnostic: Option<String>,
    },
    /// Still trying (a 4.x.x status): nothing changes.
    Delay { status: String },
    /// The recipient reported the message as spam: unsubscribed and suppressed.
    Complaint { detail: String },
}

/// How a report names the delivery it is about: only ways that only we can make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Our Message-ID header (`<issue<n>.s<id>.<mac>@domain>`, brackets optional): signed, so
    /// it names one subscriber's copy of one issue.
    MessageId(String),
    /// Our VERP return path (`bounces+<tag>@domain`, brackets optional): signed, one delivery.
    ReturnPath(String),
}

/// A report from a provider's webhook: what happened, which delivery it names, and who said so
/// (for the stored detail and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub report: Report,
    /// Every reference the provider passed on; the first that verifies counts. A recipient
    /// address is deliberately not among them: anyone can name an address.
    pub references: Vec<Reference>,
    /// `ses`, `postmark`…: prefixed to the stored detail.
    pub via: &'static str,
}

/// The delivery (issue id, subscriber id) the first genuine reference names.
pub async fn find_delivery(
    pool: &PgPool,
    settings: &Settings,
    keys: &TokenKeys,
    references: &[Reference],
) -> anyhow::Result<Option<(i64, i64)>> {
    for reference in references {
        match reference {
            Reference::MessageId(id) => {
                let local = id.trim().trim_start_matches('<');
                let local = local.split('@').next().unwrap_or_default();
                if let Some((number, subscriber_id)) = keys.verify_message_id(local)
                    && let Some(issue) = issues::find_by_number(pool, number).await?
                {
                    return Ok(Some((issue.issue_id, subscriber_id)));
                }
            }
            Reference::ReturnPath(address) => {
                let address = address.trim().trim_start_matches('<');
                if let Some(found) = verp_tag(settings, address)
                    .filter(|t| !t.starts_with("u."))
                    .and_then(|tag| keys.verify_bounce(&tag))
                {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(None)
}

/// Records a provider's report: found by our Message-ID or VERP tag, then [`apply`]. An event
/// that names no delivery of ours changes nothing.
pub async fn record(
    pool: &PgPool,
    settings: &Settings,
    keys: &TokenKeys,
    event: &Event,
) -> anyhow::Result<Handled> {
    if let Report::Delay { status } = &event.report {
        return Ok(Handled::Delayed(status.clone()));
    }
    match find_delivery(pool, settings, keys, &event.references).await? {
        Some(delivery) => apply(pool, settings, delivery, &event.report, Some(event.via)).await,
        None => Ok(Handled::Ignored(format!(
            "{} report that names no delivery of ours (no Message-ID or VERP tag of ours that verifies)",
            event.via
        ))),
    }
}

/// Applies a report to the delivery `(issue id, subscriber id)` it names, by the rules shared
/// by mail and webhooks: a bounce is classified like the SMTP reply it stands for (a mailbox
/// error counts toward suppression, a policy block fails the delivery and keeps the subscriber,
/// a 4.x.x changes nothing), each counted once; a complaint unsubscribes and suppresses.
/// `via` names the provider whose webhook reported it.
pub async fn apply(
    pool: &PgPool,
    settings: &Settings,
    (issue_id, subscriber_id): (i64, i64),
    report: &Report,
    via: Option<&str>,
) -> anyhow::Result<Handled> {
    let (status, diagnostic) = match report {
        Report::Bounce { status, diagnostic } => (status, diagnostic.as_deref()),
        Report::Delay { status } => return Ok(Handled::Delayed(status.clone())),
        Report::Complaint { detail } => {
            let detail = match via {
                Some(via) => format!("{via} {detail}"),
                None => detail.clone(),
            };
            let detail = crate::send::classify::truncate(&one_line(&detail), 200);
            return complaint(pool, subscriber_id, &detail).await;
        }
    };
    let outcome = classify_dsn(status, diagnostic);
    let detail = match &outcome {
        Outcome::Sent => String::new(),
        Outcome::Transient(f) | Outcome::Bounced(f) | Outcome::Failed(f) => f.reason.clone(),
    };
    let detail = match via {
        Some(via) => format!("{via}: {detail}"),
        None => detail,
    };
    let detail = crate::send::classify::truncate(&one_line(&detail), 400);
    let status = status.clone();
    if let Outcome::Transient(_) = outcome {
        return Ok(Handled::Delayed(status));
    }
    // Asked before the record is tried: a result written in between is then found `sent`.
    if deliveries::in_flight(pool, issue_id, subscriber_id).await? {
        return Err(NotYetRecorded(subscriber_id).into());
    }
    let recorded = match outcome {
        Outcome::Bounced(_) => {
            deliveries::record_bounce(
                pool,
                issue_id,
                subscriber_id,
                &detail,
                settings.delivery.hard_bounce_threshold,
            )
            .await?
        }
        Outcome::Transient(_) => return Ok(Handled::Delayed(status)),
        Outcome::Failed(_) | Outcome::Sent => {
            return failed_only(pool, (issue_id, subscriber_id), status, &detail).await;
        }
    };
    if !recorded && deliveries::in_flight(pool, issue_id, subscriber_id).await? {
        // Claimed again between the check above and the record: its result decides.
        return Err(NotYetRecorded(subscriber_id).into());
    }
    Ok(if recorded {
        Handled::Bounced {
            subscriber_id,
            status,
        }
    } else {
        Handled::AlreadyBounced(subscriber_id)
    })
}

/// A report about a delivery whose result is not written yet: its 250 came and `sent` is on
/// its way (a local MTA can bounce that fast). Acting now would change nothing and lose the
/// report, so the sender is asked to try again later: exit 75 for the MTA, 503 for a webhook,
/// and the IMAP copy stays in the folder for the next pass.
#[derive(Debug, thiserror::Error)]
#[error("the delivery to subscriber {0} is still being recorded: try again later")]
pub struct NotYetRecorded(pub i64);

/// Fails a sent delivery for good without counting it toward the subscriber's suppression.
async fn failed_only(
    pool: &PgPool,
    (issue_id, subscriber_id): (i64, i64),
    status: String,
    detail: &str,
) -> anyhow::Result<Handled> {
    let detail = crate::send::classify::truncate(&one_line(detail), 400);
    if deliveries::record_dsn_failure(pool, issue_id, subscriber_id, &detail).await? {
        return Ok(Handled::Failed {
            subscriber_id,
            status,
        });
    }
    if deliveries::in_flight(pool, issue_id, subscriber_id).await? {
        // Claimed again since the check before the record: its result decides.
        return Err(NotYetRecorded(subscriber_id).into());
    }
    Ok(Handled::AlreadyBounced(subscriber_id))
}

/// Why a complaint that is neither VERP-tagged nor from a proved feedback loop is ignored.
const UNAUTHENTICATED: &str = "complaint from a sender not in bounces.complaint_senders with a verifying DKIM signature, naming no VERP tag";

/// Records a complaint against a stored subscriber: unsubscribed and suppressed.
async fn complaint(pool: &PgPool, subscriber_id: i64, detail: &str) -> anyhow::Result<Handled> {
    if subscribers::by_id(pool, subscriber_id).await?.is_none() {
        return Ok(Handled::Ignored(format!(
            "complaint about subscriber {subscriber_id}, who is no longer stored"
        )));
    }
    Ok(
        match subscribers::record_complaint(pool, subscriber_id, detail).await? {
            true => Handled::Complaint(subscriber_id),
            false => Handled::AlreadyComplained(subscriber_id),
        },
    )
}

/// The stored subscriber a report names by address (see [`reported_address`]).
async fn reported_subscriber(
    pool: &PgPool,
    msg: &mail_parser::Message<'_>,
) -> anyhow::Result<Option<i64>> {
    let Some(email) = reported_address(msg).and_then(|a| SubscriberEmail::parse(&a).ok()) else {
        return Ok(None);
    };
    Ok(subscribers::find(pool, &email)
        .await?
        .map(|s| s.subscriber_id))
}

/// The recipient a feedback report names: its `Original-Rcpt-To`, else the `To` of the
/// returned message (whole, or its headers only), when that is exactly one address.
fn reported_address(msg: &mail_parser::Message<'_>) -> Option<String> {
    let mut reported = Vec::new();
    let mut returned_to = Vec::new();
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let subtype = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ct.ctype().to_ascii_lowercase().as_str(), subtype.as_str()) {
            ("message", "feedback-report") => {
                let text = String::from_utf8_lossy(part.contents());
                reported.extend(
                    text.lines()
                        .filter_map(|l| l.split_once(':'))
                        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("Original-Rcpt-To"))
                        .map(|(_, v)| bare_address(v)),
                );
            }
            ("message", "rfc822" | "global") => {
                if let mail_parser::PartType::Message(m) = &part.body {
                    returned_to = addresses(m.to());
                }
            }
            ("text", "rfc822-headers") => {
                if let Some(m) = MessageParser::default().parse_headers(part.contents()) {
                    returned_to = addresses(m.to());
                }
            }
            _ => {}
        }
    }
    let mut candidates = if reported.is_empty() {
        returned_to
    } else {
        reported
    };
    candidates.sort();
    candidates.dedup();
    match <[String; 1]>::try_from(candidates) {
        Ok([one]) => Some(one),
        Err(_) => None, // none, or several: not one subscriber
    }
}

/// The addresses of a To field, lower case.
fn addresses(field: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    field
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address.as_deref())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

/// `<user@example.org>`, `rfc822; user@example.org` or `user@example.org` as the address alone,
/// lower case.
fn bare_address(value: &str) -> String {
    let v = value.trim();
    let v = match v.split_once(';') {
        Some((kind, rest)) if kind.trim().eq_ignore_ascii_case("rfc822") => rest.trim(),
        _ => v,
    };
    v.trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase()
}

enum Verp {
    Valid(i64, i64),
    Forged,
    Absent,
}

/// Finds our VERP address (`bounces+<tag>@domain`) among the recipient and the delivery headers.
fn attribute_verp(
    settings: &Settings,
    keys: &TokenKeys,
    msg: &mail_parser::Message<'_>,
    recipient: Option<&str>,
) -> Verp {
    let tag = addressed_to(msg, recipient)
        .iter()
        .find_map(|c| verp_tag(settings, c))
        .filter(|t| !t.starts_with("u."));
    match tag {
        Some(tag) => match keys.verify_bounce(&tag) {
            Some((issue, sub)) => Verp::Valid(issue, sub),
            None => Verp::Forged,
        },
        None => Verp::Absent,
    }
}

/// Where the message was delivered: the envelope recipient when the MTA passed it, then the
/// Delivered-To / X-Original-To / To headers.
fn addressed_to(msg: &mail_parser::Message<'_>, recipient: Option<&str>) -> Vec<String> {
    let mut candidates: Vec<String> = recipient.map(str::to_owned).into_iter().collect();
    for h in ["Delivered-To", "X-Original-To", "To"] {
        if let Some(v) = msg.header_raw(h) {
            candidates.push(
                v.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned(),
            );
        }
    }
    candidates
}

/// The tag of a VERP address of ours (`bounces+<tag>@domain`, any letter case), verified or not.
fn verp_tag(settings: &Settings, address: &str) -> Option<String> {
    let b = &settings.bounces;
    let address = address.trim_end_matches('>').to_ascii_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    if domain != b.address.domain().to_ascii_lowercase() {
        return None;
    }
    let prefix = format!("{}+", b.address.user().to_ascii_lowercase());
    local.strip_prefix(&prefix).map(str::to_owned)
}

/// Without VERP: the signed Message-ID of the returned message names the delivery.
async fn attribute_by_message_id(
    pool: &PgPool,
    keys: &TokenKeys,
    body: &str,
) -> anyhow::Result<Option<(i64, i64)>> {
    let Some((number, subscriber_id)) = message_id_in(keys, body) else {
        return Ok(None);
    };
    Ok(issues::find_by_number(pool, number)
        .await?
        .map(|issue| (issue.issue_id, subscriber_id)))
}

/// A genuine Message-ID of ours (`<issue<n>.s<id>.<mac>@…>`) in `text`: (number, subscriber).
fn message_id_in(keys: &TokenKeys, text: &str) -> Option<(i32, i64)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("Message-ID"))
        .find_map(|(_, v)| {
            let local = v.trim().trim_start_matches('<').split('@').next()?;
            keys.verify_message_id(local)
        })
}

/// A genuine VERP address of ours anywhere in `text` (the returned message's Return-Path).
fn verp_in(settings: &Settings, keys: &TokenKeys, text: &str) -> Option<(i64, i64)> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ';' | ':'))
        .filter_map(|w| verp_tag(settings, w))
        .find_map(|tag| keys.verify_bounce(&tag))
}

/// The first `Name: value` field in `text` (case-insensitive name).
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The `message/delivery-status` part of a report, decoded.
fn delivery_status(msg: &mail_parser::Message<'_>) -> Option<String> {
    msg.parts
        .iter()
        .find(|p| {
            p.content_type().is_some_and(|c| {
                c.ctype().eq_ignore_ascii_case("message")
                    && c.subtype().is_some_and(|s| {
                        s.eq_ignore_ascii_case("delivery-status")
                            || s.eq_ignore_ascii_case("global-delivery-status")
                    })
            })
        })
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
}

/// The field blocks of a delivery-status body (the per-message block, then one per recipient),
/// with folded lines joined, as RFC 3464 writes them (`Diagnostic-Code` often runs over
/// several lines).
fn status_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if blocks.last().is_some_and(|b| !b.is_empty()) {
                blocks.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = blocks.last_mut().and_then(|b| b.last_mut()) {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':')
            && let Some(block) = blocks.last_mut()
        {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    blocks.retain(|b| !b.is_empty());
    blocks
}

/// What a DSN reports. With several recipients (an alias that expanded, say) the one that
/// matters is the first that failed permanently, else the first delayed, else the first with
/// a status.
fn parse_dsn(text: &str) -> Dsn {
    let get = |block: &[(String, String)], name: &str| {
        block
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let recipients: Vec<Dsn> = status_blocks(text)
        .iter()
        .filter(|b| get(b, "status").is_some())
        .map(|b| Dsn {
            action: get(b, "action"),
            status: get(b, "status").map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
            diagnostic: get(b, "diagnostic-code").map(|d| {
                crate::send::classify::truncate(
                    &d.split_whitespace().collect::<Vec<_>>().join(" "),
                    300,
                )
            }),
            final_recipient: get(b, "final-recipient").and_then(|v| {
                // `rfc822; <bob@example.net> (Bob)`: the address after its type, without a
                // comment or angle brackets.
                let address = v.split_once(';').map_or(v.as_str(), |(_, a)| a);
                let address = address.split('(').next().unwrap_or_default();
                let address = match address.split_once('<') {
                    Some((_, inside)) => inside.split('>').next().unwrap_or_default(),
                    None => address,
                };
                SubscriberEmail::parse(address).ok().map(|e| e.key())
            }),
        })
        .collect();
    let failed = |d: &&Dsn| {
        d.status.as_deref().is_some_and(|s| s.starts_with("5."))
            && d.action
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case("failed"))
    };
    let delayed = |d: &&Dsn| {
        d.status.as_deref().is_some_and(|s| s.starts_with("4."))
            || d.action
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case("delayed"))
    };
    let pick = recipients
        .iter()
        .find(failed)
        .or_else(|| recipients.iter().find(delayed))
        .or(recipients.first());
    pick.cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(feedback: &str, returned_type: &str, returned: &str) -> String {
        format!(
            "From: fbl@fbl.example-isp.net\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n\
             --F\r\nContent-Type: text/plain\r\n\r\nTo: not-this@example.org\r\n\r\n\
             --F\r\nContent-Type: message/feedback-report\r\n\r\n\
             Feedback-Type: abuse\r\nVersion: 1\r\n{feedback}\r\n\
             --F\r\nContent-Type: {returned_type}\r\n\r\n{returned}\r\n--F--\r\n"
        )
    }

    fn address_in(raw: &str) -> Option<String> {
        reported_address(&MessageParser::default().parse(raw.as_bytes()).unwrap())
    }

    #[test]
    fn a_report_names_its_original_recipient_before_the_returned_to() {
        let returned = "From: tips@example.com\r\nTo: b@example.org\r\n\r\nbody\r\n";
        assert_eq!(
            address_in(&report(
                "Original-Rcpt-To: <A@Example.org>\r\n",
                "message/rfc822",
                returned
            )),
            Some("a@example.org".into())
        );
        assert_eq!(
            address_in(&report("", "message/rfc822", returned)),
            Some("b@example.org".into())
        );
        assert_eq!(
            address_in(&report("", "text/rfc822-headers", returned)),
            Some("b@example.org".into())
        );
        assert_eq!(
            address_in(&report(
                "Original-Rcpt-To: rfc822; a@example.org\r\n",
                "message/rfc822",
                returned
            )),
            Some("a@example.org".into())
        );
    }

    #[test]
    fn a_report_naming_several_recipients_names_nobody() {
        let two = "From: tips@example.com\r\nTo: a@example.org, b@example.org\r\n\r\nbody\r\n";
        assert_eq!(address_in(&report("", "message/rfc822", two)), None);
        assert_eq!(
            address_in(&report(
                "Original-Rcpt-To: a@example.org\r\nOriginal-Rcpt-To: b@example.org\r\n",
                "message/rfc822",
                two
            )),
            None
        );
        // The same address twice is one recipient.
        assert_eq!(
            address_in(&report(
                "Original-Rcpt-To: a@example.org\r\nOriginal-Rcpt-To: <A@example.org>\r\n",
                "message/rfc822",
                two
            )),
            Some("a@example.org".into())
        );
        assert_eq!(
            address_in(&report("", "text/plain", "To: a@example.org\r\n")),
            None
        );
    }
}
