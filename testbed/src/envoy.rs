//! The real Envoy: locating the pinned binary and running it for a test.

use crate::artifact::{script_file, Artifact};
use crate::proc::{test_dir, Proc};
use crate::raw::{send, RawRequest};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long Envoy may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one admin call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

static BINARY: Artifact = Artifact::new("ENVOY_BIN");
static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(1);

/// Path of the pinned Envoy binary: `ENVOY_BIN` if set, else what
/// `scripts/ensure-envoy.sh` prints (it installs the version from
/// `.envoy-version` into the cache folder when missing). Cached per process.
pub fn binary() -> Result<PathBuf> {
    BINARY.file(|| script_file("ensure-envoy.sh", &[], &[]))
}

/// A base id unique among this process's Envoys and unlikely to collide with
/// other processes' (Envoy multiplies it by 10 into a u32, so stay < 4e8).
fn base_id() -> u32 {
    let n = NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 1000;
    (std::process::id() % 300_000) * 1000 + n
}

/// A running Envoy (killed on drop) with its admin and listener addresses.
pub struct Envoy {
    proc: Proc,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    log_path: PathBuf,
    base_id: u32,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Writes `config_yaml`, starts Envoy with `--base-id <unique>
    /// --concurrency 1 -l info --log-path <dir>/envoy.log`, and waits until
    /// the admin answers `/ready` with 200 and every listener accepts TCP.
    /// Ports set to 0 in the config are fine: the real ones are discovered.
    pub async fn start(config_yaml: &str) -> Result<Envoy> {
        Self::start_with_args(config_yaml, &[]).await
    }

    /// Like [`Envoy::start`] with extra command-line arguments.
    pub async fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Result<Envoy> {
        Self::start_with_env(config_yaml, extra_args, &[]).await
    }

    /// Like [`Envoy::start_with_args`] with extra environment variables for the Envoy process
    /// (e.g. `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    pub async fn start_with_env(
        config_yaml: &str,
        extra_args: &[&str],
        env: &[(String, String)],
    ) -> Result<Envoy> {
        let bin = tokio::task::spawn_blocking(binary).await??;
        let mut last_err = None;
        for _ in 0..3 {
            match Self::start_once(&bin, config_yaml, extra_args, env).await {
                Ok(e) => return Ok(e),
                Err(e) if format!("{e:#}").contains("unable to bind domain socket") => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("envoy did not start")))
    }

    async fn start_once(
        bin: &Path,
        config_yaml: &str,
        extra_args: &[&str],
        env: &[(String, String)],
    ) -> Result<Envoy> {
        let dir = test_dir("envoy")?;
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, config_yaml)?;
        let log_path = dir.path().join("envoy.log");
        let admin_file = dir.path().join("admin-address");
        let base_id = base_id();
        // `TESTBED_ENVOY_CPUS=0` runs Envoy under `taskset -c 0` (the benches pin Envoy to one
        // core and everything else to the others); taskset execs Envoy, so the pid is Envoy's.
        let mut cmd = match std::env::var("TESTBED_ENVOY_CPUS") {
            Ok(cpus) if !cpus.trim().is_empty() => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus.trim()]).arg(bin);
                c
            }
            _ => Command::new(bin),
        };
        cmd.arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string()])
            .args(["--concurrency", "1", "-l", "info"])
            // Flush the log file often so log() sees recent lines.
            .args(["--file-flush-interval-msec", "50"])
            .arg("--log-path")
            .arg(&log_path)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(extra_args)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn("envoy", cmd, dir.path())?;
        proc.add_log(log_path.clone());

        let admin: SocketAddr = proc
            .wait_until("the admin address file", START_TIMEOUT, || {
                let f = admin_file.clone();
                async move {
                    let s = std::fs::read_to_string(&f).ok()?;
                    s.trim().parse().ok()
                }
            })
            .await?;
        proc.wait_for_http_ok(admin, "/ready", START_TIMEOUT)
            .await?;
        let listeners = match listeners(admin).await {
            Ok(l) => l,
            Err(e) => bail!("{e:#}\n{}", proc.log_tail(40)),
        };
        for (_, addr) in &listeners {
            proc.wait_for_port(*addr, START_TIMEOUT).await?;
        }
        Ok(Envoy {
            proc,
            admin,
            listeners,
            log_path,
            base_id,
            _dir: dir,
        })
    }

    /// Admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Address of the first listener (the `main` listener of [`crate::envoy_config`]).
    pub fn listener_addr(&self) -> SocketAddr {
        self.listeners
            .first()
            .map(|(_, a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// All listeners as (name, address).
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The `--base-id` this Envoy runs with.
    pub fn base_id(&self) -> u32 {
        self.base_id
    }

    /// `GET` on the admin interface; the body as text (errors on non-200).
    pub async fn admin_get(&self, path: &str) -> Result<String> {
        let r = send(self.admin, &RawRequest::new("GET", path), ADMIN_TIMEOUT).await?;
        if r.status != 200 {
            bail!("admin GET {path} answered {}: {}", r.status, r.body_str());
        }
        Ok(r.body_str())
    }

    /// Counters and gauges from `/stats?format=json` (histograms left out).
    pub async fn stats(&self) -> Result<HashMap<String, u64>> {
        let text = self.admin_get("/stats?format=json").await?;
        parse_stats(&text)
    }

    /// One counter or gauge; 0 when absent.
    pub async fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stats().await?.get(name).copied().unwrap_or(0))
    }

    /// The Envoy log (`--log-path`, flushed every 50 ms).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the Envoy log contains `needle` (the log file is written
    /// in batches, so a line may show up a little after the event).
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let path = self.log_path.clone();
        self.proc
            .wait_until(&format!("{needle:?} in the envoy log"), timeout, || {
                let path = path.clone();
                async move {
                    let text = std::fs::read(&path).ok()?;
                    String::from_utf8_lossy(&text)
                        .contains(needle)
                        .then_some(())
                }
            })
            .await
    }

    /// The last `n` lines of stdout/stderr and of the Envoy log.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// The underlying process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

async fn listeners(admin: SocketAddr) -> Result<Vec<(String, SocketAddr)>> {
    let r = send(
        admin,
        &RawRequest::new("GET", "/listeners?format=json"),
        ADMIN_TIMEOUT,
    )
    .await?;
    let v: serde_json::Value = r.json()?;
    let mut out = Vec::new();
    for l in v["listener_statuses"].as_array().into_iter().flatten() {
        let name = l["name"].as_str().unwrap_or_default().to_string();
        let sa = &l["local_address"]["socket_address"];
        if let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) {
            let addr: SocketAddr = format!("{ip}:{port}")
                .parse()
                .with_context(|| format!("listener {name} address {ip}:{port}"))?;
            out.push((name, addr));
        }
    }
    Ok(out)
}

/// Parses admin `/stats?format=json` into name → value (numeric entries only).
pub fn parse_stats(text: &str) -> Result<HashMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(text).context("stats JSON")?;
    let mut out = HashMap::new();
    for s in v["stats"].as_array().into_iter().flatten() {
        if let (Some(n), Some(val)) = (s["name"].as_str(), s["value"].as_u64()) {
            out.insert(n.to_string(), val);
        }
    }
    Ok(out)
}
