//! JSON shapes of the demo upstream (echo body and control API).

use crate::header::{base64_bytes, HeaderField};
use serde::{Deserialize, Serialize};

/// The JSON echo the demo upstream answers with when no script is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Echo {
    /// 1-based count of answered requests in this process.
    pub serial: u64,
    /// Request method.
    pub method: String,
    /// Request target (path and query) as received.
    pub path: String,
    /// Request headers in wire order.
    pub headers: Vec<HeaderField>,
    /// Body as text, or base64 when `body_base64`.
    pub body: String,
    /// True when the body was not UTF-8 and `body` is base64.
    pub body_base64: bool,
}

impl Echo {
    /// The body bytes (decoding base64 when needed).
    pub fn body_bytes(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        if self.body_base64 {
            Ok(base64::engine::general_purpose::STANDARD.decode(&self.body)?)
        } else {
            Ok(self.body.clone().into_bytes())
        }
    }
}

/// A canned answer for proxied requests (`PUT /script`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Script {
    /// Status code.
    pub status: u16,
    /// Response headers in order (`x-demo-serial` is appended).
    #[serde(default)]
    pub headers: Vec<HeaderField>,
    /// Body bytes, base64 in JSON.
    #[serde(default, with = "base64_bytes")]
    pub body_base64: Vec<u8>,
    /// Trailers: when any, the body is sent chunked and these follow it.
    #[serde(default)]
    pub trailers: Vec<HeaderField>,
}

/// One request received on the proxied listener (`GET /requests`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Serial of the answer; `None` when the body never completed.
    pub serial: Option<u64>,
    /// Request method.
    pub method: String,
    /// Request target as received (lossily decoded).
    pub path: String,
    /// Request target, exact bytes (base64 in JSON).
    #[serde(with = "base64_bytes", default)]
    pub path_bytes: Vec<u8>,
    /// 0 = HTTP/1.0, 1 = HTTP/1.1.
    pub http_minor_version: u8,
    /// Headers in wire order, exact bytes.
    pub headers: Vec<HeaderField>,
    /// Body bytes received (decoded from chunked), base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub body_base64: Vec<u8>,
    /// False when the client vanished before the body ended.
    pub complete: bool,
    /// Trailer fields of a chunked body, in order.
    #[serde(default)]
    pub trailers: Vec<HeaderField>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive), lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        crate::header::find(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// `GET /stats`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Proxied requests answered so far.
    pub served: u64,
}
