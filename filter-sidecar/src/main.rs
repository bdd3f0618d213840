//! `filter-sidecar --listen 127.0.0.1:50051 --config <file> [--metrics-listen 127.0.0.1:9090]
//! [--backend-url https://o.softprobe.ai] [--log-format text|json]`

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The transparent-cache engine as an Envoy ext_proc server.
#[derive(Debug, Parser)]
#[command(name = "filter-sidecar", version)]
struct Cli {
    /// gRPC address Envoy's ext_proc filter connects to [default: `sidecar.listen`, else
    /// 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address serving `/metrics` (Prometheus text) and `/healthz` [default:
    /// `sidecar.metrics_listen`, else none].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The plugin's JSON config, plus an optional `sidecar` section.
    #[arg(long)]
    config: PathBuf,
    /// Base URL of the backend (http:// or https://); overrides `sidecar.backend_url`.
    #[arg(long)]
    backend_url: Option<String>,
    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = filter_sidecar::server::Options {
        listen: cli.listen,
        metrics_listen: cli.metrics_listen,
        config: cli.config,
        backend_url: cli.backend_url,
    };
    match runtime.block_on(filter_sidecar::server::run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "filter-sidecar failed");
            std::process::ExitCode::FAILURE
        }
    }
}
