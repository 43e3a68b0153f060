//! A real SMTP server on 127.0.0.1:0 for the tests: it speaks the protocol over TCP (and
//! STARTTLS, with a certificate from a throwaway CA), records every accepted message, and can be
//! told to answer 4xx/5xx, drop the connection in the middle of DATA, or stall after the final
//! dot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};

/// A connection, plain or after STARTTLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Io = Box<dyn Stream>;

/// What the server does at the end of DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAction {
    /// 250: accepted and recorded.
    Accept,
    /// Close the connection half-way through the message.
    DropMidData,
    /// Read the whole message, then never answer.
    Stall,
    /// Read the whole message, then answer the final dot with this reply (e.g.
    /// `"451 4.3.0 try later"`) and record nothing.
    Reply(&'static str),
    /// Answer the DATA command itself with this reply instead of 354, as a broken relay
    /// would, then read every later line as a command (recorded) and answer it 502, until the
    /// client hangs up.
    NotReady(&'static str),
}

type RcptRule = dyn Fn(&str, usize) -> Option<String> + Send + Sync;
type DataRule = dyn Fn(&str, usize) -> DataAction + Send + Sync;
type HoldRule = dyn Fn() -> bool + Send + Sync;

/// How the server answers; the `usize` is how many times it has seen that recipient at that
/// stage, counting this one (1 for the first attempt).
#[derive(Clone)]
pub struct Policy {
    rcpt: Arc<RcptRule>,
    data: Arc<DataRule>,
    delay: Duration,
    hold: Option<Arc<HoldRule>>,
    refuse_auth: bool,
    auth: Option<Auth>,
    pipelining: bool,
    smtputf8: bool,
    close_after: Option<(usize, Option<&'static str>)>,
    mute_after: Option<usize>,
    mail: Option<&'static str>,
    tls: Option<Arc<rustls::ServerConfig>>,
    implicit_tls: Option<Arc<rustls::ServerConfig>>,
}

/// The one account [`Policy::require_auth`] accepts, and the mechanisms it offers.
#[derive(Clone)]
struct Auth {
    user: String,
    password: String,
    mechanisms: &'static str,
}

/// How long [`Policy::hold_until`] holds a reply at most, below every test's `smtp.timeout`.
const HOLD_AT_MOST: Duration = Duration::from_secs(20);

impl Default for Policy {
    fn default() -> Self {
        Self {
            rcpt: Arc::new(|_, _| None),
            data: Arc::new(|_, _| DataAction::Accept),
            delay: Duration::ZERO,
            hold: None,
            refuse_auth: false,
            auth: None,
            pipelining: true,
            smtputf8: true,
            close_after: None,
            mute_after: None,
            mail: None,
            tls: None,
            implicit_tls: None,
        }
    }
}

impl Policy {
    /// A relay that refuses every recipient by policy (`550 5.7.1`): the breaker trips and
    /// pauses the issue once enough attempts fail so.
    pub fn refusing_by_policy() -> Self {
        Self::default().rcpt(|_, _| Some("550 5.7.1 message refused by policy".to_owned()))
    }

    /// Answer every MAIL FROM with this reply (e.g. `"550 5.1.8 bad outbound sender"`).
    pub fn mail(mut self, reply: &'static str) -> Self {
        self.mail = Some(reply);
        self
    }

    /// Answer RCPT with this reply (e.g. `"450 4.2.0 busy"`) instead of 250 when it says so.
    pub fn rcpt(
        mut self,
        f: impl Fn(&str, usize) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.rcpt = Arc::new(f);
        self
    }

    /// Wait this long before answering the final dot (accepting or not): a slow server.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Hold every reply to a final dot until `ready()` is true (checked every 5 ms, for at most
    /// 20 s, then answered anyway): makes sure another sender gets its turn meanwhile.
    pub fn hold_until(mut self, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.hold = Some(Arc::new(ready));
        self
    }

    /// Do not offer PIPELINING (RFC 2920): the client must wait for each reply.
    pub fn no_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }

    /// Take at most `n` messages on one connection, as relays that limit messages a
    /// connection do (Exim's `smtp_accept_max_per_connection`): with `Some(reply)`, the next
    /// MAIL gets `reply` (a 421) and the connection closes; with `None`, the connection closes
    /// right after the `n`th message's 250, saying nothing.
    pub fn close_after(mut self, n: usize, reply: Option<&'static str>) -> Self {
        self.close_after = Some((n, reply));
        self
    }

    /// After `n` messages on one connection, answer nothing more on it but keep it open, as
    /// when a NAT or firewall between client and relay has dropped an idle connection's state.
    /// What the client says meanwhile is still recorded in [`SmtpServer::commands`].
    pub fn mute_after(mut self, n: usize) -> Self {
        self.mute_after = Some(n);
        self
    }

    /// Do not offer SMTPUTF8 (RFC 6531), as many relays still do not.
    pub fn no_smtputf8(mut self) -> Self {
        self.smtputf8 = false;
        self
    }

    /// Speak TLS from the first byte (`smtps://`, port 465) with the certificate of `ca`.
    pub fn implicit_tls(mut self, ca: &TestCa) -> Self {
        self.implicit_tls = Some(ca.server.clone());
        self
    }

    /// Offer STARTTLS with the certificate of `ca` (see [`TestCa`]).
    pub fn starttls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.server.clone());
        self
    }

    /// Offer AUTH and refuse every attempt with 535.
    pub fn refuse_auth(mut self) -> Self {
        self.refuse_auth = true;
        self
    }

    /// Offer AUTH with `mechanisms` (`"PLAIN LOGIN"`, `"LOGIN"`…), accept only `user` with
    /// `password`, and refuse MAIL (530) on a connection that has not authenticated.
    pub fn require_auth(mut self, user: &str, password: &str, mechanisms: &'static str) -> Self {
        self.auth = Some(Auth {
            user: user.to_owned(),
            password: password.to_owned(),
            mechanisms,
        });
        self
    }

    /// Decide what happens after DATA.
    pub fn data(mut self, f: impl Fn(&str, usize) -> DataAction + Send + Sync + 'static) -> Self {
        self.data = Arc::new(f);
        self
    }
}

/// A message the server accepted with 250.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The envelope recipient.
    pub rcpt: String,
    /// The message as received, dot-unstuffed.
    pub data: Vec<u8>,
    /// Its Message-ID header.
    pub message_id: String,
}

#[derive(Default)]
struct State {
    accepted: Vec<Accepted>,
    rcpt_seen: HashMap<String, usize>,
    data_seen: HashMap<String, usize>,
    rcpt_times: HashMap<String, Vec<Instant>>,
    commands: Vec<String>,
    pipelined: Vec<bool>,
    logins: Vec<String>,
    tls_sessions: usize,
    sessions: usize,
    /// Set by [`SmtpServer::go_down`]: every session closes before its next command.
    down: bool,
}

/// A running test server; it stops when dropped.
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Starts a server with `policy` on a free loopback port.
    pub async fn start(policy: Policy) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test SMTP server");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, policy) = (st.clone(), policy.clone());
                tokio::spawn(async move {
                    let _ = session(sock, st, policy).await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// The URL for `smtp.url`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The server goes away: it stops listening (new connections are refused) and every open
    /// session closes before its next command.
    pub fn go_down(&self) {
        self.state.lock().expect("state").down = true;
        self.task.abort();
    }

    /// Every accepted message so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().expect("state").accepted.clone()
    }

    /// How many messages have been accepted, readable from elsewhere (another server's
    /// [`Policy::hold_until`]).
    pub fn accepted_count(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.lock().expect("state").accepted.len()
    }

    /// When each RCPT for `rcpt` arrived.
    pub fn rcpt_times(&self, rcpt: &str) -> Vec<Instant> {
        self.state
            .lock()
            .expect("state")
            .rcpt_times
            .get(rcpt)
            .cloned()
            .unwrap_or_default()
    }

    /// For each MAIL FROM, whether the next command had arrived with it (pipelined).
    pub fn pipelined(&self) -> Vec<bool> {
        self.state.lock().expect("state").pipelined.clone()
    }

    /// Each successful AUTH, as `"MECHANISM user"`.
    pub fn logins(&self) -> Vec<String> {
        self.state.lock().expect("state").logins.clone()
    }

    /// How many sessions switched to TLS (STARTTLS, or implicit TLS from the start).
    pub fn tls_sessions(&self) -> usize {
        self.state.lock().expect("state").tls_sessions
    }

    /// How many connections were opened to this server.
    pub fn sessions(&self) -> usize {
        self.state.lock().expect("state").sessions
    }

    /// How many MAIL commands arrived, answered 250 or not.
    pub fn mail_commands(&self) -> usize {
        self.state
            .lock()
            .expect("state")
            .commands
            .iter()
            .filter(|c| c.starts_with("MAIL FROM:"))
            .count()
    }

    /// Every command line received (outside DATA), in order.
    pub fn commands(&self) -> Vec<String> {
        self.state.lock().expect("state").commands.clone()
    }
}

async fn session(sock: TcpStream, st: Arc<Mutex<State>>, policy: Policy) -> std::io::Result<()> {
    st.lock().expect("state").sessions += 1;
    if let Some(config) = policy.implicit_tls.clone() {
        let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(sock).await?;
        st.lock().expect("state").tls_sessions += 1;
        tls.write_all(b"220 test.example ESMTP ready\r\n").await?;
        return session_on(Box::new(tls), st, policy, true).await;
    }
    session_on(Box::new(sock), st, policy, false).await
}

/// One SMTP session on `io`; `secure` once STARTTLS has run (no second greeting then).
async fn session_on(
    io: Io,
    st: Arc<Mutex<State>>,
    policy: Policy,
    secure: bool,
) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(io);
    let mut r = BufReader::new(r);
    if !secure {
        w.write_all(b"220 test.example ESMTP ready\r\n").await?;
    }
    let mut rcpts: Vec<String> = Vec::new();
    let mut authenticated = false;
    let mut taken_here = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        {
            let mut st = st.lock().expect("state");
            // Gone: the connection closes between transactions, never inside one, so every
            // message this server acknowledged is one it keeps.
            if st.down {
                return Ok(());
            }
            st.commands.push(cmd.clone());
        }
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let mut lines = vec!["test.example".to_owned()];
            if policy.refuse_auth {
                lines.push("AUTH PLAIN LOGIN".into());
            } else {
                if policy.pipelining {
                    lines.push("PIPELINING".into());
                }
                lines.push("8BITMIME".into());
                if policy.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if policy.tls.is_some() && !secure {
                    lines.push("STARTTLS".into());
                }
                if let Some(auth) = &policy.auth {
                    lines.push(format!("AUTH {}", auth.mechanisms));
                }
            }
            let last = lines.len() - 1;
            let reply: String = lines
                .iter()
                .enumerate()
                .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                .collect();
            w.write_all(reply.as_bytes()).await?;
        } else if let (true, false, Some(config)) =
            (upper.starts_with("STARTTLS"), secure, policy.tls.clone())
        {
            w.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
            let plain = r.into_inner().unsplit(w);
            let tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(plain)
                .await?;
            st.lock().expect("state").tls_sessions += 1;
            return Box::pin(session_on(Box::new(tls), st, policy, true)).await;
        } else if let (true, Some(auth)) = (upper.starts_with("AUTH"), policy.auth.as_ref()) {
            let mut words = cmd.split_whitespace().skip(1);
            let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
            let initial = words.next().map(str::to_owned);
            let given = match mechanism.as_str() {
                "PLAIN" => {
                    let response = match initial {
                        Some(r) => r,
                        None => challenge(&mut r, &mut w, "").await?,
                    };
                    // authzid NUL authcid NUL password
                    let decoded = unbase64(&response);
                    let mut parts = decoded.split('\0').skip(1);
                    Some((
                        parts.next().unwrap_or_default().to_owned(),
                        parts.next().unwrap_or_default().to_owned(),
                    ))
                }
                "LOGIN" => {
                    let user = match initial {
                        Some(u) => u,
                        None => challenge(&mut r, &mut w, "VXNlcm5hbWU6").await?,
                    };
                    let password = challenge(&mut r, &mut w, "UGFzc3dvcmQ6").await?;
                    Some((unbase64(&user), unbase64(&password)))
                }
                _ => None,
            };
            let offered = auth.mechanisms.split_whitespace().any(|m| m == mechanism);
            match given {
                Some((user, password))
                    if offered && user == auth.user && password == auth.password =>
                {
                    authenticated = true;
                    st.lock()
                        .expect("state")
                        .logins
                        .push(format!("{mechanism} {user}"));
                    w.write_all(b"235 2.7.0 authentication successful\r\n")
                        .await?;
                }
                Some(_) => {
                    w.write_all(b"535 5.7.8 authentication credentials invalid\r\n")
                        .await?
                }
                None => {
                    w.write_all(b"504 5.5.4 unrecognized authentication type\r\n")
                        .await?
                }
            }
        } else if upper.starts_with("AUTH") {
            w.write_all(b"535 5.7.8 authentication credentials invalid\r\n")
                .await?;
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 test.example\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") && policy.auth.is_some() && !authenticated {
            w.write_all(b"530 5.7.0 authentication required\r\n")
                .await?;
        } else if upper.starts_with("MAIL FROM:")
            && let Some((n, Some(reply))) = policy.close_after
            && taken_here >= n
        {
            w.write_all(format!("{reply}\r\n").as_bytes()).await?;
            return Ok(());
        } else if upper.starts_with("MAIL FROM:")
            && let Some(reply) = policy.mail
        {
            w.write_all(format!("{reply}\r\n").as_bytes()).await?;
        } else if upper.starts_with("MAIL FROM:") {
            rcpts.clear();
            let with_next = !r.buffer().is_empty();
            st.lock().expect("state").pipelined.push(with_next);
            w.write_all(b"250 2.1.0 ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = cmd[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned();
            let nth = {
                let mut s = st.lock().expect("state");
                s.rcpt_times
                    .entry(addr.clone())
                    .or_default()
                    .push(Instant::now());
                let n = s.rcpt_seen.entry(addr.clone()).or_default();
                *n += 1;
                *n
            };
            match (policy.rcpt)(&addr, nth) {
                Some(reply) => w.write_all(format!("{reply}\r\n").as_bytes()).await?,
                None => {
                    rcpts.push(addr);
                    w.write_all(b"250 2.1.5 ok\r\n").await?;
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n").await?;
                continue;
            }
            let rcpt = rcpts[0].clone();
            let nth = {
                let mut s = st.lock().expect("state");
                let n = s.data_seen.entry(rcpt.clone()).or_default();
                *n += 1;
                *n
            };
            let action = (policy.data)(&rcpt, nth);
            if let DataAction::NotReady(reply) = action {
                w.write_all(format!("{reply}\r\n").as_bytes()).await?;
                // Every line that arrives is recorded, however soon the client hangs up after
                // the first 502: what it sent is in the buffer.
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    let cmd = line.trim_end().to_owned();
                    st.lock().expect("state").commands.push(cmd);
                    let _ = w.write_all(b"502 5.5.2 not implemented\r\n").await;
                }
            }
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            let mut lines = 0usize;
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                lines += 1;
                if action == DataAction::DropMidData && lines == 10 {
                    return Ok(()); // hang up mid-message
                }
                // RFC 5321 §4.5.2: a leading dot was doubled by the client.
                let l = if l.starts_with(b"..") {
                    l[1..].to_vec()
                } else {
                    l
                };
                data.extend_from_slice(&l);
            }
            match action {
                DataAction::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(());
                }
                DataAction::DropMidData | DataAction::NotReady(_) => return Ok(()),
                DataAction::Reply(reply) => {
                    if !policy.delay.is_zero() {
                        tokio::time::sleep(policy.delay).await;
                    }
                    w.write_all(format!("{reply}\r\n").as_bytes()).await?;
                    continue;
                }
                DataAction::Accept => {}
            }
            if let Some(ready) = &policy.hold {
                let until = Instant::now() + HOLD_AT_MOST;
                while !ready() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if !policy.delay.is_zero() {
                tokio::time::sleep(policy.delay).await;
            }
            let message_id = String::from_utf8_lossy(&data)
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .map(|l| l[11..].trim().to_owned())
                .unwrap_or_default();
            {
                let mut s = st.lock().expect("state");
                for rcpt in &rcpts {
                    s.accepted.push(Accepted {
                        rcpt: rcpt.clone(),
                        data: data.clone(),
                        message_id: message_id.clone(),
                    });
                }
            }
            w.write_all(b"250 2.0.0 queued\r\n").await?;
            taken_here += 1;
            if let Some((n, None)) = policy.close_after
                && taken_here >= n
            {
                return Ok(());
            }
            if policy.mute_after.is_some_and(|n| taken_here >= n) {
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    let said = line.trim_end().to_owned();
                    st.lock().expect("state").commands.push(said);
                }
            }
        } else if upper == "RSET" {
            rcpts.clear();
            w.write_all(b"250 2.0.0 ok\r\n").await?;
        } else if upper == "NOOP" {
            w.write_all(b"250 2.0.0 ok\r\n").await?;
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.2 not implemented\r\n").await?;
        }
    }
}

/// Sends a 334 challenge and returns the client's answer line.
async fn challenge(
    r: &mut BufReader<ReadHalf<Io>>,
    w: &mut WriteHalf<Io>,
    prompt: &str,
) -> std::io::Result<String> {
    w.write_all(format!("334 {prompt}\r\n").as_bytes()).await?;
    let mut answer = String::new();
    r.read_line(&mut answer).await?;
    Ok(answer.trim_end().to_owned())
}

fn unbase64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs `openssl ARGS` in `dir`, failing the test with openssl's own words.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway certificate authority and a server certificate it signed for 127.0.0.1 and
/// localhost, made with `openssl` in a temporary folder: what an operator's internal CA is.
pub struct TestCa {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// Makes the CA and the server certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write extensions");
        let openssl = |args: &[&str]| openssl(d, args);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=digestif test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_file_iter(d.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certificates");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(d.join("server.key"))
            .expect("server.key");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        Self {
            dir,
            server: Arc::new(server),
        }
    }

    /// The CA certificate, for `smtp.ca_file`.
    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// The server certificate and its key (PEM files), for a server of another kind
    /// (Dovecot's `ssl_cert` and `ssl_key`).
    pub fn server_files(&self) -> (String, String) {
        let d = self.dir.path();
        (
            d.join("server.pem").display().to_string(),
            d.join("server.key").display().to_string(),
        )
    }
}
