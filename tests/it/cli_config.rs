//! Configuration errors reach the operator as one line naming the key, before anything runs.

use sqlx::PgPool;

use crate::helpers::{Digestif, arg, file_with, subscriber_count};

#[sqlx::test]
async fn a_bad_environment_value_names_the_key_and_writes_nothing(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_DELIVERY__CONCURRENCY", "0");
    let line = d.fails(
        &["subscribers", "add", "ok@example.com"],
        "delivery.concurrency",
    );
    assert_eq!(
        line,
        "digestif: config: delivery.concurrency: 0 is out of range (1 to 64)"
    );
    assert_eq!(subscriber_count(&pool).await, 0);
}

#[sqlx::test]
async fn a_bad_file_value_names_the_key_and_the_file(pool: PgPool) {
    let (_dir, path) = file_with(
        "digestif.toml",
        b"[schedule]\ntimezone = \"Mars/Olympus_Mons\"\n",
    );
    let d = Digestif::new(&pool);
    d.fails(
        &["--config", arg(&path), "subscribers", "list"],
        "config: schedule.timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
    );
    let (_dir2, typo) = file_with("digestif.toml", b"[smtp]\nurll = \"smtp://x\"\n");
    d.fails(
        &["--config", arg(&typo), "subscribers", "list"],
        "config: smtp.urll: unknown field",
    );
    d.fails(
        &["--config", "nope.toml", "migrate"],
        "config: --config: nope.toml: no such file",
    );
}

#[sqlx::test]
async fn the_smtp_password_never_appears_in_an_error(pool: PgPool) {
    let d = Digestif::new(&pool).env("DIGESTIF_SMTP__URL", "ftp://user:hunter2@mail.example.com");
    let line = d.fails(&["subscribers", "list"], "config: smtp.url");
    assert!(!line.contains("hunter2"), "{line}");
}
