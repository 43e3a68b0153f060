//! Who may complain without our VERP tag: a feedback loop listed in `bounces.complaint_senders`
//! that proves it sent the report with a DKIM signature (checked by mail-auth) for that domain,
//! and whose From address is in that domain too. Keys are looked up in DNS through
//! `bounces.dns_server` or the system's resolvers, within a few seconds.

use std::time::Duration;

use anyhow::{Context, anyhow};
use mail_auth::common::crypto::Algorithm;
use mail_auth::dkim::Signature;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

use crate::config::BounceSettings;
use crate::domain::shown;

/// How long one DNS query may wait for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long checking a report's signatures may take in all: an MTA's pipe to
/// `digestif inbound` must not hang on a resolver that has gone away.
pub(super) const DEADLINE: Duration = Duration::from_secs(5);

/// Signatures checked at most, so a report stuffed with signatures cannot make us ask DNS
/// again and again.
const MAX_SIGNATURES: usize = 3;

/// Who sent a feedback report.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sender {
    /// A listed feedback loop, proved: the signing domain (d=), lower case, fit for a log line.
    Authenticated(String),
    /// Anyone else, with why (for the log line).
    Unknown(String),
}

/// Checks whether `raw`, a feedback report, comes from a listed feedback loop.
///
/// A DNS answer that does not come in time (or a resolver that fails) is an error: the MTA is
/// to hand the report over again later rather than lose a genuine complaint. A key that is
/// not published, a signature that does not verify, or no signature at all is `Unknown`.
pub(super) async fn authenticate(b: &BounceSettings, raw: &[u8]) -> anyhow::Result<Sender> {
    if b.complaint_senders.is_empty() {
        return Ok(Sender::Unknown("bounces.complaint_senders is empty".into()));
    }
    let Some(mut message) = AuthenticatedMessage::parse(raw) else {
        return Ok(Sender::Unknown("no header fields".into()));
    };
    // mail-auth gathers the addresses of every From field: exactly one, or it is not clear
    // who is speaking.
    let from_domain = match message.from.as_slice() {
        [one] => one
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    };
    let Some(from_domain) = from_domain else {
        return Ok(Sender::Unknown("not exactly one From address".into()));
    };
    // Only signatures that could prove a listed loop are checked: a report signed by anyone
    // else costs no DNS query at all.
    message
        .dkim_headers
        .retain(|h| usable(b, &h.header, &from_domain));
    message.dkim_headers.truncate(MAX_SIGNATURES);
    if message.dkim_headers.is_empty() {
        return Ok(Sender::Unknown(format!(
            "no usable DKIM signature: none by a listed domain that the From domain '{}' \
             belongs to, over From and the whole body (no l=), rsa-sha256 or ed25519-sha256",
            shown(&from_domain)
        )));
    }

    let authenticator = authenticator(b)?;
    let outputs = tokio::time::timeout(DEADLINE, authenticator.verify_dkim(&message))
        .await
        .map_err(|_| {
            anyhow!(
                "cannot check the complaint's DKIM signature: no DNS answer within {} s (try again later)",
                DEADLINE.as_secs()
            )
        })?;
    let mut failures = Vec::new();
    let mut temporary = None;
    for output in &outputs {
        let Some(signature) = output.signature() else {
            continue; // a malformed DKIM-Signature field: it proves nothing
        };
        let domain = signature.d.trim_end_matches('.').to_ascii_lowercase();
        let which = format!("d={} s={}", shown(&domain), shown(&signature.s));
        match output.result() {
            DkimResult::Pass => return Ok(Sender::Authenticated(shown(&domain))),
            // The errors may quote what the report wrote (a selector in a DNS name).
            DkimResult::TempError(e) => {
                temporary = Some(format!("{which}: {}", shown(&e.to_string())));
            }
            DkimResult::Fail(e) | DkimResult::Neutral(e) | DkimResult::PermError(e) => {
                failures.push(format!("{which}: {}", shown(&e.to_string())));
            }
            DkimResult::None => {}
        }
    }
    if let Some(why) = temporary {
        return Err(anyhow!(
            "cannot check the complaint's DKIM signature: {why} (try again later)"
        ));
    }
    Ok(Sender::Unknown(if failures.is_empty() {
        "no DKIM result".into()
    } else {
        format!("DKIM {}", failures.join("; "))
    }))
}

/// Whether `signature` could prove a listed loop: d= is a listed domain or under one, the
/// From domain is under that listed domain too, From is signed, the whole body is signed
/// (with l= anyone could append to a genuine report), and the algorithm is one RFC 8301 allows.
fn usable(b: &BounceSettings, signature: &Signature, from_domain: &str) -> bool {
    let d = signature.d.trim_end_matches('.').to_ascii_lowercase();
    b.complaint_senders
        .iter()
        .any(|listed| within(&d, listed) && within(from_domain, listed))
        && signature.l == 0
        && matches!(signature.a, Algorithm::RsaSha256 | Algorithm::Ed25519Sha256)
        && signature.h.iter().any(|h| h.eq_ignore_ascii_case("from"))
}

/// `name` is `domain` or a subdomain of it (both lower case, no final dot).
fn within(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// A resolver asking `bounces.dns_server` (UDP), or the system's resolvers, with short
/// timeouts.
fn authenticator(b: &BounceSettings) -> anyhow::Result<MessageAuthenticator> {
    let (config, mut opts) = match b.dns_server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp]);
            (
                ResolverConfig::from_name_servers(vec![server]),
                ResolverOpts::default(),
            )
        }
        None => mail_auth::hickory_resolver::system_conf::read_system_conf().context(
            "cannot read the system's DNS configuration (/etc/resolv.conf); set bounces.dns_server",
        )?,
    };
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    MessageAuthenticator::new(config, opts).context("cannot set up a DNS resolver for DKIM keys")
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn within_means_the_domain_or_below_it() {
        assert!(within("fbl.example.net", "fbl.example.net"));
        assert!(within("mail.fbl.example.net", "fbl.example.net"));
        assert!(!within("notfbl.example.net", "fbl.example.net"));
        assert!(!within("example.net", "fbl.example.net"));
        assert!(!within("fbl.example.net.evil.org", "fbl.example.net"));
    }
}
