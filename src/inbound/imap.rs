//! The bounce mailbox over IMAP (`[inbound]`): one pass logs in, hands each message of
//! `inbound.folder` to the same intake as `digestif inbound` ([`super::handle`]) and moves it
//! to `inbound.processed_folder` only once what it says is stored, so a restart never counts a
//! message twice and a crash loses none. `serve` runs a pass every `inbound.poll_interval`;
//! `digestif inbound --imap` runs one.
//!
//! Polling rather than IDLE: a fresh connection each pass has no long-lived state to watch over
//! (servers end IDLE after 30 minutes, NAT boxes drop quiet connections), `serve` and cron run
//! the same code, and a bounce read a minute later changes nothing.
//!
//! A crash between the intake's commit and the move hands that one message to the intake again
//! at the next pass; the intake counts a report it has already recorded as nothing new (a
//! bounce only moves a delivery that is still `sent`, a complaint only a subscriber who has not
//! complained yet).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::anyhow;
use futures_util::TryStreamExt;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{ImapSettings, ImapTls, Settings};
use crate::domain::one_line;
use crate::send::classify::truncate;

/// A logged-in session.
type Session = async_imap::Session<Conn>;

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The mailbox could not be reached, logged into or worked on (the one line names it).
    /// Every message handled before it was moved; the rest wait for the next pass.
    #[error("{mailbox}: {reason}")]
    Mailbox {
        /// [`ImapSettings::mailbox`].
        mailbox: String,
        /// What went wrong, one line.
        reason: String,
    },
    /// The database could not be reached: the message at hand stays in the folder.
    #[error("{0:#}")]
    Database(anyhow::Error),
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// Another process holds the mailbox (it is reading it now): nothing was done.
    pub busy: bool,
    /// One line per message moved to the processed folder: its UID and what the intake made
    /// of it (or why it was not read).
    pub lines: Vec<String>,
    /// Messages left in the folder after a temporary failure (a DKIM key lookup without an
    /// answer): the next pass tries them again.
    pub left: usize,
}

/// One pass over the mailbox. `stop` (serve's shutdown signal) is looked at between messages.
pub async fn pass(
    pool: &PgPool,
    settings: &Settings,
    imap: &ImapSettings,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<Pass, PassError> {
    let database = |e: sqlx::Error| PassError::Database(anyhow!(crate::store::db_reason(&e)));
    // Held (as a connection of its own) until this function returns.
    let Some(lock) = crate::store::try_lock_mailbox(pool)
        .await
        .map_err(database)?
    else {
        return Ok(Pass {
            busy: true,
            ..Pass::default()
        });
    };
    let keys = crate::digest::token_keys(settings, pool)
        .await
        .map_err(PassError::Database)?;
    let failed = |reason: String| PassError::Mailbox {
        mailbox: imap.mailbox(),
        reason,
    };
    let mut session = connect(imap).await.map_err(failed)?;
    let mut done = Pass::default();
    let result = read_folder(&mut session, pool, settings, &keys, imap, stop, &mut done).await;
    // A polite goodbye; the pass's outcome does not depend on it.
    let _ = tokio::time::timeout(imap.timeout, session.logout()).await;
    let _ = sqlx::Connection::close(lock).await;
    result.map(|()| done)
}

/// Selects the folder and works through its messages, oldest first.
async fn read_folder(
    session: &mut Session,
    pool: &PgPool,
    settings: &Settings,
    keys: &crate::domain::TokenKeys,
    imap: &ImapSettings,
    stop: Option<&watch::Receiver<bool>>,
    done: &mut Pass,
) -> Result<(), PassError> {
    let failed = |reason: String| PassError::Mailbox {
        mailbox: imap.mailbox(),
        reason,
    };
    let t = imap.timeout;
    let can_move = ensure_processed_folder(session, imap)
        .await
        .map_err(failed)?;
    step(
        t,
        &format!("SELECT {}", imap.folder),
        session.select(&imap.folder),
    )
    .await
    .map_err(failed)?;
    // Messages someone marked deleted are on their way out: not ours to read.
    let mut uids: Vec<u32> = step(t, "UID SEARCH", session.uid_search("UNDELETED"))
        .await
        .map_err(failed)?
        .into_iter()
        .collect();
    uids.sort_unstable();
    for uid in uids {
        if stop.is_some_and(|s| *s.borrow()) {
            break;
        }
        let Some(size) = fetch_size(session, t, uid).await.map_err(failed)? else {
            continue; // expunged by someone else since the search
        };
        let line = if size > imap.max_message_bytes {
            let why = format!(
                "not read: {size} bytes, over inbound.max_message_bytes ({})",
                imap.max_message_bytes
            );
            tracing::warn!("{} uid {uid}: {why}", imap.mailbox());
            why
        } else {
            let raw = fetch_body(session, t, uid, imap.max_message_bytes)
                .await
                .map_err(failed)?;
            // A FETCH that brought no body (NIL, an odd reply) is not an empty message: left
            // for the next pass rather than filed unread.
            let Some(raw) = raw else {
                tracing::warn!(
                    "{} uid {uid}: left in the folder for the next pass: the server sent no body",
                    imap.mailbox()
                );
                done.left += 1;
                continue;
            };
            match super::handle(pool, settings, keys, &raw, None).await {
                Ok(handled) => {
                    tracing::info!("inbound: {} uid {uid}: {handled}", imap.folder);
                    handled.to_string()
                }
                // Every later message would meet the same database.
                Err(e) if is_database(&e) => return Err(PassError::Database(e)),
                Err(e) => {
                    tracing::warn!(
                        "{} uid {uid}: left in the folder for the next pass: {e:#}",
                        imap.mailbox()
                    );
                    done.left += 1;
                    continue;
                }
            }
        };
        move_to_processed(session, imap, uid, can_move)
            .await
            .map_err(failed)?;
        done.lines
            .push(format!("{} uid {uid}: {line}", imap.folder));
    }
    Ok(())
}

/// Whether the intake failed for want of the database (rather than, say, a DNS answer).
fn is_database(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<sqlx::Error>().is_some())
}

/// Creates the processed folder when it is missing; says whether the server can MOVE.
async fn ensure_processed_folder(
    session: &mut Session,
    imap: &ImapSettings,
) -> Result<bool, String> {
    let t = imap.timeout;
    if !folder_exists(session, t, &imap.processed_folder).await? {
        step(
            t,
            &format!("CREATE {}", imap.processed_folder),
            session.create(&imap.processed_folder),
        )
        .await?;
        tracing::info!(
            "{}: created the folder {}",
            imap.mailbox(),
            imap.processed_folder
        );
    }
    let capabilities = step(t, "CAPABILITY", session.capabilities()).await?;
    Ok(capabilities.has_str("MOVE"))
}

/// Whether `folder` exists (LIST).
async fn folder_exists(session: &mut Session, t: Duration, folder: &str) -> Result<bool, String> {
    let pattern = quoted(folder);
    let listed = step(t, &format!("LIST {folder}"), async {
        session
            .list(Some(""), Some(&pattern))
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    Ok(listed.iter().any(|n| n.name() == folder))
}

/// `folder` as an IMAP quoted string.
fn quoted(folder: &str) -> String {
    format!("\"{}\"", folder.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The size of message `uid`; `None` when it is gone.
async fn fetch_size(session: &mut Session, t: Duration, uid: u32) -> Result<Option<u32>, String> {
    let fetched = step(t, "UID FETCH (RFC822.SIZE)", async {
        session
            .uid_fetch(uid.to_string(), "(UID RFC822.SIZE)")
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    Ok(fetched
        .iter()
        .find(|f| f.uid == Some(uid))
        .map(|f| f.size.unwrap_or(0)))
}

/// Message `uid`, at most `max` bytes of it (the server sends no more, whatever it said the
/// size was). PEEK: the intake's verdict, not our reading, is what marks it done.
async fn fetch_body(
    session: &mut Session,
    t: Duration,
    uid: u32,
    max: u32,
) -> Result<Option<Vec<u8>>, String> {
    let fetched = step(t, "UID FETCH (BODY.PEEK[])", async {
        session
            .uid_fetch(uid.to_string(), format!("(UID BODY.PEEK[]<0.{max}>)"))
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    Ok(fetched
        .iter()
        .find(|f| f.uid == Some(uid))
        .and_then(|f| f.body())
        .map(<[u8]>::to_vec))
}

/// Moves message `uid` to the processed folder: UID MOVE (RFC 6851) where the server has it,
/// else COPY, \Deleted and UID EXPUNGE (UIDPLUS: nothing else marked deleted goes with it;
/// without UIDPLUS the copy is left flagged \Deleted).
async fn move_to_processed(
    session: &mut Session,
    imap: &ImapSettings,
    uid: u32,
    can_move: bool,
) -> Result<(), String> {
    let t = imap.timeout;
    let set = uid.to_string();
    let to = &imap.processed_folder;
    if can_move {
        return step(t, &format!("UID MOVE to {to}"), session.uid_mv(&set, to)).await;
    }
    step(t, &format!("UID COPY to {to}"), session.uid_copy(&set, to)).await?;
    step(t, "UID STORE \\Deleted", async {
        session
            .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    let uidplus = step(t, "CAPABILITY", session.capabilities())
        .await?
        .has_str("UIDPLUS");
    // Without UIDPLUS an EXPUNGE would also remove what others marked deleted: the copy stays
    // flagged \Deleted instead (no pass reads it again: it searches UNDELETED) until the
    // mailbox's owner or server expunges it.
    if !uidplus {
        return Ok(());
    }
    step(t, "UID EXPUNGE", async {
        session
            .uid_expunge(&set)
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    Ok(())
}

/// One exchange with the server within `t`, its failure as one line saying which.
async fn step<T>(
    t: Duration,
    what: &str,
    exchange: impl std::future::Future<Output = async_imap::error::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, exchange).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", imap_reason(&e))),
        Err(_) => Err(format!(
            "{what}: no answer within inbound.timeout ({})",
            humantime::format_duration(t)
        )),
    }
}

/// The server's own words for a refusal, or what happened to the connection; one line, short
/// (a parse error would otherwise quote whatever the server sent).
fn imap_reason(e: &async_imap::error::Error) -> String {
    use async_imap::error::Error;
    let text = match e {
        Error::No(detail) | Error::Bad(detail) => {
            let said = if matches!(e, Error::No(_)) {
                "NO"
            } else {
                "BAD"
            };
            // async-imap writes `code: …, info: Some("the server's text")`.
            let info = detail
                .split_once("info: Some(\"")
                .and_then(|(_, rest)| rest.rsplit_once("\")"))
                .map(|(text, _)| text.replace("\\\"", "\""));
            match info {
                Some(info) => format!("the server said {said}: {info}"),
                None => format!("the server said {said}"),
            }
        }
        Error::ConnectionLost => "the server closed the connection".to_owned(),
        Error::Io(io) => format!("connection: {io}"),
        other => other.to_string(),
    };
    truncate(&one_line(&text), 300)
}

/// Connects, protects the connection as `imap_url` says, and logs in.
async fn connect(imap: &ImapSettings) -> Result<Session, String> {
    let t = imap.timeout;
    let tcp = tokio::time::timeout(t, TcpStream::connect((imap.host.as_str(), imap.port)))
        .await
        .map_err(|_| "cannot connect: timed out".to_owned())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = match imap.tls {
        ImapTls::None => None,
        ImapTls::Implicit | ImapTls::StartTls => {
            Some(tls_config(imap).map_err(|e| format!("{e:#}"))?)
        }
    };
    let conn = match (&config, imap.tls) {
        (Some(config), ImapTls::Implicit) => {
            Conn::Tls(Box::new(handshake(imap, config, tcp).await?))
        }
        _ => Conn::Plain(tcp),
    };
    let mut client = async_imap::Client::new(conn);
    greeting(&mut client, t).await?;
    if let (Some(config), ImapTls::StartTls) = (&config, imap.tls) {
        step(t, "STARTTLS", client.run_command_and_check_ok("STARTTLS", None))
            .await
            .map_err(|e| {
                format!("{e} (the server offers no STARTTLS: use imaps://, or ?tls=none for a server on a trusted network)")
            })?;
        // Whatever the server sent after its OK, before the handshake, is dropped with the
        // old client: nothing said in the clear is read as if it came over TLS.
        let Conn::Plain(tcp) = client.into_inner() else {
            return Err("STARTTLS over TLS".to_owned());
        };
        client = async_imap::Client::new(Conn::Tls(Box::new(handshake(imap, config, tcp).await?)));
    }
    match tokio::time::timeout(t, client.login(&imap.user, imap.password.expose_secret())).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err((e, _))) => Err(format!("login refused: {}", imap_reason(&e))),
        Err(_) => Err(format!(
            "login: no answer within inbound.timeout ({})",
            humantime::format_duration(t)
        )),
    }
}

/// Reads the server's greeting: `* OK` (or `* PREAUTH`); `* BYE` is a refusal.
async fn greeting(client: &mut async_imap::Client<Conn>, t: Duration) -> Result<(), String> {
    use async_imap::imap_proto::{Response, Status};
    let response = tokio::time::timeout(t, client.read_response())
        .await
        .map_err(|_| {
            format!(
                "no greeting within inbound.timeout ({}): is this an IMAP server?",
                humantime::format_duration(t)
            )
        })?
        .map_err(|e| format!("no greeting: {}", truncate(&one_line(&e.to_string()), 200)))?
        .ok_or_else(|| "the server closed the connection before its greeting".to_owned())?;
    match response.parsed() {
        Response::Data {
            status: Status::Ok | Status::PreAuth,
            ..
        } => Ok(()),
        Response::Data { outcome, .. } => Err(format!(
            "the server refused the connection: {}",
            truncate(&one_line(outcome.information.as_deref().unwrap_or("")), 200)
        )),
        _ => Err("not an IMAP greeting: is this an IMAP server?".to_owned()),
    }
}

/// The TLS handshake, verifying the server's certificate for `imap.host`.
async fn handshake(
    imap: &ImapSettings,
    config: &Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = rustls::pki_types::ServerName::try_from(imap.host.clone())
        .map_err(|_| format!("{} is not a valid TLS server name", imap.host))?;
    tokio::time::timeout(
        imap.timeout,
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| {
        let hint = if e.to_string().contains("certificate") {
            " (if an internal CA signed it, set inbound.ca_file to that CA's certificate)"
        } else {
            ""
        };
        format!("TLS handshake failed: {e}{hint}")
    })
}

/// Trust: the public roots, the system's store and `inbound.ca_file`; ring as the provider,
/// named here so nothing depends on a process-wide default being installed.
fn tls_config(imap: &ImapSettings) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut store =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &imap.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            anyhow!(
                "config: inbound.ca_file: {}: cannot read ({e})",
                path.display()
            )
        })?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&pem).flatten().collect();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(anyhow!(
                "config: inbound.ca_file: {}: not a PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("imap: cannot set up TLS: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What `doctor` says about the mailbox: logged in, how many messages wait, whether the
/// processed folder is there. Changes nothing (EXAMINE is read-only; no folder is created).
pub async fn check(imap: &ImapSettings) -> Result<String, String> {
    let t = imap.timeout;
    let mut session = connect(imap).await?;
    let result = async {
        let folder = step(
            t,
            &format!("EXAMINE {}", imap.folder),
            session.examine(&imap.folder),
        )
        .await?;
        let processed = if folder_exists(&mut session, t, &imap.processed_folder).await? {
            format!("{} exists", imap.processed_folder)
        } else {
            format!("{} is created at the first pass", imap.processed_folder)
        };
        let moves = if step(t, "CAPABILITY", session.capabilities())
            .await?
            .has_str("MOVE")
        {
            "moved with MOVE"
        } else {
            "moved with COPY and EXPUNGE (no MOVE)"
        };
        Ok(format!(
            "logged in; {} message{} waiting; {processed}; handled messages are {moves}",
            folder.exists,
            if folder.exists == 1 { "" } else { "s" }
        ))
    }
    .await;
    let _ = tokio::time::timeout(t, session.logout()).await;
    result
}

/// `serve`'s loop: a pass every `inbound.poll_interval` until `stop`. A failed pass is one
/// line in the log; the next interval tries again.
pub async fn run_until_stopped(
    pool: PgPool,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(imap) = settings.inbound.imap.clone() else {
        return;
    };
    tracing::info!(
        "reading bounces from {} every {}",
        imap.mailbox(),
        humantime::format_duration(imap.poll_interval)
    );
    let mut failing = false;
    loop {
        match pass(&pool, &settings, &imap, Some(&stop)).await {
            Ok(done) => {
                if failing {
                    tracing::info!("{}: reachable again", imap.mailbox());
                }
                failing = false;
                if done.left > 0 {
                    tracing::warn!(
                        "{}: {} message{} left for the next pass",
                        imap.mailbox(),
                        done.left,
                        if done.left == 1 { "" } else { "s" }
                    );
                }
            }
            Err(e) => {
                failing = true;
                tracing::warn!(
                    "bounce mailbox: {e}; trying again in {}",
                    humantime::format_duration(imap.poll_interval)
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(imap.poll_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The connection: plain TCP (before STARTTLS, or `tls=none`) or TLS over it.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_the_servers_words() {
        let e = async_imap::error::Error::No(
            "code: Some(Other(\"AUTHENTICATIONFAILED\", None)), info: Some(\"Authentication failed.\")"
                .into(),
        );
        assert_eq!(
            imap_reason(&e),
            "the server said NO: Authentication failed."
        );
        let e = async_imap::error::Error::Bad("code: None, info: None".into());
        assert_eq!(imap_reason(&e), "the server said BAD");
    }

    #[test]
    fn a_parse_error_is_one_short_line() {
        let e = async_imap::error::Error::Io(std::io::Error::other(format!(
            "Error during parsing of \"{}\"",
            "x\r\n".repeat(1000)
        )));
        let r = imap_reason(&e);
        assert!(!r.contains('\n') && r.len() <= 300, "{r}");
    }

    #[test]
    fn folder_names_are_quoted() {
        assert_eq!(quoted("INBOX"), "\"INBOX\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
