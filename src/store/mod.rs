//! The Postgres store: connecting, migrating, and the SQL, one file per table family. Some SQL
//! lives beside its only user instead: the shared rate ceiling's two statements
//! (`send/rate.rs`) and `/readyz`'s `SELECT 1` (`http/mod.rs`).

pub mod content;
pub mod deliveries;
pub mod feeds;
pub mod hooks;
pub mod issues;
pub mod subscribers;

use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::DatabaseSettings;

/// The schema migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Where the database is, for messages: host, port and name, never the password.
fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    )
}

fn options(db: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    use sqlx::ConnectOptions as _;
    // The URL may carry a password, so a parse error does not repeat it.
    let opts = PgConnectOptions::from_str(db.url.expose_secret())
        .map_err(|_| anyhow!("config: database.url: not a valid postgres:// URL"))?;
    // sqlx warns of every statement over a second, SQL and all: a list streaming a million
    // rows or a big issue's fan-out put that into every cron mail. Timings are for debugging.
    Ok(opts.log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1)))
}

/// Opens the pool, failing with one line that names the host when the database cannot be
/// reached (instead of a stack of driver internals).
pub async fn connect(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let opts = options(db)?;
    let place = describe(&opts);
    let hint = unset_hint(db);
    // The pool retries until its timeout and then reports only "timed out"; one direct attempt
    // first gives the operator the real reason (refused, unknown host, bad password…).
    match tokio::time::timeout(db.connect_timeout, opts.connect()).await {
        Ok(Ok(conn)) => drop(conn),
        Ok(Err(e)) => bail!(
            "cannot connect to the database at {place}: {}{hint}",
            db_reason(&e)
        ),
        Err(_) => bail!("cannot connect to the database at {place}: timed out{hint}"),
    }
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(db.connect_timeout)
        .connect_with(opts)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot connect to the database at {place}: {}",
                db_reason(&e)
            )
        })
}

/// Creates the database if it does not exist yet, then applies pending migrations.
/// With the built-in `database.url`, how to point digestif at a database instead.
fn unset_hint(db: &DatabaseSettings) -> &'static str {
    if db.url_is_default {
        " (that is the built-in default: set DATABASE_URL or database.url to your database, \
         or start a private one with scripts/pg-up)"
    } else {
        ""
    }
}

/// What `migrate` did.
#[derive(Debug)]
pub struct Migrated {
    /// The database, migrated.
    pub pool: PgPool,
    /// host:port/database, without credentials.
    pub place: String,
    /// The database did not exist and was created.
    pub created: bool,
    /// The migrations applied now: version and description.
    pub applied: Vec<(i64, String)>,
    /// The schema's version now.
    pub version: i64,
}

pub async fn migrate(db: &DatabaseSettings) -> anyhow::Result<Migrated> {
    let opts = options(db)?;
    let place = describe(&opts);
    let url = db.url.expose_secret();
    let hint = unset_hint(db);
    let exists = Postgres::database_exists(url).await.map_err(|e| {
        anyhow!(
            "cannot connect to the database at {place}: {}{hint}",
            db_reason(&e)
        )
    })?;
    if !exists {
        Postgres::create_database(url)
            .await
            .map_err(|e| anyhow!("cannot create the database {place}: {}", db_reason(&e)))?;
    }
    let pool = connect(db).await?;
    let before = applied_versions(&pool).await;
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("failed to migrate the database at {place}"))?;
    let applied: Vec<(i64, String)> = MIGRATOR
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    let version = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    Ok(Migrated {
        pool,
        place,
        created: !exists,
        applied,
        version,
    })
}

/// The migrations recorded as applied (none in a database digestif never migrated).
async fn applied_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// Connects and checks that the schema is the one this binary was built for, so an operator
/// who upgraded digestif but forgot `migrate` gets told instead of seeing SQL errors.
pub async fn connect_current(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = connect(db).await?;
    let want = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let have: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
    match have {
        Some(v) if v >= want => Ok(pool),
        Some(_) => Err(anyhow!(
            "the database schema is older than this digestif: run `digestif migrate`"
        )),
        None => Err(anyhow!(
            "the database has no digestif schema yet: run `digestif migrate`"
        )),
    }
}

/// Now on the database's clock, the one its `now()` and every stored time use.
pub async fn db_now(pool: &PgPool) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
}

/// When `digestif migrate` first ran on this database: slots before it were never this
/// install's to send, so they are not reported as missed.
pub async fn installed_at(pool: &PgPool) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query_scalar("SELECT min(installed_on) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// The advisory-lock namespace of the bounce mailbox reader (`'imap'`).
const MAILBOX_LOCK_CLASS: i32 = 0x696d_6170;

/// The bounce mailbox's lock, on a connection of its own taken out of the pool: only one
/// process reads the mailbox at a time (two would hand the same message to the intake at
/// once). `None` when another process holds it. The lock lasts as long as the connection:
/// drop it (or close it) at the end of the pass; a process that dies lets go of it too.
pub async fn try_lock_mailbox(pool: &PgPool) -> sqlx::Result<Option<sqlx::PgConnection>> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
        .bind(MAILBOX_LOCK_CLASS)
        .fetch_one(&mut conn)
        .await?;
    Ok(locked.then_some(conn))
}

/// The useful part of a driver error: the OS or server message without sqlx's prefixes.
pub fn db_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".to_owned(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}
