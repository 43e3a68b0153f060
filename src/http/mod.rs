//! The HTTP server of `digestif serve` (axum): `/healthz` and `/metrics` for operators; the
//! subscriber pages (unsubscribe, confirm, archive) are added beside them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::config::Settings;
use crate::digest::deliver::Counters;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The settings.
    pub settings: Arc<Settings>,
    /// Attempt counters of this process's deliverer.
    pub counters: Arc<Counters>,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 when the database answers within two seconds, 503 otherwise.
async fn healthz(State(app): State<AppState>) -> Response {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&app.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok: database reachable\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!("health check: database error: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database timed out\n").into_response(),
    }
}

/// Prometheus text format: the latest issue's deliveries by status, the queue depth, the
/// latest issue and its state, and this process's attempts by outcome.
async fn metrics(State(app): State<AppState>) -> Response {
    match render_metrics(&app).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}

async fn render_metrics(app: &AppState) -> anyhow::Result<String> {
    let mut out = String::new();
    let c = &app.counters;
    writeln!(
        out,
        "# HELP digestif_attempts_total Send attempts by this process, by outcome."
    )?;
    writeln!(out, "# TYPE digestif_attempts_total counter")?;
    for (outcome, n) in [
        ("sent", &c.sent),
        ("deferred", &c.deferred),
        ("bounced", &c.bounced),
        ("failed", &c.failed),
        ("skipped", &c.skipped),
    ] {
        writeln!(
            out,
            "digestif_attempts_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        )?;
    }
    let depth = crate::store::deliveries::open_count(&app.pool).await?;
    writeln!(
        out,
        "# HELP digestif_queue_depth Deliveries waiting or in flight for sending issues."
    )?;
    writeln!(out, "# TYPE digestif_queue_depth gauge")?;
    writeln!(out, "digestif_queue_depth {depth}")?;
    let latest = crate::store::issues::list(&app.pool)
        .await?
        .into_iter()
        .find(|i| i.number.is_some());
    if let Some(issue) = latest {
        let number = issue.number.unwrap_or_default();
        writeln!(
            out,
            "# HELP digestif_last_issue_number The latest issue's number."
        )?;
        writeln!(out, "# TYPE digestif_last_issue_number gauge")?;
        writeln!(out, "digestif_last_issue_number {number}")?;
        writeln!(
            out,
            "# HELP digestif_last_issue_info The latest issue's state (value 1)."
        )?;
        writeln!(out, "# TYPE digestif_last_issue_info gauge")?;
        writeln!(
            out,
            "digestif_last_issue_info{{number=\"{number}\",status=\"{}\"}} 1",
            issue.status
        )?;
        writeln!(
            out,
            "# HELP digestif_deliveries The latest issue's deliveries by status."
        )?;
        writeln!(out, "# TYPE digestif_deliveries gauge")?;
        for (status, n) in crate::store::deliveries::counts(&app.pool, issue.issue_id).await? {
            writeln!(
                out,
                "digestif_deliveries{{issue=\"{number}\",status=\"{status}\"}} {n}"
            )?;
        }
    }
    Ok(out)
}
