//! Bounce and complaint intake: one message (from `digestif inbound` on stdin, as an MTA pipes
//! it) is classified and attributed to a delivery or subscriber. RFC 3464 delivery status
//! notifications, RFC 5965 abuse reports, and mail to the List-Unsubscribe mailto address.
//! Anything that cannot be attributed is logged and left alone.

use mail_parser::{MessageParser, MimeHeaders};
use sqlx::PgPool;

use crate::config::Settings;
use crate::domain::{Purpose, TokenKeys};
use crate::store::{deliveries, issues, subscribers};

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
    /// A hard bounce for a delivery already marked bounced: nothing counted twice.
    AlreadyBounced(i64),
    /// A delay notice (4.x.x): nothing changes.
    Delayed(String),
    /// An abuse report: unsubscribed and suppressed.
    Complaint(i64),
    /// An unsubscribe request by mail.
    Unsubscribed(i64),
    /// Not attributable (or forged): left alone, with the reason.
    Ignored(String),
}

impl std::fmt::Display for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bounced {
                subscriber_id,
                status,
            } => {
                write!(
                    f,
                    "hard bounce {status} recorded for subscriber {subscriber_id}"
                )
            }
            Self::AlreadyBounced(id) => {
                write!(f, "bounce for subscriber {id} was already recorded")
            }
            Self::Delayed(status) => write!(f, "delay notice {status}: nothing changes"),
            Self::Complaint(id) => {
                write!(f, "complaint: subscriber {id} unsubscribed and suppressed")
            }
            Self::Unsubscribed(id) => write!(f, "unsubscribe by mail: subscriber {id}"),
            Self::Ignored(why) => write!(f, "ignored: {why}"),
        }
    }
}

/// The per-recipient fields of a DSN we act on.
#[derive(Debug, Default)]
struct Dsn {
    action: Option<String>,
    status: Option<String>,
    final_recipient: Option<String>,
    diagnostic: Option<String>,
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

    if is_report && report_type.as_deref() == Some("delivery-status") {
        let dsn = parse_dsn(body);
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
            Verp::Absent => {
                attribute_by_message_id(pool, body, dsn.final_recipient.as_deref()).await?
            }
        };
        let Some((issue_id, subscriber_id)) = target else {
            return Ok(Handled::Ignored(
                "bounce that names no delivery of ours".into(),
            ));
        };
        let detail = format!(
            "DSN {status}{}",
            dsn.diagnostic.map(|d| format!(": {d}")).unwrap_or_default()
        );
        let recorded = deliveries::record_bounce(
            pool,
            issue_id,
            subscriber_id,
            &crate::send::classify::truncate(&detail, 400),
            settings.delivery.hard_bounce_threshold,
        )
        .await?;
        return Ok(if recorded {
            Handled::Bounced {
                subscriber_id,
                status,
            }
        } else {
            Handled::AlreadyBounced(subscriber_id)
        });
    }

    if is_report && report_type.as_deref() == Some("feedback-report") {
        let recipient = original_recipient(body);
        return Ok(
            match attribute_by_message_id(pool, body, recipient.as_deref()).await? {
                Some((_, subscriber_id)) => {
                    let feedback = field(body, "Feedback-Type").unwrap_or_else(|| "abuse".into());
                    subscribers::record_complaint(pool, subscriber_id, &format!("ARF {feedback}"))
                        .await?;
                    Handled::Complaint(subscriber_id)
                }
                None => Handled::Ignored("complaint about a message that is not ours".into()),
            },
        );
    }

    // The List-Unsubscribe mailto: "unsubscribe <token>" in the subject.
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
    let b = &settings.bounces;
    let prefix = format!("{}+", b.address.user().to_ascii_lowercase());
    let domain = b.address.domain().to_ascii_lowercase();
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
    for c in candidates {
        let c = c.to_ascii_lowercase();
        let Some((local, dom)) = c.rsplit_once('@') else {
            continue;
        };
        if dom.trim_end_matches('>') != domain {
            continue;
        }
        if let Some(tag) = local.strip_prefix(&prefix) {
            return match keys.verify_bounce(tag) {
                Some((issue, sub)) => Verp::Valid(issue, sub),
                None => Verp::Forged,
            };
        }
    }
    Verp::Absent
}

/// Without VERP: our Message-ID (`<issue{n}.s{id}@…>`) in the returned headers, and the
/// subscriber's address as the failed recipient, both required.
async fn attribute_by_message_id(
    pool: &PgPool,
    body: &str,
    recipient: Option<&str>,
) -> anyhow::Result<Option<(i64, i64)>> {
    let Some(recipient) = recipient else {
        return Ok(None);
    };
    let Some(id) = field(body, "Message-ID") else {
        return Ok(None);
    };
    let id = id.trim().trim_start_matches('<');
    let Some(rest) = id.strip_prefix("issue") else {
        return Ok(None);
    };
    let Some((number, rest)) = rest.split_once(".s") else {
        return Ok(None);
    };
    let Some((sub, _)) = rest.split_once('@') else {
        return Ok(None);
    };
    let (Ok(number), Ok(sub)) = (number.parse::<i32>(), sub.parse::<i64>()) else {
        return Ok(None);
    };
    let Some(issue) = issues::find_by_number(pool, number).await? else {
        return Ok(None);
    };
    let Some(row) = subscribers::by_id(pool, sub).await? else {
        return Ok(None);
    };
    if !row.email.eq_ignore_ascii_case(recipient.trim()) {
        return Ok(None);
    }
    Ok(Some((issue.issue_id, sub)))
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

fn parse_dsn(body: &str) -> Dsn {
    // The per-recipient block follows the per-message block; fields we need appear once.
    let addr = |v: String| {
        v.split_once(';')
            .map_or(v.clone(), |(_, a)| a.trim().to_owned())
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned()
    };
    Dsn {
        action: field(body, "Action"),
        status: field(body, "Status").map(|s| s.split_whitespace().next().unwrap_or("").to_owned()),
        final_recipient: field(body, "Final-Recipient")
            .or_else(|| field(body, "Original-Recipient"))
            .map(addr),
        diagnostic: field(body, "Diagnostic-Code")
            .map(|d| crate::send::classify::truncate(&d, 300)),
    }
}

/// The address the reported message was sent to: the ARF `Original-Rcpt-To`, else the `To`
/// of the returned message.
fn original_recipient(body: &str) -> Option<String> {
    field(body, "Original-Rcpt-To").or_else(|| {
        body.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case("To"))
            .map(|(_, v)| v.trim().to_owned())
            .next()
            .map(|v| match v.rsplit_once('<') {
                Some((_, a)) => a.trim_end_matches('>').to_owned(),
                None => v,
            })
    })
}
