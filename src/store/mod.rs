//! The Postgres store: connecting, migrating, and the SQL, one file per table family. Some SQL
//! lives beside its only user instead: the shared rate ceiling's two statements
//! (`send/rate.rs`) and `/readyz`'s `SELECT 1` (`http/mod.rs`).

pub mod content;
pub mod deliveries;
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
    // The URL may carry a password, so a parse error does not repeat it.
    PgConnectOptions::from_str(db.url.expose_secret())
        .map_err(|_| anyhow!("config: database.url: not a valid postgres:// URL"))
}

/// Opens the pool, failing with one line that names the host when the database cannot be
/// reached (instead of a stack of driver internals).
pub async fn connect(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let opts = options(db)?;
    let place = describe(&opts);
    // The pool retries until its timeout and then reports only "timed out"; one direct attempt
    // first gives the operator the real reason (refused, unknown host, bad password…).
    match tokio::time::timeout(db.connect_timeout, opts.connect()).await {
        Ok(Ok(conn)) => drop(conn),
        Ok(Err(e)) => bail!(
            "cannot connect to the database at {place}: {}",
            db_reason(&e)
        ),
        Err(_) => bail!("cannot connect to the database at {place}: timed out"),
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
pub async fn migrate(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let opts = options(db)?;
    let place = describe(&opts);
    let url = db.url.expose_secret();
    let exists = Postgres::database_exists(url).await.map_err(|e| {
        anyhow!(
            "cannot connect to the database at {place}: {}",
            db_reason(&e)
        )
    })?;
    if !exists {
        Postgres::create_database(url)
            .await
            .map_err(|e| anyhow!("cannot create the database {place}: {}", db_reason(&e)))?;
    }
    let pool = connect(db).await?;
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("failed to migrate the database at {place}"))?;
    Ok(pool)
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

/// When `digestif migrate` first ran on this database: slots before it were never this
/// install's to send, so they are not reported as missed.
pub async fn installed_at(pool: &PgPool) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query_scalar("SELECT min(installed_on) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
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
