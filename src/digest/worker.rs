//! This process as a worker: the identity its claims carry and the lock that proves it alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::store::deliveries;

/// This process as a worker: an id its claims carry, and the advisory lock it holds on a
/// connection of its own while it lives, so others can tell at once when it is gone. Every
/// third of a lease it renews the leases of what it holds, so no one takes over a slow batch;
/// only during a delivery pass, so nothing it left behind stays renewed.
pub(super) struct Worker {
    /// The id its claims carry.
    pub(super) id: i32,
    /// True while a delivery pass runs.
    busy: Arc<AtomicBool>,
    /// Dropped with the worker: the heartbeat then closes its connection, releasing the lock.
    _stop: oneshot::Sender<()>,
}

impl Worker {
    /// Registers and starts renewing; the lock and the renewals end when it is dropped.
    pub(super) async fn start(pool: &PgPool, lease: Duration) -> anyhow::Result<Self> {
        let mut conn = pool
            .acquire()
            .await
            .context("failed to open the worker connection")?
            .detach();
        let id = deliveries::register_worker(&mut conn)
            .await
            .context("failed to register as a worker")?;
        tracing::debug!(worker = id, "registered");
        let (stop, mut stopped) = oneshot::channel::<()>();
        let pool = pool.clone();
        let busy = Arc::new(AtomicBool::new(false));
        let renewing = busy.clone();
        let every = (lease / 3).max(Duration::from_millis(200));
        tokio::spawn(async move {
            let mut conn = Some(conn);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if conn.is_none() {
                    // Same id, same lock: claims nobody took over meanwhile are still ours.
                    match pool.acquire().await {
                        Ok(c) => {
                            let mut c = c.detach();
                            match deliveries::lock_worker(&mut c, id).await {
                                Ok(()) => {
                                    tracing::info!(worker = id, "worker connection restored");
                                    conn = Some(c);
                                }
                                Err(e) => tracing::warn!(
                                    worker = id,
                                    "cannot take the worker's lock again ({e}); retrying"
                                ),
                            }
                        }
                        Err(e) => tracing::warn!(worker = id, "cannot reconnect: {e}"),
                    }
                }
                if let Some(c) = conn.as_mut()
                    && renewing.load(Ordering::Relaxed)
                    && let Err(e) = deliveries::renew(c, id, lease).await
                {
                    tracing::warn!(
                        worker = id,
                        "lost the worker connection ({e}): other workers may take over this worker's claims; reconnecting"
                    );
                    conn = None;
                }
            }
            if let Some(c) = conn {
                let _ = sqlx::Connection::close(c).await;
            }
        });
        Ok(Self {
            id,
            busy,
            _stop: stop,
        })
    }
}

impl Worker {
    /// Marks a delivery pass as running until the returned guard is dropped (also when the
    /// pass is abandoned half-way, at shutdown).
    pub(super) fn pass(&self) -> PassGuard {
        self.busy.store(true, Ordering::Relaxed);
        PassGuard(self.busy.clone())
    }
}

/// See [`Worker::pass`].
pub(super) struct PassGuard(Arc<AtomicBool>);

impl Drop for PassGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
