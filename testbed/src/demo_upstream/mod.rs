//! The demo upstream: an echo server with a scriptable answer and a record
//! of every request it received (see the `demo-upstream` binary).

pub mod model;
pub mod server;

use crate::service::Service;
use anyhow::Result;
use model::{RecordedRequest, Script, Stats};
use std::net::SocketAddr;
use std::path::Path;

/// A running `demo-upstream` process (killed on drop) and its control client.
pub struct DemoUpstream {
    svc: Service,
}

impl DemoUpstream {
    /// Starts the binary found by [`crate::bins::locate`] on ephemeral ports.
    pub async fn start() -> Result<Self> {
        let bin = tokio::task::spawn_blocking(|| crate::bins::locate("demo-upstream")).await??;
        Self::start_with_binary(&bin).await
    }

    /// Starts the given `demo-upstream` binary on ephemeral ports.
    pub async fn start_with_binary(binary: &Path) -> Result<Self> {
        Ok(Self {
            svc: Service::start("demo-upstream", binary).await?,
        })
    }

    /// Address of the proxied (echo/script) listener.
    pub fn addr(&self) -> SocketAddr {
        self.svc.addr
    }

    /// Address of the control listener.
    pub fn control_addr(&self) -> SocketAddr {
        self.svc.control
    }

    /// Sets the canned answer for subsequent proxied requests.
    pub async fn set_script(&self, script: &Script) -> Result<()> {
        self.svc.put_json("/script", script).await
    }

    /// Goes back to echo answers.
    pub async fn clear_script(&self) -> Result<()> {
        self.svc.delete("/script").await
    }

    /// Every proxied request received so far, in order.
    pub async fn requests(&self) -> Result<Vec<RecordedRequest>> {
        self.svc.get_json("/requests").await
    }

    /// Forgets the recorded requests.
    pub async fn clear_requests(&self) -> Result<()> {
        self.svc.delete("/requests").await
    }

    /// Number of proxied requests answered so far.
    pub async fn served(&self) -> Result<u64> {
        Ok(self.svc.get_json::<Stats>("/stats").await?.served)
    }

    /// The process's stdout/stderr log.
    pub fn log(&self) -> String {
        self.svc.proc.log()
    }

    /// The last `n` log lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        self.svc.proc.log_tail(n)
    }
}
