//! The `hook_token` table: webhook requests already acted on, so a replay is refused across
//! restarts and across the `serve` processes that share the database.

use std::time::Duration;

use sqlx::PgPool;

/// Claims `token` for `provider` until `keep` from now. True when it was not claimed before
/// (or its earlier claim has expired); false for a replay. Expired claims are swept on the way.
pub async fn claim(
    pool: &PgPool,
    provider: &str,
    token: &str,
    keep: Duration,
) -> sqlx::Result<bool> {
    let seconds = keep.as_secs_f64();
    sqlx::query("DELETE FROM hook_token WHERE expires_at < now()")
        .execute(pool)
        .await?;
    let claimed = sqlx::query(
        "INSERT INTO hook_token (provider, token, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (provider, token) DO UPDATE SET expires_at = EXCLUDED.expires_at, \
             created_at = now() \
         WHERE hook_token.expires_at < now()",
    )
    .bind(provider)
    .bind(token)
    .bind(seconds)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Gives a claim back: the request could not be acted on (the database failed half-way), so
/// the provider's retry of the very same request must be let through.
pub async fn release(pool: &PgPool, provider: &str, token: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM hook_token WHERE provider = $1 AND token = $2")
        .bind(provider)
        .bind(token)
        .execute(pool)
        .await?;
    Ok(())
}
