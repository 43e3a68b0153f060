//! Transports that hand a message over (SMTP through our pool of lettre connections, or
//! `.eml` files in an outbox), DKIM signing (`dkim`), what replies mean (`classify`), and the
//! shared rate ceiling (`rate`).

pub mod classify;
pub mod dkim;
pub mod rate;
pub mod relays;
pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use lettre::address::Envelope;
use lettre::{Address, Message};

use crate::config::{Settings, TransportKind};
pub use classify::{Failure, Outcome};
pub use relays::Handed;

/// Where messages go, signed on the way when DKIM is on.
pub struct Mailer {
    inner: Inner,
    signer: Option<Arc<dkim::Signer>>,
}

enum Inner {
    Smtp(Box<relays::Relays>),
    File(PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP pool holds credentials: never print it.
        match &self.inner {
            Inner::Smtp(_) => f.write_str("Mailer::Smtp"),
            Inner::File(p) => write!(f, "Mailer::File({})", p.display()),
        }
    }
}

impl Mailer {
    /// The transport the settings ask for, with the DKIM keys loaded (a bad key fails here).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let signer = dkim::Signer::load(&settings.dkim)?.map(Arc::new);
        let inner = match settings.delivery.transport {
            TransportKind::File => Inner::File(settings.delivery.outbox.clone()),
            TransportKind::Smtp => Inner::Smtp(Box::new(relays::Relays::new(settings)?)),
        };
        Ok(Self { inner, signer })
    }

    /// The relays, when sending over SMTP.
    pub fn relays(&self) -> Option<&relays::Relays> {
        match &self.inner {
            Inner::Smtp(r) => Some(r),
            Inner::File(_) => None,
        }
    }

    /// The DKIM signer, when DKIM is on.
    pub fn signer(&self) -> Option<&dkim::Signer> {
        self.signer.as_deref()
    }

    /// Hands one message over on its own, signed when DKIM is on, and ends the session with
    /// QUIT. `name` is the file stem used by the file transport. An SMTP exchange that takes
    /// longer than `smtp.timeout` is abandoned and counts as a temporary failure.
    pub async fn send(
        &self,
        message: Message,
        return_path: Option<Address>,
        name: &str,
    ) -> Outcome {
        let outcome = self
            .send_after(message, return_path, name, std::future::ready(true), || {
                std::future::ready(true)
            })
            .await
            .map(|h| h.outcome)
            // An open gate never says no; should it, nothing was handed over.
            .unwrap_or_else(|| classify::connection_failure("not handed over"));
        self.close().await;
        outcome
    }

    /// Says QUIT on every idle connection and closes it: the polite end of a session, which
    /// relays log as a clean one.
    pub async fn close(&self) {
        if let Inner::Smtp(relays) = &self.inner {
            relays.close().await;
        }
    }

    /// Like [`Mailer::send`], but the message is handed over (for SMTP: its final dot sent)
    /// only once `gate` says yes; everything before that may overlap the wait. `None`: the
    /// gate said no and nothing was handed over. A message that fails over to a further relay
    /// is handed over there only once `recheck` says yes too.
    pub async fn send_after<R: std::future::Future<Output = bool>>(
        &self,
        message: Message,
        return_path: Option<Address>,
        name: &str,
        gate: impl std::future::Future<Output = bool>,
        recheck: impl Fn() -> R,
    ) -> Option<Handed> {
        let envelope = envelope_for(&message, return_path);
        let bytes = match &self.signer {
            // An RSA signature is most of a message's CPU time: on the blocking pool it runs
            // on every core, beside the connections this task keeps busy.
            Some(signer) => {
                let signer = signer.clone();
                match tokio::task::spawn_blocking(move || signer.sign(message)).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        return Some(Handed {
                            outcome: Outcome::Transient(Failure {
                                code: None,
                                enhanced: None,
                                reason: format!("DKIM signing did not finish: {e}"),
                                systemic: false,
                            }),
                            relay: None,
                        });
                    }
                }
            }
            None => message.formatted(),
        };
        match &self.inner {
            Inner::Smtp(relays) => relays.send(&envelope, &bytes, gate, recheck).await,
            Inner::File(dir) => {
                if !gate.await {
                    return None;
                }
                let outcome = match write_eml(dir, name, &envelope, &bytes).await {
                    Ok(()) => Outcome::Sent,
                    Err(e) => classify::connection_failure(&format!(
                        "writing {}: {e}",
                        dir.join(name).display()
                    )),
                };
                Some(Handed {
                    outcome,
                    relay: None,
                })
            }
        }
    }

    /// Opens a connection and says EHLO (and STARTTLS and AUTH when configured): for `doctor`.
    /// The file transport checks that its folder, or the folder it would be created in, is a
    /// folder this process can write to, without creating anything (a check changes nothing).
    pub async fn check(&self) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Smtp(relays) => relays.check().await,
            Inner::File(dir) => {
                let (target, exists) = match tokio::fs::metadata(dir).await {
                    Ok(m) if m.is_dir() => (dir.clone(), true),
                    Ok(_) => anyhow::bail!("{}: not a folder", dir.display()),
                    Err(_) => {
                        let parent = dir
                            .parent()
                            .filter(|p| !p.as_os_str().is_empty())
                            .unwrap_or(std::path::Path::new("."));
                        (parent.to_path_buf(), false)
                    }
                };
                let probe = target.join(format!(".digestif-check-{}", std::process::id()));
                tokio::fs::write(&probe, b"")
                    .await
                    .map_err(|e| match exists {
                        true => anyhow!("{}: cannot write there: {e}", dir.display()),
                        false => anyhow!(
                            "{}: does not exist, and {} cannot be written to create it: {e}",
                            dir.display(),
                            target.display()
                        ),
                    })?;
                let _ = tokio::fs::remove_file(&probe).await;
                Ok(())
            }
        }
    }
}

/// The message's envelope, with the VERP return path when there is one.
fn envelope_for(message: &Message, return_path: Option<Address>) -> Envelope {
    let envelope = message.envelope();
    match return_path {
        Some(rp) => {
            Envelope::new(Some(rp), envelope.to().to_vec()).unwrap_or_else(|_| envelope.clone())
        }
        None => envelope.clone(),
    }
}

/// The envelope sender goes first as a Return-Path header, as a delivering MTA would add it.
async fn write_eml(
    dir: &std::path::Path,
    name: &str,
    envelope: &Envelope,
    bytes: &[u8],
) -> std::io::Result<()> {
    crate::files::create_dir_async(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut data = match envelope.from() {
        Some(from) => format!("Return-Path: <{from}>\r\n").into_bytes(),
        None => Vec::new(),
    };
    data.extend_from_slice(bytes);
    crate::files::write_async(&tmp, data).await?;
    tokio::fs::rename(&tmp, dir.join(format!("{name}.eml"))).await
}
