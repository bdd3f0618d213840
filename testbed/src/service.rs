//! Starting one of the testbed's own server binaries and talking to its
//! control listener.

use crate::http1::server::{serve, Handler};
use crate::proc::{test_dir, Proc};
use crate::raw::{Body, RawRequest, RawResponse};
use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a testbed binary may take to print its READY line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one control-API call.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A running testbed binary with its proxied and control addresses.
pub struct Service {
    /// The process (killed on drop). Declared first so it dies before the dir goes.
    pub proc: Proc,
    /// Address of the listener that tests (or Envoy) send traffic to.
    pub addr: SocketAddr,
    /// Address of the control listener.
    pub control: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The address after `key` (e.g. `proxied=`) in a process's `READY` line.
pub(crate) fn ready_addr(line: &str, key: &str) -> Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .ok_or_else(|| anyhow!("no {key} in READY line {line:?}"))?
        .parse()
        .with_context(|| format!("bad address in READY line {line:?}"))
}

impl Service {
    /// Spawns `binary --listen 127.0.0.1:0 --control 127.0.0.1:0` and waits
    /// for its `READY proxied=.. control=..` line.
    pub async fn start(name: &str, binary: &Path) -> Result<Service> {
        let dir = test_dir(name)?;
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"]);
        let mut proc = Proc::spawn(name, cmd, dir.path())?;
        let line = proc.wait_for_log_line("READY ", START_TIMEOUT).await?;
        let addr = ready_addr(&line, "proxied=")?;
        let control = ready_addr(&line, "control=")?;
        Ok(Service {
            proc,
            addr,
            control,
            _dir: dir,
        })
    }

    /// Calls the control API; non-2xx answers are errors.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<RawResponse> {
        let mut req = RawRequest::new(method, path);
        if let Some(body) = json {
            req = req
                .header("content-type", "application/json")
                .body(Body::ContentLength(vec![body]));
        }
        let resp = crate::raw::send(self.control, &req, CONTROL_TIMEOUT)
            .await
            .with_context(|| format!("{} control API", self.proc.name()))?;
        if !(200..300).contains(&resp.status) {
            bail!(
                "{} control {method} {path} answered {}: {}",
                self.proc.name(),
                resp.status,
                resp.body_str()
            );
        }
        Ok(resp)
    }

    /// PUTs a JSON value.
    pub async fn put_json(&self, path: &str, value: &impl serde::Serialize) -> Result<()> {
        self.call("PUT", path, Some(serde_json::to_vec(value)?))
            .await?;
        Ok(())
    }

    /// GETs and parses JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None).await?.json()
    }

    /// Sends a DELETE.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call("DELETE", path, None).await?;
        Ok(())
    }
}

/// The server side of a testbed binary: binds both listeners, prints `READY proxied=<addr>
/// control=<addr>` (control omitted when not requested) and serves until the process ends.
pub(crate) async fn run<P: Handler, C: Handler>(
    listen: SocketAddr,
    control: Option<SocketAddr>,
    proxied_handler: P,
    control_handler: C,
) -> Result<()> {
    let proxied = TcpListener::bind(listen).await?;
    let mut line = format!("READY proxied={}", proxied.local_addr()?);
    let control = match control {
        Some(addr) => {
            let l = TcpListener::bind(addr).await?;
            line.push_str(&format!(" control={}", l.local_addr()?));
            Some(l)
        }
        None => None,
    };
    println!("{line}");
    let p = tokio::spawn(serve(proxied, Arc::new(proxied_handler)));
    if let Some(c) = control {
        tokio::spawn(serve(c, Arc::new(control_handler)));
    }
    p.await??;
    Ok(())
}
