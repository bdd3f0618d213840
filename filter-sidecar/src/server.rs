//! Wiring: the gRPC server (ext_proc + health), `/metrics`, the record worker, and the drain on
//! SIGTERM.

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use filter_core::{AtomicCounters, Engine, Node, Services};

use crate::backend::HttpBackend;
use crate::metrics::Exported;
use crate::service::{Sidecar, SidecarStats};

/// What `main` parsed.
#[derive(Debug, Clone)]
pub struct Options {
    /// gRPC address; else `sidecar.listen`, else 127.0.0.1:50051.
    pub listen: Option<SocketAddr>,
    /// `/metrics` address; else `sidecar.metrics_listen`, else none.
    pub metrics_listen: Option<SocketAddr>,
    pub config: std::path::PathBuf,
    /// Overrides `sidecar.backend_url`.
    pub backend_url: Option<String>,
}

fn node_from_env() -> Node {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Node {
        workload_name: var("WORKLOAD_NAME"),
        namespace: var("POD_NAMESPACE"),
        name: var("POD_NAME"),
    }
}

fn random_seed() -> u64 {
    // `RandomState` is keyed from the OS's randomness.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// The engine's clock: wall time in nanoseconds.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the sidecar until SIGTERM (or SIGINT), then drains.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let bytes = std::fs::read(&opts.config)
        .with_context(|| format!("read config {}", opts.config.display()))?;
    let (config, settings) = crate::config::parse(&bytes)?;
    let backend_url = opts
        .backend_url
        .clone()
        .or(settings.backend_url.clone())
        .unwrap_or_else(|| format!("https://{}", config.backend().authority()));
    let caller = Arc::new(HttpBackend::new(&backend_url)?);
    let counters = Arc::new(AtomicCounters::default());
    let engine = Arc::new(Engine::new(
        config,
        &node_from_env(),
        Services {
            metrics: counters.clone(),
            clock: Box::new(now_nanos),
            seed: random_seed(),
        },
    ));
    let (records, worker) = crate::records::queue(caller.clone(), engine.clone());
    let stats = Arc::new(SidecarStats::default());
    let exported = Exported {
        counters,
        queue: records.clone(),
        sidecar: stats.clone(),
    };

    let listen = opts
        .listen
        .or(settings.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let grpc_addr = listener.local_addr()?;
    let metrics_addr = match opts.metrics_listen.or(settings.metrics_listen) {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            let local = l.local_addr()?;
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let e = exported.clone();
                        async move { ([("content-type", "text/plain; version=0.0.4")], e.render()) }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
            Some(local)
        }
        None => None,
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExternalProcessorServer<Sidecar<HttpBackend>>>()
        .await;
    let sidecar = Sidecar::new(
        engine.clone(),
        caller,
        records.clone(),
        stats,
        settings.keep_content_length_max_bytes,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(ExternalProcessorServer::new(sidecar))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    let (worker_closed_tx, worker_closed_rx) = tokio::sync::oneshot::channel::<Duration>();
    let worker =
        tokio::spawn(worker.run_until(async { worker_closed_rx.await.unwrap_or(Duration::ZERO) }));

    tracing::info!(
        grpc = %grpc_addr,
        metrics = ?metrics_addr,
        backend = %backend_url,
        service_name = engine.service_name(),
        "filter-sidecar ready"
    );
    // One line for scripts and the testbed.
    println!(
        "READY grpc={grpc_addr} metrics={}",
        metrics_addr.map_or_else(|| "none".to_string(), |a| a.to_string())
    );

    tokio::pin!(server);
    let drain = Duration::from_millis(settings.drain_timeout_ms);
    let started;
    tokio::select! {
        res = &mut server => {
            res.context("gRPC server")?;
            started = Instant::now();
        }
        () = terminated() => {
            started = Instant::now();
            tracing::info!("SIGTERM: draining (no new streams; open streams finish; records flushed)");
            health
                .set_not_serving::<ExternalProcessorServer<Sidecar<HttpBackend>>>()
                .await;
            let _ = stop_tx.send(());
            match tokio::time::timeout(drain, &mut server).await {
                Ok(res) => res.context("gRPC server")?,
                Err(_) => tracing::warn!("drain deadline passed with streams still open"),
            }
        }
    }
    records.close();
    let left = drain.saturating_sub(started.elapsed());
    let _ = worker_closed_tx.send(left);
    if tokio::time::timeout(left + Duration::from_millis(100), worker)
        .await
        .is_err()
    {
        tracing::warn!(unsent = records.depth(), "exiting with records unsent");
    }
    tracing::info!("filter-sidecar stopped");
    Ok(())
}
