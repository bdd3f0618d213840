//! The real `backend` (the self-hosted Softprobe-compatible backend of this workspace) as a
//! process on 127.0.0.1 with its own data folder: the peer the end-to-end tests record into and
//! get hits from, instead of the fake backend.

use crate::artifact::{cargo_build, private_target_dir, workspace_manifest, Artifact};
use crate::proc::{free_port, Proc};
use crate::raw::{self, Body, RawRequest, RawResponse};
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

static BINARY: Artifact = Artifact::new("BACKEND_BIN");
const START_TIMEOUT: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `backend` binary (`BACKEND_BIN`, else built once per process).
pub fn binary() -> Result<PathBuf> {
    BINARY.file(|| build(&private_target_dir("testbed-backend")?))
}

fn build(target_dir: &Path) -> Result<PathBuf> {
    cargo_build(
        &workspace_manifest(),
        &["-p", "backend", "--bin", "backend"],
        target_dir,
    )?;
    let path = target_dir.join("debug").join("backend");
    if !path.is_file() {
        bail!("cargo build succeeded but {} is missing", path.display());
    }
    Ok(path)
}

/// A running `backend serve` (killed on drop) with a fresh data folder.
pub struct RealBackend {
    proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RealBackend {
    /// Starts the backend on an ephemeral port with an empty store.
    pub async fn start() -> Result<RealBackend> {
        Self::start_with(&[]).await
    }

    /// [`RealBackend::start`] with more `serve` flags (e.g. `--max-store-bytes`).
    pub async fn start_with(extra: &[&str]) -> Result<RealBackend> {
        let bin = tokio::task::spawn_blocking(binary).await??;
        let dir = crate::proc::test_dir("backend-")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", &addr.to_string(), "--data"])
            .arg(dir.path().join("data"))
            .args(extra);
        let mut proc = Proc::spawn("backend", cmd, dir.path())?;
        proc.wait_for_port(addr, START_TIMEOUT).await?;
        Ok(RealBackend {
            proc,
            addr,
            _dir: dir,
        })
    }

    /// The process id (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Where it serves `/v1/inject`, `/v1/traces` and `/admin/*`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `POST path` with these headers (besides `host` and the length) and body.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<RawResponse> {
        let mut req = RawRequest::new("POST", path);
        for (n, v) in headers {
            req = req.header(n, v);
        }
        raw::send(
            self.addr,
            &req.body(Body::ContentLength(vec![body])),
            CALL_TIMEOUT,
        )
        .await
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Json> {
        let r = raw::send(self.addr, &RawRequest::new("GET", path), CALL_TIMEOUT).await?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body_str());
        }
        r.json().with_context(|| format!("GET {path}"))
    }

    /// How many recordings the store holds.
    pub async fn recordings(&self) -> Result<u64> {
        let page = self.get_json("/admin/recordings?limit=1").await?;
        page["total"]
            .as_u64()
            .context("`total` missing from /admin/recordings")
    }

    /// Waits until the store holds at least `n` recordings; returns how many it holds.
    pub async fn wait_for_recordings(&self, n: u64, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.recordings().await?;
            if got >= n || Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}
