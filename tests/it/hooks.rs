//! Bounce and complaint webhooks (issue 20, item 2) against a real `serve` HTTP server on
//! 127.0.0.1:0 and a real Postgres: for each provider a request signed in the test with a test
//! key marks the delivery bounced or the subscriber complained; tampered, unsigned, replayed
//! and stale ones get 401 and change nothing. SNS certificates come from a local https server
//! with a test CA, reached through the only fetcher tests can make
//! (`CertFetcher::for_tests`), with the production URL checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::DateTime;
use digestif::config::Settings;
use digestif::http::hooks::{Hooks, sns::CertFetcher};
use hmac::{Hmac, KeyInit, Mac};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{deliver_all, seed};
use crate::smtp_server::openssl;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-bounces";
const SNS_HOST: &str = "sns.us-east-1.amazonaws.com";
const MAILGUN_KEY: &str = "key-mailgun-signing-0123456789";
const GENERIC_SECRET: &str = "generic-secret-0123456789abcdef0123456789";

/// A test CA, an https server certificate for the SNS host it signs, and an SNS signing key
/// with its (self-signed) certificate.
struct SnsKeys {
    dir: tempfile::TempDir,
}

impl SnsKeys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            // The lookalikes too: were their URLs followed, the fetch would work, and the test
            // would see it.
            format!(
                "subjectAltName=DNS:{SNS_HOST},DNS:{SNS_HOST}.evil.com,\
                 DNS:sns-us-east-1.amazonaws.com,DNS:evil.com\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        #[rustfmt::skip]
        let steps: [&[&str]; 4] = [
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
              "ca.pem", "-days", "2", "-subj", "/CN=digestif hooks test CA"],
            &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
              "server.csr", "-subj", "/CN=sns.us-east-1.amazonaws.com"],
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
              "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"],
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "signing.key", "-out",
              "signing.pem", "-days", "2", "-subj", "/CN=sns.amazonaws.com"],
        ];
        for args in steps {
            openssl(d, args);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An RSA PKCS#1 v1.5 signature of `text` with the SNS signing key, base64.
    fn sign(&self, text: &str, digest: &str) -> String {
        let data = self.path("to-sign.txt");
        std::fs::write(&data, text).unwrap();
        openssl(
            self.dir.path(),
            &[
                "dgst",
                &format!("-{digest}"),
                "-sign",
                "signing.key",
                "-out",
                "sig.bin",
                "to-sign.txt",
            ],
        );
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(self.path("sig.bin")).unwrap())
    }
}

/// The local https server standing in for sns.<region>.amazonaws.com: it serves the signing
/// certificate at any path ending in `.pem`, answers 200 to anything else, and records paths.
struct SnsServer {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    /// While true, every request is answered 503, as AWS does now and then.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl SnsServer {
    async fn start(keys: &SnsKeys) -> Self {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_file_iter(keys.path("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(keys.path("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let pem = std::fs::read(keys.path("signing.pem")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let failing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let seen = paths.clone();
        let fail = failing.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, pem, seen) = (acceptor.clone(), pem.clone(), seen.clone());
                let fail = fail.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let body = if path.ends_with(".pem") {
                        pem
                    } else {
                        b"<ConfirmSubscriptionResponse/>".to_vec()
                    };
                    let (status, body) = if fail.load(std::sync::atomic::Ordering::SeqCst) {
                        ("503 Service Unavailable", b"busy".to_vec())
                    } else {
                        ("200 OK", body)
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            paths,
            failing,
        }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// `serve`'s HTTP server with every webhook configured.
struct Hooked {
    addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// A P-256 key pair for SendGrid: the signer, and the verification key as SendGrid shows it.
fn sendgrid_key() -> (ring::signature::EcdsaKeyPair, String) {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    (pair, b64)
}

/// Everything a test needs: a delivery sent to subscriber 1, its Message-ID and VERP address,
/// the server, the SNS stand-in and the SendGrid key.
struct World {
    pool: PgPool,
    server: Hooked,
    message_id: String,
    verp: String,
    sns_keys: SnsKeys,
    sns: SnsServer,
    sendgrid: ring::signature::EcdsaKeyPair,
    _outbox: tempfile::TempDir,
}

impl World {
    async fn new(pool: PgPool) -> Self {
        let outbox = tempfile::tempdir().unwrap();
        let (sendgrid, sendgrid_public) = sendgrid_key();
        let mut settings = Settings::from_toml(&format!(
            "[delivery]\noutbox = \"{}\"\n[hooks]\nses_topic_arns = [\"{TOPIC}\"]\n\
             postmark_username = \"postmark\"\npostmark_password = \"pm-secret\"\n\
             mailgun_signing_key = \"{MAILGUN_KEY}\"\nsendgrid_public_key = \"{sendgrid_public}\"\n\
             generic_secret = \"{GENERIC_SECRET}\"\n",
            outbox.path().display()
        ))
        .unwrap();
        seed(&pool, 1).await;
        let slot = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z").unwrap();
        digestif::digest::create_issue(&pool, &settings, slot.into())
            .await
            .unwrap();
        assert_eq!(
            deliver_all(&pool, &settings, std::time::Duration::ZERO)
                .await
                .outcomes
                .sent,
            1
        );
        let (issue_id, message_id): (i64, String) =
            sqlx::query_as("SELECT issue_id, message_id FROM delivery")
                .fetch_one(&pool)
                .await
                .unwrap();
        let keys = digestif::digest::token_keys(&settings, &pool)
            .await
            .unwrap();
        let verp = format!("bounces+{}@example.com", keys.sign_bounce(issue_id, 1));

        let sns_keys = SnsKeys::new();
        let sns = SnsServer::start(&sns_keys).await;
        let fetcher =
            CertFetcher::for_tests(&std::fs::read(sns_keys.path("ca.pem")).unwrap(), sns.addr)
                .unwrap();
        settings.http.listen = "127.0.0.1:0".parse().unwrap();
        let server = digestif::http::Server::build_with(
            Arc::new(settings),
            pool.clone(),
            Arc::default(),
            Hooks::with_fetcher(fetcher),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(server.run_until_stopped(stopped));
        Self {
            pool,
            server: Hooked { addr, _stop: stop },
            message_id,
            verp,
            sns_keys,
            sns,
            sendgrid,
            _outbox: outbox,
        }
    }

    /// POSTs `body` to `/hooks/<provider>`; the status code and body.
    async fn post(&self, provider: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.server.addr)
            .await
            .unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "POST /hooks/{provider} HTTP/1.1\r\nHost: news.example.com\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw).await;
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    }

    /// (delivery status, subscriber status, hard bounces, lifecycle events): what a user checks.
    async fn state(&self) -> (String, String, i32, i64) {
        sqlx::query_as(
            "SELECT d.status, s.status, s.hard_bounces, \
                    (SELECT count(*) FROM subscriber_event e WHERE e.subscriber_id = s.subscriber_id \
                       AND e.kind IN ('bounced', 'complained')) \
             FROM delivery d JOIN subscriber s USING (subscriber_id)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn untouched(&self) {
        assert_eq!(self.state().await, ("sent".into(), "active".into(), 0, 0));
    }

    async fn bounced(&self) {
        assert_eq!(
            self.state().await,
            ("bounced".into(), "bounced".into(), 1, 1)
        );
    }

    async fn complained(&self) {
        let (_, subscriber, _, events) = self.state().await;
        assert_eq!((subscriber.as_str(), events), ("complained", 1));
    }

    // ---- SNS -----------------------------------------------------------------------------

    /// An SNS message of `kind` carrying `message`, signed with SignatureVersion `version`.
    fn sns_message(
        &self,
        kind: &str,
        message: &str,
        version: &str,
        cert_host: &str,
    ) -> serde_json::Value {
        self.sns_message_at(kind, message, version, cert_host, chrono::Utc::now(), "m-1")
    }

    fn sns_message_at(
        &self,
        kind: &str,
        message: &str,
        version: &str,
        cert_host: &str,
        at: chrono::DateTime<chrono::Utc>,
        id: &str,
    ) -> serde_json::Value {
        let timestamp = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let subscribe = format!("https://{SNS_HOST}/?Action=ConfirmSubscription&Token=tok");
        let to_sign = if kind == "Notification" {
            format!(
                "Message\n{message}\nMessageId\n{id}\nTimestamp\n{timestamp}\nTopicArn\n{TOPIC}\nType\n{kind}\n"
            )
        } else {
            format!(
                "Message\n{message}\nMessageId\n{id}\nSubscribeURL\n{subscribe}\nTimestamp\n{timestamp}\n\
                 Token\ntok\nTopicArn\n{TOPIC}\nType\n{kind}\n"
            )
        };
        let digest = if version == "1" { "sha1" } else { "sha256" };
        let mut v = serde_json::json!({
            "Type": kind,
            "MessageId": id,
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": timestamp,
            "SignatureVersion": version,
            "Signature": self.sns_keys.sign(&to_sign, digest),
            "SigningCertURL": format!("https://{cert_host}/SimpleNotificationService-test.pem"),
        });
        if kind != "Notification" {
            v["SubscribeURL"] = subscribe.into();
            v["Token"] = "tok".into();
        }
        v
    }

    fn ses_bounce(&self, message_id: Option<&str>) -> String {
        let mut mail = serde_json::json!({
            "messageId": "0100018c-ses-own-id",
            "destination": ["user1@example.com"],
            "commonHeaders": {"to": ["user1@example.com"]},
        });
        if let Some(id) = message_id {
            mail["commonHeaders"]["messageId"] = id.into();
        }
        serde_json::json!({
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [{
                    "emailAddress": "user1@example.com",
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown"
                }]
            },
            "mail": mail
        })
        .to_string()
    }

    // ---- the others ----------------------------------------------------------------------

    fn mailgun(&self, event: serde_json::Value, timestamp: i64, token: &str) -> String {
        let mut mac =
            <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(MAILGUN_KEY.as_bytes()).unwrap();
        mac.update(format!("{timestamp}{token}").as_bytes());
        let sig: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({
            "signature": {"timestamp": timestamp.to_string(), "token": token, "signature": sig},
            "event-data": event
        })
        .to_string()
    }

    fn sendgrid_headers(&self, body: &str, timestamp: i64) -> Vec<(&'static str, String)> {
        let rng = ring::rand::SystemRandom::new();
        let signed = format!("{timestamp}{body}");
        let sig = self.sendgrid.sign(&rng, signed.as_bytes()).unwrap();
        vec![
            (
                "X-Twilio-Email-Event-Webhook-Signature",
                base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
            ),
            (
                "X-Twilio-Email-Event-Webhook-Timestamp",
                timestamp.to_string(),
            ),
        ]
    }

    /// A generic-form bounce of the delivery, signed now: the body and its headers.
    fn generic_bounce(&self) -> (String, Vec<(&'static str, String)>) {
        let body = serde_json::json!({"events": [{
            "type": "bounce", "status": "5.1.1", "diagnostic": "smtp; 550 5.1.1 user unknown",
            "return_path": self.verp
        }]})
        .to_string();
        let headers = self.generic_header(&body, now());
        (body, headers)
    }

    fn generic_header(&self, body: &str, t: i64) -> Vec<(&'static str, String)> {
        let mut mac =
            <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(GENERIC_SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        let v1: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        vec![("X-Digestif-Signature", format!("t={t},v1={v1}"))]
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[sqlx::test]
async fn ses_through_sns_bounces_and_refuses_forgeries(pool: PgPool) {
    let w = World::new(pool).await;
    let bounce = w.ses_bounce(Some(&w.message_id));
    let good = w.sns_message("Notification", &bounce, "1", SNS_HOST);

    // Tampered: the message changed after signing.
    let mut tampered = good.clone();
    tampered["Message"] = bounce.replace("5.1.1", "5.1.2").into();
    assert_eq!(w.post("ses", &[], &tampered.to_string()).await.0, 401);
    // Unsigned.
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("Signature");
    assert_eq!(w.post("ses", &[], &unsigned.to_string()).await.0, 401);
    // Stale: signed two hours ago.
    let stale = w.sns_message_at(
        "Notification",
        &bounce,
        "1",
        SNS_HOST,
        chrono::Utc::now() - chrono::Duration::hours(2),
        "m-old",
    );
    assert_eq!(w.post("ses", &[], &stale.to_string()).await.0, 401);
    w.untouched().await;

    let (status, body) = w.post("ses", &[], &good.to_string()).await;
    assert_eq!(status, 200, "{body}");
    w.bounced().await;
    // Replayed: the same message again.
    assert_eq!(w.post("ses", &[], &good.to_string()).await.0, 401);
    w.bounced().await;
    // The certificate was fetched once (cached).
    let pems = w.sns.paths().iter().filter(|p| p.ends_with(".pem")).count();
    assert_eq!(pems, 1, "{:?}", w.sns.paths());
}

/// SNS retries only after a 5xx or a timeout, never after a 4xx. A certificate AWS could not
/// serve for a moment (the first message after every restart fetches it) was answered 401, so
/// the bounce was dropped for good; it is answered 503, and the retry is recorded.
#[sqlx::test]
async fn an_ses_bounce_whose_certificate_cannot_be_fetched_yet_is_asked_for_again(pool: PgPool) {
    let w = World::new(pool).await;
    let good = w.sns_message(
        "Notification",
        &w.ses_bounce(Some(&w.message_id)),
        "1",
        SNS_HOST,
    );
    w.sns
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = w.post("ses", &[], &good.to_string()).await;
    assert_eq!(status, 503, "{body}");
    w.untouched().await;
    w.sns
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = w.post("ses", &[], &good.to_string()).await;
    assert_eq!(status, 200, "the retry is not a replay: {body}");
    w.bounced().await;
}

#[sqlx::test]
async fn an_ses_complaint_signed_with_version_2_marks_the_subscriber_complained(pool: PgPool) {
    let w = World::new(pool).await;
    let complaint = serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": "user1@example.com"}],
                      "complaintFeedbackType": "abuse"},
        "mail": {"messageId": "ses-id", "headers": [{"name": "Message-ID", "value": w.message_id}]}
    })
    .to_string();
    let msg = w.sns_message("Notification", &complaint, "2", SNS_HOST);
    let (status, body) = w.post("ses", &[], &msg.to_string()).await;
    assert_eq!(status, 200, "{body}");
    w.complained().await;
}

#[sqlx::test]
async fn a_lookalike_certificate_host_or_a_strange_topic_is_refused_unfetched(pool: PgPool) {
    let w = World::new(pool).await;
    let bounce = w.ses_bounce(Some(&w.message_id));
    for host in [
        "sns.us-east-1.amazonaws.com.evil.com",
        "sns-us-east-1.amazonaws.com",
        "evil.com",
    ] {
        let msg = w.sns_message("Notification", &bounce, "1", host);
        assert_eq!(w.post("ses", &[], &msg.to_string()).await.0, 401, "{host}");
    }
    let mut other_topic = w.sns_message("Notification", &bounce, "1", SNS_HOST);
    other_topic["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:mine".into();
    assert_eq!(w.post("ses", &[], &other_topic.to_string()).await.0, 401);
    assert!(
        w.sns.paths().is_empty(),
        "nothing fetched: {:?}",
        w.sns.paths()
    );
    w.untouched().await;
}

#[sqlx::test]
async fn an_sns_subscription_is_confirmed(pool: PgPool) {
    let w = World::new(pool).await;
    let msg = w.sns_message(
        "SubscriptionConfirmation",
        "You have chosen to subscribe",
        "1",
        SNS_HOST,
    );
    let (status, body) = w.post("ses", &[], &msg.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        w.sns
            .paths()
            .iter()
            .any(|p| p.contains("Action=ConfirmSubscription")),
        "{:?}",
        w.sns.paths()
    );
}

#[sqlx::test]
async fn an_event_naming_only_an_address_changes_nothing(pool: PgPool) {
    let w = World::new(pool).await;
    // SES: the recipient address but no Message-ID of ours.
    let msg = w.sns_message("Notification", &w.ses_bounce(None), "1", SNS_HOST);
    let (status, body) = w.post("ses", &[], &msg.to_string()).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok: 1 event(s), 0 recorded\n")
    );
    // Generic: an address where the Message-ID should be, and a made-up Message-ID.
    for id in [
        "user1@example.com",
        "<issue1.s1.000000000000000000000000@example.com>",
    ] {
        let body =
            serde_json::json!({"type": "bounce", "status": "5.1.1", "message_id": id}).to_string();
        let (status, _) = w
            .post("generic", &w.generic_header(&body, now()), &body)
            .await;
        assert_eq!(status, 200);
    }
    w.untouched().await;
}

#[sqlx::test]
async fn postmark_needs_its_basic_auth_and_counts_a_record_once(pool: PgPool) {
    let w = World::new(pool).await;
    let record = serde_json::json!({
        "RecordType": "Bounce", "ID": 4323372036854775807u64, "Type": "HardBounce",
        "TypeCode": 1, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "user1@example.com", "Details": "smtp;550 5.1.1 The email account does not exist",
        "Content": format!("Return-Path: <>\r\nMessage-ID: <bounce@mx>\r\n\r\n...\r\nMessage-ID: {}\r\n", w.message_id),
    })
    .to_string();
    let auth = |user: &str, pw: &str| {
        vec![(
            "Authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
            ),
        )]
    };
    assert_eq!(w.post("postmark", &[], &record).await.0, 401);
    assert_eq!(
        w.post("postmark", &auth("postmark", "wrong"), &record)
            .await
            .0,
        401
    );
    w.untouched().await;
    let (status, body) = w
        .post("postmark", &auth("postmark", "pm-secret"), &record)
        .await;
    assert_eq!(status, 200, "{body}");
    w.bounced().await;
    assert_eq!(
        w.post("postmark", &auth("postmark", "pm-secret"), &record)
            .await
            .0,
        401
    );
}

#[sqlx::test]
async fn mailgun_checks_signature_age_and_token(pool: PgPool) {
    let w = World::new(pool).await;
    let event = serde_json::json!({
        "event": "failed", "severity": "permanent", "recipient": "user1@example.com",
        "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"},
        "message": {"headers": {"message-id": w.message_id.trim_matches(|c| c == '<' || c == '>')}}
    });
    let good = w.mailgun(event.clone(), now(), "token-1");
    // Mailgun signs the timestamp and the token only (not the event): those are what can be
    // tampered with.
    for (from, to) in [("token-1", "token-9"), (&now().to_string()[..], "1")] {
        let tampered = good.replacen(from, to, 1);
        assert_ne!(tampered, good);
        assert_eq!(w.post("mailgun", &[], &tampered).await.0, 401, "{tampered}");
    }
    let mut unsigned: serde_json::Value = serde_json::from_str(&good).unwrap();
    unsigned.as_object_mut().unwrap().remove("signature");
    assert_eq!(w.post("mailgun", &[], &unsigned.to_string()).await.0, 401);
    let stale = w.mailgun(event.clone(), now() - 600, "token-2");
    assert_eq!(w.post("mailgun", &[], &stale).await.0, 401);
    w.untouched().await;
    let (status, body) = w.post("mailgun", &[], &good).await;
    assert_eq!(status, 200, "{body}");
    w.bounced().await;
    assert_eq!(
        w.post("mailgun", &[], &good).await.0,
        401,
        "a token is used once"
    );
}

#[sqlx::test]
async fn sendgrid_checks_the_ecdsa_signature_and_its_age(pool: PgPool) {
    let w = World::new(pool).await;
    let body = serde_json::json!([
        {"email": "user1@example.com", "event": "processed", "smtp-id": w.message_id},
        {"email": "user1@example.com", "event": "spamreport", "smtp-id": w.message_id}
    ])
    .to_string();
    let headers = w.sendgrid_headers(&body, now());
    let tampered = body.replace("spamreport", "delivered");
    assert_eq!(w.post("sendgrid", &headers, &tampered).await.0, 401);
    assert_eq!(w.post("sendgrid", &[], &body).await.0, 401);
    let stale = w.sendgrid_headers(&body, now() - 600);
    assert_eq!(w.post("sendgrid", &stale, &body).await.0, 401);
    w.untouched().await;
    let (status, reply) = w.post("sendgrid", &headers, &body).await;
    assert_eq!(status, 200, "{reply}");
    w.complained().await;
    assert_eq!(w.post("sendgrid", &headers, &body).await.0, 401);
}

#[sqlx::test]
async fn a_sendgrid_bounce_counts_as_a_hard_bounce(pool: PgPool) {
    let w = World::new(pool).await;
    let body = serde_json::json!([{
        "email": "user1@example.com", "event": "bounce", "type": "bounce", "status": "5.1.1",
        "reason": "550 5.1.1 user unknown", "smtp-id": w.message_id
    }])
    .to_string();
    let (status, reply) = w
        .post("sendgrid", &w.sendgrid_headers(&body, now()), &body)
        .await;
    assert_eq!(status, 200, "{reply}");
    w.bounced().await;
}

#[sqlx::test]
async fn the_generic_form_checks_signature_age_and_replay(pool: PgPool) {
    let w = World::new(pool).await;
    let (body, headers) = w.generic_bounce();
    assert_eq!(
        w.post("generic", &headers, &body.replace("5.1.1", "5.2.1"))
            .await
            .0,
        401
    );
    assert_eq!(w.post("generic", &[], &body).await.0, 401);
    assert_eq!(
        w.post("generic", &w.generic_header(&body, now() - 600), &body)
            .await
            .0,
        401
    );
    w.untouched().await;
    let (status, reply) = w.post("generic", &headers, &body).await;
    assert_eq!(status, 200, "{reply}");
    w.bounced().await;
    assert_eq!(w.post("generic", &headers, &body).await.0, 401);
}

#[sqlx::test]
async fn an_unconfigured_provider_is_404_and_a_huge_body_413(pool: PgPool) {
    let w = World::new(pool).await;
    assert_eq!(w.post("sparkpost", &[], "{}").await.0, 404);
    let huge = "x".repeat(digestif::http::hooks::MAX_BODY + 1);
    assert_eq!(w.post("generic", &[], &huge).await.0, 413);
    // The web server without [hooks] answers 404 on every provider.
    let web = crate::web::App::start(&w.pool, "").await;
    let reply = web.request("POST", "/hooks/mailgun", Some("{}")).await;
    assert_eq!(reply.status, 404);
}

/// A request that proves itself but says nothing we can read is refused (400) and changes
/// nothing; a batch with one event naming a forged delivery records the genuine ones only.
#[sqlx::test]
async fn a_signed_but_malformed_request_is_400_and_a_forged_reference_changes_nothing(
    pool: PgPool,
) {
    let w = World::new(pool).await;
    for body in [
        "not json at all",
        "{\"events\": \"bounce\"}",
        "{\"events\": [{\"type\": \"explode\", \"return_path\": \"x\"}]}",
        "[1, 2, 3]",
    ] {
        let (status, reply) = w
            .post("generic", &w.generic_header(body, now()), body)
            .await;
        assert_eq!(status, 400, "{body}: {reply}");
    }
    w.untouched().await;
    // A VERP address with a made-up tag next to the genuine one: only the genuine counts.
    let forged = w.verp.replacen("bounces+", "bounces+0000", 1);
    let body = serde_json::json!({"events": [
        {"type": "complaint", "return_path": forged},
        {"type": "bounce", "status": "5.1.1", "return_path": w.verp}
    ]})
    .to_string();
    let (status, reply) = w
        .post("generic", &w.generic_header(&body, now()), &body)
        .await;
    assert_eq!(status, 200, "{reply}");
    w.bounced().await;
    let complained: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subscriber WHERE status = 'complained'")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(complained, 0, "a forged tag named someone");
}

/// The provider gives up on a request that is slow to answer (its own timeout, or ours) and
/// sends it again while the first is still being recorded. The retry is told to come back
/// (503), not refused as a replay (401): were the first attempt then to fail, a provider
/// that takes a 401 as final would never send the event again, and the bounce would be lost. Once the first
/// has been recorded, the same request is a replay.
#[sqlx::test]
async fn a_retry_while_the_first_request_is_still_recorded_is_asked_to_come_back(pool: PgPool) {
    let w = World::new(pool).await;
    let (body, headers) = w.generic_bounce();
    // Recording the bounce waits for this row lock.
    let mut blocker = w.pool.begin().await.unwrap();
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM delivery FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    // The provider gives up waiting; the first attempt goes on.
    let first = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        w.post("generic", &headers, &body),
    )
    .await;
    assert!(first.is_err(), "the first request was not held: {first:?}");
    let held = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(blocker_pid)
        .fetch_optional(&w.pool)
        .await
        .unwrap()
    };
    let first_pid = crate::helpers::wait_for(
        "the first attempt to wait for the row lock",
        std::time::Duration::from_secs(10),
        held,
    )
    .await;
    let (status, reply) = w.post("generic", &headers, &body).await;
    assert_eq!(status, 503, "{reply}");

    // The first attempt fails after all (its database session ends): the provider's next
    // retry is acted on.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first_pid)
        .execute(&w.pool)
        .await
        .unwrap();
    crate::helpers::wait_for(
        "the first attempt's session to end",
        std::time::Duration::from_secs(10),
        || async {
            let alive: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                    .bind(first_pid)
                    .fetch_one(&w.pool)
                    .await
                    .unwrap();
            (!alive).then_some(())
        },
    )
    .await;
    blocker.rollback().await.unwrap();
    let retried = crate::helpers::wait_for(
        "the retry to be acted on",
        std::time::Duration::from_secs(10),
        || {
            let (w, headers, body) = (&w, &headers, &body);
            async move {
                let (status, reply) = w.post("generic", headers, body).await;
                match status {
                    503 => None,
                    _ => Some((status, reply)),
                }
            }
        },
    )
    .await;
    assert_eq!(retried.0, 200, "{}", retried.1);
    w.bounced().await;
    assert_eq!(w.post("generic", &headers, &body).await.0, 401);
}
