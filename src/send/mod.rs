//! Transports that hand a message over (SMTP through lettre's pool, or `.eml` files in an
//! outbox), what their replies mean (`classify`), and the shared rate ceiling (`rate`).

pub mod classify;
pub mod dkim;
pub mod rate;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::anyhow;
use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{Settings, SmtpSettings, TransportKind};
pub use classify::{Failure, Outcome};

/// Where messages go, signed on the way when DKIM is on.
pub struct Mailer {
    inner: Inner,
    signer: Option<dkim::Signer>,
}

enum Inner {
    Smtp(SmtpPool),
    File(PathBuf),
}

/// lettre's pool, replaced by a fresh one when a send is abandoned at its deadline: lettre
/// would otherwise put the abandoned connection, still in the middle of a transaction, back
/// into the pool for the next message.
struct SmtpPool {
    settings: SmtpSettings,
    concurrency: u32,
    current: RwLock<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP transport holds credentials: never print it.
        match &self.inner {
            Inner::Smtp(_) => f.write_str("Mailer::Smtp"),
            Inner::File(p) => write!(f, "Mailer::File({})", p.display()),
        }
    }
}

fn smtp_transport(
    smtp: &SmtpSettings,
    concurrency: u32,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    // The URL may hold a password, so errors do not repeat it.
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.url.expose_secret())
        .map_err(|_| anyhow!("config: smtp.url: not a usable SMTP URL"))?
        .timeout(Some(smtp.timeout))
        .pool_config(PoolConfig::new().max_size(concurrency));
    if let Some(user) = &smtp.username {
        let password = smtp
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

impl Mailer {
    /// The transport the settings ask for, with the DKIM keys loaded (a bad key fails here).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let signer = dkim::Signer::load(&settings.dkim)?;
        let inner = match settings.delivery.transport {
            TransportKind::File => Inner::File(settings.delivery.outbox.clone()),
            TransportKind::Smtp => {
                let concurrency = settings.delivery.concurrency;
                let transport = smtp_transport(&settings.smtp, concurrency)?;
                Inner::Smtp(SmtpPool {
                    settings: settings.smtp.clone(),
                    concurrency,
                    current: RwLock::new(Arc::new(transport)),
                })
            }
        };
        Ok(Self { inner, signer })
    }

    /// The DKIM signer, when DKIM is on.
    pub fn signer(&self) -> Option<&dkim::Signer> {
        self.signer.as_ref()
    }

    /// The message as it goes on the wire: DKIM-signed when configured, with `return_path`
    /// (VERP) as the envelope sender when given.
    pub fn prepare(&self, message: Message, return_path: Option<Address>) -> (Envelope, Vec<u8>) {
        let envelope = message.envelope();
        let envelope = match return_path {
            Some(rp) => {
                Envelope::new(Some(rp), envelope.to().to_vec()).unwrap_or_else(|_| envelope.clone())
            }
            None => envelope.clone(),
        };
        let bytes = match &self.signer {
            Some(s) => s.sign(message),
            None => message.formatted(),
        };
        (envelope, bytes)
    }

    /// Hands one message over. `name` is the file stem used by the file transport. An SMTP
    /// exchange that takes longer than `smtp.timeout` (lettre itself only bounds the connect)
    /// is abandoned and counts as a temporary failure.
    pub async fn send(
        &self,
        message: Message,
        return_path: Option<Address>,
        name: &str,
    ) -> Outcome {
        let (envelope, bytes) = self.prepare(message, return_path);
        match &self.inner {
            Inner::Smtp(pool) => {
                let transport = match pool.current.read() {
                    Ok(t) => t.clone(),
                    Err(_) => return classify::connection_failure("SMTP pool lock poisoned"),
                };
                let exchange = transport.send_raw(&envelope, &bytes);
                match tokio::time::timeout(pool.settings.timeout, exchange).await {
                    Ok(Ok(response)) if response.is_positive() => Outcome::Sent,
                    Ok(Ok(response)) => classify::classify_reply(
                        u16::from(response.code()),
                        &response.message().collect::<Vec<_>>().join(" "),
                    ),
                    Ok(Err(e)) => match e.status() {
                        Some(code) => classify::classify_reply(u16::from(code), &e.to_string()),
                        None => classify::connection_failure(&e.to_string()),
                    },
                    Err(_) => {
                        pool.replace(&transport);
                        classify::connection_failure(&format!(
                            "no reply within smtp.timeout ({})",
                            humantime::format_duration(pool.settings.timeout)
                        ))
                    }
                }
            }
            Inner::File(dir) => match write_eml(dir, name, &envelope, &bytes).await {
                Ok(()) => Outcome::Sent,
                Err(e) => classify::connection_failure(&format!(
                    "writing {}: {e}",
                    dir.join(name).display()
                )),
            },
        }
    }

    /// Opens a connection and says EHLO (and STARTTLS and AUTH when configured): for `doctor`
    /// and `test-send`. The file transport checks that its folder can be created.
    pub async fn check(&self) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Smtp(pool) => {
                let transport = pool
                    .current
                    .read()
                    .map_err(|_| anyhow!("lock poisoned"))?
                    .clone();
                match tokio::time::timeout(pool.settings.timeout, transport.test_connection()).await
                {
                    Ok(Ok(true)) => Ok(()),
                    Ok(Ok(false)) => Err(anyhow!("the SMTP server did not answer NOOP")),
                    Ok(Err(e)) => Err(anyhow!("{e}")),
                    Err(_) => Err(anyhow!("no answer within smtp.timeout")),
                }
            }
            Inner::File(dir) => tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| anyhow!("{}: {e}", dir.display())),
        }
    }
}

impl SmtpPool {
    /// Swaps in a fresh pool unless another task already did since `stale` was taken.
    fn replace(&self, stale: &Arc<AsyncSmtpTransport<Tokio1Executor>>) {
        let Ok(fresh) = smtp_transport(&self.settings, self.concurrency) else {
            return;
        };
        if let Ok(mut current) = self.current.write()
            && Arc::ptr_eq(&current, stale)
        {
            *current = Arc::new(fresh);
            tracing::warn!("an SMTP exchange timed out; opened a fresh connection pool");
        }
    }
}

/// Writes atomically (temporary file, then rename), so a crash never leaves half a message
/// that looks delivered.
/// The envelope sender goes first as a Return-Path header, as a delivering MTA would add it.
async fn write_eml(
    dir: &std::path::Path,
    name: &str,
    envelope: &Envelope,
    bytes: &[u8],
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut data = match envelope.from() {
        Some(from) => format!("Return-Path: <{from}>\r\n").into_bytes(),
        None => Vec::new(),
    };
    data.extend_from_slice(bytes);
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, dir.join(format!("{name}.eml"))).await
}
