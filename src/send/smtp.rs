//! The SMTP connection pool: lettre's client connections (EHLO, STARTTLS, AUTH, the SMTP
//! commands, replies and dot-stuffing are all lettre's), opened by us over sockets with
//! TCP_NODELAY, and the envelope pipelined (RFC 2920) when the server offers it.
//!
//! Why not lettre's own pool: it opens sockets with Nagle's algorithm on, so the final
//! `.\r\n` of every message waits for a delayed ACK (about 40 ms a message on Linux); and it
//! puts a connection abandoned at a deadline back into the pool in the middle of a transaction.
//! Here a connection is reused only after a clean 250, and dropped after anything else.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::{Response, Severity};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::classify::{self, Outcome};
use crate::config::{RelaySettings, SmtpSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Plain SMTP (a relay on this machine or a trusted network).
    None,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS, or refuse to send.
    Required,
    /// Implicit TLS (`smtps://`).
    Wrapper,
}

/// Why a connection to the relay could not be opened and made ready (TLS, AUTH). Shown to the
/// operator as is; never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection (refused, unreachable, timed out).
    #[error("cannot connect to {host}:{port}: {reason}")]
    Unreachable {
        /// The relay's host.
        host: String,
        /// Its port.
        port: u16,
        /// What the system said.
        reason: String,
    },
    /// The TLS handshake (implicit or STARTTLS) failed: often the relay's certificate.
    #[error("{0}")]
    Tls(String),
    /// `tls=required` and no STARTTLS on offer.
    #[error("the server does not offer STARTTLS, and smtp.url requires it (tls=required)")]
    NoStartTls,
    /// Credentials would cross the network in the clear.
    #[error(
        "refusing to send the SMTP password over a connection without TLS (use smtps:// or STARTTLS with ?tls=required, or set smtp.allow_plaintext_auth = true for a relay on a trusted network)"
    )]
    PlaintextAuth,
    /// The relay refused the credentials.
    #[error("AUTH refused: {0}")]
    Auth(lettre::transport::smtp::Error),
    /// The greeting or EHLO failed.
    #[error("{0}")]
    Session(lettre::transport::smtp::Error),
}

impl ConnectError {
    /// The relay's certificate could not be verified (what `tls=opportunistic` may overlook).
    fn is_certificate(&self) -> bool {
        match self {
            Self::Tls(text) => text.contains("certificate"),
            Self::Session(e) => e.to_string().contains("certificate"),
            _ => false,
        }
    }
}

/// A pool of open SMTP connections to one relay.
pub struct SmtpPool {
    host: String,
    port: u16,
    tls: Tls,
    /// TLS that verifies the relay's certificate against the public roots, the system's trust
    /// store and `smtp.ca_file`; built once.
    verified: TlsParameters,
    /// `smtps://`: the same roots as `verified`, as a rustls configuration of our own, so the
    /// TLS session runs over our socket (with TCP_NODELAY), not one lettre opens without it.
    implicit: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `tls=opportunistic` without credentials: TLS that takes any certificate, used once the
    /// relay's could not be verified (a snakeoil certificate on port 25).
    unverified: Option<TlsParameters>,
    /// Set when the relay's certificate failed verification under `tls=opportunistic`.
    unverifiable: std::sync::atomic::AtomicBool,
    /// `smtp.allow_plaintext_auth`.
    allow_plaintext_auth: bool,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<(Conn, Instant)>>,
    max_idle: usize,
}

/// Connections idle longer than this are checked with NOOP before reuse: the server may have
/// closed them, and a message must not be the thing that finds out.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// How long that NOOP may take before the connection counts as dead. A live relay answers at
/// once; a connection whose state a NAT or firewall dropped while it sat idle never answers,
/// and would otherwise hold the message for the whole `smtp.timeout` and then have it
/// deferred. At most half of `smtp.timeout`: an operator who set a short one expects a live
/// relay to answer within it.
const CHECK_WAIT: Duration = Duration::from_secs(2);

/// An open connection and whether its server pipelines.
struct Conn {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

impl Conn {
    /// One mail transaction; the message is handed over (its final dot sent) only once `gate`
    /// says yes. The envelope (MAIL, RCPT, DATA) goes out while the gate is asked. With
    /// PIPELINING it goes in one write and the replies are read in order: two round trips a
    /// message instead of four. lettre keeps no record of PIPELINING, so `connect` asks with
    /// a second EHLO. Each reply is checked for what RFC 5321 says it must be (2xx to MAIL and
    /// RCPT, 354 to DATA), which lettre's own `send` does not: it takes any 2xx or 3xx. Each
    /// exchange with the server gets `limit`; the wait at the gate (for our own database)
    /// does not count against it.
    async fn transaction(
        &mut self,
        envelope: &Envelope,
        bytes: &[u8],
        gate: impl Future<Output = bool>,
        limit: Duration,
    ) -> Ended {
        let mut parameters = vec![];
        if !bytes.is_ascii() {
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        if !ascii_envelope(envelope) {
            parameters.push(MailParameter::SmtpUtfEight);
        }
        let mail = Mail::new(envelope.from().cloned(), parameters).to_string();
        let rcpts: Vec<String> = envelope
            .to()
            .iter()
            .map(|to| Rcpt::new(to.clone(), vec![]).to_string())
            .collect();
        let data = Data.to_string();
        let pipelining = self.pipelining;
        let smtp = &mut self.smtp;
        let mut past_mail = false;
        // The first reply out of the ordinary is the answer; the replies after it are never
        // read, and the caller drops the connection (it is reused only after a 250 to the
        // final dot), so the server discards the transaction.
        let envelope_replies = tokio::time::timeout(limit, async {
            let first = if pipelining {
                let all = std::iter::once(mail.as_str())
                    .chain(rcpts.iter().map(String::as_str))
                    .chain(std::iter::once(data.as_str()))
                    .collect::<String>();
                smtp.command(all).await
            } else {
                smtp.command(mail).await
            };
            expect(first, "MAIL", Want::Completion)?;
            past_mail = true;
            for rcpt in rcpts {
                let reply = if pipelining {
                    smtp.read_response().await
                } else {
                    smtp.command(rcpt).await
                };
                expect(reply, "RCPT", Want::Completion)?;
            }
            let reply = if pipelining {
                smtp.read_response().await
            } else {
                smtp.command(data).await
            };
            expect(reply, "DATA", Want::GoAhead)
        });
        let (replies, open) = tokio::join!(envelope_replies, gate);
        // Said no: whatever the server answered, the connection is dropped in the middle of
        // the transaction, so the server discards the message.
        let before = |done| Ended {
            done,
            data_phase: false,
            at_mail: !past_mail,
        };
        if !open {
            return before(Done::Held);
        }
        match replies {
            Err(_) => return before(Done::Silent),
            Ok(Err(done)) => return before(done),
            Ok(Ok(())) => {}
        }
        let done = match data_block(bytes) {
            // One write and one reply, like lettre's `message`, which writes the final dot
            // on its own: a second segment, and a second wake-up of the server, per message.
            Some(block) => within(limit, self.smtp.command(block)).await,
            None => within(limit, self.smtp.message(bytes)).await,
        };
        Ended {
            done,
            data_phase: true,
            at_mail: false,
        }
    }
}

/// What RFC 5321 §4.3.2 says an envelope command succeeds with.
#[derive(Clone, Copy)]
enum Want {
    /// A 2xx (MAIL, RCPT).
    Completion,
    /// 354 (DATA): send the message.
    GoAhead,
}

/// `reply` to `command` if it is what the command succeeds with (`want`), else how the
/// transaction ended: the server's refusal, lettre's error, or a reply that leaves the
/// conversation where neither side knows what comes next (a 250 to DATA: the message would be
/// read as commands).
fn expect(
    reply: Result<Response, lettre::transport::smtp::Error>,
    command: &str,
    want: Want,
) -> Result<(), Done> {
    let response = reply.map_err(|e| Done::Reply(Err(e)))?;
    let code = u16::from(response.code());
    let (ok, expected) = match want {
        Want::Completion => (
            response.code().severity == Severity::PositiveCompletion,
            "a 2xx",
        ),
        Want::GoAhead => (code == 354, "354"),
    };
    if ok {
        return Ok(());
    }
    Err(Done::OutOfProtocol(format!(
        "the relay answered {command} with {code} {}, where RFC 5321 has {expected}",
        reply_lines(&response),
    )))
}

/// The message as it goes out after the 354: dot-stuffed (RFC 5321 §4.5.2: a line that
/// starts with a dot gets another) and closed with the final dot, as lettre's `message`
/// writes it. `None` for a message that is not UTF-8, which lettre's `command` cannot carry.
fn data_block(bytes: &[u8]) -> Option<String> {
    let mut rest = std::str::from_utf8(bytes).ok()?;
    let mut out = String::with_capacity(bytes.len() + 64);
    if rest.starts_with('.') {
        out.push('.');
    }
    while let Some(at) = memchr::memmem::find(rest.as_bytes(), b"\r\n.") {
        out.push_str(&rest[..at + 3]);
        out.push('.');
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out.push_str("\r\n.\r\n");
    Some(out)
}

/// The server's reply to `exchange`, or `Silent` past `limit`.
async fn within(
    limit: Duration,
    exchange: impl Future<Output = Result<Response, lettre::transport::smtp::Error>>,
) -> Done {
    match tokio::time::timeout(limit, exchange).await {
        Ok(reply) => Done::Reply(reply),
        Err(_) => Done::Silent,
    }
}

/// How a transaction ended, and where.
struct Ended {
    done: Done,
    /// The message was on its way (the gate said yes, and the 354 came).
    data_phase: bool,
    /// The transaction ended at its first command, MAIL (no 2xx to it).
    at_mail: bool,
}

/// One message handed to the relay, or not.
pub struct Attempt {
    pub outcome: Outcome,
    /// The relay may have the message all the same: silence or a lost connection once the
    /// message was on its way (the final dot may have arrived).
    pub maybe_sent: bool,
    /// The connection came from the pool and the relay had closed it: nothing of this message
    /// reached the relay, and the outcome is no answer about it.
    pub found_closed: bool,
}

impl Attempt {
    /// An attempt that ended before any transaction began.
    fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            maybe_sent: false,
            found_closed: false,
        }
    }
}

/// How a transaction ended.
enum Done {
    /// The server's last reply (or lettre's error).
    Reply(Result<Response, lettre::transport::smtp::Error>),
    /// The server said nothing within `smtp.timeout`.
    Silent,
    /// The gate said no: nothing was handed over.
    Held,
    /// The server answered the envelope with a reply its command cannot have (a 250 to DATA,
    /// a 3xx to RCPT): the message was not sent, and the connection is dropped.
    OutOfProtocol(String),
}

impl SmtpPool {
    /// A pool for one relay keeping up to its `concurrency` connections open. `from_domain`
    /// is the EHLO name when neither `smtp.helo_name` nor a fully qualified host name gives
    /// one.
    pub fn new(s: &SmtpSettings, relay: &RelaySettings, from_domain: &str) -> anyhow::Result<Self> {
        let max_idle = relay.concurrency;
        let key = relay.key.as_str();
        // The URL may hold a password, so errors do not repeat it.
        let bad = || anyhow!("config: {key}: not a usable SMTP URL");
        let url = url::Url::parse(relay.url.expose_secret()).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?.to_owned();
        let query_tls = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let tls = match (url.scheme(), query_tls.as_deref()) {
            ("smtps", _) => Tls::Wrapper,
            ("smtp", Some("required")) => Tls::Required,
            ("smtp", Some("opportunistic")) => Tls::Opportunistic,
            ("smtp", Some("none")) => Tls::None,
            // Only a relay on this machine is reached without TLS unless the URL says so.
            ("smtp", None) if is_loopback(&host) => Tls::None,
            ("smtp", None) => Tls::Required,
            _ => return Err(bad()),
        };
        let port = url
            .port()
            .unwrap_or(if tls == Tls::Wrapper { 465 } else { 25 });
        let decode = |v: &str| {
            percent_decode(v).ok_or_else(|| anyhow!("config: {key}: bad percent-encoding"))
        };
        let from_url = (!url.username().is_empty())
            .then(|| -> anyhow::Result<Credentials> {
                Ok(Credentials::new(
                    decode(url.username())?,
                    decode(url.password().unwrap_or(""))?,
                ))
            })
            .transpose()?;
        let credentials = match &relay.username {
            Some(user) => Some(Credentials::new(
                user.clone(),
                relay
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned())
                    .unwrap_or_default(),
            )),
            None => from_url,
        };
        // The public roots lettre compiles in, plus the system's store (Debian: /etc/ssl/certs,
        // or SSL_CERT_FILE/SSL_CERT_DIR: the CAs an operator installed the usual way;
        // certificates it cannot parse are skipped) and `smtp.ca_file`.
        let mut extra: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls_native_certs::load_native_certs().certs;
        if let Some(path) = &s.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow!(
                    "config: smtp.ca_file: {}: cannot read ({e})",
                    path.display()
                )
            })?;
            let before = extra.len();
            roots_of_pem(&pem, &mut extra);
            if extra.len() == before {
                return Err(anyhow!(
                    "config: smtp.ca_file: {}: not a PEM certificate",
                    path.display()
                ));
            }
        }
        let mut roots =
            TlsParameters::builder(host.clone()).certificate_store(CertificateStore::WebpkiRoots);
        for der in &extra {
            if let Ok(cert) = Certificate::from_der(der.to_vec()) {
                roots = roots.add_root_certificate(cert);
            }
        }
        let implicit = match tls {
            Tls::Wrapper => Some(implicit_tls(&extra)?),
            _ => None,
        };
        let verified = roots
            .build_rustls()
            .map_err(|e| anyhow!("smtp: cannot set up TLS: {e}"))?;
        let unverified = if tls == Tls::Opportunistic && credentials.is_none() {
            Some(
                TlsParameters::builder(host.clone())
                    .dangerous_accept_invalid_certs(true)
                    .build_rustls()
                    .map_err(|e| anyhow!("smtp: cannot set up TLS: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            verified,
            implicit,
            unverified,
            unverifiable: std::sync::atomic::AtomicBool::new(false),
            allow_plaintext_auth: s.allow_plaintext_auth,
            credentials,
            timeout: s.timeout,
            hello: hello_name(s.helo_name.as_deref(), from_domain),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle as usize,
        })
    }

    /// Opens a connection: TCP with NODELAY, EHLO, STARTTLS and AUTH as configured. Under
    /// `tls=opportunistic` without credentials, a certificate that fails verification is taken
    /// unverified on a second connection (and on every later one), and the log says so once.
    async fn connect(&self) -> Result<Conn, ConnectError> {
        use std::sync::atomic::Ordering;
        let unverified = self
            .unverified
            .as_ref()
            .filter(|_| self.unverifiable.load(Ordering::Relaxed));
        match self
            .connect_with(unverified.unwrap_or(&self.verified))
            .await
        {
            Err(e) if unverified.is_none() && self.unverified.is_some() && e.is_certificate() => {
                if !self.unverifiable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "smtp: the relay's certificate cannot be verified ({e}); with tls=opportunistic and no credentials the connection is encrypted without verifying it (set smtp.ca_file to verify it)"
                    );
                }
                self.connect_with(self.unverified.as_ref().unwrap_or(&self.verified))
                    .await
            }
            other => other,
        }
    }

    async fn connect_with(&self, tls_parameters: &TlsParameters) -> Result<Conn, ConnectError> {
        let unreachable = |reason: String| ConnectError::Unreachable {
            host: self.host.clone(),
            port: self.port,
            reason,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        // Without it the final ".\r\n" waits for a delayed ACK: about 40 ms a message.
        tcp.set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut conn = match &self.implicit {
            Some(config) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|_| {
                        ConnectError::Tls(format!("{} is not a valid TLS server name", self.host))
                    })?;
                let tls = tokio::time::timeout(
                    self.timeout,
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| ConnectError::Tls("TLS handshake timed out".into()))?
                .map_err(|e| ConnectError::Tls(format!("TLS handshake failed: {e}")))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(ImplicitTls(tls)), &self.hello)
                    .await
                    .map_err(ConnectError::Session)?
            }
            None => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                .await
                .map_err(ConnectError::Session)?,
        };
        match self.tls {
            Tls::Required | Tls::Opportunistic if conn.can_starttls() => {
                let params = tls_parameters.clone();
                conn.starttls(params, &self.hello)
                    .await
                    .map_err(|e| ConnectError::Tls(format!("STARTTLS failed: {e}")))?;
            }
            Tls::Required => {
                conn.abort().await;
                return Err(ConnectError::NoStartTls);
            }
            _ => {}
        }
        // Asked before AUTH: a server may forget an authentication at a new EHLO.
        let pipelining = conn
            .command(Ehlo::new(self.hello.clone()))
            .await
            .is_ok_and(|reply| {
                reply.message().any(|line| {
                    line.split_whitespace()
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
                })
            });
        if let Some(credentials) = &self.credentials {
            // lettre cannot tell that our own implicit-TLS stream is encrypted.
            let encrypted = self.implicit.is_some() || conn.is_encrypted();
            if !encrypted && !self.allow_plaintext_auth {
                conn.abort().await;
                return Err(ConnectError::PlaintextAuth);
            }
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(ConnectError::Auth)?;
        }
        Ok(Conn {
            smtp: conn,
            pipelining,
        })
    }

    /// A connection from the pool, checked with NOOP if it sat idle a while; `None` when
    /// there is none that answers.
    async fn reuse(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle.lock().await.pop()?;
            if since.elapsed() < STALE_AFTER {
                return Some(conn);
            }
            let wait = CHECK_WAIT.min(self.timeout / 2);
            match tokio::time::timeout(wait, conn.smtp.test_connected()).await {
                Ok(true) => return Some(conn),
                // Closed by the relay (it may take only so many messages a connection): the
                // others may well be alive.
                Ok(false) => {}
                // Unanswered: whatever dropped it while idle (a NAT's or firewall's timeout)
                // has dropped every connection in the pool from before it, which sat idle
                // longer (the pool is a stack), so they go too rather than each costing a wait.
                Err(_) => self.idle.lock().await.retain(|(_, t)| *t > since),
            }
        }
    }

    async fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().await;
        if idle.len() < self.max_idle {
            idle.push((conn, Instant::now()));
        } else {
            drop(idle);
            quit(conn).await;
        }
    }

    /// Ends every idle session with QUIT.
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().await);
        futures_util::future::join_all(idle.into_iter().map(|(conn, _)| quit(conn))).await;
    }

    /// Sends one message, handing it over only once `gate` says yes (`None`: it said no,
    /// nothing was sent), on a pooled connection or (`fresh`) a new one. Connecting, the
    /// envelope and the message each get `smtp.timeout`; checking a pooled connection that sat
    /// idle gets [`CHECK_WAIT`] (at most half of `smtp.timeout`).
    pub async fn send(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        gate: impl Future<Output = bool>,
        fresh: bool,
    ) -> Option<Attempt> {
        let silent = || {
            classify::connection_failure(&format!(
                "no reply within smtp.timeout ({})",
                humantime::format_duration(self.timeout)
            ))
        };
        // A connection abandoned at a deadline is dropped: never reused mid-transaction.
        let pooled = if fresh { None } else { self.reuse().await };
        let (mut conn, reused) = match pooled {
            Some(conn) => (conn, true),
            None => match tokio::time::timeout(self.timeout, self.connect()).await {
                Ok(Ok(conn)) => (conn, false),
                Ok(Err(e)) => {
                    return Some(Attempt::of(classify::connection_failure(&e.to_string())));
                }
                Err(_) => return Some(Attempt::of(silent())),
            },
        };
        // What the relay would have to offer for this message: refused here, since no retry
        // can help (lettre's own `send` refused such an envelope with a client error that
        // looked like a connection failure, retried for `delivery.give_up_after`). Our
        // messages are 7-bit as rendered; an address may not be ASCII.
        let info = conn.smtp.server_info();
        let lacking =
            if !ascii_envelope(envelope) && !info.supports_feature(Extension::SmtpUtfEight) {
                Some("SMTPUTF8, which this address (non-ASCII before the @) needs")
            } else if !bytes.is_ascii() && !info.supports_feature(Extension::EightBitMime) {
                Some("8BITMIME, which this message needs")
            } else {
                None
            };
        if let Some(lacking) = lacking {
            self.give_back(conn).await;
            return Some(Attempt::of(Outcome::Failed(classify::Failure {
                code: None,
                enhanced: None,
                reason: format!("the relay does not offer {lacking}"),
                systemic: false,
            })));
        }
        let Ended {
            done,
            data_phase,
            at_mail,
        } = conn.transaction(envelope, bytes, gate, self.timeout).await;
        let unanswered = match &done {
            Done::Silent => true,
            Done::Reply(Err(e)) => e.status().is_none(),
            _ => false,
        };
        // A 3xx where a completion was due says nothing either.
        let intermediate = matches!(
            &done,
            Done::Reply(Ok(r)) if r.code().severity == Severity::PositiveIntermediate
        );
        let maybe_sent = data_phase && (unanswered || intermediate);
        // A pooled connection the relay had closed (it takes so many messages a connection,
        // or it restarted) fails at the first command: the write or the read finds it gone,
        // or the relay's 421 ("closing the channel") was waiting. A 421 to RCPT or DATA is
        // the relay's answer about this message (a rate limit, say).
        let found_closed = reused
            && at_mail
            && matches!(&done, Done::Reply(Err(e))
                if e.status().is_none_or(|code| u16::from(code) == 421));
        let refused_sender = at_mail
            && !found_closed
            && match &done {
                Done::Reply(Ok(r)) => !r.is_positive(),
                Done::Reply(Err(e)) => e.status().is_some(),
                _ => false,
            };
        let outcome = match done {
            Done::Held => return None,
            Done::Silent => silent(),
            // Not the relay's answer about this message: like a broken connection before
            // the message, retried (on another relay at once, if there is one).
            Done::OutOfProtocol(reason) => classify::connection_failure(&reason),
            Done::Reply(Ok(response))
                if response.code().severity == Severity::PositiveCompletion =>
            {
                self.give_back(conn).await;
                Outcome::Sent
            }
            // lettre calls a 3xx "positive", but only a completion says the relay took the
            // message. What it did is unknown, as after silence: retried later with the
            // same Message-ID, never on another relay, and the connection is dropped.
            Done::Reply(Ok(response)) if response.is_positive() => {
                classify::not_a_completion(u16::from(response.code()), &reply_lines(&response))
            }
            Done::Reply(Ok(response)) => {
                classify::classify_reply(u16::from(response.code()), &reply_lines(&response))
            }
            // The connection is dropped here (it is in an unknown state).
            Done::Reply(Err(e)) => match e.status() {
                // lettre says "permanent error (550): <text>"; the code goes first once.
                Some(code) => classify::classify_reply(u16::from(code), &reply_text(&e)),
                None => classify::connection_failure(&e.to_string()),
            },
        };
        let outcome = if refused_sender {
            classify::refused_sender(outcome)
        } else {
            outcome
        };
        Some(Attempt {
            outcome,
            maybe_sent,
            found_closed,
        })
    }

    /// Connects, says EHLO, STARTTLS and AUTH as configured, and quits: for `doctor`.
    pub async fn check(&self) -> anyhow::Result<()> {
        let attempt = async {
            let mut conn = self.connect().await?;
            let _ = conn.smtp.quit().await;
            anyhow::Ok(())
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| anyhow!("no answer within smtp.timeout"))?
    }
}

fn percent_decode(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The server's own text from lettre's error for a negative reply, without the "permanent
/// error (550): " lettre puts in front.
fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    match text.split_once("): ") {
        Some((_, reply)) => reply.to_owned(),
        None => text,
    }
}

/// A reply's text, its lines joined by spaces.
fn reply_lines(response: &Response) -> String {
    response.message().collect::<Vec<_>>().join(" ")
}

/// Whether every address of the envelope is ASCII (else the relay must offer SMTPUTF8).
fn ascii_envelope(envelope: &Envelope) -> bool {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|a| AsRef::<str>::as_ref(a).is_ascii())
}

/// QUIT, waiting briefly for the reply; a relay that does not answer is simply dropped.
async fn quit(mut conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
}

/// `smtp.helo_name`, else the host name when it has a dot, else the From address's domain.
fn hello_name(configured: Option<&str>, from_domain: &str) -> ClientId {
    match (configured, ClientId::default()) {
        (Some(name), _) => ClientId::Domain(name.to_owned()),
        (None, ClientId::Domain(host)) if host.contains('.') => ClientId::Domain(host),
        (None, _) => ClientId::Domain(from_domain.to_owned()),
    }
}

/// Whether `host` is this machine: the one place a relay is reached without TLS by default.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `smtps://`'s TLS over our own socket: lettre takes any stream that says who its peer is.
#[derive(Debug)]
struct ImplicitTls(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl lettre::transport::smtp::client::AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The rustls configuration for `smtps://`: the roots lettre uses (webpki-roots) and `extra`,
/// with ring, as lettre's own.
fn implicit_tls(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let mut store =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // A certificate the store cannot take is skipped, as lettre skips it.
    store.add_parsable_certificates(extra.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("smtp: cannot set up TLS: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Every certificate in a PEM file (`smtp.ca_file` may hold a chain).
fn roots_of_pem(pem: &[u8], into: &mut Vec<rustls::pki_types::CertificateDer<'static>>) {
    use rustls::pki_types::pem::PemObject;
    into.extend(rustls::pki_types::CertificateDer::pem_slice_iter(pem).flatten());
}

#[cfg(test)]
mod tls_default_tests {
    use super::*;

    fn tls_of(url: &str) -> Tls {
        let settings = crate::config::Settings::from_toml(&format!("[smtp]\nurl = \"{url}\"\n"))
            .expect("settings");
        SmtpPool::new(&settings.smtp, &settings.smtp.relays[0], "example.com")
            .expect("pool")
            .tls
    }

    #[test]
    fn the_data_block_doubles_leading_dots_and_ends_with_the_final_dot() {
        assert_eq!(
            data_block(b".a\r\n.\r\nb.c\r\n..d\n.e\r\r\n.f").as_deref(),
            Some("..a\r\n..\r\nb.c\r\n...d\n.e\r\r\n..f\r\n.\r\n")
        );
        assert_eq!(data_block(b"").as_deref(), Some("\r\n.\r\n"));
        assert_eq!(data_block(b"\xff"), None);
    }

    #[test]
    fn without_tls_in_the_url_only_this_machine_is_reached_in_the_clear() {
        assert_eq!(tls_of("smtp://relay.example.com:587"), Tls::Required);
        assert_eq!(tls_of("smtp://10.0.0.5"), Tls::Required);
        assert_eq!(tls_of("smtp://127.0.0.1:2525"), Tls::None);
        assert_eq!(tls_of("smtp://[::1]:2525"), Tls::None);
        assert_eq!(tls_of("smtp://localhost:25"), Tls::None);
        assert_eq!(tls_of("smtp://relay.example.com:25?tls=none"), Tls::None);
        assert_eq!(
            tls_of("smtp://relay.example.com:25?tls=opportunistic"),
            Tls::Opportunistic
        );
        assert_eq!(tls_of("smtps://relay.example.com"), Tls::Wrapper);
    }
}
