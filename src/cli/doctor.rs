//! `digestif doctor`: one line per check (config, database, link secret, transport, DKIM, the
//! bounce mailbox), the DNS records to publish, and SPF/DMARC reminders. Exit code 1 when any
//! check fails.

use anyhow::bail;

use super::output::{Output, print_json};
use crate::config::{Settings, TransportKind};
use crate::send::Mailer;
use crate::send::dkim::Signer;
use crate::store;

/// The checks' lines: printed as they come for people, or collected into one JSON object
/// (`{"ok": bool, "checks": [{"status": "ok|fail|note|dns", "check": …, "fix": …}]}`).
struct Report {
    failed: usize,
    json: Option<Vec<serde_json::Value>>,
}

impl Report {
    fn new(format: Output) -> Self {
        Self {
            failed: 0,
            json: (format == Output::Json).then(Vec::new),
        }
    }

    fn line(&mut self, status: &str, what: &str, fix: Option<&str>) {
        match &mut self.json {
            Some(lines) => lines.push(serde_json::json!({
                "status": status,
                "check": what,
                "fix": fix,
            })),
            None => match fix {
                Some(fix) => println!("{:<5} {what}: {fix}", status.to_uppercase()),
                None => println!("{status:<5} {what}"),
            },
        }
    }

    fn ok(&mut self, what: &str) {
        self.line("ok", what, None);
    }

    fn fail(&mut self, what: &str, fix: &str) {
        self.failed += 1;
        self.line("fail", what, Some(fix));
    }

    fn note(&mut self, what: &str) {
        self.line("note", what, None);
    }

    /// The last word: the JSON object, or the text summary; an error when a check failed.
    fn finish(self) -> anyhow::Result<()> {
        if let Some(checks) = self.json {
            print_json(&serde_json::json!({ "ok": self.failed == 0, "checks": checks }))?;
        } else if self.failed == 0 {
            println!("all checks passed");
        }
        if self.failed > 0 {
            bail!(
                "{} check{} failed",
                self.failed,
                if self.failed == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }
}

/// `doctor --postfix`: the Postfix lines that hand the bounce address (every VERP and
/// unsubscribe tag on it) to `digestif inbound`, filled in for this installation. Postfix runs
/// the pipe with an empty environment, so everything must come from `--config`.
pub fn postfix_recipe(settings: &Settings, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .map_or_else(
            || "/usr/local/bin/digestif".to_owned(),
            |p| p.display().to_string(),
        );
    let config_path = config.and_then(|p| p.canonicalize().ok()).map_or_else(
        || "/etc/digestif/digestif.toml".to_owned(),
        |p| p.display().to_string(),
    );
    let bounce = &settings.bounces.address;
    println!(
        "# /etc/postfix/main.cf: tags after '+' reach the base address; one recipient per pipe run
recipient_delimiter = +
transport_maps = hash:/etc/postfix/transport
digestif_destination_recipient_limit = 1

# /etc/postfix/transport (then: postmap /etc/postfix/transport)
{bounce}    digestif:

# /etc/postfix/master.cf (then: postfix reload)
digestif  unix  -       n       n       -       -       pipe
  flags=Rq user=digestif argv={binary} --config {config_path} inbound --recipient ${{recipient}}"
    );
    if config.is_none() {
        println!(
            "\n# note: no --config was given; the pipe needs one: put database.url and the other settings in {config_path}, readable by the user digestif"
        );
    }
    if std::env::var_os("DATABASE_URL").is_some()
        || std::env::var_os("DIGESTIF_DATABASE__URL").is_some()
        || std::env::var_os("DIGESTIF_DATABASE__URL_FILE").is_some()
    {
        println!(
            "\n# note: the database URL comes from the environment here, which the pipe does not see: set database.url in the config file (a Unix-socket URL such as postgres:///digestif?host=/var/run/postgresql needs no password)"
        );
    }
    Ok(())
}

/// Prints the configuration failure as a check line (doctor runs even when the config is bad).
pub fn config_failed(e: &dyn std::fmt::Display, format: Output) -> anyhow::Error {
    let mut r = Report::new(format);
    let e = e.to_string();
    r.fail("config", e.strip_prefix("config: ").unwrap_or(&e));
    r.finish()
        .err()
        .unwrap_or_else(|| anyhow::anyhow!("1 check failed"))
}

/// What to do about an SMTP failure, from lettre's error text.
fn smtp_hint(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("certificate") {
        "the relay's certificate cannot be verified: if an internal CA signed it, set smtp.ca_file to that CA's certificate (PEM) or install it in the system trust store; a self-signed relay on a trusted network can be used with ?tls=opportunistic and no credentials"
    } else if e.contains("password over a connection without tls") {
        "credentials would cross the network in the clear: use smtps:// or STARTTLS, or set smtp.allow_plaintext_auth = true for a relay on a trusted network"
    } else if e.contains("auth") || e.contains("535") {
        "authentication failed: check smtp.username and smtp.password"
    } else if e.contains("starttls") || e.contains("tls") {
        "TLS failed or STARTTLS is not offered: use smtps:// or a relay that offers STARTTLS"
    } else if e.contains("refused") {
        "nothing listens there: check the host and port in smtp.url"
    } else if e.contains("no answer") || e.contains("timed out") || e.contains("timeout") {
        "no answer in time: check the host, the port and any firewall"
    } else {
        "check smtp.url"
    }
}

/// The links in every message (one-click unsubscribe, confirmation) lead to
/// `newsletter.base_url`: something there must be a digestif that reaches its database, or
/// every unsubscribe fails. `/healthz` answers exactly that.
async fn web_check(r: &mut Report, settings: &Settings) {
    let url = format!(
        "{}/healthz",
        settings.newsletter.base_url.as_str().trim_end_matches('/')
    );
    let fix = "unsubscribe and confirmation links in sent mail would not work: run `digestif serve` \
               (or digestif-web.service, `serve --no-schedule`, beside a timer or cron job) \
               and point newsletter.base_url at it";
    let answer = match crate::fetch::client(WEB_TIMEOUT) {
        Ok(client) => crate::fetch::get(&client, &url, 4096).await,
        Err(e) => Err(format!("{e:#}")),
    };
    match answer {
        Ok(a) if a.status == 200 && a.body.starts_with(crate::http::HEALTHY) => r.ok(&format!(
            "web: {url} answers: a digestif that reaches its database"
        )),
        Ok(a) if a.status == 503 => r.fail(
            &format!("web: {url}"),
            &format!(
                "answered 503 ({}): the digestif serving the links is not ready",
                crate::domain::on_terminal(&a.body.trim().chars().take(120).collect::<String>())
            ),
        ),
        Ok(a) => r.fail(
            &format!("web: {url}"),
            &format!("answered {} but not as digestif does; {fix}", a.status),
        ),
        Err(e) => r.fail(
            &format!("web: {url}"),
            &format!("{}; {fix}", crate::domain::on_terminal(&e)),
        ),
    }
}

/// How long doctor waits for the pages behind `newsletter.base_url`.
const WEB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs every check.
pub async fn run(settings: &Settings, format: Output) -> anyhow::Result<()> {
    let mut r = Report::new(format);
    r.ok("config: every value parses");

    let pool = match store::connect_current(&settings.database).await {
        Ok(pool) => {
            r.ok("database: reachable, schema up to date");
            Some(pool)
        }
        Err(e) => {
            r.fail("database", &format!("{e:#}"));
            None
        }
    };
    if let Some(pool) = &pool {
        match crate::digest::token_keys(settings, pool).await {
            Ok(_) => match settings.http.previous_token_secrets.len() {
                0 => r.ok("link tokens: a signing secret is available"),
                n => r.ok(&format!(
                    "link tokens: a signing secret is available; links signed with {n} previous secret{} still verify",
                    if n == 1 { "" } else { "s" }
                )),
            },
            Err(e) => r.fail("link tokens", &format!("{e:#}")),
        }
        // A broken feed is not a broken install (its articles are missed, the issue still
        // goes out): a note with its stored error, not a failed check.
        match crate::store::feeds::list(pool).await {
            Ok(feeds) => {
                let failing: Vec<_> = feeds.iter().filter(|f| f.failures > 0).collect();
                if !feeds.is_empty() && failing.is_empty() {
                    r.ok(&format!(
                        "feeds: {} feed{}, the last fetch of each worked",
                        feeds.len(),
                        if feeds.len() == 1 { "" } else { "s" }
                    ));
                }
                for f in failing {
                    r.note(&format!(
                        "feeds: feed {} ({}) failed {} time{} in a row: {}",
                        f.feed_id,
                        f.url,
                        f.failures,
                        if f.failures == 1 { "" } else { "s" },
                        f.last_status.as_deref().unwrap_or("no error recorded")
                    ));
                }
            }
            Err(e) => r.fail("feeds", &format!("{e:#}")),
        }
    }

    let signer = match Signer::load(&settings.dkim) {
        Ok(Some(s)) => {
            r.ok(&format!(
                "dkim: key {} loads",
                settings.dkim.key_file.display()
            ));
            let from = settings.newsletter.from.email.domain();
            let from = idna::domain_to_ascii(from).unwrap_or_else(|_| from.to_owned());
            if !same_organisation(&settings.dkim.domain, &from) {
                r.note(&format!(
                    "dkim: d={} is not the From address's domain {from} nor of its organisation: DMARC passes only if SPF aligns (RFC 7489 §3.1; set dkim.domain to {from})",
                    settings.dkim.domain
                ));
            }
            Some(s)
        }
        Ok(None) => {
            r.note("dkim: disabled; Gmail and Yahoo reject or junk bulk mail without DKIM (set dkim.enabled)");
            None
        }
        Err(e) => {
            r.fail("dkim", &format!("{e:#}"));
            None
        }
    };

    // The transport is checked without DKIM, so a broken key (reported above) does not hide
    // the state of the connection.
    let mut bare = settings.clone();
    bare.dkim.enabled = false;
    let what = match settings.delivery.transport {
        TransportKind::File => format!(
            "transport: file, into {}/ (writable)",
            settings.delivery.outbox.display()
        ),
        TransportKind::Smtp if settings.smtp.relays.len() > 1 => format!(
            "smtp: {} relays connected ({}), EHLO, TLS as configured",
            settings.smtp.relays.len(),
            settings
                .smtp
                .relays
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TransportKind::Smtp => format!(
            "smtp: connected, EHLO{}, TLS as configured",
            if settings.smtp.username.is_some() {
                ", AUTH"
            } else {
                ""
            }
        ),
    };
    match Mailer::from_settings(&bare) {
        Ok(m) => match m.check().await {
            Ok(()) => r.ok(&what),
            Err(e) => {
                let text = format!("{e:#}");
                match settings.delivery.transport {
                    TransportKind::Smtp => {
                        r.fail("smtp", &format!("{text} ({})", smtp_hint(&text)))
                    }
                    TransportKind::File => r.fail("transport", &text),
                }
            }
        },
        Err(e) => r.fail("transport", &format!("{e:#}")),
    }

    web_check(&mut r, settings).await;
    if settings.newsletter.base_url.scheme() != "https" {
        r.note(&format!(
            "newsletter.base_url is {}: one-click unsubscribe needs an https URL in production",
            settings.newsletter.base_url
        ));
    }
    let b = &settings.bounces;
    match (b.verp, b.complaint_senders.is_empty()) {
        (_, false) => r.ok(&format!(
            "complaints: counted with our VERP tag, or DKIM-verified from {} (keys looked up via {})",
            b.complaint_senders.join(", "),
            b.dns_server
                .map_or_else(|| "/etc/resolv.conf".to_owned(), |a| a.to_string())
        )),
        (true, true) => r.note(
            "complaints: only VERP-tagged reports count; list your feedback loops' domains in bounces.complaint_senders to accept theirs",
        ),
        (false, true) => r.note(
            "complaints: bounces.verp is off and bounces.complaint_senders is empty, so no complaint will ever count",
        ),
    }
    if let Some(imap) = &settings.inbound.imap {
        match crate::inbound::imap::check(imap).await {
            Ok(what) => r.ok(&format!("bounce mailbox: {}: {what}", imap.mailbox())),
            Err(e) => r.fail(&format!("bounce mailbox: {}", imap.mailbox()), &e),
        }
    }
    let h = &settings.http;
    if h.signup && h.listen.ip().is_loopback() && h.trusted_proxies.is_empty() {
        r.note(&format!(
            "http: the sign-up form is on and serve listens on {}, so a reverse proxy is likely in front; \
             without http.trusted_proxies every visitor counts as that proxy and shares one sign-up limit",
            h.listen
        ));
    }
    if let Some(s) = &signer {
        for (name, value) in s.dns_records() {
            r.line("dns", &format!("{name}. IN TXT \"{value}\""), None);
        }
    }
    let domain = settings.newsletter.from.email.domain();
    r.note(&format!(
        "SPF: {domain} needs a TXT record that allows your relay, e.g. \"v=spf1 include:<your relay> -all\""
    ));
    r.note(&format!(
        "DMARC: publish _dmarc.{domain} TXT \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\", then tighten p= once reports are clean"
    ));
    r.finish()
}

/// Whether two domains are one organisation's for DMARC's relaxed alignment, roughly: the same
/// last two labels. Without the public suffix list `a.co.uk` and `b.co.uk` pass too; that only
/// misses a note, never makes a wrong one.
fn same_organisation(a: &str, b: &str) -> bool {
    let org = |d: &str| -> String {
        // In one form: a From domain may be written in Unicode, d= is in ASCII.
        let d = d.trim_end_matches('.');
        let d = idna::domain_to_ascii(d).unwrap_or_else(|_| d.to_ascii_lowercase());
        let labels: Vec<&str> = d.rsplitn(3, '.').collect();
        labels
            .iter()
            .take(2)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join(".")
    };
    org(a) == org(b)
}
