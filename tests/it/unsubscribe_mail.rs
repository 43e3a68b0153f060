//! Unsubscribing by mail: the List-Unsubscribe mailto address is a tagged form of the bounce
//! mailbox (`bounces+u.<tag>@…`) that the bounce pipe (`digestif inbound`) handles, so a mail
//! client's unsubscribe works without piping the From address, which people reply to.

use sqlx::PgPool;

use crate::helpers::{Digestif, seed};
use crate::smtp_server::{Policy, SmtpServer};

#[sqlx::test]
async fn the_mailto_in_a_delivered_message_unsubscribes_through_the_bounce_pipe(pool: PgPool) {
    let server = SmtpServer::start(Policy::default()).await;
    seed(&pool, 2).await;
    let d = Digestif::new(&pool)
        .env("DIGESTIF_DELIVERY__TRANSPORT", "smtp")
        .env("DIGESTIF_SMTP__URL", &server.url())
        .env("DIGESTIF_NOW", crate::helpers::MONDAY_MORNING);
    let send = d.run_async(&["issue", "send", "--now"]).await;
    assert!(send.stdout().contains("sent 2,"), "{send}");
    let mailto = |rcpt: &str| -> String {
        let mail = server
            .accepted()
            .into_iter()
            .find(|a| a.rcpt == rcpt)
            .expect("delivered");
        let msg = mail_parser::MessageParser::default()
            .parse(&mail.data)
            .expect("parses");
        let header: String = msg
            .header_raw("List-Unsubscribe")
            .expect("List-Unsubscribe")
            .split_whitespace()
            .collect();
        let addr = header
            .split("<mailto:")
            .nth(1)
            .and_then(|m| m.split(['?', '>']).next())
            .expect("a mailto")
            .to_owned();
        assert!(addr.starts_with("bounces+u."), "{header}");
        addr
    };
    let status = |email: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM subscriber WHERE email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let request = |to: &str| {
        format!(
            "From: someone@example.org\r\nTo: {to}\r\nSubject: unsubscribe\r\n\r\nPlease remove me.\r\n"
        )
    };

    // The address of user2's copy with one character changed: forged, nothing happens.
    let real = mailto("user2@example.com");
    let forged = real.replacen("u.", "u.0", 1);
    let out = d.run_with_stdin(
        &["inbound", "--recipient", &forged],
        request(&forged).as_bytes(),
    );
    assert!(out.output.status.success(), "{out}");
    assert_eq!(status("user2@example.com").await, "active", "{out}");

    // As Postfix pipes it: the envelope recipient is the tagged address.
    let out = d.run_with_stdin(
        &["inbound", "--recipient", &real],
        request(&real).as_bytes(),
    );
    assert!(out.stdout().contains("unsubscribe"), "{out}");
    assert_eq!(status("user2@example.com").await, "unsubscribed");
    assert_eq!(status("user1@example.com").await, "active");

    // A mail system that folds the local part's case still names the subscriber.
    let upper = mailto("user1@example.com").to_ascii_uppercase();
    d.run_with_stdin(
        &["inbound", "--recipient", &upper],
        request(&upper).as_bytes(),
    );
    assert_eq!(status("user1@example.com").await, "unsubscribed");
}
