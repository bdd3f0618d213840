//! `up` (`make up`): the product on one machine. Starts the real backend, the demo upstream and
//! Envoy with the wasm plugin (`hold_headers`; or the sidecar, or the native module: `UP_SHAPE`),
//! prints how to try it, then one line per request until Ctrl-C or SIGTERM, and stops everything.
//!
//! The backend runs with an admin token and an ingest key, made once into `<data>/secrets/`
//! (the filter sends the ingest key as its `api_key`), so its admin API answers 401 without the
//! token, as in a deployment.
//!
//! Environment:
//! * `UPSTREAM=host:port` — route the listener there instead of starting the demo upstream.
//! * `DATA=<dir>` — the backend's data folder (default `<repo>/.data/backend`, kept between runs).
//! * `TRANSPARENT_CACHE_WASM=<file>` — the plugin (default: built with `scripts/build-wasm.sh`).
//! * `BACKEND_BIN=<file>` — the backend binary (default: `backend` next to this binary).
//! * `UP_SHAPE=sidecar` — Envoy with `ext_proc` and the `filter-sidecar` process instead of the
//!   wasm plugin (`FILTER_SIDECAR_BIN=<file>`, default: `filter-sidecar` next to this binary).
//! * `UP_SHAPE=native` — Envoy with the dynamic module (`filter-native`, `hold_headers`) instead
//!   of the wasm plugin; Envoy gets `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`. The module is built
//!   with `cargo build -p filter-native` into `<target>/testbed-native`, or taken from
//!   `TRANSPARENT_CACHE_NATIVE_DIR=<folder holding libtransparent_cache.so>`.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testbed::shape::{AccessLog, BACKEND_CLUSTER};
use testbed::{Envoy, Layout, Proc, Shape, Site};
use tokio::signal::unix::{signal, SignalKind};

const LISTENER: &str = "127.0.0.1:15001";
const ADMIN_PORT: u16 = 15000;
const BACKEND: &str = "127.0.0.1:4318";
const DEMO_UPSTREAM: &str = "127.0.0.1:8080";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What the plugin's Envoy counters start with.
const STAT_FILTER: &str = "wasmcustom.transparent_cache";
/// What the native module's Envoy counters start with (its `metrics_namespace`).
const NATIVE_STAT_FILTER: &str = "transparent_cache.";

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} not found (build it with `cargo build -p {}` or set {env})",
            p.display(),
            if name == "backend" {
                "backend"
            } else {
                "testbed"
            }
        );
    }
    Ok(p)
}

/// The secret in `dir/name`, made (32 random bytes as hex, readable by this user only) when it
/// does not exist yet.
fn secret(dir: &Path, name: &str) -> Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let path = dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_string());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, hex.as_bytes()))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(hex)
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

async fn ensure_free(addr: SocketAddr, what: &str) -> Result<()> {
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        bail!("{addr} ({what}) is already in use: stop whatever listens there first");
    }
    Ok(())
}

/// SIGTERM, a short wait, then the drop kills whatever is left.
async fn stop(mut proc: Proc) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(proc.pid() as i32, libc::SIGTERM);
    }
    for _ in 0..50 {
        if proc.exited().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn label(verdict: &str) -> String {
    match verdict.split_once(':') {
        None if verdict == "-" || verdict.is_empty() => "-".into(),
        None => verdict.to_ascii_uppercase(),
        Some((kind, why)) => format!("{}({why})", kind.to_ascii_uppercase()),
    }
}

/// `verdict method path status duration` (the access-log format) as one readable line.
fn pretty(line: &str) -> String {
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        [verdict, method, path, status, ms] => {
            format!(
                "{:<22} {method:<6} {path} -> {status} in {ms} ms",
                label(verdict)
            )
        }
        _ => line.to_string(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let listener = resolve(LISTENER)?;
    let backend_addr = resolve(BACKEND)?;
    ensure_free(listener, "the Envoy listener").await?;
    ensure_free(
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
        "Envoy admin",
    )
    .await?;
    ensure_free(backend_addr, "the backend").await?;

    let shape = match std::env::var("UP_SHAPE").unwrap_or_default().trim() {
        "" | "wasm" => Shape::Wasm { hold_headers: true },
        "sidecar" => Shape::Sidecar,
        "native" => Shape::Native { hold_headers: true },
        other => bail!("UP_SHAPE={other:?}: expected `wasm` (default), `sidecar` or `native`"),
    };
    let wasm = match shape {
        Shape::Wasm { .. } => {
            Some(tokio::task::spawn_blocking(testbed::plugin::wasm_artifact).await??)
        }
        _ => None,
    };
    // The native module's search path (building the module the first time).
    let envoy_env = tokio::task::spawn_blocking(move || shape.envoy_env()).await??;
    let run_dir = tempfile::Builder::new()
        .prefix("transparent-cache-up-")
        .tempdir()?;

    // The real backend.
    let data = std::env::var_os("DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".data/backend"));
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    // Secrets, as a deployment has them: the admin token guards `/admin/*`, the ingest key
    // `/v1/*` (the filter sends it as `api_key`). Made once, kept beside the data.
    let secrets = data.join("secrets");
    secret(&secrets, "admin-token")?;
    let ingest_key = secret(&secrets, "ingest-key")?;
    let mut cmd = Command::new(sibling_binary("backend", "BACKEND_BIN")?);
    cmd.args(["serve", "--listen", BACKEND, "--data"])
        .arg(&data)
        .arg("--admin-token-file")
        .arg(secrets.join("admin-token"))
        .arg("--ingest-key-file")
        .arg(secrets.join("ingest-key"));
    let mut backend = Proc::spawn("backend", cmd, run_dir.path())?;
    backend.wait_for_port(backend_addr, START_TIMEOUT).await?;

    // The upstream: the one given, or the demo upstream.
    let (upstream, demo) = match std::env::var("UPSTREAM") {
        Ok(u) if !u.trim().is_empty() => (resolve(u.trim())?, None),
        _ => {
            let addr = resolve(DEMO_UPSTREAM)?;
            ensure_free(addr, "the demo upstream").await?;
            let mut cmd = Command::new(sibling_binary("demo-upstream", "DEMO_UPSTREAM_BIN")?);
            cmd.args(["--listen", DEMO_UPSTREAM]);
            let mut p = Proc::spawn("demo-upstream", cmd, run_dir.path())?;
            p.wait_for_log_line("READY ", START_TIMEOUT).await?;
            (addr, Some(p))
        }
    };

    // Envoy with the plugin.
    let access_log = run_dir.path().join("access.log");
    std::fs::write(&access_log, b"")?;
    let mut plugin_config = json!({
        "backend": {"cluster": BACKEND_CLUSTER, "authority": "localhost", "api_key": ingest_key},
        "service_name": "demo",
    });
    // The sidecar shape: the same config, served by a filter-sidecar process Envoy calls.
    let sidecar = match shape {
        Shape::Sidecar => {
            let bin = sibling_binary("filter-sidecar", "FILTER_SIDECAR_BIN")?;
            std::env::set_var("FILTER_SIDECAR_BIN", &bin);
            let s = testbed::sidecar::Sidecar::start(&plugin_config, &format!("http://{BACKEND}"))
                .await?;
            plugin_config["sidecar"] = json!({"listen": s.grpc_addr().to_string()});
            Some(s)
        }
        _ => None,
    };
    let layout = Layout {
        admin_port: ADMIN_PORT,
        upstream,
        backend: backend_addr,
        refused: None,
        sites: vec![Site {
            name: "main".into(),
            port: listener.port(),
            plugin_config,
            skip_without_session: false,
        }],
        access_log: Some(AccessLog {
            path: access_log.clone(),
            format: shape.verdict_log_format().to_string(),
        }),
    };
    if let Some(wasm) = &wasm {
        std::env::set_var("TRANSPARENT_CACHE_WASM", wasm);
    }
    let yaml = shape.envoy_yaml(&layout)?;
    let envoy = Envoy::start_with_env(&yaml, &[], &envoy_env).await?;

    println!(
        "transparent-cache is up: Envoy {listener} -> upstream {upstream}, backend {BACKEND} (data {}), admin 127.0.0.1:{ADMIN_PORT}",
        data.display()
    );
    println!("try it:");
    println!(
        "  curl -si -X POST {listener}/orders -H 'content-type: application/json' -d '{{\"sku\":\"A-1\"}}'   # first call: MISS, recorded"
    );
    println!(
        "  curl -si -X POST {listener}/orders -H 'content-type: application/json' -d '{{\"sku\":\"A-1\"}}'   # same call: HIT (x-softprobe-cache: hit)"
    );
    match &sidecar {
        Some(s) => println!(
            "  curl -s {}/metrics | grep transparent_cache   # the ext_proc sidecar (gRPC {})",
            s.metrics_addr(),
            s.grpc_addr()
        ),
        None => println!(
            "  curl -s 127.0.0.1:{ADMIN_PORT}/stats | grep {}",
            match shape {
                Shape::Native { .. } => NATIVE_STAT_FILTER,
                _ => STAT_FILTER,
            }
        ),
    }
    println!(
        "  curl -s -H \"authorization: Bearer $(cat {})\" {BACKEND}/admin/recordings   # the backend's admin API (401 without the token)",
        secrets.join("admin-token").display()
    );
    println!("(Ctrl-C stops everything)");

    // One line per request, from the access log, until a signal.
    let mut offset = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let bytes = std::fs::read(&access_log).unwrap_or_default();
                if let Some(new) = bytes.get(offset..) {
                    if let Some(end) = new.iter().rposition(|&b| b == b'\n') {
                        let text = String::from_utf8_lossy(&new[..=end]).into_owned();
                        for line in text.lines().filter(|l| !l.is_empty()) {
                            println!("{}", pretty(line));
                        }
                        offset += end + 1;
                    }
                }
            }
        }
    }
    println!("stopping...");
    drop(envoy);
    if let Some(mut s) = sidecar {
        let _ = s.terminate(Duration::from_secs(5)).await;
    }
    if let Some(p) = demo {
        stop(p).await;
    }
    stop(backend).await;
    println!("stopped");
    Ok(())
}
