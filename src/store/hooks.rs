//! The `hook_token` table: webhook requests being acted on and already acted on, so a replay
//! is refused (and a retry of one still running asked to come back) across restarts and across
//! the `serve` processes that share the database.

use std::time::Duration;

use sqlx::PgPool;

/// What [`claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours to act on, with this claim's id (for [`release`]).
    New(i64),
    /// Acted on before: a replay.
    Replay,
    /// Another attempt of the same request holds it and has not finished.
    InProgress,
}

/// How long a claim not yet acted on holds: past it, the attempt is taken for dead (its
/// process gone mid-request) and a retry may act, which counts nothing twice. Short, since
/// SNS's default policy retries for about a minute only.
const IN_PROGRESS: Duration = Duration::from_secs(15);

/// Claims `token` for `provider` while the request is acted on (see [`acted_on`]). Expired
/// claims are swept on the way.
pub async fn claim(pool: &PgPool, provider: &str, token: &str) -> sqlx::Result<Claim> {
    sqlx::query("DELETE FROM hook_token WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let id = fastrand::i64(1..i64::MAX);
    let claimed = sqlx::query(
        "INSERT INTO hook_token (provider, token, expires_at, done, claim) \
         VALUES ($1, $2, now() + make_interval(secs => $3), false, $4) \
         ON CONFLICT (provider, token) DO UPDATE SET expires_at = EXCLUDED.expires_at, \
             created_at = now(), done = false, claim = EXCLUDED.claim \
         WHERE hook_token.expires_at < now()",
    )
    .bind(provider)
    .bind(token)
    .bind(IN_PROGRESS.as_secs_f64())
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Claim::New(id));
    }
    let done: Option<bool> =
        sqlx::query_scalar("SELECT done FROM hook_token WHERE provider = $1 AND token = $2")
            .bind(provider)
            .bind(token)
            .fetch_optional(pool)
            .await?;
    // Gone meanwhile: the other attempt failed and gave it back; the provider retries.
    Ok(match done {
        Some(true) => Claim::Replay,
        _ => Claim::InProgress,
    })
}

/// The request was acted on: a replay of it is refused until `keep` from now. An insert too,
/// since a claim held past [`IN_PROGRESS`] may have been swept meanwhile.
pub async fn acted_on(
    pool: &PgPool,
    provider: &str,
    token: &str,
    keep: Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO hook_token (provider, token, expires_at, done) \
         VALUES ($1, $2, now() + make_interval(secs => $3), true) \
         ON CONFLICT (provider, token) DO UPDATE SET done = true, \
             expires_at = EXCLUDED.expires_at",
    )
    .bind(provider)
    .bind(token)
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a claim back: the request could not be acted on (the database failed half-way), so
/// the provider's retry of the very same request must be let through. Only claim `id`, and
/// only while not acted on: an attempt that outran [`IN_PROGRESS`] may fail after a later
/// attempt has claimed the token again, or recorded the events.
pub async fn release(pool: &PgPool, provider: &str, token: &str, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM hook_token WHERE provider = $1 AND token = $2 AND claim = $3 AND NOT done",
    )
    .bind(provider)
    .bind(token)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}
