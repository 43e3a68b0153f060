//! Trusting a relay's certificate: the system trust store, `smtp.ca_file`, and what
//! `?tls=opportunistic` does with a certificate nobody can verify (encrypt anyway, but only when
//! no password goes out, and say so), against our STARTTLS test server and its private CA.

use sqlx::PgPool;

use crate::helpers::{Digestif, seed};
use crate::smtp_server::{Policy, SmtpServer, TestCa};

fn digestif(pool: &PgPool, server: &SmtpServer, tls: &str) -> Digestif {
    Digestif::new(pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &format!("{}?tls={tls}", server.url()))
        .env("DIGESTIF_SMTP__TIMEOUT", "5s")
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING)
}

/// `doctor`'s line about the SMTP check when it failed, else "".
fn smtp_failure(doctor: &str) -> String {
    doctor
        .lines()
        .find(|l| l.starts_with("FAIL  smtp"))
        .unwrap_or_default()
        .to_owned()
}

/// Debian's snakeoil certificate on port 25, the case `tls=opportunistic` is for.
#[sqlx::test]
async fn opportunistic_without_credentials_encrypts_to_an_unverifiable_relay_and_says_so(
    pool: PgPool,
) {
    let ca = TestCa::new();
    let server = SmtpServer::start(Policy::default().starttls(&ca)).await;
    seed(&pool, 3).await;
    let send = digestif(&pool, &server, "opportunistic")
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("sent 3,"), "{send}");
    assert_eq!(server.accepted().len(), 3);
    assert!(server.tls_sessions() >= 1, "encrypted all the same");
    assert!(
        send.stderr().contains("cannot be verified"),
        "the log says the certificate was not verified: {send}"
    );
}

#[sqlx::test]
async fn opportunistic_with_credentials_never_sends_them_to_an_unverifiable_relay(pool: PgPool) {
    let ca = TestCa::new();
    let server = SmtpServer::start(
        Policy::default()
            .starttls(&ca)
            .require_auth("mailer", "pw", "PLAIN"),
    )
    .await;
    let doctor = digestif(&pool, &server, "opportunistic")
        .env("DIGESTIF_SMTP__USERNAME", "mailer")
        .env("DIGESTIF_SMTP__PASSWORD", "pw")
        .run_async(&["doctor"])
        .await;
    assert_eq!(doctor.output.status.code(), Some(1), "{doctor}");
    let line = smtp_failure(&doctor.stdout());
    assert!(
        line.contains("certificate") && line.contains("smtp.ca_file"),
        "doctor names the cause and the fix: {doctor}"
    );
    assert!(server.logins().is_empty(), "no password went out");
}

/// The system's trust store counts besides the public roots: a CA installed the Debian way
/// (here through `SSL_CERT_FILE`, which the system store honours) is trusted without
/// `smtp.ca_file`.
#[sqlx::test]
async fn a_ca_in_the_system_trust_store_is_trusted(pool: PgPool) {
    let ca = TestCa::new();
    let server = SmtpServer::start(Policy::default().starttls(&ca)).await;
    seed(&pool, 1).await;
    let send = digestif(&pool, &server, "required")
        .env("SSL_CERT_FILE", &ca.ca_file())
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("sent 1,"), "{send}");
    assert!(!send.stderr().contains("cannot be verified"), "{send}");
}

/// Postfix's `reject_non_fqdn_helo_hostname` refuses a bare container host name: the EHLO
/// name is `smtp.helo_name`, else the host name when it is fully qualified, else the From
/// address's domain; and every session ends with QUIT.
#[sqlx::test]
async fn the_ehlo_name_is_fully_qualified_and_every_session_ends_with_quit(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 6).await;
    let ehlo_names = |server: &SmtpServer| -> Vec<String> {
        server
            .commands()
            .iter()
            .filter_map(|c| c.strip_prefix("EHLO ").map(str::to_owned))
            .collect()
    };
    let send = digestif(&pool, &server, "none")
        .env("DIGESTIF_DELIVERY__CONCURRENCY", "2")
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("sent 6,"), "{send}");
    let names = ehlo_names(&server);
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n.contains('.')), "{names:?}");
    let quits = server.commands().iter().filter(|c| *c == "QUIT").count();
    assert_eq!(quits, server.sessions(), "{:?}", server.commands());

    let named = SmtpServer::start(Policy::default()).await;
    let web = crate::web::App::start(&pool, "").await;
    let doctor = digestif(&pool, &named, "none")
        .links_to(&web)
        .env("DIGESTIF_SMTP__HELO_NAME", "mta1.news.example.com")
        .run_async(&["doctor"])
        .await;
    assert!(doctor.output.status.success(), "{doctor}");
    assert!(
        ehlo_names(&named)
            .iter()
            .all(|n| n == "mta1.news.example.com"),
        "{:?}",
        named.commands()
    );
    Digestif::new(&pool)
        .env("DIGESTIF_SMTP__HELO_NAME", "not a name")
        .config_fails(
            &["subscribers", "list"],
            "config: smtp.helo_name: 'not a name' is not a host name",
        );
}

/// What the operator reads says each thing once: the relay's reply as the relay gave it, a
/// refused connection without "Connection error: Connection error:".
#[sqlx::test]
async fn replies_and_connection_failures_read_as_one_clean_line(pool: PgPool) {
    let server =
        SmtpServer::start(Policy::default().data(|_, _| {
            crate::smtp_server::DataAction::Reply("554 5.7.1 message content rejected")
        }))
        .await;
    seed(&pool, 1).await;
    let send = digestif(&pool, &server, "none")
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("failed 1"), "{send}");
    let error: String = sqlx::query_scalar("SELECT last_error FROM delivery")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(error, "554 5.7.1 message content rejected");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let doctor = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &format!("smtp://127.0.0.1:{port}"))
        .run_async(&["doctor"])
        .await;
    let line = smtp_failure(&doctor.stdout());
    assert_eq!(
        line.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{doctor}"
    );
    assert!(!line.contains("Connection error"), "{line}");
}

/// `issue test-send` to a subscriber sends their own copy (links that work for them); to
/// anyone else, a copy whose links name no subscriber, and it says which.
#[sqlx::test]
async fn test_send_uses_the_subscribers_own_links_or_says_they_change_nothing(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 1).await;
    let d = digestif(&pool, &server, "none");
    let own = d
        .run_async(&["issue", "test-send", "--to", "user1@example.com"])
        .await;
    assert!(own.stdout().contains("their own copy"), "{own}");
    let other = d
        .run_async(&["issue", "test-send", "--to", "boss@example.org"])
        .await;
    assert!(other.stdout().contains("not a subscriber"), "{other}");
    let mails = server.accepted();
    assert_eq!(mails.len(), 2);
    let keys =
        digestif::digest::token_keys(&digestif::config::Settings::from_toml("").unwrap(), &pool)
            .await
            .unwrap();
    let token = keys.sign(digestif::domain::Purpose::Unsubscribe, 1);
    let first = String::from_utf8_lossy(&mails[0].data).into_owned();
    assert!(first.contains(&token), "user1's own link");
    assert!(first.contains("Hi User 1,"), "{first}");
}

/// `smtps://` (port 465): TLS from the first byte over our own socket (with TCP_NODELAY, as
/// `smtp://` has), verified against `smtp.ca_file`, and AUTH inside it; without the CA nothing
/// goes out and no password is sent.
#[sqlx::test]
async fn smtps_with_a_private_ca_delivers_over_implicit_tls(pool: PgPool) {
    let ca = TestCa::new();
    let server = SmtpServer::start(Policy::default().implicit_tls(&ca).require_auth(
        "mailer",
        "over tls",
        "PLAIN LOGIN",
    ))
    .await;
    seed(&pool, 3).await;
    let smtps = server.url().replace("smtp://", "smtps://");
    let d = || {
        Digestif::new(&pool)
            .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
            .env("DIGESTIF_SMTP__URL", &smtps)
            .env("DIGESTIF_SMTP__USERNAME", "mailer")
            .env("DIGESTIF_SMTP__PASSWORD", "over tls")
            .env("DIGESTIF_SMTP__TIMEOUT", "5s")
            .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING)
    };
    let untrusted = d().run_async(&["doctor"]).await;
    assert!(
        smtp_failure(&untrusted.stdout()).contains("certificate"),
        "{untrusted}"
    );
    assert!(server.logins().is_empty());
    // The refused handshake was a session that never became TLS.
    let refused = server.sessions() - server.tls_sessions();

    let send = d()
        .env("DIGESTIF_SMTP__CA_FILE", &ca.ca_file())
        .run_async(&["issue", "send", "--now"])
        .await;
    assert!(send.stdout().contains("sent 3,"), "{send}");
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 3, "{send}");
    let logins = server.logins();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l.ends_with(" mailer")),
        "{logins:?}"
    );
    assert_eq!(
        server.sessions() - server.tls_sessions(),
        refused,
        "every later session was TLS"
    );
}
