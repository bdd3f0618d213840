//! The setups every Envoy bench compares: Envoy without the filter, and the filter in each of its
//! hosts, each as a testbed [`Shape`] in a real Envoy (one worker).

use crate::servers::Servers;
use anyhow::{bail, Result};
use serde_json::{json, Value as Json};
use testbed::shape::{Layout, Site, BACKEND_CLUSTER};
use testbed::sidecar::Sidecar;
use testbed::{Envoy, Shape};

/// One setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Envoy, no filter: the baseline every ratio is against.
    NoFilter,
    /// The proxy-wasm plugin on V8, `request_mode: hold_headers`.
    WasmHold,
    /// The proxy-wasm plugin on V8, `request_mode: stream_headers`.
    WasmStream,
    /// The Envoy dynamic module (native shared object), `request_mode: hold_headers`.
    Native,
    /// The ext_proc sidecar (a gRPC hop per request phase).
    Sidecar,
}

impl Host {
    pub const ALL: [Host; 5] = [
        Host::NoFilter,
        Host::WasmHold,
        Host::WasmStream,
        Host::Native,
        Host::Sidecar,
    ];

    /// Short id used in bench ids, `BENCH_HOSTS` and table rows.
    pub fn key(self) -> &'static str {
        match self {
            Host::NoFilter => "no-filter",
            Host::WasmHold => "wasm-hold",
            Host::WasmStream => "wasm-stream",
            Host::Native => "native",
            Host::Sidecar => "sidecar",
        }
    }

    /// The testbed shape, or `None` while the testbed cannot run this host yet.
    pub fn shape(self) -> Option<Shape> {
        match self {
            Host::NoFilter => Some(Shape::NoFilter),
            Host::WasmHold => Some(Shape::Wasm { hold_headers: true }),
            Host::WasmStream => Some(Shape::Wasm {
                hold_headers: false,
            }),
            Host::Native => Some(Shape::Native { hold_headers: true }),
            Host::Sidecar => Some(Shape::Sidecar),
        }
    }

    /// The hosts to run: those with a shape, narrowed by `BENCH_HOSTS=no-filter,wasm-hold,...`
    /// (no-filter is always kept: every ratio needs it).
    pub fn selected() -> Vec<Host> {
        let wanted = std::env::var("BENCH_HOSTS").unwrap_or_default();
        Host::ALL
            .into_iter()
            .filter(|h| h.shape().is_some())
            .filter(|h| {
                *h == Host::NoFilter
                    || wanted.trim().is_empty()
                    || wanted.split(',').any(|w| w.trim() == h.key())
            })
            .collect()
    }

    /// The hosts the testbed cannot run yet (listed in the report, never given numbers).
    pub fn missing() -> Vec<Host> {
        Host::ALL
            .into_iter()
            .filter(|h| h.shape().is_none())
            .collect()
    }
}

/// The bench-only key of [`filter_config`] that makes [`start`] let Envoy skip the filter for
/// requests without a session (`Site::skip_without_session`); removed before the filter sees it.
const SKIP_KEY: &str = "bench_skip_without_session";

/// The filter configuration of the benches: `mode` (`record_and_inject`, or `inject_only` for
/// "record off"), bodies up to 2 MiB. `no_session` is the Softprobe setting
/// (`record_and_inject` with `require_session`) met by requests that carry no session, so the
/// filter must let them through without a backend call; `no_session_skip` is the same with
/// Envoy skipping the filter for them (an `ExtensionWithMatcher` on the session headers).
pub fn filter_config(mode: &str) -> Json {
    let (mode, require_session, skip) = match mode {
        "no_session" => ("record_and_inject", true, false),
        "no_session_skip" => ("record_and_inject", true, true),
        m => (m, false, false),
    };
    let mut config = json!({
        "mode": mode,
        "require_session": require_session,
        "service_name": "bench-app",
        "max_request_body_bytes": 2 * 1024 * 1024,
        "max_response_body_bytes": 2 * 1024 * 1024,
        "backend": {
            "cluster": BACKEND_CLUSTER,
            "authority": "backend.local",
            "lookup_timeout_ms": 5000,
            "record_timeout_ms": 5000
        }
    });
    if let (true, Json::Object(map)) = (skip, &mut config) {
        map.insert(SKIP_KEY.into(), Json::Bool(true));
    }
    config
}

/// One host running: Envoy, and for the sidecar host the `filter-sidecar` process.
pub struct Running {
    pub envoy: Envoy,
    pub sidecar: Option<Sidecar>,
}

impl Running {
    /// Envoy's listener.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.envoy.listener_addr()
    }

    /// Envoy's process id.
    pub fn envoy_pid(&mut self) -> u32 {
        self.envoy.proc().pid()
    }

    /// The sidecar's process id, for the sidecar host.
    pub fn sidecar_pid(&self) -> Option<u32> {
        self.sidecar.as_ref().and_then(Sidecar::pid)
    }

    /// The filter's counters: the sidecar's, else Envoy's stats.
    pub async fn counters(&self, shape: Shape) -> Result<std::collections::BTreeMap<String, u64>> {
        match &self.sidecar {
            Some(sc) => sc.counters().await,
            None => Ok(shape.counters(&self.envoy.stats().await?)),
        }
    }

    /// The last lines of Envoy's (and the sidecar's) log.
    pub fn log_tail(&self) -> String {
        let mut s = self.envoy.log_tail(30);
        if let Some(sc) = &self.sidecar {
            s.push_str(&sc.log_tail(30));
        }
        s
    }
}

/// Starts `host` in front of `servers` (Envoy, plus the sidecar process for the sidecar host),
/// with the filter configured by `config`.
pub async fn start(host: Host, servers: &Servers, config: &Json) -> Result<Running> {
    start_at(host, servers.upstream, servers.backend, config).await
}

/// [`start`] with the backend at `backend` (e.g. the real `backend` process).
pub async fn start_at(
    host: Host,
    upstream: std::net::SocketAddr,
    backend: std::net::SocketAddr,
    config: &Json,
) -> Result<Running> {
    let Some(shape) = host.shape() else {
        bail!("the testbed has no shape for {} yet", host.key());
    };
    let mut config = config.clone();
    let skip_without_session = config
        .as_object_mut()
        .and_then(|m| m.remove(SKIP_KEY))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let sidecar = if shape == Shape::Sidecar {
        let sc = Box::pin(Sidecar::start(&config, &format!("http://{backend}"))).await?;
        if let Json::Object(map) = &mut config {
            map.insert(
                "sidecar".into(),
                json!({"listen": sc.grpc_addr().to_string()}),
            );
        }
        Some(sc)
    } else {
        None
    };
    let layout = Layout {
        admin_port: 0,
        upstream,
        backend,
        refused: None,
        sites: vec![Site {
            name: "bench".into(),
            port: 0,
            plugin_config: config,
            skip_without_session,
        }],
        access_log: None,
    };
    let envoy =
        Envoy::start_with_env(&shape.envoy_yaml(&layout)?, &[], &shape.envoy_env()?).await?;
    Ok(Running { envoy, sidecar })
}

/// The request every Envoy bench sends: `POST` with `size` bytes of binary body.
pub fn request(size: usize) -> testbed::raw::RawRequest {
    let body = if size == 0 {
        testbed::raw::Body::ContentLength(Vec::new())
    } else {
        testbed::raw::Body::ContentLength(vec![crate::body(size)])
    };
    testbed::raw::RawRequest::new("POST", "/api/v1/items/42?expand=owner")
        .header("content-type", "application/octet-stream")
        .header("user-agent", "bench/1.0")
        .header("x-request-id", "7f8a2c1e-1f0e-4a9b-9d7e-0c6b2a1f3e4d")
        .body(body)
}

/// Checks one response: 200 with the expected body length, and, through a filter, a hit exactly
/// when `path` is [`crate::Path::Hit`] (the recorded answer carries `x-upstream: recorded`).
pub fn check(
    host: Host,
    path: crate::Path,
    size: usize,
    resp: &testbed::raw::RawResponse,
) -> Result<()> {
    if resp.status != 200 || resp.body.len() != size {
        bail!(
            "{}: expected 200 with {size} bytes, got {} with {}",
            host.key(),
            resp.status,
            resp.body.len()
        );
    }
    let served = resp.header("x-upstream").is_some();
    if host != Host::NoFilter && served != (path == crate::Path::Hit) {
        bail!(
            "{}: expected a {}, got the other path",
            host.key(),
            path.name()
        );
    }
    Ok(())
}

/// Builds the native module and the sidecar with optimizations (`--profile bench`) into
/// `<target>/bench-hosts` and points the testbed at them (`TRANSPARENT_CACHE_NATIVE_DIR`,
/// `FILTER_SIDECAR_BIN`), unless those are set already. The testbed's own builds are debug
/// builds, fine for tests but not for numbers set against the optimized wasm plugin. Call before
/// any thread starts.
pub fn prepare_optimized_hosts() -> Result<()> {
    use anyhow::Context as _;
    let native_set = std::env::var_os("TRANSPARENT_CACHE_NATIVE_DIR").is_some();
    let sidecar_set = std::env::var_os("FILTER_SIDECAR_BIN").is_some();
    if native_set && sidecar_set {
        return Ok(());
    }
    let target = crate::target_dir()?.join("bench-hosts");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building filter-native and filter-sidecar (--profile bench) for the benches");
    let out = std::process::Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(crate::repo_root().join("Cargo.toml"))
        .args([
            "--quiet",
            "--profile",
            "bench",
            "-p",
            "filter-native",
            "-p",
            "filter-sidecar",
        ])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .context("run cargo build -p filter-native -p filter-sidecar")?;
    if !out.status.success() {
        bail!(
            "building the native and sidecar hosts failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `--profile bench` writes to `release/`.
    let dir = target.join("release");
    if !native_set {
        std::env::set_var("TRANSPARENT_CACHE_NATIVE_DIR", &dir);
    }
    if !sidecar_set {
        std::env::set_var("FILTER_SIDECAR_BIN", dir.join("filter-sidecar"));
    }
    Ok(())
}
