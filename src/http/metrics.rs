//! `/metrics` in the Prometheus text format, encoded by prometheus-client. The names are stable
//! (dashboards and alerts depend on them; README lists them). This process's own counters and
//! the process metrics are served even when the database is down (`digestif_database_up 0`),
//! so an alert can tell "digestif is down" from "its database is".

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use super::AppState;
use crate::domain::IssueStatus;
use crate::store::{deliveries, issues};

type Labels = Vec<(&'static str, String)>;

/// The database's figures of the last scrape, read again at most once a second, one scrape at
/// a time: counting the latest issue's deliveries costs the database a scan, and `/metrics` is
/// on the public listener unless `http.metrics_listen` moves it, so anyone could ask for that
/// scan as often as they liked, on the pool that delivery uses.
#[derive(Default)]
pub struct Cached(tokio::sync::Mutex<Option<(tokio::time::Instant, Option<Arc<DatabaseMetrics>>)>>);

/// How long the database's figures (or its failure to answer) serve further scrapes.
const FRESH: Duration = Duration::from_secs(1);

impl Cached {
    /// The figures, or none when the database did not answer: within two seconds, waiting for
    /// another scrape's read included, so a scrape never hangs. A failure, a timeout included,
    /// is kept like figures, so a hung database is asked once a second, not once a scrape.
    async fn get(&self, pool: &PgPool) -> Option<Arc<DatabaseMetrics>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let Ok(mut last) = tokio::time::timeout_at(deadline, self.0.lock()).await else {
            tracing::warn!("metrics: database timed out");
            return None;
        };
        if let Some((at, db)) = last.as_ref()
            && at.elapsed() < FRESH
        {
            return db.clone();
        }
        let db = match tokio::time::timeout_at(deadline, database_metrics(pool)).await {
            Ok(Ok(db)) => Some(Arc::new(db)),
            Ok(Err(e)) => {
                tracing::warn!("metrics: database: {e}");
                None
            }
            Err(_) => {
                tracing::warn!("metrics: database timed out");
                None
            }
        };
        *last = Some((tokio::time::Instant::now(), db.clone()));
        db
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut registry = Registry::default();
    process_metrics(&app, &mut registry);
    let up = match app.db_metrics.get(&app.pool).await {
        Some(db) => {
            db.register(&mut registry);
            1
        }
        None => 0,
    };
    registry.register(
        "digestif_database_up",
        "1 when the database answered this scrape, 0 when it did not (the figures from it are then missing)",
        gauge(up),
    );
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        tracing::error!("metrics: encoding failed: {e}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A gauge reading `v`: every figure here is read fresh for each scrape.
fn gauge(v: i64) -> Gauge {
    let g = Gauge::<i64>::default();
    g.set(v);
    g
}

/// What this process knows without asking the database.
fn process_metrics(app: &AppState, registry: &mut Registry) {
    registry.register(
        "digestif_build",
        "The running version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
    );
    let outcomes = app.counters.outcomes();
    let attempts = Family::<Labels, Counter>::default();
    for (status, n) in outcomes.by_status() {
        attempts
            .get_or_create(&vec![("outcome", status.to_string())])
            .inc_by(n);
    }
    registry.register(
        "digestif_attempts",
        "Send attempts by this process since it started, by outcome",
        attempts,
    );
    let counter = |n: &std::sync::atomic::AtomicU64| {
        let c = Counter::<u64>::default();
        c.inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
        c
    };
    registry.register(
        "digestif_claims_reclaimed",
        "Claims this process took over from workers that died or ran out their lease",
        counter(&app.counters.reclaimed),
    );
    registry.register(
        "digestif_claims_lost",
        "Claims this process did not send because the check before the final dot said no: taken over, or under a third of the lease left (given back if still its own)",
        counter(&app.counters.lost),
    );
    registry.register(
        "digestif_results_taken_over",
        "Messages this process handed over whose claim another worker took over before the result was written (sent again by it)",
        counter(&app.counters.taken_over),
    );
    let next_slot = Gauge::<i64>::default();
    if let Some(t) = app.settings.schedule.cron.next_after(crate::clock::now()) {
        next_slot.set(t.timestamp());
    }
    registry.register(
        "digestif_next_slot_timestamp_seconds",
        "When the schedule's next slot is (unix seconds)",
        next_slot,
    );
    if let Some(p) = ProcStat::read() {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(p.rss_bytes),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds",
            gauge(p.start_time),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            gauge(p.open_fds),
        );
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(p.cpu_seconds);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
    }
}

/// The latest numbered issue: its number, its state, its deliveries by status, and by relay
/// and status.
type Latest = (
    i32,
    IssueStatus,
    Vec<(String, i64)>,
    Vec<(String, String, i64)>,
);

/// The figures read from the database for one scrape.
struct DatabaseMetrics {
    queue_depth: i64,
    paused: i64,
    latest: Option<Latest>,
    last_sent: Option<i64>,
}

async fn database_metrics(pool: &PgPool) -> anyhow::Result<DatabaseMetrics> {
    let queue_depth = deliveries::open_count(pool).await?;
    let paused = issues::paused(pool).await?.len() as i64;
    let list = issues::list(pool).await?;
    let numbered = || list.iter().filter(|i| i.number.is_some());
    let latest = match numbered().next() {
        Some(i) => Some((
            i.number.unwrap_or_default(),
            i.status,
            deliveries::counts(pool, i.issue_id).await?,
            deliveries::counts_by_relay(pool, i.issue_id).await?,
        )),
        None => None,
    };
    let last_sent = numbered()
        .filter(|i| i.status == IssueStatus::Sent)
        .find_map(|i| i.finished_at.map(|t| t.timestamp()));
    Ok(DatabaseMetrics {
        queue_depth,
        paused,
        latest,
        last_sent,
    })
}

impl DatabaseMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "digestif_queue_depth",
            "Deliveries waiting or in flight for issues being sent",
            gauge(self.queue_depth),
        );
        registry.register(
            "digestif_issues_paused",
            "Issues paused by the breaker now (the relay refused or could not be reached)",
            gauge(self.paused),
        );
        if let Some((number, status, counts, by_relay)) = &self.latest {
            let (number, status) = (*number, *status);
            registry.register(
                "digestif_last_issue_number",
                "The latest issue's number",
                gauge(i64::from(number)),
            );
            let state = Family::<Labels, Gauge>::default();
            for s in IssueStatus::ALL {
                state
                    .get_or_create(&vec![("status", s.to_string())])
                    .set(i64::from(*s == status));
            }
            registry.register(
                "digestif_last_issue_status",
                "The latest issue's state: 1 for the state it is in, 0 for the others",
                state,
            );
            // No per-issue label: one series per status however many issues there are.
            let by_status = Family::<Labels, Gauge>::default();
            for s in crate::domain::DeliveryStatus::ALL {
                let n = counts
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| *n);
                by_status
                    .get_or_create(&vec![("status", s.to_string())])
                    .set(n);
            }
            registry.register(
                "digestif_deliveries",
                "The latest issue's deliveries by status",
                by_status,
            );
            if !by_relay.is_empty() {
                let relays = Family::<Labels, Gauge>::default();
                for (relay, status, n) in by_relay {
                    relays
                        .get_or_create(&vec![("relay", relay.clone()), ("status", status.clone())])
                        .set(*n);
                }
                registry.register(
                    "digestif_relay_deliveries",
                    "The latest issue's deliveries by the relay that had the last word, by status",
                    relays,
                );
            }
        }
        if let Some(t) = self.last_sent {
            registry.register(
                "digestif_last_issue_sent_timestamp_seconds",
                "When the latest fully sent issue finished (unix seconds)",
                gauge(t),
            );
        }
    }
}

/// This process as /proc shows it (Linux; nothing elsewhere).
struct ProcStat {
    rss_bytes: i64,
    start_time: i64,
    open_fds: i64,
    cpu_seconds: f64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        // Linux reports times in /proc in USER_HZ, 100 on every architecture it runs on.
        const TICKS: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), counted from field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) / TICKS;
        let started_after_boot = field(22)? / TICKS;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let rss_kib = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<i64>()
                    .ok()
            })?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        Some(Self {
            rss_bytes: rss_kib * 1024,
            start_time: (boot_time + started_after_boot) as i64,
            open_fds,
            cpu_seconds,
        })
    }
}
