//! The integration tests: one binary (to keep link time down) running the real `digestif`
//! against a real PostgreSQL database per test (`#[sqlx::test]`).

mod cli_config;
mod cli_content;
mod cli_import;
mod cli_subscribers;
mod complaints;
mod compose;
mod deliver;
mod deliverability;
mod dns_server;
mod dsn;
mod exit_codes;
mod feeds;
mod helpers;
mod hooks;
mod imap;
mod imap_server;
mod json_output;
mod logs;
mod ownership;
mod readme;
mod relay_tls;
mod relays;
mod schedule;
mod send_now;
mod smtp_server;
mod systemd_notify;
mod unsubscribe_mail;
mod web;
mod web_abuse;
