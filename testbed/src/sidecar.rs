//! The ext_proc sidecar (`filter-sidecar`) as a test process: built once per test process into a
//! private target dir (`<target>/testbed-sidecar`, so the build never waits on the lock of the
//! `cargo test` that runs us), or taken from `FILTER_SIDECAR_BIN`.
//!
//! [`Sidecar::start`] writes the config, runs `filter-sidecar --listen <addr> --metrics-listen
//! 127.0.0.1:0 --config <file> --backend-url <url>` and waits for its `READY grpc=.. metrics=..`
//! line. [`Sidecar::kill`] and [`Sidecar::restart`] (same gRPC port, so Envoy's static cluster
//! still points at it) exercise the fail-open path.

use crate::artifact::{cargo_build, private_target_dir, workspace_manifest, Artifact};
use crate::proc::{test_dir, Proc};
use crate::raw::{send, RawRequest};
use crate::service::ready_addr;
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

static BINARY: Artifact = Artifact::new("FILTER_SIDECAR_BIN");
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `filter-sidecar` binary, building it the first time in this process.
pub fn binary() -> Result<PathBuf> {
    BINARY.file(|| build(&private_target_dir("testbed-sidecar")?))
}

/// `cargo build -p filter-sidecar` into `target_dir`; returns the binary.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    cargo_build(
        &workspace_manifest(),
        &["-p", "filter-sidecar", "--bin", "filter-sidecar"],
        target_dir,
    )?;
    let path = target_dir.join("debug").join("filter-sidecar");
    if !path.is_file() {
        bail!("cargo build succeeded but {} is missing", path.display());
    }
    Ok(path)
}

/// A running `filter-sidecar` (killed on drop).
pub struct Sidecar {
    proc: Option<Proc>,
    binary: PathBuf,
    config_path: PathBuf,
    backend_url: String,
    grpc: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    starts: u32,
}

impl Sidecar {
    /// Starts the sidecar with `config` (the plugin's JSON, `sidecar` section allowed) calling the
    /// backend at `backend_url`, gRPC on an ephemeral port.
    pub async fn start(config: &Json, backend_url: &str) -> Result<Sidecar> {
        let binary = tokio::task::spawn_blocking(binary).await??;
        let dir = test_dir("sidecar")?;
        let config_path = dir.path().join("sidecar.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let mut s = Sidecar {
            proc: None,
            binary,
            config_path,
            backend_url: backend_url.to_string(),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            starts: 0,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--listen")
            .arg(self.grpc.to_string())
            .args(["--metrics-listen", "127.0.0.1:0", "--config"])
            .arg(&self.config_path)
            .args(["--backend-url", &self.backend_url])
            .env("RUST_LOG", "info,filter_sidecar=debug");
        let name = format!("filter-sidecar-{}", self.starts);
        let mut proc = Proc::spawn(&name, cmd, self.dir.path())?;
        let line = proc.wait_for_log_line("READY ", START_TIMEOUT).await?;
        self.grpc = ready_addr(&line, "grpc=")?;
        self.metrics = ready_addr(&line, "metrics=")?;
        self.proc = Some(proc);
        Ok(())
    }

    /// The gRPC (ext_proc) address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The `/metrics` address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The process id while it runs (for `/proc` readings: CPU time, peak memory).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Kills it (SIGKILL, no drain).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Sends SIGTERM (the drain path) and waits up to `timeout` for it to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(p) = self.proc.as_mut() else {
            bail!("the sidecar is not running");
        };
        let pid = i32::try_from(p.pid())?;
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let status = p
            .wait_until("the sidecar to exit", timeout, || async { None::<()> })
            .await;
        match (status, p.exited()) {
            (_, Some(s)) => Ok(s),
            (Err(e), None) => Err(e),
            (Ok(()), None) => bail!("the sidecar did not exit"),
        }
    }

    /// Starts it again on the same gRPC port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> Result<String> {
        let r = send(
            self.metrics,
            &RawRequest::new("GET", "/metrics"),
            Duration::from_secs(5),
        )
        .await?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(r.body_str())
    }

    /// The engine's counters (`transparent_cache_<name>_total`) by engine counter name.
    pub async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_metrics(&self.metrics_text().await?)
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("transparent_cache_")
                    .and_then(|k| k.strip_suffix("_total"))
                    .map(|k| (k.to_string(), v))
            })
            .collect())
    }

    /// The whole log of the current process.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The last `n` log lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_else(|| "(sidecar not running)".into())
    }
}

/// Prometheus text → metric name → value (unlabelled samples only).
pub fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// The Envoy cluster name for a sidecar at `addr`.
pub fn cluster_name(addr: SocketAddr) -> String {
    format!("ext_proc_sidecar_{}", addr.port())
}

/// A static HTTP/2 (gRPC) cluster snippet for a sidecar at `addr`.
pub fn cluster(addr: SocketAddr) -> String {
    crate::envoy_config::static_cluster(
        &cluster_name(addr),
        addr,
        "0.25s",
        "http2_protocol_options",
    )
}

/// The `envoy.filters.http.ext_proc` snippet calling the sidecar at `addr`; `message_timeout`
/// must cover the lookup (`backend.lookup_timeout_ms`) plus a margin.
pub fn http_filter(addr: SocketAddr, message_timeout_ms: u64) -> String {
    format!(
        r#"name: envoy.filters.http.ext_proc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
  grpc_service:
    envoy_grpc:
      cluster_name: {cluster}
  failure_mode_allow: true
  message_timeout: {secs}.{millis:03}s
  allow_mode_override: true
  processing_mode:
    request_header_mode: SEND
    response_header_mode: SEND
    request_body_mode: BUFFERED_PARTIAL
    response_body_mode: STREAMED
    request_trailer_mode: SKIP
    response_trailer_mode: SKIP
"#,
        cluster = cluster_name(addr),
        secs = message_timeout_ms / 1000,
        millis = message_timeout_ms % 1000,
    )
}

/// `message_timeout` for a plugin config: its lookup timeout (default 500 ms) plus 500 ms.
pub fn message_timeout_ms(plugin_config: &Json) -> u64 {
    plugin_config["backend"]["lookup_timeout_ms"]
        .as_u64()
        .unwrap_or(500)
        .saturating_add(500)
}

/// Where the shape finds a site's sidecar: `plugin_config.sidecar.listen`.
pub fn site_addr(plugin_config: &Json) -> Result<SocketAddr> {
    plugin_config["sidecar"]["listen"]
        .as_str()
        .context("the sidecar shape needs `sidecar.listen` (the sidecar's gRPC address) in the site's plugin config")?
        .parse()
        .context("sidecar.listen")
}
