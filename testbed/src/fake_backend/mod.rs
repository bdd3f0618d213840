//! The fake Softprobe backend: `POST /v1/inject` and `POST /v1/traces` that
//! answer well or badly on command (see the `fake-backend` binary).

pub mod model;
pub mod server;

use crate::service::Service;
use anyhow::Result;
use model::{Behaviour, Received};
use std::net::SocketAddr;
use std::path::Path;

/// A running `fake-backend` process (killed on drop) and its control client.
pub struct FakeBackend {
    svc: Service,
}

impl FakeBackend {
    /// Starts the binary found by [`crate::bins::locate`] on ephemeral ports.
    pub async fn start() -> Result<Self> {
        let bin = tokio::task::spawn_blocking(|| crate::bins::locate("fake-backend")).await??;
        Self::start_with_binary(&bin).await
    }

    /// Starts the given `fake-backend` binary on ephemeral ports.
    pub async fn start_with_binary(binary: &Path) -> Result<Self> {
        Ok(Self {
            svc: Service::start("fake-backend", binary).await?,
        })
    }

    /// Address serving `/v1/inject` and `/v1/traces`.
    pub fn addr(&self) -> SocketAddr {
        self.svc.addr
    }

    /// Address of the control listener.
    pub fn control_addr(&self) -> SocketAddr {
        self.svc.control
    }

    /// Sets how `/v1/inject` answers (default: miss).
    pub async fn set_inject(&self, b: &Behaviour) -> Result<()> {
        self.svc.put_json("/inject-behaviour", b).await
    }

    /// Sets how `/v1/traces` answers (default: 200).
    pub async fn set_traces(&self, b: &Behaviour) -> Result<()> {
        self.svc.put_json("/traces-behaviour", b).await
    }

    /// Everything received on the backend listener, in order.
    pub async fn received(&self) -> Result<Vec<Received>> {
        self.svc.get_json("/received").await
    }

    /// What was received on one path, e.g. `/v1/traces`.
    pub async fn received_on(&self, path: &str) -> Result<Vec<Received>> {
        Ok(self
            .received()
            .await?
            .into_iter()
            .filter(|r| r.path == path)
            .collect())
    }

    /// Every span received on `/v1/traces`, in order (a filter sends records in batches: one
    /// OTLP protobuf `TracesData` holding several); a body that does not decode is an error.
    pub async fn spans(&self) -> Result<Vec<filter_core::otlp::Span>> {
        let mut out = Vec::new();
        for (i, r) in self.received_on("/v1/traces").await?.iter().enumerate() {
            let t =
                filter_core::codec::decode_traces(&r.body_base64, filter_core::Format::Protobuf)
                    .map_err(|e| anyhow::anyhow!("record request #{i} on /v1/traces: {e}"))?;
            out.extend(t.spans().map(|(_, s)| s.clone()));
        }
        Ok(out)
    }

    /// Records received on `/v1/traces`: [`FakeBackend::spans`] counted.
    pub async fn records(&self) -> Result<usize> {
        Ok(self.spans().await?.len())
    }

    /// Forgets what was received.
    pub async fn clear_received(&self) -> Result<()> {
        self.svc.delete("/received").await
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
