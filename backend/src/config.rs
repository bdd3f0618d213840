//! The backend's configuration file (`--config`): which parts of a request make up its match key.
//!
//! TOML or JSON, chosen by the file's extension (`.json` is JSON, anything else TOML).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// How a request is turned into the key recordings are looked up by.
    pub match_key: MatchKeyConfig,
    /// How long recordings are kept, and how many per key.
    pub retention: RetentionConfig,
}

/// `[retention]`: upsert per key and time-to-live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Recordings kept per match key; a newer recording (by `recorded_at`) replaces the oldest
    /// beyond it. Default 1 (latest wins); 0 keeps every one (the newest is served).
    pub keep_per_key: u64,
    /// Seconds a recording is served after it was recorded; 0 (default) keeps it until the size
    /// cap evicts it. Expired recordings are misses at once and deleted in the background.
    pub ttl_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_per_key: 1,
            ttl_seconds: 0,
        }
    }
}

impl RetentionConfig {
    /// The store's form.
    pub fn to_retention(&self) -> crate::store::Retention {
        crate::store::Retention {
            keep_per_key: self.keep_per_key,
            ttl: (self.ttl_seconds > 0).then(|| std::time::Duration::from_secs(self.ttl_seconds)),
        }
    }
}

/// What goes into a request's match key. By default: method, host, path with query, the request
/// body bytes, the session id and the caller's credentials (the redacted `authorization`,
/// `cookie` and `x-api-key`), so one user's recording never answers another user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchKeyConfig {
    /// Query parameters left out of the key (compared by their name as sent, case-sensitive).
    pub ignore_query_params: Vec<String>,
    /// Request headers added to the key (case-insensitive names; every value, in order).
    pub headers: Vec<String>,
    /// JSON object fields left out of the key, at any depth, when the request body parses as JSON.
    /// When set, JSON bodies are compared in a canonical form (object keys sorted).
    pub ignore_body_fields: Vec<String>,
    /// Adds the service name (`sp.service.name`, else the resource's `service.name`) to the key.
    pub scope_by_service: bool,
    /// Adds the session id (`sp.session.id`) to the key. On by default.
    pub include_session_id: bool,
    /// Headers that identify the caller, added to the key in their redacted form
    /// (`sha256:<hex>`; a raw value is hashed the same way). Default `authorization`, `cookie`,
    /// `x-api-key`; `[]` lets every caller share recordings (only for public, caller-independent
    /// upstreams).
    pub caller_headers: Vec<String>,
}

/// The callers' credential headers of the default match key.
pub const DEFAULT_CALLER_HEADERS: [&str; 3] = ["authorization", "cookie", "x-api-key"];

impl Default for MatchKeyConfig {
    fn default() -> Self {
        MatchKeyConfig {
            ignore_query_params: Vec::new(),
            headers: Vec::new(),
            ignore_body_fields: Vec::new(),
            scope_by_service: false,
            include_session_id: true,
            caller_headers: DEFAULT_CALLER_HEADERS.map(String::from).to_vec(),
        }
    }
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or JSON, or has unknown fields.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl BackendConfig {
    /// Reads a TOML file, or a JSON file when the extension is `.json`.
    pub fn load(path: &Path) -> Result<BackendConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        parsed.map_err(|message| ConfigError::Parse {
            path: shown,
            message,
        })
    }

    /// Parses the TOML form.
    pub fn from_toml(text: &str) -> Result<BackendConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<BackendConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_forms_agree() {
        let toml = r#"
[match_key]
ignore_query_params = ["ts"]
headers = ["x-tenant"]
ignore_body_fields = ["requestId"]
scope_by_service = true
caller_headers = []

[retention]
keep_per_key = 3
ttl_seconds = 86400
"#;
        let json = r#"{"match_key": {"ignore_query_params": ["ts"], "headers": ["x-tenant"],
            "ignore_body_fields": ["requestId"], "scope_by_service": true,
            "caller_headers": []}, "retention": {"keep_per_key": 3, "ttl_seconds": 86400}}"#;
        let a = BackendConfig::from_toml(toml).unwrap();
        let b = BackendConfig::from_json(json).unwrap();
        assert_eq!(a, b);
        assert!(a.match_key.include_session_id);
        assert_eq!(a.match_key.headers, vec!["x-tenant"]);
        assert!(a.match_key.caller_headers.is_empty());
        let r = a.retention.to_retention();
        assert_eq!(r.keep_per_key, 3);
        assert_eq!(r.ttl, Some(std::time::Duration::from_secs(86400)));
        let d = BackendConfig::default();
        assert_eq!(d.match_key.caller_headers.len(), 3);
        assert_eq!(
            d.retention.to_retention(),
            crate::store::Retention::default()
        );
    }

    #[test]
    fn empty_file_is_the_default_and_unknown_fields_are_rejected() {
        assert_eq!(
            BackendConfig::from_toml("").unwrap(),
            BackendConfig::default()
        );
        assert!(BackendConfig::from_toml("[match_key]\nheader = [\"a\"]").is_err());
        assert!(BackendConfig::from_json(r#"{"matchkey": {}}"#).is_err());
    }
}
