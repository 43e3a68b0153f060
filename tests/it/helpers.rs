//! Runs the real `digestif` binary against a test database and reports everything on failure.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sqlx::PgPool;

/// Monday 30 November 2026, 10:00 in Berlin: inside the grace window of the default slot
/// (Mondays 09:00 Europe/Berlin), the hour in which "send now" used to mean next week.
pub const MONDAY_MORNING: &str = "2026-11-30T09:00:00Z";

/// The `digestif` binary pointed at one test database.
pub struct Digestif {
    url: String,
    envs: Vec<(String, String)>,
}

impl Digestif {
    /// For the database behind `pool` (as created by `#[sqlx::test]`).
    pub fn new(pool: &PgPool) -> Self {
        Self {
            url: db_url(pool),
            envs: Vec::new(),
        }
    }

    /// Adds an environment variable to every run.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Points `newsletter.base_url` at `web`, a running digestif web server, as `doctor`
    /// requires of an install whose links work.
    pub fn links_to(self, web: &crate::web::App) -> Self {
        self.env("DIGESTIF_NEWSLETTER__BASE_URL", &web.url())
    }

    /// The command [`Digestif::run`] would run, to start it another way.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_under(&[], args)
    }

    /// [`Digestif::command`] run by `wrapper` (e.g. `faketime -f -1h`).
    pub fn command_under(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = program_under(wrapper);
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", &self.url)
            .env_remove("DIGESTIF_CONFIG")
            .stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a command and returns what it did.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command(args)
            .output()
            .expect("the digestif binary could not be started");
        Run {
            args: args.iter().map(|a| a.escape_debug().to_string()).collect(),
            output,
        }
    }

    /// Runs without blocking the test's runtime, so servers the test runs in-process (the SMTP
    /// server) keep answering the child.
    pub async fn run_async(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("the digestif binary could not be started");
        Run {
            args: args.iter().map(|a| a.escape_debug().to_string()).collect(),
            output,
        }
    }

    /// `run_async`, insisting on success.
    pub async fn ok_async(&self, args: &[&str]) -> Run {
        let run = self.run_async(args).await;
        assert!(run.output.status.success(), "expected success\n{run}");
        run
    }

    /// Runs with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the digestif binary could not be started");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        let output = child.wait_with_output().expect("wait");
        Run {
            args: args.iter().map(|a| a.escape_debug().to_string()).collect(),
            output,
        }
    }

    /// Runs and insists on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(run.output.status.success(), "expected success\n{run}");
        run
    }

    /// Runs and insists on failure with exit code 1 and exactly one line on stderr that
    /// contains `needle`; returns that line.
    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        self.fails_with(1, args, needle)
    }

    /// Like [`Digestif::fails`], for a configuration error: exit 78 (EX_CONFIG), which the
    /// units name in `RestartPreventExitStatus=` so a typo does not restart forever.
    pub fn config_fails(&self, args: &[&str], needle: &str) -> String {
        self.fails_with(78, args, needle)
    }

    fn fails_with(&self, code: i32, args: &[&str], needle: &str) -> String {
        let run = self.run(args);
        assert_eq!(
            run.output.status.code(),
            Some(code),
            "expected exit {code}\n{run}"
        );
        let stderr = run.stderr();
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with("digestif: "),
            "no 'digestif: ' error line\n{run}"
        );
        assert!(last.contains(needle), "error line lacks {needle:?}\n{run}");
        assert!(!stderr.contains("panicked"), "panic\n{run}");
        last
    }
}

/// The URL of the database behind `pool`, for a child process.
pub fn db_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

/// One finished run.
pub struct Run {
    args: Vec<String>,
    pub output: Output,
}

impl Run {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "command: digestif {}", self.args.join(" "))?;
        writeln!(f, "status: {}", self.output.status)?;
        writeln!(f, "--- stdout\n{}", self.stdout())?;
        write!(f, "--- stderr\n{}", self.stderr())
    }
}

/// This host's IPv4 address on its network (not loopback), if it has one: the source address
/// of a route to the outside, found without sending anything.
pub fn own_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Writes a file into a fresh temporary folder and returns the folder (keep it alive).
pub fn file_with(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write temp file");
    (dir, path)
}

/// A path as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// How many subscribers are stored.
pub async fn subscriber_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM subscriber")
        .fetch_one(pool)
        .await
        .expect("count subscribers")
}

/// The status of subscriber `id`.
pub async fn subscriber_status(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM subscriber WHERE subscriber_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("subscriber status")
}

/// `n` active subscribers `user1@example.com`… named `User 1`…, and one tip to send.
pub async fn seed(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO subscriber (email, name, status, consent_source) \
         SELECT 'user' || i || '@example.com', 'User ' || i, 'active', 'test' \
         FROM generate_series(1, $1) i",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("seed subscribers");
    sqlx::query("INSERT INTO tip (title, body) VALUES ('A tip', 'Do the thing.')")
        .execute(pool)
        .await
        .expect("seed tip");
}

/// Runs `d` until nothing is claimable (waiting for retries due within `wait`), never stopped.
pub async fn drain(
    d: &digestif::digest::deliver::Deliverer,
    wait: std::time::Duration,
) -> digestif::digest::deliver::Report {
    try_drain(d, wait).await.expect("delivery run")
}

/// [`drain`], for a run that is expected to fail.
pub async fn try_drain(
    d: &digestif::digest::deliver::Deliverer,
    wait: std::time::Duration,
) -> anyhow::Result<digestif::digest::deliver::Report> {
    let (_stop, rx) = tokio::sync::watch::channel(false);
    d.run_until_idle(
        rx,
        digestif::digest::deliver::Patience { wait_within: wait },
        &digestif::digest::deliver::no_progress,
    )
    .await
}

/// A fresh deliverer for `settings`, drained once.
pub async fn deliver_all(
    pool: &PgPool,
    settings: &digestif::config::Settings,
    wait: std::time::Duration,
) -> digestif::digest::deliver::Report {
    let d = digestif::digest::deliver::Deliverer::new(
        pool.clone(),
        std::sync::Arc::new(settings.clone()),
    )
    .await
    .expect("deliverer");
    drain(&d, wait).await
}

/// Checks `check` every 10 ms until it returns `Some`, and returns that; panics naming `what`
/// (and the last value seen, via `check`'s own message) once `within` has passed. For the
/// tests that wait for something another task or process does: never a fixed sleep.
pub async fn wait_for<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.1 GET to `addr` (a `serve` process), the whole reply as text.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to serve");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// Sends SIGTERM to a running child, as systemd stops a service.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running child").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// An RFC 3339 instant, for slots and clocks in tests.
pub fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&chrono::Utc)
}

/// The digestif binary, run by `wrapper` when there is one (`faketime -f -1h`).
pub fn program_under(wrapper: &[&str]) -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_digestif");
    match wrapper {
        [] => std::process::Command::new(bin),
        [program, rest @ ..] => {
            let mut c = std::process::Command::new(program);
            c.args(rest).arg(bin);
            c
        }
    }
}

/// Whether Debian's faketime is here (`scripts/test` installs it); tests that need it skip,
/// saying so, without it.
pub fn faketime_installed() -> bool {
    let here = std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_ok();
    if !here {
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
    }
    here
}
