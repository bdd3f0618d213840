//! Eligibility: which requests the filter looks up and records. Patterns are compiled once, at
//! config load.

use crate::config::DEFAULT_METHODS;
use crate::metrics::Bypass;

/// A regular expression matched against a whole value (as Envoy's `safe_regex` does).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex_lite::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex_lite::Error> {
        Ok(Pattern {
            source: source.to_string(),
            regex: regex_lite::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// OTLP/HTTP export paths and the OTLP/gRPC service prefix: telemetry is never cached.
const OTLP_PATHS: &[&str] = &["/v1/traces", "/v1/metrics", "/v1/logs"];
const OTLP_GRPC_PREFIX: &str = "/opentelemetry.proto.collector.";

/// The compiled eligibility rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Upper-case method names.
    pub methods: Vec<String>,
    pub include_hosts: Vec<Pattern>,
    pub exclude_hosts: Vec<Pattern>,
    pub include_paths: Vec<Pattern>,
    pub exclude_paths: Vec<Pattern>,
    pub exempt_otlp_paths: bool,
    /// The backend's own host (no port): never looked up.
    pub backend_host: String,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new("o.softprobe.ai")
    }
}

/// The host part of an authority: port and IPv6 brackets removed, lower-cased.
pub fn host_of(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.to_ascii_lowercase()
}

impl Rules {
    pub fn new(backend_authority: &str) -> Rules {
        Rules {
            methods: DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            include_hosts: Vec::new(),
            exclude_hosts: Vec::new(),
            include_paths: Vec::new(),
            exclude_paths: Vec::new(),
            exempt_otlp_paths: true,
            backend_host: host_of(backend_authority),
        }
    }

    /// Whether a request may be looked up and recorded; the reason when not.
    pub fn check(&self, method: &[u8], authority: &[u8], path: &[u8]) -> Result<(), Bypass> {
        let method_ok = self
            .methods
            .iter()
            .any(|m| m.as_bytes().eq_ignore_ascii_case(method));
        if !method_ok {
            return Err(Bypass::Method);
        }
        let host = host_of(&String::from_utf8_lossy(authority));
        if host == self.backend_host {
            return Err(Bypass::BackendHost);
        }
        if !self.include_hosts.is_empty() && !self.include_hosts.iter().any(|p| p.is_match(&host)) {
            return Err(Bypass::Host);
        }
        if self.exclude_hosts.iter().any(|p| p.is_match(&host)) {
            return Err(Bypass::Host);
        }
        let path = String::from_utf8_lossy(path);
        let path = path.split('?').next().unwrap_or_default();
        if self.exempt_otlp_paths
            && (OTLP_PATHS.contains(&path) || path.starts_with(OTLP_GRPC_PREFIX))
        {
            return Err(Bypass::OtlpPath);
        }
        if !self.include_paths.is_empty() && !self.include_paths.iter().any(|p| p.is_match(path)) {
            return Err(Bypass::Path);
        }
        if self.exclude_paths.iter().any(|p| p.is_match(path)) {
            return Err(Bypass::Path);
        }
        Ok(())
    }
}
