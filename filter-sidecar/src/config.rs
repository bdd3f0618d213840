//! The sidecar's config file: the plugin's JSON (`filter_core::Config`) plus an optional `sidecar`
//! section, removed before the engine reads the rest.
//!
//! ```json
//! {
//!   "mode": "record_and_inject",
//!   "backend": {"authority": "o.softprobe.ai", "api_key": "..."},
//!   "sidecar": {
//!     "backend_url": "https://o.softprobe.ai",
//!     "listen": "127.0.0.1:50051",
//!     "metrics_listen": "127.0.0.1:9090",
//!     "record_queue_capacity": 1024,
//!     "record_concurrency": 4,
//!     "drain_timeout_ms": 5000,
//!     "keep_content_length_max_bytes": 1048576
//!   }
//! }
//! ```

use serde_json::Value;

/// Settings of the sidecar itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSettings {
    /// Base URL of the backend (`http://` or `https://`); default `https://<backend.authority>`.
    pub backend_url: Option<String>,
    /// gRPC listen address (the `--listen` flag wins).
    pub listen: Option<std::net::SocketAddr>,
    /// `/metrics` listen address (the `--metrics-listen` flag wins).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Same as the engine's `records.max_queued` (kept for existing configs; wins when set).
    pub record_queue_capacity: Option<usize>,
    /// Same as the engine's `records.max_in_flight` (kept for existing configs; wins when set).
    pub record_concurrency: Option<usize>,
    /// How long a SIGTERM waits for open streams and queued records.
    pub drain_timeout_ms: u64,
    /// Request bodies up to this many bytes with a `content-length` are read in ext_proc's
    /// BUFFERED mode and keep their `content-length` upstream (Envoy 1.28+ would otherwise send
    /// them chunked). Must not exceed Envoy's buffer limit for the listener
    /// (`per_connection_buffer_limit_bytes`, 1 MiB unless changed), or a body between the two
    /// gets Envoy's 413. 0: never (the upstream sees chunked requests).
    pub keep_content_length_max_bytes: u64,
}

/// Envoy's default listener buffer limit.
pub const DEFAULT_KEEP_CONTENT_LENGTH_MAX_BYTES: u64 = 1 << 20;

impl Default for SidecarSettings {
    fn default() -> Self {
        SidecarSettings {
            backend_url: None,
            listen: None,
            metrics_listen: None,
            record_queue_capacity: None,
            record_concurrency: None,
            drain_timeout_ms: 5000,
            keep_content_length_max_bytes: DEFAULT_KEEP_CONTENT_LENGTH_MAX_BYTES,
        }
    }
}

const KEYS: &[&str] = &[
    "backend_url",
    "listen",
    "metrics_listen",
    "record_queue_capacity",
    "record_concurrency",
    "drain_timeout_ms",
    "keep_content_length_max_bytes",
];

/// The engine's config and the sidecar's settings from one JSON document.
pub fn parse(bytes: &[u8]) -> anyhow::Result<(filter_core::Config, SidecarSettings)> {
    let mut doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("the config is not valid JSON: {e}"))?;
    let mut settings = SidecarSettings::default();
    if let Some(obj) = doc.as_object_mut() {
        // Envoy's ext_proc holds the request headers until the buffered body is answered, so
        // every request here is held: the engine must know it (its hold deadline starts with
        // the headers), whatever `request_mode` says.
        obj.insert("request_mode".into(), Value::from("hold_headers"));
        if let Some(section) = obj.remove("sidecar") {
            settings = parse_section(&section)?;
        }
        // The older names of `records.max_queued` / `max_in_flight`, merged before validation.
        for (key, value) in [
            ("max_queued", settings.record_queue_capacity),
            ("max_in_flight", settings.record_concurrency),
        ] {
            if let Some(n) = value {
                let records = obj
                    .entry("records")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(r) = records.as_object_mut() {
                    r.insert(key.into(), Value::from(n));
                }
            }
        }
    }
    let config = filter_core::Config::from_value(&doc)?;
    Ok((config, settings))
}

fn parse_section(v: &Value) -> anyhow::Result<SidecarSettings> {
    let Some(obj) = v.as_object() else {
        anyhow::bail!("config key `sidecar`: expected an object");
    };
    for key in obj.keys() {
        if !KEYS.contains(&key.as_str()) {
            anyhow::bail!(
                "unknown config key `sidecar.{key}`; known keys here: {}",
                KEYS.join(", ")
            );
        }
    }
    let mut s = SidecarSettings::default();
    if let Some(u) = obj.get("backend_url").filter(|v| !v.is_null()) {
        let Some(u) = u.as_str() else {
            anyhow::bail!("config key `sidecar.backend_url`: expected a string");
        };
        s.backend_url = Some(u.to_string());
    }
    let addr = |key: &str| -> anyhow::Result<Option<std::net::SocketAddr>> {
        match obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => match v.as_str().map(str::parse) {
                Some(Ok(a)) => Ok(Some(a)),
                _ => anyhow::bail!(
                    "config key `sidecar.{key}`: expected an address like \"127.0.0.1:50051\""
                ),
            },
        }
    };
    s.listen = addr("listen")?;
    s.metrics_listen = addr("metrics_listen")?;
    let uint = |key: &str, max: u64| -> anyhow::Result<Option<u64>> {
        match obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => {
                    anyhow::bail!("config key `sidecar.{key}`: expected an integer from 1 to {max}")
                }
            },
        }
    };
    s.record_queue_capacity = uint("record_queue_capacity", 1_000_000)?.map(|n| n as usize);
    s.record_concurrency = uint("record_concurrency", 256)?.map(|n| n as usize);
    if let Some(n) = uint("drain_timeout_ms", 600_000)? {
        s.drain_timeout_ms = n;
    }
    match obj
        .get("keep_content_length_max_bytes")
        .filter(|v| !v.is_null())
    {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n) if n <= 1 << 32 => s.keep_content_length_max_bytes = n,
            _ => anyhow::bail!(
                "config key `sidecar.keep_content_length_max_bytes`: expected an integer from 0 \
                 to 4294967296 (at most Envoy's per_connection_buffer_limit_bytes)"
            ),
        },
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_section_is_removed_before_the_engine_reads_the_rest() {
        let (c, s) = parse(
            br#"{"mode":"inject_only","sidecar":{"backend_url":"http://127.0.0.1:1","record_queue_capacity":3}}"#,
        )
        .unwrap();
        assert_eq!(c.mode(), filter_core::Mode::InjectOnly);
        assert_eq!(s.backend_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.record_queue_capacity, Some(3));
        assert_eq!(
            c.records().max_queued,
            3,
            "the sidecar's name for records.max_queued"
        );
        assert_eq!(c.records().max_in_flight, 8, "the engine's default");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(br#"{"sidecar":{"backend":"x"}}"#).unwrap_err();
        assert!(e.to_string().contains("sidecar.backend"), "{e}");
        let e = parse(br#"{"sidecar":{"listen":"nowhere"}}"#).unwrap_err();
        assert!(e.to_string().contains("sidecar.listen"), "{e}");
        let e = parse(br#"{"sidecar":{"record_concurrency":0}}"#).unwrap_err();
        assert!(e.to_string().contains("sidecar.record_concurrency"), "{e}");
        let e = parse(br#"{"mdoe":"off"}"#).unwrap_err();
        assert!(e.to_string().contains("mdoe"), "{e}");
        assert!(parse(b"not json").is_err());
    }
}
