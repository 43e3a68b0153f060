//! Who may complain (issue 13, item 1): an RFC 5965 report counts when it names a VERP tag of
//! ours, from anyone, or when a feedback loop listed in `bounces.complaint_senders` signed it
//! with DKIM, checked against keys served by a real DNS server on 127.0.0.1. Nothing else
//! unsubscribes anyone, not even our signed Message-ID in an unsigned report.

use std::time::{Duration, Instant};

use digestif::config::{DkimSettings, Settings};
use digestif::domain::TokenKeys;
use digestif::inbound::{Handled, handle};
use digestif::send::dkim::Signer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use sqlx::PgPool;

use crate::dns_server::DnsServer;
use crate::helpers::{Digestif, arg, file_with, subscriber_status};

const RSA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/dkim-test-rsa.pem"
);
pub const FBL: &str = "fbl.example-isp.net";
pub const SELECTOR: &str = "fbl2026";

/// The phrase every unauthenticated complaint is ignored with.
const UNAUTHENTICATED: &str = "complaint from a sender not in bounces.complaint_senders with a verifying DKIM signature, naming no VERP tag";

/// The public key of the test RSA key as a DKIM TXT record for `selector._domainkey.domain`.
pub fn key_record(domain: &str, selector: &str) -> (String, String) {
    let signer = Signer::load(&DkimSettings {
        enabled: true,
        domain: domain.into(),
        selector: selector.into(),
        key_file: RSA.into(),
        ed25519_key_file: None,
        ed25519_selector: "unused".into(),
    })
    .unwrap()
    .unwrap();
    signer.dns_records()[0].clone()
}

/// `raw` with a DKIM-Signature of `domain` on top (rsa-sha256, relaxed/relaxed by default);
/// `body_length`: with an l= tag.
fn signed(raw: &str, domain: &str, selector: &str, body_length: bool) -> String {
    let pem = std::fs::read(RSA).unwrap();
    let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_slice(&pem).unwrap()).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers([
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Content-Type",
        ])
        .body_length(body_length)
        .sign(raw.as_bytes())
        .unwrap();
    format!("{}{raw}", signature.to_header())
}

/// An ARF report from `from` about `returned` (the copy of our message), naming `rcpt` in
/// `Original-Rcpt-To` when given.
/// A report from the loop, signed by it, about user 1's copy named by its Message-ID.
pub fn loop_report_about_user1(keys: &TokenKeys) -> String {
    signed(
        &report(
            &format!("fbl@{FBL}"),
            Some("user1@example.org"),
            &returned("user1@example.org", &message_id(keys, 1)),
        ),
        FBL,
        SELECTOR,
        false,
    )
}

fn report(from: &str, rcpt: Option<&str>, returned: &str) -> String {
    let rcpt = rcpt
        .map(|r| format!("Original-Rcpt-To: {r}\r\n"))
        .unwrap_or_default();
    format!(
        "From: Example ISP Feedback Loop <{from}>\r\n\
         To: abuse@example.com\r\n\
         Subject: FW: Backend Tips #1\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <report-1@fbl.example-isp.net>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary=\"F1\"\r\n\
         \r\n\
         --F1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
         --F1\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n{rcpt}\r\n\
         --F1\r\nContent-Type: message/rfc822\r\n\r\n{returned}\r\n\
         --F1--\r\n"
    )
}

/// Our message as a feedback loop returns it: `extra` headers (a Message-ID, a Return-Path)
/// and the recipient, which loops often redact.
fn returned(to: &str, extra: &str) -> String {
    format!(
        "{extra}From: Backend Tips <tips@example.com>\r\nTo: {to}\r\n\
         Subject: Backend Tips #1: A tip\r\n\r\nHi,\r\n\r\nDo the thing.\r\n"
    )
}

/// Settings for the feedback loop `FBL`, keys asked from `dns`.
fn settings(dns: &DnsServer) -> Settings {
    Settings::from_toml(&format!(
        "[bounces]\ncomplaint_senders = [\"{FBL}\"]\ndns_server = \"{}\"\n",
        dns.addr()
    ))
    .unwrap()
}

/// Three active subscribers, `user<n>@example.org` with id n, and the link keys.
async fn subscribers(pool: &PgPool, s: &Settings) -> TokenKeys {
    sqlx::query(
        "INSERT INTO subscriber (email, name, status, consent_source) \
         SELECT 'user' || i || '@example.org', 'User ' || i, 'active', 'test' \
         FROM generate_series(1, 3) i",
    )
    .execute(pool)
    .await
    .unwrap();
    digestif::digest::token_keys(s, pool).await.unwrap()
}

async fn events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM subscriber_event")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn message_id(keys: &TokenKeys, subscriber: i64) -> String {
    format!(
        "Message-ID: <{}@example.com>\r\n",
        keys.sign_message_id(1, subscriber)
    )
}

fn ignored_as_unauthenticated(handled: &Handled) -> bool {
    matches!(handled, Handled::Ignored(why) if why.starts_with(UNAUTHENTICATED))
}

#[sqlx::test]
async fn our_signed_message_id_in_an_unauthenticated_report_changes_nothing(pool: PgPool) {
    let dns = DnsServer::start(&[key_record(FBL, SELECTOR)]);
    let s = settings(&dns);
    let keys = subscribers(&pool, &s).await;
    // The Message-ID is genuine; the report's From even claims the configured loop. Without
    // a signature anyone could have written it.
    let raw = report(
        &format!("fbl@{FBL}"),
        Some("user1@example.org"),
        &returned("user1@example.org", &message_id(&keys, 1)),
    );
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert!(ignored_as_unauthenticated(&handled), "{handled}");
    assert_eq!(subscriber_status(&pool, 1).await, "active");
    assert_eq!(events(&pool).await, 0);
    assert!(
        dns.asked().is_empty(),
        "no signature, no lookup: {:?}",
        dns.asked()
    );
}

#[sqlx::test]
async fn a_report_signed_by_a_configured_feedback_loop_unsubscribes_and_suppresses(pool: PgPool) {
    let dns = DnsServer::start(&[key_record(FBL, SELECTOR)]);
    let s = settings(&dns);
    let keys = subscribers(&pool, &s).await;

    // Named by our signed Message-ID.
    let raw = loop_report_about_user1(&keys);
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(handled, Handled::Complaint(1));
    assert_eq!(subscriber_status(&pool, 1).await, "complained");
    assert_eq!(
        dns.asked(),
        [format!("{SELECTOR}._domainkey.{FBL}")],
        "the key came from the test DNS server"
    );
    // The same report again (a retried pipe, a mailbox read twice) says it changes nothing.
    let again = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(again, Handled::AlreadyComplained(1));
    assert!(again.to_string().contains("changes nothing"), "{again}");
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM subscriber_event WHERE subscriber_id = 1 AND kind = 'complained'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(detail, format!("ARF abuse from {FBL}"));

    // The Message-ID redacted: the reported recipient names the subscriber, which is allowed
    // only because the loop proved who it is. The same report unsigned is ignored.
    let about_2 = report(
        &format!("fbl@{FBL}"),
        Some("<User2@Example.org>"),
        &returned("redacted@example.net", ""),
    );
    let handled = handle(&pool, &s, &keys, about_2.as_bytes(), None)
        .await
        .unwrap();
    assert!(ignored_as_unauthenticated(&handled), "{handled}");
    assert_eq!(subscriber_status(&pool, 2).await, "active");
    let raw = signed(&about_2, FBL, SELECTOR, false);
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(handled, Handled::Complaint(2));
    assert_eq!(subscriber_status(&pool, 2).await, "complained");

    // No Original-Rcpt-To: the To of the returned message; a subdomain of the loop signs.
    let sub = format!("mail.{FBL}");
    let dns = DnsServer::start(&[key_record(&sub, SELECTOR)]);
    let s = settings(&dns);
    let raw = signed(
        &report(
            &format!("fbl@{sub}"),
            None,
            &returned("user3@example.org", ""),
        ),
        &sub,
        SELECTOR,
        false,
    );
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(handled, Handled::Complaint(3));
    assert_eq!(subscriber_status(&pool, 3).await, "complained");
}

#[sqlx::test]
async fn reports_that_do_not_authenticate_change_nothing(pool: PgPool) {
    let evil = "evil.example.net";
    let dns = DnsServer::start(&[key_record(FBL, SELECTOR), key_record(evil, SELECTOR)]);
    let s = settings(&dns);
    let keys = subscribers(&pool, &s).await;
    let about_1 = |from: &str| {
        report(
            from,
            Some("user1@example.org"),
            &returned("user1@example.org", &message_id(&keys, 1)),
        )
    };
    let cases = [
        (
            "signed by a domain not in the list, though its key is in DNS",
            signed(&about_1(&format!("fbl@{evil}")), evil, SELECTOR, false),
            "no usable DKIM signature",
        ),
        (
            "signed by the loop, but the body altered after signing",
            signed(&about_1(&format!("fbl@{FBL}")), FBL, SELECTOR, false).replacen(
                "Original-Rcpt-To: user1@example.org",
                "Original-Rcpt-To: user2@example.org",
                1,
            ),
            "body hash does not match",
        ),
        (
            "signed by the loop with a selector that has no key in DNS",
            signed(&about_1(&format!("fbl@{FBL}")), FBL, "nokey", false),
            "s=nokey: DNS record not found",
        ),
        (
            "signed by the loop, but From another domain",
            signed(&about_1(&format!("fbl@{evil}")), FBL, SELECTOR, false),
            "no usable DKIM signature",
        ),
        (
            "signed by a domain that merely ends like the loop's",
            signed(
                &about_1("fbl@notfbl.example-isp.net"),
                "notfbl.example-isp.net",
                SELECTOR,
                false,
            ),
            "no usable DKIM signature",
        ),
        (
            "signed by the loop over the first l= bytes, with a part appended",
            signed(&about_1(&format!("fbl@{FBL}")), FBL, SELECTOR, true)
                + "\r\nOriginal-Rcpt-To: user2@example.org\r\n",
            "no usable DKIM signature",
        ),
    ];
    for (what, raw, why) in cases {
        let started = Instant::now();
        let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(ignored_as_unauthenticated(&handled), "{what}: {handled}");
        assert!(handled.to_string().contains(why), "{what}: {handled}");
        assert_eq!(subscriber_status(&pool, 1).await, "active", "{what}");
        assert_eq!(subscriber_status(&pool, 2).await, "active", "{what}");
    }
    assert_eq!(events(&pool).await, 0);
    let asked = dns.asked();
    assert!(
        asked.contains(&format!("nokey._domainkey.{FBL}")),
        "the missing key was looked up: {asked:?}"
    );
    assert!(
        !asked
            .iter()
            .any(|n| n.ends_with(evil) || n.contains("notfbl")),
        "keys of domains not in the list are never looked up: {asked:?}"
    );
}

/// A resolver that does not answer must not hold the MTA's delivery agent for long; the
/// report is handed back (exit 75) so the MTA tries again later, and nothing changes.
#[sqlx::test]
async fn a_silent_dns_server_makes_inbound_ask_for_a_retry_within_seconds(pool: PgPool) {
    let dns = DnsServer::silent();
    let s = settings(&dns);
    let keys = subscribers(&pool, &s).await;
    let raw = loop_report_about_user1(&keys);
    let toml = format!(
        "[bounces]\ncomplaint_senders = [\"{FBL}\"]\ndns_server = \"{}\"\n",
        dns.addr()
    );
    let (_dir, config) = file_with("digestif.toml", toml.as_bytes());
    let started = Instant::now();
    let run =
        Digestif::new(&pool).run_with_stdin(&["--config", arg(&config), "inbound"], raw.as_bytes());
    let took = started.elapsed();
    assert_eq!(run.output.status.code(), Some(75), "{run}");
    assert!(
        run.stderr()
            .contains("cannot check the complaint's DKIM signature"),
        "{run}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        !dns.asked().is_empty(),
        "the lookup went to the configured server"
    );
    assert_eq!(subscriber_status(&pool, 1).await, "active");
}

#[sqlx::test]
async fn a_report_naming_our_verp_tag_counts_from_any_sender(pool: PgPool) {
    // No feedback loop configured, no signature, any sender: the VERP return path of the
    // returned message is something only we can make.
    let s = Settings::from_toml("").unwrap();
    let keys = subscribers(&pool, &s).await;
    let return_path = format!(
        "Return-Path: <bounces+{}@example.com>\r\n",
        keys.sign_bounce(7, 2)
    );
    let raw = report(
        "complaints@tiny-isp.example",
        None,
        &returned("redacted@example.net", &return_path),
    );
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(handled, Handled::Complaint(2));
    assert_eq!(subscriber_status(&pool, 2).await, "complained");

    // A forged tag does not.
    let forged = return_path.replace(".7.2.", ".7.3.");
    assert_ne!(forged, return_path);
    let raw = report(
        "complaints@tiny-isp.example",
        None,
        &returned("redacted@example.net", &forged),
    );
    let handled = handle(&pool, &s, &keys, raw.as_bytes(), None)
        .await
        .unwrap();
    assert!(ignored_as_unauthenticated(&handled), "{handled}");
    assert_eq!(subscriber_status(&pool, 3).await, "active");
}
