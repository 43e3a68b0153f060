//! digestif: a newsletter digest mailer. The modules below are listed in reading order.

/// Validated domain types: the only door for outside data.
pub mod domain;

/// The clock scheduling reads (settable in test builds).
pub mod clock;

/// Owner-only files for what holds subscribers' data.
pub mod files;

/// Settings: the TOML file and `DIGESTIF_*` environment, parsed into domain types.
pub mod config;

/// The Postgres store: every SQL statement, migrations, connection handling.
pub mod store;

/// Transports, reply classification and the shared rate ceiling.
pub mod send;

/// Rendering an issue and each subscriber's message.
pub mod render;

/// The use case: compose, snapshot, render (and, later, deliver).
pub mod digest;

/// The subscriber import use case (CSV in, every refused line reported).
pub mod import;

/// Bounce, complaint and unsubscribe-by-mail intake.
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
