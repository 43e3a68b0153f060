//! digestif: a newsletter digest mailer. The modules below are listed in reading order.

/// Validated domain types: the only door for outside data.
pub mod domain;

/// The clock scheduling reads (settable in test builds).
pub mod clock;

/// Owner-only files for what holds subscribers' data.
pub mod files;

/// Settings: the TOML file and `DIGESTIF_*` environment, parsed into domain types.
pub mod config;

/// The Postgres store: connecting, migrations, and the SQL, one file per table family; only the
/// rate ceiling's statements (in `send`) and `/readyz`'s `SELECT 1` (in `http`) live elsewhere.
pub mod store;

/// Transports (our SMTP pool, the `.eml` outbox), reply classification, DKIM signing and the
/// shared rate ceiling.
pub mod send;

/// Rendering an issue and each subscriber's message.
pub mod render;

/// The use case: pick content, create and fan out an issue, decide what a send command
/// creates, and deliver (the queue, the results writer, this process as a worker, the breaker).
pub mod digest;

/// The subscriber import use case (CSV in, every refused line reported).
pub mod import;

/// Articles from RSS, Atom and JSON feeds (reading entries so far).
pub mod feeds;

/// Bounce, complaint and unsubscribe-by-mail intake, from an MTA's pipe or an IMAP mailbox.
pub mod inbound;

/// Running on the schedule: one shot (`run`) and the long-running loop (`serve`).
pub mod schedule;

/// Outgoing HTTP: one client setup.
pub mod fetch;

/// The HTTP server: health, metrics and the subscriber pages.
pub mod http;

/// The operator's command line.
pub mod cli;

pub use store::MIGRATOR;
