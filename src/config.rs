//! One `Settings` tree: the embedded defaults, the TOML file and `DIGESTIF_*` environment
//! variables, parsed into domain types at start-up so a bad value fails before anything runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{Schedule, ScheduleError, is_forbidden_char, shown};

/// The documented configuration file, compiled in as the defaults for every key.
pub const DEFAULTS: &str = include_str!("../config/digestif.toml");

/// Where the configuration file is looked for when neither `--config` nor `DIGESTIF_CONFIG` is
/// given; a missing file there is not an error (the embedded defaults apply).
pub const DEFAULT_PATH: &str = "config/digestif.toml";

/// A configuration value that does not fit; the message names the key and the source.
#[derive(Debug, thiserror::Error)]
#[error("config: {key}: {message}")]
pub struct ConfigError {
    key: String,
    message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Keys whose values are secrets. From the environment they are taken as raw text (a password
/// of digits is not a number) and may come from a file instead (`DIGESTIF_SMTP__PASSWORD_FILE`,
/// as systemd credentials and Docker secrets provide them); no error ever shows their values.
const SECRET_KEYS: &[&str] = &[
    "smtp.url",
    "smtp.password",
    "http.token_secret",
    "http.previous_token_secrets",
    "database.url",
    "hooks.postmark_password",
    "hooks.mailgun_signing_key",
    "hooks.generic_secret",
    "inbound.imap_password",
];

/// A relay's keys that hold a secret, named without the relay's index; set only in the file.
const RELAY_SECRET_KEYS: &[&str] = &["smtp.relays.url", "smtp.relays.password"];

/// `smtp.password` → `DIGESTIF_SMTP__PASSWORD`.
fn env_name(key: &str) -> String {
    format!("DIGESTIF_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The secret values the environment sets, as text: `NAME` itself, or the contents of the file
/// `NAME_FILE` names (without its final line break).
fn secrets_from_env() -> Result<Vec<(&'static str, String)>, ConfigError> {
    let mut found = Vec::new();
    for key in SECRET_KEYS {
        let name = env_name(key);
        let direct = std::env::var(&name).ok();
        let file = std::env::var(format!("{name}_FILE")).ok();
        let value = match (direct, file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key,
                    format!("both {name} and {name}_FILE are set: use one"),
                ));
            }
            (Some(v), None) => v,
            (None, Some(path)) => read_secret_file(key, Path::new(&path))?,
            (None, None) => continue,
        };
        found.push((*key, value));
    }
    Ok(found)
}

/// A secret from a file; the error names the file, never what it holds.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            key,
            format!("{}: cannot read the secret ({e})", path.display()),
        )
    })?;
    Ok(text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_owned())
}

/// Every setting, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Identity and links of the newsletter.
    pub newsletter: Newsletter,
    /// When issues are due.
    pub schedule: ScheduleSettings,
    /// How content is picked.
    pub content: ContentSettings,
    /// How deliveries are worked through.
    pub delivery: DeliverySettings,
    /// The SMTP relay.
    pub smtp: SmtpSettings,
    /// DKIM signing.
    pub dkim: DkimSettings,
    /// Return path and bounce attribution.
    pub bounces: BounceSettings,
    /// The HTTP server and link tokens.
    pub http: HttpSettings,
    /// The PostgreSQL database.
    pub database: DatabaseSettings,
    /// Fetching articles from feeds.
    pub feeds: FeedSettings,
    /// Bounce and complaint webhooks of hosted relays.
    pub hooks: HookSettings,
    /// The bounce mailbox read over IMAP.
    pub inbound: InboundSettings,
}

/// `[inbound]`
#[derive(Debug, Clone)]
pub struct InboundSettings {
    /// The bounce mailbox; `None` when `inbound.imap_url` is empty.
    pub imap: Option<ImapSettings>,
}

/// How the connection to the IMAP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapTls {
    /// `imaps://`: TLS from the first byte.
    Implicit,
    /// `imap://`: STARTTLS, or no login at all.
    StartTls,
    /// `imap://…?tls=none`, or `imap://` to this machine: no TLS.
    None,
}

/// A bounce mailbox read over IMAP (`inbound.imap_url` and the keys beside it).
#[derive(Debug, Clone)]
pub struct ImapSettings {
    /// The server's host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TLS as the URL asks.
    pub tls: ImapTls,
    /// The login name.
    pub user: String,
    /// The login password; never logged.
    pub password: SecretString,
    /// The folder read.
    pub folder: String,
    /// Where each message goes once it was handled.
    pub processed_folder: String,
    /// How often `serve` looks.
    pub poll_interval: Duration,
    /// How long the server may take for each step.
    pub timeout: Duration,
    /// Larger messages are not read (moved with a logged reason).
    pub max_message_bytes: u32,
    /// A PEM file of CA certificates to trust besides the public roots and the system's.
    pub ca_file: Option<PathBuf>,
}

impl ImapSettings {
    /// The mailbox as errors and logs name it: `imaps://host:port/folder (user)`. Never the
    /// password: the URL may not carry one.
    pub fn mailbox(&self) -> String {
        let scheme = match self.tls {
            ImapTls::Implicit => "imaps",
            ImapTls::StartTls | ImapTls::None => "imap",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{scheme}://{host}:{}/{} ({})",
            self.port, self.folder, self.user
        )
    }
}

/// `[hooks]`: each provider's webhook, `None` (404) when not configured.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    /// Amazon SES through SNS: the topics whose messages count.
    pub ses: Option<SesHook>,
    /// Postmark: basic auth.
    pub postmark: Option<PostmarkHook>,
    /// Mailgun: the webhook signing key.
    pub mailgun: Option<SecretString>,
    /// SendGrid: the signed event webhook's P-256 public key, as an uncompressed point.
    pub sendgrid: Option<Vec<u8>>,
    /// The generic JSON form: the shared HMAC secret.
    pub generic: Option<SecretString>,
}

/// `hooks.ses_topic_arns`
#[derive(Debug, Clone)]
pub struct SesHook {
    pub topic_arns: Vec<String>,
}

/// `hooks.postmark_username` and `hooks.postmark_password`
#[derive(Debug, Clone)]
pub struct PostmarkHook {
    pub username: String,
    pub password: SecretString,
}

/// `[feeds]`
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// How often a feed is fetched when it answers.
    pub interval: Duration,
    /// Time for one feed's whole answer.
    pub timeout: Duration,
    /// The most one feed may send, after decompression.
    pub max_bytes: usize,
    /// Summaries taken from feeds are cut at a word after this many characters.
    pub summary_chars: usize,
    /// Fetch from loopback, private and link-local addresses too.
    pub allow_private: bool,
    /// `run` and `serve` fetch the due feeds before they compose an issue.
    pub fetch_before_compose: bool,
    /// `[[feeds.sources]]`: feeds kept in the config file (for operators who keep it in git).
    pub sources: Vec<FeedSource>,
}

/// One `[[feeds.sources]]` entry.
#[derive(Debug, Clone)]
pub struct FeedSource {
    pub url: url::Url,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub selection: crate::domain::FeedSelection,
}

/// `[newsletter]`
#[derive(Debug, Clone)]
pub struct Newsletter {
    /// Display name of the newsletter.
    pub name: String,
    /// The From mailbox.
    pub from: Mailbox,
    /// The Reply-To mailbox, when it differs from `from`.
    pub reply_to: Option<Mailbox>,
    /// RFC 2919 list identifier, without angle brackets.
    pub list_id: String,
    /// Public base URL of the HTTP server, without a trailing slash.
    pub base_url: url::Url,
    /// Postal address for the footer.
    pub postal_address: String,
}

/// `[schedule]`
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// `schedule.cron` read in `schedule.timezone`.
    pub cron: Schedule,
    /// How late a missed slot may still be sent.
    pub grace: Duration,
}

/// `[content] when_empty`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenEmpty {
    /// Send the issue with tips only.
    SendTipsOnly,
    /// Do not send an issue for that slot.
    Skip,
}

/// `[content]`
#[derive(Debug, Clone)]
pub struct ContentSettings {
    /// Tips per issue.
    pub tips_per_issue: u32,
    /// Most articles per issue.
    pub max_articles: u32,
    /// Policy when nothing new was published.
    pub when_empty: WhenEmpty,
}

/// `[delivery] transport`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Send over SMTP.
    Smtp,
    /// Write `.eml` files into the outbox.
    File,
}

/// `[delivery]`
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Which transport sends.
    pub transport: TransportKind,
    /// Outbox folder of the file transport.
    pub outbox: PathBuf,
    /// Parallel SMTP sessions.
    pub concurrency: u32,
    /// Messages per second across all workers; `None` for no ceiling.
    pub rate_per_second: Option<f64>,
    /// Messages per hour across all workers; `None` for no ceiling.
    pub rate_per_hour: Option<u32>,
    /// Deliveries claimed per batch.
    pub batch_size: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Age after which a transient failure becomes final.
    pub give_up_after: Duration,
    /// How long a claim is held.
    pub lease: Duration,
    /// Hard bounces that suppress a subscriber.
    pub hard_bounce_threshold: u32,
    /// How long an issue paused by the breaker waits before it resumes on its own.
    pub breaker_cooldown: Duration,
    /// How long messages in flight may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// `[smtp]`
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// The relay URL; secret because operators put credentials in it.
    pub url: SecretString,
    /// AUTH user, if any.
    pub username: Option<String>,
    /// AUTH password, if any.
    pub password: Option<SecretString>,
    /// Connect and command timeout.
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust besides the public roots (a relay with an
    /// internal certificate).
    pub ca_file: Option<PathBuf>,
    /// Send AUTH over a connection without TLS (a relay on a trusted network). Off: the
    /// password is never sent in the clear.
    pub allow_plaintext_auth: bool,
    /// The name said in EHLO; `None`: the host name when fully qualified, else the From
    /// address's domain.
    pub helo_name: Option<String>,
    /// The relays messages go out through: `[[smtp.relays]]`, or `smtp.url` alone. Never
    /// empty.
    pub relays: Vec<RelaySettings>,
}

/// One relay (`[[smtp.relays]]`; `smtp.url` with `smtp.username` and `smtp.password` is the
/// one relay when there are none). `timeout`, `ca_file`, `allow_plaintext_auth` and
/// `helo_name` come from `[smtp]` for every relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// How logs, `issue status` and `/metrics` name it: `name`, else the URL's host and port.
    pub name: String,
    /// Where its settings came from, for error messages (`smtp.url`, `smtp.relays[2]`).
    pub key: String,
    pub url: SecretString,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// Its share of the messages, against the other relays' weights.
    pub weight: u32,
    /// Connections to it at most (default: `delivery.concurrency`).
    pub concurrency: u32,
    /// Its own ceilings, shared by every worker on the database like `delivery.rate_*`.
    pub rate_per_second: Option<f64>,
    pub rate_per_hour: Option<u32>,
}

/// `[dkim]`
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// Whether to sign.
    pub enabled: bool,
    /// The d= domain.
    pub domain: String,
    /// The s= selector.
    pub selector: String,
    /// Where the private key is.
    pub key_file: PathBuf,
    /// An Ed25519 seed for a second signature, if any.
    pub ed25519_key_file: Option<PathBuf>,
    /// The selector of the Ed25519 key.
    pub ed25519_selector: String,
}

/// `[bounces]`
#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// Whether each message gets its own return path (VERP).
    pub verp: bool,
    /// The bounce mailbox; VERP inserts `+<id>` before the `@`.
    pub address: lettre::Address,
    /// Feedback-loop domains (lower case, no final dot) whose DKIM-signed reports count as
    /// complaints without our VERP tag; empty: only VERP-tagged complaints count.
    pub complaint_senders: Vec<String>,
    /// The DNS server (UDP) asked for DKIM keys; `None`: the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
}

/// `[http]`
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Where `/metrics` is served instead of `listen`, when set.
    pub metrics_listen: Option<SocketAddr>,
    /// Token secret; empty when not configured.
    pub token_secret: SecretString,
    /// Earlier token secrets: links signed with them still verify; nothing new is signed.
    pub previous_token_secrets: Vec<SecretString>,
    /// Whether the public sign-up form is on.
    pub signup: bool,
    /// Sign-up requests allowed per client address per hour.
    pub signup_per_hour: u32,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a request may take from its headers to the answer, body included; past it, 408.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: u32,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold at once; a trusted
    /// proxy or a loopback peer is not limited. More are answered 503 and closed.
    pub max_connections_per_client: u32,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins besides `newsletter.base_url`'s whose pages may post the sign-up form.
    pub signup_origins: Vec<String>,
    /// The form mails one address at most once in this time.
    pub signup_resend_after: Duration,
}

/// `[database]`
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Connection URL; secret because it may hold a password.
    pub url: SecretString,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Nobody set `database.url` or `DATABASE_URL`: the built-in default (a local Postgres)
    /// is in use, so a failure to reach it says how to point digestif at a database.
    pub url_is_default: bool,
}

/// The built-in `database.url`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/digestif";

// ---- the raw shape of the file ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    newsletter: RawNewsletter,
    schedule: RawSchedule,
    content: RawContent,
    delivery: RawDelivery,
    smtp: RawSmtp,
    dkim: RawDkim,
    bounces: RawBounces,
    http: RawHttp,
    database: RawDatabase,
    feeds: RawFeeds,
    hooks: RawHooks,
    inbound: RawInbound,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    ses_topic_arns: Vec<String>,
    postmark_username: String,
    postmark_password: SecretString,
    postmark_password_file: PathBuf,
    mailgun_signing_key: SecretString,
    mailgun_signing_key_file: PathBuf,
    sendgrid_public_key: String,
    generic_secret: SecretString,
    generic_secret_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    imap_url: String,
    imap_user: String,
    imap_password: SecretString,
    imap_password_file: PathBuf,
    folder: String,
    processed_folder: String,
    poll_interval: String,
    timeout: String,
    max_message_bytes: u32,
    ca_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeeds {
    interval: String,
    timeout: String,
    max_bytes: u32,
    summary_chars: u32,
    allow_private: bool,
    fetch_before_compose: bool,
    #[serde(default)]
    sources: Vec<RawFeedSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedSource {
    url: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    max_per_issue: Option<u32>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNewsletter {
    name: String,
    from: String,
    reply_to: String,
    list_id: String,
    base_url: String,
    postal_address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    timezone: String,
    grace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContent {
    tips_per_issue: u32,
    max_articles: u32,
    when_empty: WhenEmpty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    transport: TransportKind,
    outbox: PathBuf,
    concurrency: u32,
    rate_per_second: f64,
    rate_per_hour: u32,
    batch_size: u32,
    retry_base: String,
    give_up_after: String,
    lease: String,
    hard_bounce_threshold: u32,
    breaker_cooldown: String,
    shutdown_grace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    url: SecretString,
    username: String,
    password: SecretString,
    password_file: PathBuf,
    timeout: String,
    ca_file: PathBuf,
    allow_plaintext_auth: bool,
    helo_name: String,
    #[serde(default)]
    relays: Vec<RawRelay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default)]
    name: String,
    url: SecretString,
    #[serde(default)]
    username: String,
    password: Option<SecretString>,
    #[serde(default)]
    password_file: PathBuf,
    #[serde(default = "one")]
    weight: u32,
    concurrency: Option<u32>,
    #[serde(default)]
    rate_per_second: f64,
    #[serde(default)]
    rate_per_hour: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    enabled: bool,
    domain: String,
    selector: String,
    key_file: PathBuf,
    ed25519_key_file: String,
    ed25519_selector: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounces {
    verp: bool,
    address: String,
    complaint_senders: Vec<String>,
    dns_server: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    metrics_listen: String,
    token_secret: SecretString,
    token_secret_file: PathBuf,
    previous_token_secrets: SecretList,
    signup: bool,
    signup_per_hour: u32,
    header_timeout: String,
    request_timeout: String,
    max_connections: u32,
    max_connections_per_client: u32,
    trusted_proxies: Vec<String>,
    signup_origins: Vec<String>,
    signup_resend_after: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: SecretString,
    max_connections: u32,
    connect_timeout: String,
}

impl Settings {
    /// Loads the settings: embedded defaults, then the file, then the environment.
    ///
    /// `explicit` is `--config` (or `DIGESTIF_CONFIG`); a file named that way must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(explicit, Env::prefixed("DIGESTIF_"), Env::raw())
    }

    fn load_from(
        explicit: Option<&Path>,
        prefixed: Env,
        raw_env: Env,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new().merge(Toml::string(DEFAULTS));
        match explicit {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::new(
                        "--config",
                        format!("{}: no such file", path.display()),
                    ));
                }
                // figment's own message for this runs over two lines and shortens the path.
                if let Err(e) = std::fs::File::open(path) {
                    return Err(ConfigError::new(
                        "--config",
                        format!("{}: cannot read ({e})", path.display()),
                    ));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_PATH).is_file() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_PATH));
            }
            None => {}
        }
        // Secrets are left out of the parsing environment provider and merged as text.
        let mut ignored = vec!["config".to_owned(), "now".to_owned()];
        for key in SECRET_KEYS {
            let k = key.replace('.', "__");
            ignored.push(format!("{k}_file"));
            ignored.push(k);
        }
        let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
        figment = figment.merge(prefixed.ignore(&ignored).split("__"));
        for (key, value) in secrets_from_env()? {
            figment = figment.merge(Serialized::default(key, value));
        }
        figment = figment.merge(
            raw_env
                .only(&["DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
        let raw: Raw = figment.extract().map_err(figment_error)?;
        raw.validate()
    }

    /// Loads settings from TOML text layered over the defaults, without reading the
    /// environment: for tests and tools that build settings in code.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string(text))
            .extract()
            .map_err(figment_error)?;
        raw.validate()
    }
}

fn figment_error(err: figment::Error) -> ConfigError {
    // figment counts a list's items from 0 (`smtp.relays.0.url`); our other errors, like the
    // operator, from 1 (`smtp.relays[1].url`).
    let key = err.path.iter().fold(String::new(), |mut key, part| {
        match part.parse::<usize>() {
            Ok(i) if !key.is_empty() => key.push_str(&format!("[{}]", i + 1)),
            _ if key.is_empty() => key.push_str(part),
            _ => {
                key.push('.');
                key.push_str(part);
            }
        }
        key
    });
    // Where the bad value came from: the file, or the environment variable as the operator
    // typed it (figment would say `DELIVERY.CONCURENCY`).
    let source = err.metadata.as_ref().map(|m| match &m.source {
        Some(src) => src.to_string(),
        None if m.name.contains("environment") => {
            if key == "database.url" {
                "DATABASE_URL".to_owned()
            } else {
                format!("DIGESTIF_{}", err.path.join("__").to_uppercase())
            }
        }
        None => {
            let profile = err.profile.clone().unwrap_or_default();
            m.interpolate(&profile, &err.path)
        }
    });
    if key.is_empty() {
        // The file itself does not parse: TOML's report spans lines (a snippet with a caret);
        // keep its words in one line.
        let text = err.kind.to_string();
        let words: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "))
            .collect();
        let message = words
            .join(": ")
            .replacen("TOML parse error at line", "line", 1);
        return ConfigError::new(source.as_deref().unwrap_or("(file)"), message);
    }
    // figment names a relay's key with its index (`smtp.relays.0.password`).
    let unindexed = err
        .path
        .iter()
        .filter(|p| !p.bytes().all(|b| b.is_ascii_digit()))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(".");
    // A key above a secret one counts too: `relays = ["smtp://u:pw@h"]` is refused at
    // `smtp.relays`, quoting the URL.
    let secret = SECRET_KEYS.iter().chain(RELAY_SECRET_KEYS).any(|k| {
        key == *k
            || key.starts_with(&format!("{k}."))
            || unindexed == *k
            || k.starts_with(&format!("{unindexed}."))
    });
    let mut message = match &err.kind {
        // figment's message quotes the value ("found unsigned int '84736251'").
        _ if secret => "not a valid value (not shown: this key holds a secret)".to_owned(),
        figment::error::Kind::UnknownField(_, expected) => {
            let field = err.path.last().map(String::as_str).unwrap_or_default();
            let closest = expected
                .iter()
                .map(|k| (strsim::damerau_levenshtein(field, k), *k))
                .min()
                // A third of the letters wrong at most, so `port` suggests nothing.
                .filter(|(distance, _)| *distance <= (field.len() / 3).max(1));
            match closest {
                Some((_, k)) => format!("unknown key; did you mean `{k}`?"),
                None => format!("unknown key; the keys here are {}", expected.join(", ")),
            }
        }
        kind => kind.to_string(),
    };
    if let Some(source) = source {
        message.push_str(&format!(" (set in {source})"));
    }
    ConfigError::new(&key, message)
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        let n = self.newsletter;
        let from = mailbox("newsletter.from", &n.from)?;
        let reply_to = if n.reply_to.trim().is_empty() {
            None
        } else {
            Some(mailbox("newsletter.reply_to", &n.reply_to)?)
        };
        let base_url = http_url("newsletter.base_url", &n.base_url)?;
        let list_id = n.list_id.trim().to_owned();
        let list_id_ok = list_id.contains('.')
            && list_id.len() <= 255
            && list_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !list_id_ok {
            return Err(ConfigError::new(
                "newsletter.list_id",
                format!(
                    "'{}' is not a dotted name like backend-tips.example.com",
                    shown(&list_id)
                ),
            ));
        }
        let newsletter = Newsletter {
            name: one_line("newsletter.name", &n.name)?,
            from,
            reply_to,
            list_id,
            base_url,
            postal_address: one_line("newsletter.postal_address", &n.postal_address)?,
        };

        let s = self.schedule;
        let cron = one_line("schedule.cron", &s.cron)?;
        let schedule = Schedule::parse(&cron, &s.timezone).map_err(|e| match e {
            ScheduleError::Zone(_) => ConfigError::new("schedule.timezone", e.to_string()),
            _ => ConfigError::new("schedule.cron", e.to_string()),
        })?;
        let schedule = ScheduleSettings {
            cron: schedule,
            grace: duration("schedule.grace", &s.grace)?,
        };

        let c = self.content;
        let content = ContentSettings {
            tips_per_issue: in_range("content.tips_per_issue", c.tips_per_issue, 1, 10)?,
            max_articles: in_range("content.max_articles", c.max_articles, 0, 50)?,
            when_empty: c.when_empty,
        };

        let d = self.delivery;
        if !(d.rate_per_second.is_finite() && d.rate_per_second >= 0.0) {
            return Err(ConfigError::new(
                "delivery.rate_per_second",
                "must be a number of messages per second, 0 or more",
            ));
        }
        let delivery = DeliverySettings {
            transport: d.transport,
            outbox: d.outbox,
            concurrency: in_range("delivery.concurrency", d.concurrency, 1, 64)?,
            rate_per_second: (d.rate_per_second > 0.0).then_some(d.rate_per_second),
            rate_per_hour: (d.rate_per_hour > 0).then_some(d.rate_per_hour),
            batch_size: in_range("delivery.batch_size", d.batch_size, 1, 10_000)?,
            // Bounded, so the backoff's arithmetic cannot overflow: a retry waits at most 6 h
            // however large the base, and a delivery older than a year is not worth sending.
            retry_base: duration_within("delivery.retry_base", &d.retry_base, "1s", "6h")?,
            give_up_after: duration_within(
                "delivery.give_up_after",
                &d.give_up_after,
                "0s",
                "366d",
            )?,
            lease: lease(&d.lease)?,
            hard_bounce_threshold: in_range(
                "delivery.hard_bounce_threshold",
                d.hard_bounce_threshold,
                1,
                100,
            )?,
            breaker_cooldown: duration("delivery.breaker_cooldown", &d.breaker_cooldown)?,
            shutdown_grace: duration("delivery.shutdown_grace", &d.shutdown_grace)?,
        };

        let m = self.smtp;
        smtp_url("smtp.url", &m.url)?;
        let password = secret_or_file("smtp.password", m.password, &m.password_file)?;
        let username = Some(m.username.trim().to_owned()).filter(|u| !u.is_empty());
        let password = (!password.expose_secret().is_empty()).then_some(password);
        let relays = if m.relays.is_empty() {
            vec![RelaySettings {
                name: relay_name(&m.url),
                key: "smtp.url".into(),
                url: m.url.clone(),
                username: username.clone(),
                password: password.clone(),
                weight: 1,
                concurrency: delivery.concurrency,
                rate_per_second: None,
                rate_per_hour: None,
            }]
        } else {
            relays(m.relays, delivery.concurrency)?
        };
        let smtp = SmtpSettings {
            relays,
            url: m.url,
            username,
            password,
            timeout: duration("smtp.timeout", &m.timeout)?,
            ca_file: (!m.ca_file.as_os_str().is_empty()).then_some(m.ca_file),
            allow_plaintext_auth: m.allow_plaintext_auth,
            helo_name: match m.helo_name.trim() {
                "" => None,
                name => Some(host_name("smtp.helo_name", name)?),
            },
        };

        let k = self.dkim;
        let dkim = DkimSettings {
            enabled: k.enabled,
            domain: one_line("dkim.domain", &k.domain)?,
            selector: one_line("dkim.selector", &k.selector)?,
            key_file: k.key_file,
            ed25519_key_file: Some(k.ed25519_key_file.trim())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            ed25519_selector: one_line("dkim.ed25519_selector", &k.ed25519_selector)?,
        };

        let b = self.bounces;
        let address = if b.address.trim().is_empty() {
            format!("bounces@{}", newsletter.from.email.domain())
        } else {
            b.address.trim().to_owned()
        };
        let bounces = BounceSettings {
            verp: b.verp,
            address: address.parse().map_err(|_| {
                ConfigError::new(
                    "bounces.address",
                    format!("'{}' is not an email address", shown(&address)),
                )
            })?,
            complaint_senders: b
                .complaint_senders
                .iter()
                .map(|d| domain_name("bounces.complaint_senders", d))
                .collect::<Result<_, _>>()?,
            dns_server: dns_server("bounces.dns_server", &b.dns_server)?,
        };

        let h = self.http;
        let listen = h.listen.trim().parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!(
                    "'{}' is not an address:port like 127.0.0.1:8080",
                    shown(&h.listen)
                ),
            )
        })?;
        let token_secret =
            secret_or_file("http.token_secret", h.token_secret, &h.token_secret_file)?;
        let secret_len = token_secret.expose_secret().len();
        if secret_len > 0 && secret_len < crate::domain::MIN_SECRET_LEN {
            return Err(ConfigError::new(
                "http.token_secret",
                format!(
                    "must be empty (use the generated one) or at least {} characters",
                    crate::domain::MIN_SECRET_LEN
                ),
            ));
        }
        let previous_token_secrets = h.previous_token_secrets.into_vec();
        if previous_token_secrets
            .iter()
            .any(|p| p.expose_secret().len() < crate::domain::MIN_SECRET_LEN)
        {
            return Err(ConfigError::new(
                "http.previous_token_secrets",
                format!(
                    "every entry must be at least {} characters (values not shown)",
                    crate::domain::MIN_SECRET_LEN
                ),
            ));
        }
        let metrics_listen = match h.metrics_listen.trim() {
            "" => None,
            raw => Some(raw.parse().map_err(|_| {
                ConfigError::new(
                    "http.metrics_listen",
                    format!(
                        "'{}' is not an address:port like 127.0.0.1:9090",
                        shown(raw)
                    ),
                )
            })?),
        };
        let http = HttpSettings {
            listen,
            metrics_listen,
            token_secret,
            previous_token_secrets,
            signup: h.signup,
            signup_per_hour: in_range("http.signup_per_hour", h.signup_per_hour, 1, 10_000)?,
            header_timeout: positive("http.header_timeout", &h.header_timeout)?,
            request_timeout: positive("http.request_timeout", &h.request_timeout)?,
            max_connections: in_range("http.max_connections", h.max_connections, 1, 100_000)?,
            max_connections_per_client: in_range(
                "http.max_connections_per_client",
                h.max_connections_per_client,
                1,
                100_000,
            )?,
            trusted_proxies: h
                .trusted_proxies
                .iter()
                .map(|p| cidr("http.trusted_proxies", p))
                .collect::<Result<_, _>>()?,
            signup_origins: h
                .signup_origins
                .iter()
                .map(|o| origin("http.signup_origins", o))
                .collect::<Result<_, _>>()?,
            signup_resend_after: duration("http.signup_resend_after", &h.signup_resend_after)?,
        };

        let b = self.database;
        if !b.url.expose_secret().starts_with("postgres://")
            && !b.url.expose_secret().starts_with("postgresql://")
        {
            return Err(ConfigError::new("database.url", "not a postgres:// URL"));
        }
        let database = DatabaseSettings {
            url_is_default: b.url.expose_secret() == DEFAULT_DATABASE_URL,
            url: b.url,
            max_connections: in_range("database.max_connections", b.max_connections, 1, 100)?,
            connect_timeout: duration("database.connect_timeout", &b.connect_timeout)?,
        };

        let f = self.feeds;
        let feeds = FeedSettings {
            interval: duration("feeds.interval", &f.interval)?,
            timeout: duration("feeds.timeout", &f.timeout)?,
            max_bytes: in_range("feeds.max_bytes", f.max_bytes, 1024, 100 * 1024 * 1024)? as usize,
            summary_chars: in_range("feeds.summary_chars", f.summary_chars, 20, 2000)? as usize,
            allow_private: f.allow_private,
            fetch_before_compose: f.fetch_before_compose,
            sources: f
                .sources
                .into_iter()
                .map(|s| {
                    let url = url::Url::parse(s.url.trim())
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                        .ok_or_else(|| {
                            ConfigError::new(
                                "feeds.sources",
                                format!(
                                    "'{}' is not an http or https URL",
                                    crate::domain::one_line(&s.url)
                                ),
                            )
                        })?;
                    let name = s.name.trim().to_owned();
                    if name.chars().count() > 200 {
                        return Err(ConfigError::new(
                            "feeds.sources",
                            format!("{url}: name longer than 200 characters"),
                        ));
                    }
                    let selection = crate::domain::FeedSelection::parse(
                        s.max_per_issue,
                        &s.include,
                        &s.exclude,
                    )
                    .map_err(|e| ConfigError::new("feeds.sources", format!("{url}: {e}")))?;
                    Ok(FeedSource {
                        url,
                        name: (!name.is_empty()).then_some(name),
                        tags: s.tags,
                        selection,
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let hooks = self.hooks.validate()?;

        Ok(Settings {
            newsletter,
            schedule,
            content,
            delivery,
            smtp,
            dkim,
            bounces,
            http,
            database,
            feeds,
            hooks,
            inbound: self.inbound.validate()?,
        })
    }
}

impl RawHooks {
    fn validate(self) -> Result<HookSettings, ConfigError> {
        let ses = self
            .ses_topic_arns
            .iter()
            .map(|arn| topic_arn("hooks.ses_topic_arns", arn))
            .collect::<Result<Vec<_>, _>>()?;
        let username = self.postmark_username.trim().to_owned();
        let password = secret_or_file(
            "hooks.postmark_password",
            self.postmark_password,
            &self.postmark_password_file,
        )?;
        let postmark = match (username.is_empty(), password.expose_secret().is_empty()) {
            (true, true) => None,
            (false, false)
                if !username.contains(':') && !username.chars().any(is_forbidden_char) =>
            {
                Some(PostmarkHook { username, password })
            }
            (false, false) => {
                return Err(ConfigError::new(
                    "hooks.postmark_username",
                    "must not contain ':' or control characters (basic auth cannot carry them)",
                ));
            }
            (true, false) => {
                return Err(ConfigError::new(
                    "hooks.postmark_username",
                    "must be set with hooks.postmark_password",
                ));
            }
            (false, true) => {
                return Err(ConfigError::new(
                    "hooks.postmark_password",
                    "must be set with hooks.postmark_username",
                ));
            }
        };
        let mailgun = secret_or_file(
            "hooks.mailgun_signing_key",
            self.mailgun_signing_key,
            &self.mailgun_signing_key_file,
        )?;
        let generic = secret_or_file(
            "hooks.generic_secret",
            self.generic_secret,
            &self.generic_secret_file,
        )?;
        let generic_len = generic.expose_secret().len();
        if generic_len > 0 && generic_len < crate::domain::MIN_SECRET_LEN {
            return Err(ConfigError::new(
                "hooks.generic_secret",
                format!(
                    "must be at least {} characters (e.g. `openssl rand -hex 32`)",
                    crate::domain::MIN_SECRET_LEN
                ),
            ));
        }
        let sendgrid = match self.sendgrid_public_key.trim() {
            "" => None,
            key => Some(p256_public_key("hooks.sendgrid_public_key", key)?),
        };
        Ok(HookSettings {
            ses: (!ses.is_empty()).then_some(SesHook { topic_arns: ses }),
            postmark,
            mailgun: (!mailgun.expose_secret().is_empty()).then_some(mailgun),
            sendgrid,
            generic: (generic_len > 0).then_some(generic),
        })
    }
}

impl RawInbound {
    fn validate(self) -> Result<InboundSettings, ConfigError> {
        let raw_url = self.imap_url.trim();
        if raw_url.is_empty() {
            return Ok(InboundSettings { imap: None });
        }
        let key = "inbound.imap_url";
        // The value is not echoed: someone may have put a password in it after all.
        let url = url::Url::parse(raw_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "imap" | "imaps") && u.host_str().is_some())
            .ok_or_else(|| ConfigError::new(key, "not an imap:// or imaps:// URL with a host"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                key,
                "no credentials in the URL: set inbound.imap_user and inbound.imap_password (or imap_password_file)",
            ));
        }
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(ConfigError::new(
                key,
                "no folder in the URL: name it in inbound.folder",
            ));
        }
        // An IPv6 address without its brackets: as a socket address and a TLS name want it.
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut asked = None;
        for (k, v) in url.query_pairs() {
            match (url.scheme(), k.as_ref(), v.as_ref()) {
                ("imap", "tls", "required") => asked = Some(ImapTls::StartTls),
                ("imap", "tls", "none") => asked = Some(ImapTls::None),
                ("imap", "tls", other) => {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "tls={}: expected tls=required (STARTTLS) or tls=none",
                            crate::domain::one_line(other)
                        ),
                    ));
                }
                ("imaps", "tls", _) => {
                    return Err(ConfigError::new(
                        key,
                        "imaps:// is TLS from the first byte: drop ?tls= (it is for imap://)",
                    ));
                }
                _ => {
                    return Err(ConfigError::new(
                        key,
                        "an unknown parameter after `?`: only tls= is understood",
                    ));
                }
            }
        }
        let tls = match (url.scheme(), asked) {
            ("imaps", _) => ImapTls::Implicit,
            (_, Some(tls)) => tls,
            // As smtp.url: only a server on this machine is spoken to in the clear unless the
            // URL says so (Dovecot, too, takes a password in the clear from there only).
            _ if is_this_machine(&host) => ImapTls::None,
            _ => ImapTls::StartTls,
        };
        let port = url.port().unwrap_or(match tls {
            ImapTls::Implicit => 993,
            _ => 143,
        });
        let user = self.imap_user.trim().to_owned();
        if user.is_empty() || user.chars().any(is_forbidden_char) {
            return Err(ConfigError::new(
                "inbound.imap_user",
                "must be the mailbox's login name when inbound.imap_url is set",
            ));
        }
        let password = secret_or_file(
            "inbound.imap_password",
            self.imap_password,
            &self.imap_password_file,
        )?;
        if password.expose_secret().is_empty() {
            return Err(ConfigError::new(
                "inbound.imap_password",
                "must be set (or inbound.imap_password_file) when inbound.imap_url is set",
            ));
        }
        // IMAP's quoted strings cannot carry a line break.
        if password.expose_secret().contains(['\r', '\n']) {
            return Err(ConfigError::new(
                "inbound.imap_password",
                "contains a line break (not shown)",
            ));
        }
        let folder = imap_folder("inbound.folder", &self.folder)?;
        let processed_folder = imap_folder("inbound.processed_folder", &self.processed_folder)?;
        if folder.eq_ignore_ascii_case(&processed_folder) {
            return Err(ConfigError::new(
                "inbound.processed_folder",
                format!(
                    "must differ from inbound.folder ('{folder}'): handled messages are moved out of it"
                ),
            ));
        }
        Ok(InboundSettings {
            imap: Some(ImapSettings {
                host,
                port,
                tls,
                user,
                password,
                folder,
                processed_folder,
                poll_interval: positive("inbound.poll_interval", &self.poll_interval)?,
                timeout: positive("inbound.timeout", &self.timeout)?,
                max_message_bytes: in_range(
                    "inbound.max_message_bytes",
                    self.max_message_bytes,
                    1024,
                    100 * 1024 * 1024,
                )?,
                ca_file: (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file),
            }),
        })
    }
}

/// An SNS topic ARN, `arn:aws:sns:<region>:<account>:<name>`.
fn topic_arn(key: &str, raw: &str) -> Result<String, ConfigError> {
    let v = raw.trim();
    let parts: Vec<&str> = v.split(':').collect();
    let ok = matches!(parts.as_slice(), ["arn", partition, "sns", region, account, name]
        if partition.starts_with("aws")
            && !region.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "'{}' is not an SNS topic ARN like arn:aws:sns:eu-west-1:123456789012:ses-bounces",
                shown(v)
            ),
        ))
    }
}

/// The DER SubjectPublicKeyInfo of a P-256 key starts with these bytes (the algorithm, the
/// curve and the bit string's header); the uncompressed point (65 bytes, 0x04 first) follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A P-256 public key as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo, or the
/// same in a PEM block): the uncompressed point.
fn p256_public_key(key: &str, raw: &str) -> Result<Vec<u8>, ConfigError> {
    use base64::Engine as _;
    let body: String = raw
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.split_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok();
    match der
        .as_deref()
        .and_then(|d| d.strip_prefix(&P256_SPKI_PREFIX[..]))
    {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err(ConfigError::new(
            key,
            "not a P-256 public key in base64 (copy SendGrid's verification key whole, \
             it starts with MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE)",
        )),
    }
}

/// 127.0.0.1, ::1 or localhost.
fn is_this_machine(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An IMAP folder name as the server spells it: printable ASCII (IMAP writes other letters in
/// its modified UTF-7, which the operator can copy from their mail client's settings).
fn imap_folder(key: &str, raw: &str) -> Result<String, ConfigError> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) || v.contains(['*', '%']) {
        return Err(ConfigError::new(
            key,
            format!(
                "'{}' is not a folder name in printable ASCII without * or % (write other letters in IMAP's modified UTF-7, e.g. 'Entw&APw-rfe')",
                shown(v)
            ),
        ));
    }
    Ok(v.to_owned())
}

fn one_line(key: &str, raw: &str) -> Result<String, ConfigError> {
    if raw.chars().any(is_forbidden_char) {
        return Err(ConfigError::new(
            key,
            format!("'{}' contains a control character", shown(raw)),
        ));
    }
    let v = raw.trim();
    if v.is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    Ok(v.to_owned())
}

fn mailbox(key: &str, raw: &str) -> Result<Mailbox, ConfigError> {
    let v = one_line(key, raw)?;
    v.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!(
                "'{}' is not a mailbox like \"Name <address@example.com>\"",
                shown(&v)
            ),
        )
    })
}

fn http_url(key: &str, raw: &str) -> Result<url::Url, ConfigError> {
    let v = one_line(key, raw)?;
    match url::Url::parse(v.trim_end_matches('/')) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        _ => Err(ConfigError::new(
            key,
            format!("'{}' is not an http:// or https:// URL", shown(&v)),
        )),
    }
}

fn duration(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    let d = any_duration(key, raw)?;
    // No setting means more than a year, and time arithmetic on a value like 300000y would
    // fail mid-run (past the calendar's last date) instead of here.
    if d > LONGEST {
        return Err(ConfigError::new(
            key,
            format!("'{}' is out of range (at most 366d)", shown(raw)),
        ));
    }
    Ok(d)
}

/// The longest duration any setting takes.
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration as written, of any length: the bounds are the caller's.
fn any_duration(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw.trim()).map_err(|_| {
        ConfigError::new(
            key,
            format!(
                "'{}' is not a duration (write e.g. 90s, 10m, 6h, 2d)",
                shown(raw)
            ),
        )
    })
}

/// A duration from `lo` to `hi` (both written as the error shows them).
fn duration_within(key: &str, raw: &str, lo: &str, hi: &str) -> Result<Duration, ConfigError> {
    let d = any_duration(key, raw)?;
    let bound = |b: &str| humantime::parse_duration(b).unwrap_or_default();
    if d < bound(lo) || d > bound(hi) {
        return Err(ConfigError::new(
            key,
            format!("'{}' is out of range ({lo} to {hi})", shown(raw)),
        ));
    }
    Ok(d)
}

/// `delivery.lease`: at least a second. The check before each final dot asks for a third of
/// the lease left, and the heartbeat renews every third (no faster than every 200 ms): under a
/// second, a heartbeat a few hundred milliseconds late makes checks say no and claims go back
/// and forth, and near zero every check says no and the run never ends.
fn lease(raw: &str) -> Result<Duration, ConfigError> {
    let lease = duration("delivery.lease", raw)?;
    if lease < Duration::from_secs(1) {
        return Err(ConfigError::new(
            "delivery.lease",
            format!("'{}' is too short (at least 1s)", shown(raw)),
        ));
    }
    Ok(lease)
}

/// A fully qualified host name as EHLO wants it: letters, digits and hyphens in dotted labels.
fn host_name(key: &str, raw: &str) -> Result<String, ConfigError> {
    let ok = raw.len() <= 253
        && raw.contains('.')
        && raw.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ConfigError::new(
            key,
            format!("'{}' is not a host name like mail.example.com", shown(raw)),
        ))
    }
}

/// An address block (`10.0.0.0/8`, `fd00::/8`) or one address.
fn cidr(key: &str, raw: &str) -> Result<ipnet::IpNet, ConfigError> {
    let v = raw.trim();
    v.parse::<ipnet::IpNet>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                key,
                format!(
                    "'{}' is not an address or block like 10.0.0.0/8",
                    shown(raw)
                ),
            )
        })
}

/// A web origin as browsers send it in `Origin`: scheme, host and port, no path.
fn origin(key: &str, raw: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::new(
            key,
            format!(
                "'{}' is not an origin like https://www.example.com",
                shown(raw)
            ),
        )
    };
    let u = http_url(key, raw.trim()).map_err(|_| bad())?;
    if u.path() != "/" || u.query().is_some() || !u.username().is_empty() {
        return Err(bad());
    }
    Ok(u.origin().ascii_serialization())
}

/// A DNS domain name like `fbl.example-isp.net`: two labels or more of letters, digits and
/// inner hyphens (IDNs in their `xn--` form); returned in lower case without a final dot.
fn domain_name(key: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    let top_ok = labels
        .last()
        .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()));
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) || !top_ok {
        return Err(ConfigError::new(
            key,
            format!(
                "'{}' is not a domain name like fbl.example-isp.net",
                shown(raw)
            ),
        ));
    }
    Ok(name)
}

/// `""` (the system resolver), or a DNS server as `ip:port` (`[ipv6]:port`); a bare address
/// means port 53.
fn dns_server(key: &str, raw: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = raw.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<SocketAddr>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map(Some)
        .map_err(|_| {
            ConfigError::new(
                key,
                format!(
                    "'{}' is not an address:port like 127.0.0.1:53 (or \"\" for the system resolver)",
                    shown(raw)
                ),
            )
        })
}

/// A duration above zero: a zero timeout would refuse every request.
fn positive(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    match duration(key, raw)? {
        d if d.is_zero() => Err(ConfigError::new(key, "must be more than zero")),
        d => Ok(d),
    }
}

fn in_range(key: &str, v: u32, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(
            key,
            format!("{v} is out of range ({lo} to {hi})"),
        ))
    }
}

/// A list of secrets: a TOML array, or one text with a secret per line (as the environment
/// and secret files give it).
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretList {
    Text(SecretString),
    List(Vec<SecretString>),
}

impl SecretList {
    fn into_vec(self) -> Vec<SecretString> {
        match self {
            SecretList::List(v) => v,
            SecretList::Text(t) => t
                .expose_secret()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| SecretString::from(l.to_owned()))
                .collect(),
        }
    }
}

/// A secret given directly or, with `<key>_file`, read from that file; not both.
/// Checks a relay URL at start-up rather than at the first send. The value is never echoed:
/// operators put passwords in it.
fn smtp_url(key: &str, url: &SecretString) -> Result<(), ConfigError> {
    let smtp_url = url.expose_secret();
    match url::Url::parse(smtp_url) {
        Ok(u) if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some() => {
            // Checked here, with every other value, rather than at the first send. The
            // value of `tls` is one of ours, never a secret, so it may be shown.
            for (k, v) in u.query_pairs() {
                match (u.scheme(), k.as_ref(), v.as_ref()) {
                    ("smtp", "tls", "required" | "opportunistic" | "none") => {}
                    ("smtp", "tls", other) => {
                        return Err(ConfigError::new(
                            key,
                            format!(
                                "tls={}: expected tls=required, tls=opportunistic or tls=none",
                                crate::domain::one_line(other)
                            ),
                        ));
                    }
                    ("smtps", "tls", _) => {
                        return Err(ConfigError::new(
                            key,
                            "smtps:// is TLS from the first byte: drop ?tls= (it is for smtp://)",
                        ));
                    }
                    _ => {
                        return Err(ConfigError::new(
                            key,
                            "an unknown parameter after `?`: only tls= is understood",
                        ));
                    }
                }
            }
        }
        // The value is not echoed: operators put passwords in this URL.
        _ => {
            return Err(ConfigError::new(
                key,
                "not an smtp:// or smtps:// URL with a host",
            ));
        }
    }
    Ok(())
}

/// A relay's name when it has none: its URL's host and port (never its credentials), at most
/// 60 characters (it is stored with each delivery).
fn relay_name(url: &SecretString) -> String {
    url::Url::parse(url.expose_secret())
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .map(|name| name.chars().take(60).collect())
        .unwrap_or_else(|| "relay".into())
}

fn relays(raw: Vec<RawRelay>, concurrency: u32) -> Result<Vec<RelaySettings>, ConfigError> {
    let mut out: Vec<RelaySettings> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("smtp.relays[{}]", i + 1);
        smtp_url(&format!("{key}.url"), &r.url)?;
        let name = match r.name.trim() {
            "" => relay_name(&r.url),
            n => n.to_owned(),
        };
        if name.chars().count() > 60 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ConfigError::new(
                &format!("{key}.name"),
                format!(
                    "'{}': use at most 60 letters, digits and punctuation, no spaces",
                    shown(&name)
                ),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError::new(
                &format!("{key}.name"),
                format!("'{name}' names two relays: give each its own name"),
            ));
        }
        if !(r.rate_per_second.is_finite() && r.rate_per_second >= 0.0) {
            return Err(ConfigError::new(
                &format!("{key}.rate_per_second"),
                "must be a number of messages per second, 0 for no ceiling",
            ));
        }
        let password = secret_or_file(
            &format!("{key}.password"),
            r.password.unwrap_or_else(|| SecretString::from("")),
            &r.password_file,
        )?;
        out.push(RelaySettings {
            weight: in_range(&format!("{key}.weight"), r.weight, 1, 1000)?,
            concurrency: match r.concurrency {
                Some(c) => in_range(&format!("{key}.concurrency"), c, 1, 64)?,
                None => concurrency,
            },
            rate_per_second: (r.rate_per_second > 0.0).then_some(r.rate_per_second),
            rate_per_hour: (r.rate_per_hour > 0).then_some(r.rate_per_hour),
            username: Some(r.username.trim().to_owned()).filter(|u| !u.is_empty()),
            password: (!password.expose_secret().is_empty()).then_some(password),
            url: r.url,
            name,
            key,
        });
    }
    Ok(out)
}

fn secret_or_file(
    key: &str,
    value: SecretString,
    file: &Path,
) -> Result<SecretString, ConfigError> {
    if file.as_os_str().is_empty() {
        return Ok(value);
    }
    if !value.expose_secret().is_empty() {
        return Err(ConfigError::new(
            key,
            format!("set {key} or {key}_file, not both"),
        ));
    }
    Ok(SecretString::from(read_secret_file(key, file)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_are_valid() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.newsletter.name, "Backend Tips");
        assert_eq!(s.delivery.transport, TransportKind::File);
        assert_eq!(s.schedule.grace, Duration::from_secs(6 * 3600));
        assert_eq!(s.delivery.rate_per_second, None);
        // Nobody chose this database: errors reaching it say how to choose one.
        assert!(s.database.url_is_default);
        let chosen =
            Settings::from_toml("[database]\nurl = \"postgres://u@db.example.com/x\"").unwrap();
        assert!(!chosen.database.url_is_default);
    }

    #[test]
    fn the_retry_bounds_themselves_are_accepted() {
        for toml in [
            "[delivery]\nretry_base = \"1s\"\ngive_up_after = \"0s\"",
            "[delivery]\nretry_base = \"6h\"\ngive_up_after = \"1y\"",
            "[delivery]\ngive_up_after = \"12M\"",
        ] {
            assert!(Settings::from_toml(toml).is_ok(), "{toml}");
        }
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let cases = [
            (
                "[delivery]\nconcurrency = 0",
                "config: delivery.concurrency: 0 is out of range",
            ),
            (
                "[delivery]\nconcurrency = \"lots\"",
                "config: delivery.concurrency: invalid type",
            ),
            (
                "[schedule]\ntimezone = \"Mars/Olympus\"",
                "config: schedule.timezone: 'Mars/Olympus'",
            ),
            (
                "[schedule]\ngrace = \"soon\"",
                "config: schedule.grace: 'soon' is not a duration",
            ),
            (
                "[delivery]\nretry_base = \"100000000y\"",
                "config: delivery.retry_base: '100000000y' is out of range (1s to 6h)",
            ),
            (
                "[delivery]\nretry_base = \"0s\"",
                "config: delivery.retry_base: '0s' is out of range (1s to 6h)",
            ),
            (
                "[delivery]\ngive_up_after = \"5000000y\"",
                "config: delivery.give_up_after: '5000000y' is out of range (0s to 366d)",
            ),
            (
                "[delivery]\nlease = \"0s\"",
                "config: delivery.lease: '0s' is too short (at least 1s)",
            ),
            (
                "[delivery]\nlease = \"500ms\"",
                "config: delivery.lease: '500ms' is too short (at least 1s)",
            ),
            (
                "[schedule]\ncron = \"0 9 * * FUNDAY\"",
                "config: schedule.cron: day-of-week field 'FUNDAY'",
            ),
            (
                "[newsletter]\nfrom = \"nobody\"",
                "config: newsletter.from: 'nobody'",
            ),
            (
                "[delivery]\ntransport = \"pigeon\"",
                "config: delivery.transport: unknown variant",
            ),
            (
                "[smtp]\nurl = \"http://user:hunter2@x\"",
                "config: smtp.url: not an smtp://",
            ),
            (
                "[smtp]\nport = 25",
                "config: smtp.port: unknown key; the keys here are",
            ),
            (
                "[delivery]\nconcurency = 3",
                "config: delivery.concurency: unknown key; did you mean `concurrency`?",
            ),
            (
                "[smtp]\nurl = \"smtp://user:hunter2@relay.example.com:587?tls=sometimes\"",
                "config: smtp.url: tls=sometimes: expected tls=required, tls=opportunistic or tls=none",
            ),
            (
                "[smtp]\nurl = \"smtps://user:hunter2@relay.example.com?tls=required\"",
                "config: smtp.url: smtps:// is TLS from the first byte",
            ),
            (
                "[smtp]\nurl = \"smtp://relay.example.com?secret=hunter2\"",
                "config: smtp.url: an unknown parameter after `?`",
            ),
            (
                "[bounces]\ncomplaint_senders = [\"fbl.example-isp.net\", \"isp dot net\"]",
                "config: bounces.complaint_senders: 'isp dot net' is not a domain name like fbl.example-isp.net",
            ),
            (
                "[bounces]\ncomplaint_senders = [\"-bad.example.net\"]",
                "config: bounces.complaint_senders: '-bad.example.net' is not a domain name",
            ),
            (
                "[bounces]\ncomplaint_senders = [\"localhost\"]",
                "config: bounces.complaint_senders: 'localhost' is not a domain name",
            ),
            (
                "[bounces]\ncomplaint_senders = [\"10.0.0.1\"]",
                "config: bounces.complaint_senders: '10.0.0.1' is not a domain name",
            ),
            (
                "[bounces]\ncomplaint_senders = \"fbl.example-isp.net\"",
                "config: bounces.complaint_senders: invalid type",
            ),
            (
                "[bounces]\ndns_server = \"dns.example.net:53\"",
                "config: bounces.dns_server: 'dns.example.net:53' is not an address:port like 127.0.0.1:53",
            ),
        ];
        for (toml, want) in cases {
            let err = Settings::from_toml(toml).unwrap_err().to_string();
            assert!(err.starts_with(want), "{toml}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn complaint_senders_and_the_dns_server_are_normalised() {
        let s = Settings::from_toml("").unwrap();
        assert!(s.bounces.complaint_senders.is_empty());
        assert_eq!(s.bounces.dns_server, None);
        let s = Settings::from_toml(
            "[bounces]\ncomplaint_senders = [\" FBL.Example-ISP.net. \", \"xn--bcher-kva.example\"]\n\
             dns_server = \"127.0.0.1:5353\"",
        )
        .unwrap();
        assert_eq!(
            s.bounces.complaint_senders,
            ["fbl.example-isp.net", "xn--bcher-kva.example"]
        );
        assert_eq!(
            s.bounces.dns_server,
            Some("127.0.0.1:5353".parse().unwrap())
        );
        for (raw, want) in [("::1", "[::1]:53"), ("[::1]:5300", "[::1]:5300")] {
            let s = Settings::from_toml(&format!("[bounces]\ndns_server = \"{raw}\"")).unwrap();
            assert_eq!(s.bounces.dns_server, Some(want.parse().unwrap()), "{raw}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DIGESTIF_DELIVERY__TRANSPORT", "smtp");
            jail.set_env("DIGESTIF_SMTP__URL", "smtp://mail.example.com:587");
            jail.set_env("DATABASE_URL", "postgres://u@db.example.com/x");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.delivery.transport, TransportKind::Smtp);
            assert_eq!(s.smtp.url.expose_secret(), "smtp://mail.example.com:587");
            assert_eq!(
                s.database.url.expose_secret(),
                "postgres://u@db.example.com/x"
            );
            jail.set_env("DIGESTIF_DELIVERY__CONCURRENCY", "500");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.starts_with("config: delivery.concurrency: 500 is out of range"),
                "{err}"
            );
            // A typo'd variable is named as it was typed, not as figment's path.
            jail.set_env("DIGESTIF_DELIVERY__CONCURRENCY", "5");
            jail.set_env("DIGESTIF_DELIVERY__CONCURENCY", "5");
            let err = Settings::load(None).unwrap_err().to_string();
            assert_eq!(
                err,
                "config: delivery.concurency: unknown key; did you mean `concurrency`? \
                 (set in DIGESTIF_DELIVERY__CONCURENCY)"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn a_file_that_is_not_toml_is_one_line_naming_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[delivery\nconcurrency = 3\n")?;
            let err = Settings::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(
                err.starts_with("config: ")
                    && err.contains("bad.toml: line 1, column 10: invalid table header"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn hooks_are_off_until_configured_and_checked_when_they_are() {
        let s = Settings::from_toml("").unwrap();
        assert!(s.hooks.ses.is_none() && s.hooks.postmark.is_none() && s.hooks.mailgun.is_none());
        assert!(s.hooks.sendgrid.is_none() && s.hooks.generic.is_none());
        let key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9q9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==";
        let s = Settings::from_toml(&format!(
            "[hooks]\nses_topic_arns = [\"arn:aws:sns:eu-west-1:123456789012:ses-bounces\"]\n\
             sendgrid_public_key = \"{key}\"\npostmark_username = \"pm\"\n\
             postmark_password = \"hunter2\"\nmailgun_signing_key = \"hunter3\""
        ))
        .unwrap();
        assert_eq!(s.hooks.sendgrid.as_ref().map(Vec::len), Some(65));
        assert!(s.hooks.ses.is_some() && s.hooks.postmark.is_some() && s.hooks.mailgun.is_some());
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("hunter3"),
            "{dbg}"
        );
        for (toml, want) in [
            (
                "[hooks]\nses_topic_arns = [\"arn:aws:s3:::bucket\"]",
                "config: hooks.ses_topic_arns: 'arn:aws:s3:::bucket' is not an SNS topic ARN",
            ),
            (
                "[hooks]\nsendgrid_public_key = \"hunter2\"",
                "config: hooks.sendgrid_public_key: not a P-256 public key",
            ),
            (
                "[hooks]\npostmark_password = \"hunter2\"",
                "config: hooks.postmark_username: must be set with hooks.postmark_password",
            ),
            (
                "[hooks]\ngeneric_secret = \"hunter2\"",
                "config: hooks.generic_secret: must be at least 32 characters",
            ),
        ] {
            let err = Settings::from_toml(toml).unwrap_err().to_string();
            assert!(err.starts_with(want), "{toml}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_bounce_mailbox_is_off_until_its_url_is_set_and_then_checked() {
        assert!(Settings::from_toml("").unwrap().inbound.imap.is_none());
        let mailbox = |extra: &str| {
            Settings::from_toml(&format!(
                "[inbound]\nimap_user = \"b\"\nimap_password = \"hunter2\"\n{extra}"
            ))
            .map(|s| s.inbound.imap.expect("a mailbox"))
        };
        for (url, port, tls) in [
            ("imaps://mail.example.com", 993, ImapTls::Implicit),
            ("imap://mail.example.com", 143, ImapTls::StartTls),
            ("imap://mail.example.com:1143?tls=none", 1143, ImapTls::None),
            ("imap://127.0.0.1", 143, ImapTls::None),
            ("imap://[::1]:10143", 10143, ImapTls::None),
            ("imap://localhost?tls=required", 143, ImapTls::StartTls),
        ] {
            let m = mailbox(&format!("imap_url = \"{url}\"")).unwrap();
            assert_eq!((m.port, m.tls), (port, tls), "{url}");
        }
        let m = mailbox("imap_url = \"imap://[::1]:10143\"").unwrap();
        assert_eq!(m.host, "::1");
        assert_eq!(m.mailbox(), "imap://[::1]:10143/INBOX (b)");
        let m = mailbox("imap_url = \"imaps://mail.example.com\"").unwrap();
        assert_eq!(m.mailbox(), "imaps://mail.example.com:993/INBOX (b)");
        assert_eq!(
            (m.folder.as_str(), m.processed_folder.as_str()),
            ("INBOX", "processed")
        );
        assert!(!format!("{m:?}").contains("hunter2"));

        let url = "imap_url = \"imaps://mail.example.com\"\n";
        for (extra, want) in [
            (
                "imap_url = \"imaps://b:hunter2@mail.example.com\"".to_owned(),
                "config: inbound.imap_url: no credentials in the URL",
            ),
            (
                "imap_url = \"pop3://mail.example.com\"".to_owned(),
                "config: inbound.imap_url: not an imap:// or imaps:// URL",
            ),
            (
                "imap_url = \"imap://mail.example.com/Bounces\"".to_owned(),
                "config: inbound.imap_url: no folder in the URL",
            ),
            (
                "imap_url = \"imap://mail.example.com?tls=maybe\"".to_owned(),
                "config: inbound.imap_url: tls=maybe: expected tls=required (STARTTLS) or tls=none",
            ),
            (
                "imap_url = \"imaps://mail.example.com?tls=none\"".to_owned(),
                "config: inbound.imap_url: imaps:// is TLS from the first byte",
            ),
            (
                format!("{url}processed_folder = \"inbox\""),
                "config: inbound.processed_folder: must differ from inbound.folder",
            ),
            (
                format!("{url}folder = \"Entwürfe\""),
                "config: inbound.folder: 'Entwürfe' is not a folder name in printable ASCII",
            ),
            (
                format!("{url}poll_interval = \"0s\""),
                "config: inbound.poll_interval: must be more than zero",
            ),
            (
                format!("{url}max_message_bytes = 10"),
                "config: inbound.max_message_bytes: 10 is out of range",
            ),
        ] {
            let err = mailbox(&extra).unwrap_err().to_string();
            assert!(err.starts_with(want), "{extra}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // A password that would end the LOGIN command and start another.
        let err = Settings::from_toml(
            "[inbound]\nimap_url = \"imaps://m.example.com\"\nimap_user = \"b\"\n\
             imap_password = \"hunter2\\r\\nA1 DELETE INBOX\"",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "config: inbound.imap_password: contains a line break (not shown)"
        );
        let err = Settings::from_toml("[inbound]\nimap_url = \"imaps://m.example.com\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config: inbound.imap_user: must be"),
            "{err}"
        );
        let err = Settings::from_toml(
            "[inbound]\nimap_url = \"imaps://m.example.com\"\nimap_user = \"b\"",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config: inbound.imap_password: must be set"),
            "{err}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn the_mailbox_password_may_come_from_a_file_named_in_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("imap-password", "84736251\n")?;
            jail.set_env("DIGESTIF_INBOUND__IMAP_URL", "imaps://mail.example.com");
            jail.set_env("DIGESTIF_INBOUND__IMAP_USER", "bounces");
            jail.set_env("DIGESTIF_INBOUND__IMAP_PASSWORD_FILE", "imap-password");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            let m = s.inbound.imap.expect("a mailbox");
            assert_eq!(m.password.expose_secret(), "84736251");
            Ok(())
        });
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings::from_toml(
            "[smtp]\npassword = \"hunter2\"\n[http]\ntoken_secret = \"s3cr3t-token-that-is-long-enough-for-hmac\"",
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("s3cr3t-token-that-is-long-enough-for-hmac"),
            "{dbg}"
        );
    }
}
