//! The callouts the engine asks a host to make: lookups (`/v1/inject`) and records
//! (`/v1/traces`), with the backend's path, headers, auth and timeout.

use super::Engine;

/// An HTTP call the host makes to the backend cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// Envoy cluster name.
    pub cluster: String,
    /// Request headers, pseudo-headers (`:method`, `:path`, `:authority`) first.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

impl Callout {
    /// The headers as `(name, value)` string pairs, as the hosts' callout APIs take them.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// A header of the callout by name (`:path`, `:authority`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a record callout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordResult {
    Status(u16),
    Failed,
    /// The host had to drop it (e.g. its queue was full).
    Dropped,
}

impl Engine {
    pub(super) fn callout(
        &self,
        path: &str,
        accept: bool,
        body: Vec<u8>,
        timeout_ms: u64,
    ) -> Callout {
        let b = &self.config.backend;
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), b.authority.clone()),
            (
                "content-type".to_string(),
                "application/x-protobuf".to_string(),
            ),
        ];
        if accept {
            headers.push(("accept".to_string(), "application/x-protobuf".to_string()));
        }
        if let Some(key) = &b.api_key {
            let value = if b.auth_header == "authorization" {
                format!("Bearer {key}")
            } else {
                key.clone()
            };
            headers.push((b.auth_header.clone(), value));
        }
        Callout {
            cluster: b.cluster.clone(),
            headers,
            body,
            timeout_ms,
        }
    }
}
