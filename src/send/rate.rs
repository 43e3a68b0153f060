//! The send-rate ceiling shared by every worker on the database: a GCRA limiter whose state is
//! one row in `rate_limit`. A worker reserves a few permits with one UPDATE and spaces its
//! messages evenly; reservations of different processes never overlap.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{DeliverySettings, RelaySettings};

/// The row of `delivery.rate_*`, which all workers share; each relay's own ceiling has a row
/// named `relay:<name>`.
const ROW: &str = "send";

/// Paces one worker's sends under the shared ceiling; cheap to share between tasks.
#[derive(Debug)]
pub struct Pacer {
    /// Its row in `rate_limit`.
    row: String,
    /// Time between two messages: the stricter of `rate_per_second` and `rate_per_hour`
    /// (an hourly ceiling is spread evenly over the hour). `None`: no ceiling.
    interval: Option<Duration>,
    /// Permits reserved per round trip: about one second's worth.
    chunk: u32,
    state: Mutex<Reserved>,
}

#[derive(Debug, Default)]
struct Reserved {
    next: Option<Instant>,
    left: u32,
}

impl Pacer {
    /// A pacer for the configured ceilings.
    pub fn new(delivery: &DeliverySettings) -> Self {
        Self::with(ROW.into(), delivery.rate_per_second, delivery.rate_per_hour)
    }

    /// A pacer for one relay's own ceilings.
    pub fn for_relay(relay: &RelaySettings) -> Self {
        Self::with(
            format!("relay:{}", relay.name),
            relay.rate_per_second,
            relay.rate_per_hour,
        )
    }

    fn with(row: String, rate_per_second: Option<f64>, rate_per_hour: Option<u32>) -> Self {
        let per_second = rate_per_second.map(|r| 1.0 / r);
        let per_hour = rate_per_hour.map(|r| 3600.0 / f64::from(r));
        let interval = match (per_second, per_hour) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .map(Duration::from_secs_f64);
        let chunk = interval.map_or(1, |i| {
            (1.0 / i.as_secs_f64()).ceil().clamp(1.0, 1000.0) as u32
        });
        Self {
            row,
            interval,
            chunk,
            state: Mutex::new(Reserved::default()),
        }
    }

    /// How many messages the ceiling lets out `within` this long (`None`: no ceiling).
    pub fn capacity(&self, within: Duration) -> Option<u32> {
        self.interval.map(|i| {
            (within.as_secs_f64() / i.as_secs_f64())
                .floor()
                .clamp(0.0, f64::from(u32::MAX)) as u32
        })
    }

    /// Waits until the next message may go out.
    pub async fn wait(&self, pool: &PgPool) -> sqlx::Result<()> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let at = {
            let mut s = self.state.lock().await;
            if s.left == 0 {
                let offset = reserve(pool, &self.row, self.chunk, interval).await?;
                s.next = Some(Instant::now() + offset);
                s.left = self.chunk;
            }
            let at = s.next.unwrap_or_else(Instant::now);
            s.next = Some(at + interval);
            s.left -= 1;
            at
        };
        tokio::time::sleep_until(at).await;
        Ok(())
    }
}

/// Reserves `n` permits spaced by `interval` and returns how long from now the first one is.
async fn reserve(pool: &PgPool, row: &str, n: u32, interval: Duration) -> sqlx::Result<Duration> {
    let span = interval.as_secs_f64() * f64::from(n);
    sqlx::query("INSERT INTO rate_limit (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(row)
        .execute(pool)
        .await?;
    // The database clock decides, so workers on machines with skewed clocks still agree.
    let until_end: f64 = sqlx::query_scalar(
        "UPDATE rate_limit SET tat = greatest(tat, clock_timestamp()) + make_interval(secs => $2) \
         WHERE name = $1 RETURNING EXTRACT(EPOCH FROM tat - clock_timestamp())::float8",
    )
    .bind(row)
    .bind(span)
    .fetch_one(pool)
    .await?;
    Ok(Duration::from_secs_f64((until_end - span).max(0.0)))
}
