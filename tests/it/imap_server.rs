//! A real Dovecot for the bounce mailbox tests: started in the foreground (`dovecot -F`) on a
//! free port with a throwaway configuration (one passwd-file user with a plain password, a
//! maildir in a temporary folder), stopped when dropped. Messages are placed and counted
//! through the maildir itself, so the tests check the server's storage, not our own client.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::smtp_server::TestCa;

/// The mailbox's login.
pub const USER: &str = "bounces";
/// Its password.
pub const PASSWORD: &str = "s3cret-imap-pw";

const DOVECOT: &str = "/usr/sbin/dovecot";

/// How the server is reached.
pub enum Tls<'a> {
    /// No TLS at all (`imap://`).
    None,
    /// STARTTLS on the imap port and TLS from the first byte on a second (imaps) port, with
    /// a certificate `ca` signed.
    With(&'a TestCa),
}

/// A running Dovecot.
pub struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    /// The imap port (STARTTLS when TLS is on).
    pub port: u16,
    /// The imaps port, when TLS is on.
    pub tls_port: Option<u16>,
    owner: Option<(u32, u32)>,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its login, auth and imap processes before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Dovecot {
    /// Starts Dovecot, or says why it cannot (not installed) and returns `None`: the caller
    /// skips. `extra` goes at the end of the configuration (`imap_capability = …`).
    pub fn start(tls: Tls<'_>, extra: &str) -> Option<Self> {
        Self::start_on(free_port(), tls, extra)
    }

    /// [`Dovecot::start`] on a chosen port.
    pub fn start_on(port: u16, tls: Tls<'_>, extra: &str) -> Option<Self> {
        if !Path::new(DOVECOT).exists() || !Path::new("/usr/lib/dovecot/imap").exists() {
            eprintln!(
                "SKIPPED: Dovecot is not installed (apt-get install dovecot-imapd; scripts/test installs it): the IMAP test cannot run"
            );
            return None;
        }
        // The prefix lets scripts/test stop a Dovecot whose test was killed before its drop.
        let dir = tempfile::Builder::new()
            .prefix("digestif-dovecot-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        // Dovecot's auth process (user dovecot) reads the password file inside.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = running_as_root();
        // As root, mail is stored as nobody (Dovecot refuses root); otherwise as ourselves, with
        // every Dovecot process running as us.
        let (uid, gid, users, chroot) = if root {
            (
                65534,
                65534,
                "default_internal_user = dovecot\ndefault_login_user = dovenull\n".to_owned(),
                "",
            )
        } else {
            let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
                .unwrap()
                .trim()
                .to_owned();
            let id = |flag: &str| -> u32 {
                String::from_utf8(Command::new("id").arg(flag).output().unwrap().stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            (
                id("-u"),
                id("-g"),
                format!("default_internal_user = {me}\ndefault_login_user = {me}\n"),
                // Only root can chroot the login processes.
                "  chroot =\n",
            )
        };
        let home = d.join("home");
        std::fs::create_dir_all(home.join("Maildir")).unwrap();
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(home.join("Maildir").join(sub)).unwrap();
        }
        let owner = root.then_some((uid, gid));
        chown_all(&home, owner);
        std::fs::write(
            d.join("passwd"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{}::\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(d.join("passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ssl, tls_port) = match tls {
            Tls::None => ("ssl = no\n".to_owned(), None),
            Tls::With(ca) => {
                let (cert, key) = ca.server_files();
                let dh = if Path::new("/usr/share/dovecot/dh.pem").exists() {
                    "ssl_dh = </usr/share/dovecot/dh.pem\n"
                } else {
                    ""
                };
                (
                    format!("ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n{dh}"),
                    Some(free_port()),
                )
            }
        };
        let imaps = match tls_port {
            Some(p) => format!("address = 127.0.0.1\n    port = {p}\n    ssl = yes"),
            None => "port = 0".to_owned(),
        };
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\n\
             log_path = {d}/dovecot.log\ninfo_log_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\n{ssl}\
             disable_plaintext_auth = no\nauth_mechanisms = plain login\nauth_failure_delay = 0\n\
             mail_location = maildir:~/Maildir\n{users}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = username_format=%u {d}/passwd\n}}\n\
             service imap-login {{\n{chroot}  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
             inet_listener imaps {{\n    {imaps}\n  }}\n}}\n{extra}\n",
            d = d.display(),
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(DOVECOT)
            .args(["-F", "-c"])
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot starts");
        let mut dovecot = Self {
            child,
            dir,
            port,
            tls_port,
            owner,
        };
        dovecot.wait_until_listening();
        Some(dovecot)
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    fn wait_until_listening(&mut self) {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dovecot exited ({status}):\n{}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut greeting = [0u8; 4];
                if s.read_exact(&mut greeting).is_ok() && &greeting == b"* OK" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "dovecot is not answering on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `imap://127.0.0.1:<port>` (to this machine: no TLS unless `?tls=` says so).
    pub fn url(&self) -> String {
        format!("imap://127.0.0.1:{}", self.port)
    }

    /// `imaps://127.0.0.1:<tls port>`.
    pub fn imaps_url(&self) -> String {
        format!(
            "imaps://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    fn maildir(&self, folder: &str) -> PathBuf {
        let base = self.dir.path().join("home").join("Maildir");
        if folder.eq_ignore_ascii_case("INBOX") {
            base
        } else {
            base.join(format!(".{folder}"))
        }
    }

    /// Delivers `raw` into INBOX as an MTA's local delivery does (`tmp/`, then `new/`).
    pub fn deliver(&self, raw: &[u8]) {
        self.put("new", "", raw);
    }

    /// Puts `raw` into INBOX already flagged \Deleted (as another client leaves a message it
    /// deleted but has not expunged yet).
    pub fn deliver_deleted(&self, raw: &[u8]) {
        self.put("cur", ":2,T", raw);
    }

    fn put(&self, sub: &str, flags: &str, raw: &[u8]) {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("17000000{n:02}.M{n}P{}.digestif-test", std::process::id());
        let dir = self.maildir("INBOX");
        let tmp = dir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).unwrap();
        chown_all(&tmp, self.owner);
        std::fs::rename(&tmp, dir.join(sub).join(format!("{name}{flags}"))).unwrap();
    }

    /// The messages in `folder`, as files (new and cur), sorted by name.
    pub fn messages(&self, folder: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir(folder);
        let mut names: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// How many messages `folder` holds.
    pub fn count(&self, folder: &str) -> usize {
        self.messages(folder).len()
    }

    /// The names of `folder`'s message files that carry the \Deleted flag (`T`).
    pub fn deleted_in(&self, folder: &str) -> usize {
        std::fs::read_dir(self.maildir(folder).join("cur"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .rsplit_once(":2,")
                            .is_some_and(|(_, f)| f.contains('T'))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Whether the tests run as root (Dovecot then drops to other users).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Hands `path` (and what is below it) to the mail user, when running as root.
fn chown_all(path: &Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else {
        return;
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), owner);
        }
    }
}
