//! The HTTP server of `digestif serve` (axum): the subscriber pages (`pages`), `/healthz` and
//! `/metrics` for operators, and the security headers every response carries.

pub mod client;
pub mod error;
/// Bounce and complaint webhooks of hosted relays (SES through SNS, Postmark, Mailgun,
/// SendGrid, a generic signed form), fed into the same rules as `inbound`.
pub mod hooks;
mod metrics;
pub mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

use crate::config::Settings;
use crate::digest::deliver::Counters;
use crate::domain::TokenKeys;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// Attempt counters of this process's deliverer.
    pub counters: Arc<Counters>,
    pub keys: TokenKeys,
    /// Per-client limit on sign-ups.
    pub signup_limiter: Arc<client::SignupLimiter>,
    /// What the bounce webhooks keep between requests (SNS certificates).
    pub hooks: Arc<hooks::Hooks>,
    /// Issues' web views as rendered once (`pages::web_view`).
    pub web_views: Arc<pages::WebViews>,
    /// The database's figures of the last scrape (`metrics`).
    pub db_metrics: Arc<metrics::Cached>,
}

impl AppState {
    /// State for the router.
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        counters: Arc<Counters>,
        keys: TokenKeys,
        hooks: Arc<hooks::Hooks>,
    ) -> Self {
        let limiter = Arc::new(client::SignupLimiter::new(settings.http.signup_per_hour));
        Self {
            pool,
            settings,
            counters,
            keys,
            signup_limiter: limiter,
            hooks,
            web_views: Arc::default(),
            db_metrics: Arc::default(),
        }
    }
}

/// The HTTP server of `digestif serve`, bound and wired: the one way it is built, by the CLI and
/// by the tests alike, so the tests exercise the production wiring.
pub struct Server {
    public: (tokio::net::TcpListener, Router),
    /// `http.metrics_listen`, when `/metrics` has a listener of its own.
    metrics: Option<(tokio::net::TcpListener, Router)>,
    keys: TokenKeys,
    limits: crate::config::HttpSettings,
}

impl Server {
    /// Binds `http.listen` (port 0 picks a free port) and `http.metrics_listen` when set, reads
    /// the link token keys and builds the routes. `counters` are the attempt counters
    /// `/metrics` reports.
    pub async fn build(
        settings: Arc<Settings>,
        pool: PgPool,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Self> {
        Self::build_with(settings, pool, counters, hooks::Hooks::new()?).await
    }

    /// [`Server::build`] with the webhooks' state given: tests pass one whose SNS certificates
    /// come from a local server ([`hooks::sns::CertFetcher::for_tests`]).
    pub async fn build_with(
        settings: Arc<Settings>,
        pool: PgPool,
        counters: Arc<Counters>,
        hooks: hooks::Hooks,
    ) -> anyhow::Result<Self> {
        let bind = |key: &'static str, addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))
        };
        let public = bind("http.listen", settings.http.listen).await?;
        let metrics = match settings.http.metrics_listen {
            Some(addr) => Some(bind("http.metrics_listen", addr).await?),
            None => None,
        };
        let keys = crate::digest::token_keys(&settings, &pool).await?;
        let limits = settings.http.clone();
        let state = AppState::new(pool, settings, counters, keys.clone(), Arc::new(hooks));
        let with_metrics = metrics.is_none();
        Ok(Self {
            public: (public, router(state.clone(), with_metrics)),
            metrics: metrics.map(|l| (l, metrics_router(state))),
            keys,
            limits,
        })
    }

    /// The address actually bound (the port chosen when `http.listen` says port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.0.local_addr()
    }

    /// The address `/metrics` is served on, when it has its own (`http.metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The keys the links this server accepts are signed with.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Serves until `stop` turns true, then finishes the requests in progress.
    pub async fn run_until_stopped(self, stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let public = accept_loop(self.public.0, self.public.1, &self.limits, stop.clone());
        match self.metrics {
            Some((listener, app)) => {
                let metrics = accept_loop(listener, app, &self.limits, stop);
                let (a, b) = tokio::join!(public, metrics);
                a.and(b)
            }
            None => public.await,
        }
    }
}

/// Our own accept loop rather than `axum::serve`, which has no header-read timeout and no
/// connection cap: a few hundred clients that never finish their headers would otherwise hold
/// a descriptor each until the process runs out, and in `serve` the same process needs
/// descriptors for SMTP and the database. At the cap we stop accepting, so further clients
/// wait in the kernel's backlog and cost this process nothing.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &crate::config::HttpSettings,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY));
    let per_client = client::PerClient::new(
        limits.max_connections_per_client,
        limits.trusted_proxies.clone(),
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to come back rather
                    // than spin.
                    tracing::warn!("http: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(admitted) = per_client.admit(peer.ip()) else {
            tracing::debug!("http: {peer} has http.max_connections_per_client open already");
            drop(permit);
            // At most TURNING_AWAY at once, each for at most a quarter of a second, so that a
            // client connecting as fast as it can does not hold descriptors this way instead;
            // beyond that, the answer is written if it goes at once and the socket closed.
            match turning_away.clone().try_acquire_owned() {
                Ok(slot) => {
                    tokio::spawn(async move {
                        turn_away(stream).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    let _ = stream.try_write(TURNED_AWAY);
                }
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        // hyper has no write timeout, and no header timeout runs while a request is being
        // answered: a client that pipelines requests and never reads the answers would hold
        // this connection, and a slot of `max_connections`, for ever once its buffers fill.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.request_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let connection = graceful.watch(http1.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("http: connection from {peer}: {e}");
            }
            drop((permit, admitted));
        });
    }
    drop(listener);
    // Idle connections close at once; a request in progress has its own deadline.
    let _ = tokio::time::timeout(limits.request_timeout, graceful.shutdown()).await;
    Ok(())
}

/// Connections being turned away at once (see [`turn_away`]).
const TURNING_AWAY: usize = 64;

/// The answer to a connection over its client's share.
const TURNED_AWAY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
                             Retry-After: 10\r\nContent-Length: 0\r\n\r\n";

/// Answers 503 on a connection over its client's share, outside hyper and the connection cap.
/// What the client sent is read (for a quarter of a second at most) before closing: a socket
/// closed with unread bytes sends a reset, which can destroy the answer before it is read.
async fn turn_away(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        stream.write_all(TURNED_AWAY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The public routes, for [`Server`], which gives each request its client address
/// (`ConnectInfo`): sign-up rate limits and consent evidence use it. `/metrics` is among them
/// unless it has a listener of its own.
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut routes = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(readyz));
    if with_metrics {
        routes = routes.route("/metrics", get(metrics::metrics));
    }
    layered(
        routes
            .route("/unsubscribe", get(pages::unsubscribe_help))
            .route(
                "/unsubscribe/",
                get(pages::empty_token).post(pages::empty_token),
            )
            .route(
                "/confirm/",
                get(pages::empty_token).post(pages::empty_token),
            )
            .route(
                "/unsubscribe/{token}",
                get(pages::unsubscribe_page).post(pages::unsubscribe),
            )
            .route(
                "/confirm/{token}",
                get(pages::confirm_page).post(pages::confirm),
            )
            .route(
                "/subscribe",
                get(pages::subscribe_page).post(pages::subscribe),
            )
            .route("/issues", get(pages::archive))
            .route("/issues/{number}", get(pages::web_view))
            .route("/feed.xml", get(pages::feed))
            .route("/hooks/{provider}", post(hooks::receive))
            .layer(axum::middleware::map_response_with_state(
                state.clone(),
                error::error_pages,
            )),
        state,
    )
}

/// `http.metrics_listen`'s routes: `/metrics` and `/healthz`, for monitoring only.
fn metrics_router(state: AppState) -> Router {
    layered(
        Router::new()
            .route("/metrics", get(metrics::metrics))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/healthz", get(readyz)),
        state,
    )
}

/// What every listener's routes share: the 404, the request deadline, the security headers.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    let request_timeout = state.settings.http.request_timeout;
    routes
        .fallback(fallback)
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| within(request_timeout, request, next),
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// A request whose body trickles in, or whose answer cannot be found in time, ends with 408
/// instead of holding its connection.
async fn within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "request timed out\n",
        )
            .into_response(),
    }
}

async fn fallback() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Headers every response carries: no sniffing, no framing, no referrer leaking a token, no
/// caching of personal pages, and a CSP that allows nothing but our inline styles and forms.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// 200 when the database answers within two seconds, 503 otherwise.
/// `/readyz`'s (and `/healthz`'s) answer when the database answers; `doctor` looks for it at
/// `newsletter.base_url` to know that a digestif serves the links there.
pub const HEALTHY: &str = "ok: digestif, database reachable\n";

/// How long `serve`'s scheduler loop may go without a sign of life before `/readyz` says no:
/// it looks at the database at least every minute, and a delivery beats with every result.
const STALE_LOOP: i64 = 300;

/// `/livez`: the process answers (for a restart policy; says nothing of the database).
async fn livez() -> Response {
    (StatusCode::OK, "ok: digestif alive\n").into_response()
}

/// `/readyz` (and `/healthz`): the database answers and, in a `serve` with a schedule, its
/// loop has shown a sign of life within [`STALE_LOOP`] seconds.
async fn readyz(State(app): State<AppState>) -> Response {
    let beat = app
        .counters
        .heartbeat
        .load(std::sync::atomic::Ordering::Relaxed);
    let silent = chrono::Utc::now().timestamp() - beat;
    if beat != 0 && silent > STALE_LOOP {
        tracing::warn!(
            silent,
            "health check: the scheduler loop shows no sign of life"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("scheduler loop silent for {silent} s\n"),
        )
            .into_response();
    }
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&app.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, HEALTHY).into_response(),
        Ok(Err(e)) => {
            tracing::warn!("health check: database error: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database timed out\n").into_response(),
    }
}
