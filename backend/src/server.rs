//! The HTTP server: routes, request logging, graceful shutdown.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::admin;
use crate::cli::ServeArgs;
use crate::metrics::Metrics;
use crate::otlp;
use crate::state::AppState;

/// How long a group commit waits for more recordings after the first (bounded: a record's 200
/// waits at most this plus the commit).
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/traces", post(otlp::traces))
        .route("/v1/inject", post(otlp::inject))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/admin/recordings", get(admin::list).delete(admin::clear))
        .route(
            "/admin/recordings/{id}",
            get(admin::get).delete(admin::delete),
        )
        .route("/admin/export", get(admin::export))
        .route("/admin/import", post(admin::import))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if path == "/healthz" || path == "/metrics" {
        tracing::debug!(%method, path, status, elapsed_ms, "request");
    } else {
        tracing::info!(%method, path, status, elapsed_ms, "request");
    }
    response
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Recordings deleted per expiry transaction.
const EXPIRE_BATCH: usize = 10_000;

/// Deletes expired recordings every tenth of the TTL (between 1 s and 60 s). Lookups never serve
/// an expired recording meanwhile: this only gives the space back.
async fn expire_forever(state: AppState, ttl: std::time::Duration) {
    let period = (ttl / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let now = crate::store::now_unix_nanos();
            match state.blocking(move |s| s.expire(now, EXPIRE_BATCH)).await {
                Ok(n) => {
                    crate::metrics::add(&state.metrics.expired, n);
                    if n > 0 {
                        tracing::debug!(expired = n, "expired recordings deleted");
                    }
                    if n < EXPIRE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "expiry failed; retrying later");
                    break;
                }
            }
        }
    }
}

/// Opens the store and serves until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = crate::auth::Auth::load(
        args.admin_token_file.as_deref(),
        args.ingest_key_file.as_deref(),
    )?;
    crate::auth::check_listen(args.listen, &auth)?;
    let store = crate::open_store(&args.store)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let store = Arc::new(store);
    let writer = crate::writer::Writer::start(store.clone(), COMMIT_WAIT)
        .map_err(|e| anyhow::anyhow!("cannot start the writer thread: {e}"))?;
    let state = AppState {
        writer,
        store,
        metrics: Arc::new(Metrics::default()),
        max_body_bytes: args.max_body_bytes,
        auth,
    };
    if let Some(ttl) = state.store.retention().ttl {
        tokio::spawn(expire_forever(state.clone(), ttl));
    }
    tracing::info!(
        listen = %listener.local_addr().unwrap_or(args.listen),
        data = %args.store.data.display(),
        "backend listening"
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}
