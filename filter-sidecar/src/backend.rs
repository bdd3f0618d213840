//! The sidecar's own HTTP client to the backend: one pooled client (HTTP/1.1, or HTTP/2 when TLS
//! negotiates it), the callout's path, headers and timeout from the engine.

use std::time::Duration;

use filter_core::{Callout, LookupFailure};

/// Largest answer body read from the backend (a larger one is a lookup error).
pub const MAX_ANSWER_BYTES: usize = 72 * 1024 * 1024;

/// How one call to the backend ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    Answer {
        status: u16,
        content_type: Option<Vec<u8>>,
        body: Vec<u8>,
    },
    Failed(LookupFailure),
}

impl CallOutcome {
    /// The engine's view of it.
    pub fn as_lookup_result(&self) -> filter_core::LookupResult<'_> {
        match self {
            CallOutcome::Answer {
                status,
                content_type,
                body,
            } => filter_core::LookupResult::Answer {
                status: *status,
                content_type: content_type.as_deref(),
                body,
            },
            CallOutcome::Failed(f) => filter_core::LookupResult::Failed(*f),
        }
    }
}

/// Something that carries out callouts (the real client, or a fake in tests).
pub trait Caller: Send + Sync + 'static {
    fn call(&self, callout: Callout) -> impl std::future::Future<Output = CallOutcome> + Send;
}

/// The backend at a base URL (`http://host:port` or `https://host`).
#[derive(Debug, Clone)]
pub struct HttpBackend {
    client: reqwest::Client,
    base: String,
    plain_http: bool,
}

impl HttpBackend {
    pub fn new(base_url: &str) -> anyhow::Result<HttpBackend> {
        let base = base_url.trim_end_matches('/').to_string();
        let plain_http = base.starts_with("http://");
        if !plain_http && !base.starts_with("https://") {
            anyhow::bail!("backend URL {base_url:?} must start with http:// or https://");
        }
        // reqwest is built without a default crypto provider: use ring (no C toolchain beyond cc).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(HttpBackend {
            client,
            base,
            plain_http,
        })
    }

    async fn call_inner(&self, callout: &Callout) -> Result<CallOutcome, reqwest::Error> {
        let path = callout.header(":path").unwrap_or("/");
        let mut req = self
            .client
            .post(format!("{}{}", self.base, path))
            .timeout(Duration::from_millis(callout.timeout_ms.max(1)));
        for (name, value) in &callout.headers {
            if name.starts_with(':') {
                // Over plain HTTP, the configured authority names the backend (as Envoy's
                // `:authority` would); over TLS, the URL's host does (it is what the certificate
                // names).
                if name == ":authority" && self.plain_http && !value.is_empty() {
                    req = req.header("host", value.as_str());
                }
                continue;
            }
            req = req.header(name.as_str(), value.as_str());
        }
        let mut resp = req.body(callout.body.clone()).send().await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.as_bytes().to_vec());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len().saturating_add(chunk.len()) > MAX_ANSWER_BYTES {
                return Ok(CallOutcome::Failed(LookupFailure::Undecodable));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(CallOutcome::Answer {
            status,
            content_type,
            body,
        })
    }
}

impl Caller for HttpBackend {
    async fn call(&self, callout: Callout) -> CallOutcome {
        let limit = Duration::from_millis(callout.timeout_ms.max(1).saturating_add(50));
        match tokio::time::timeout(limit, self.call_inner(&callout)).await {
            Err(_) => CallOutcome::Failed(LookupFailure::Timeout),
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if e.is_timeout() => CallOutcome::Failed(LookupFailure::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "backend call failed");
                CallOutcome::Failed(LookupFailure::Transport)
            }
        }
    }
}
