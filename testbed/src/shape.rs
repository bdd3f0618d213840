//! The shapes the filter runs in, and the Envoy bootstrap for each.
//!
//! A [`Shape`] says how the filter is put into Envoy (no filter, the wasm plugin in one of its
//! request modes; more shapes, e.g. a native module or a sidecar, can be added). A [`Layout`] says
//! where everything is: the listeners (one per plugin configuration, so many configurations share
//! one Envoy), the demo upstream, the backend. [`Shape::envoy_yaml`] writes the bootstrap.
//!
//! Every listener routes everything to cluster `upstream`; the backend is cluster
//! [`BACKEND_CLUSTER`], and [`REFUSED_CLUSTER`] (when [`Layout::refused`] is set) points at a port
//! that refuses connections.

use crate::envoy_config::{bootstrap, cluster, list_item, listener};
use anyhow::Result;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The backend cluster every plugin configuration of the testbed names.
pub const BACKEND_CLUSTER: &str = "softprobe_backend";
/// A cluster whose only endpoint refuses connections.
pub const REFUSED_CLUSTER: &str = "softprobe_refused";

/// How the filter is put into Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// Plain Envoy, no filter (baseline).
    NoFilter,
    /// The proxy-wasm plugin on the V8 runtime. `hold_headers: true` runs `request_mode:
    /// hold_headers` with `allow_on_headers_stop_iteration` (Envoy 1.35+); `false` runs
    /// `stream_headers`, which works on every Envoy.
    Wasm { hold_headers: bool },
    /// `envoy.filters.http.ext_proc` calling a `filter-sidecar` process per site (gRPC, HTTP/2
    /// cluster, `failure_mode_allow`); the site's `plugin_config.sidecar.listen` says where that
    /// sidecar listens (see [`crate::sidecar`], which starts it).
    Sidecar,
    /// `envoy.filters.http.dynamic_modules` loading `filter-native` (`libtransparent_cache.so`,
    /// found through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, see [`Shape::envoy_env`]), in either
    /// request mode like the wasm plugin (dynamic modules keep getting body events after
    /// `StopIteration` on headers, no extra setting needed).
    Native { hold_headers: bool },
}

/// One listener and the plugin configuration its filter runs with.
#[derive(Debug, Clone)]
pub struct Site {
    /// Listener name (unique).
    pub name: String,
    /// Port on 127.0.0.1; 0 lets Envoy pick ([`crate::Envoy`] discovers it).
    pub port: u16,
    /// The plugin configuration (`pluginConfig`), before [`Shape::plugin_config`].
    pub plugin_config: Json,
    /// Let Envoy skip the filter for requests that carry no session (the config's
    /// `session_id_sources`): [`crate::envoy_config::skip_unless`].
    pub skip_without_session: bool,
}

/// An access log written by every listener.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// File (or `/dev/stdout`).
    pub path: PathBuf,
    /// Envoy format string, newline included.
    pub format: String,
}

/// Where everything is.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Admin port on 127.0.0.1 (0: Envoy picks).
    pub admin_port: u16,
    /// The demo upstream (cluster `upstream`).
    pub upstream: SocketAddr,
    /// The backend (cluster [`BACKEND_CLUSTER`]).
    pub backend: SocketAddr,
    /// Endpoint of [`REFUSED_CLUSTER`], when wanted (e.g. [`crate::closed_port`]).
    pub refused: Option<SocketAddr>,
    pub sites: Vec<Site>,
    pub access_log: Option<AccessLog>,
}

/// The access-log format that prints the filter's verdict (`hit`, `miss`, `bypass:<why>`, ...).
pub const VERDICT_LOG_FORMAT: &str = "%FILTER_STATE(wasm.transparent_cache.verdict:PLAIN)% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %DURATION%\n";

/// [`VERDICT_LOG_FORMAT`] for the native module, which writes the verdict to the dynamic metadata
/// (namespace `transparent_cache`, key `verdict`).
pub const NATIVE_VERDICT_LOG_FORMAT: &str = "%DYNAMIC_METADATA(transparent_cache:verdict)% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %DURATION%\n";

impl Shape {
    /// A short name for test output (`no-filter`, `wasm-hold-headers`, `wasm-stream-headers`).
    pub fn name(&self) -> &'static str {
        match self {
            Shape::NoFilter => "no-filter",
            Shape::Sidecar => "sidecar",
            Shape::Native { hold_headers: true } => "native-hold-headers",
            Shape::Native {
                hold_headers: false,
            } => "native-stream-headers",
            Shape::Wasm { hold_headers: true } => "wasm-hold-headers",
            Shape::Wasm {
                hold_headers: false,
            } => "wasm-stream-headers",
        }
    }

    /// The access-log format that prints this shape's verdict: [`NATIVE_VERDICT_LOG_FORMAT`] for
    /// the native module, [`VERDICT_LOG_FORMAT`] otherwise.
    pub fn verdict_log_format(&self) -> &'static str {
        match self {
            Shape::Native { .. } => NATIVE_VERDICT_LOG_FORMAT,
            _ => VERDICT_LOG_FORMAT,
        }
    }

    /// Every wasm shape.
    pub fn wasm() -> [Shape; 2] {
        [
            Shape::Wasm { hold_headers: true },
            Shape::Wasm {
                hold_headers: false,
            },
        ]
    }

    /// Every native (dynamic module) shape.
    pub fn native() -> [Shape; 2] {
        [
            Shape::Native { hold_headers: true },
            Shape::Native {
                hold_headers: false,
            },
        ]
    }

    /// Environment Envoy needs for this shape: for [`Shape::Native`], the dynamic-module search
    /// path (building the module the first time in this process).
    pub fn envoy_env(&self) -> Result<Vec<(String, String)>> {
        match self {
            Shape::Native { .. } => Ok(vec![(
                crate::native::SEARCH_PATH_VAR.to_string(),
                crate::native::module_dir()?.to_string_lossy().into_owned(),
            )]),
            _ => Ok(Vec::new()),
        }
    }

    /// The filter's counters from Envoy stats, by engine counter name.
    pub fn counters(
        &self,
        stats: &std::collections::HashMap<String, u64>,
    ) -> std::collections::BTreeMap<String, u64> {
        match self {
            Shape::Native { .. } => crate::native::counters(stats),
            _ => plugin_counters(stats),
        }
    }

    /// The plugin configuration as this shape runs it: `config` with the shape's `request_mode`.
    pub fn plugin_config(&self, config: &Json) -> Json {
        let mut c = config.clone();
        if let (Shape::Wasm { hold_headers } | Shape::Native { hold_headers }, Json::Object(map)) =
            (self, &mut c)
        {
            let mode = if *hold_headers {
                "hold_headers"
            } else {
                "stream_headers"
            };
            map.insert("request_mode".into(), Json::String(mode.into()));
        }
        c
    }

    /// The HTTP filter snippet (one YAML mapping at column 0) for one site, if the shape has one.
    pub fn http_filter(&self, plugin_config: &Json) -> Result<Option<String>> {
        match self {
            Shape::NoFilter => Ok(None),
            Shape::Sidecar => Ok(Some(crate::sidecar::http_filter(
                crate::sidecar::site_addr(plugin_config)?,
                crate::sidecar::message_timeout_ms(plugin_config),
            ))),
            Shape::Native { .. } => Ok(Some(crate::native::http_filter(&serde_json::to_string(
                &self.plugin_config(plugin_config),
            )?)?)),
            Shape::Wasm { hold_headers } => {
                let wasm = crate::plugin::wasm_artifact()?;
                let config = serde_json::to_string(&self.plugin_config(plugin_config))?;
                let allow = if *hold_headers {
                    // Envoy >= 1.35: let StopIteration from on_request_headers stop only the
                    // headers, so body callbacks still arrive (the body is buffered for the lookup).
                    "    allow_on_headers_stop_iteration: true\n"
                } else {
                    ""
                };
                Ok(Some(format!(
                    r#"name: envoy.filters.http.wasm
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
  config:
    name: transparent_cache
    root_id: transparent_cache
{allow}    vm_config:
      vm_id: transparent_cache
      runtime: envoy.wasm.runtime.v8
      code:
        local:
          filename: {file}
    configuration:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {value}
"#,
                    allow = allow,
                    file = serde_json::to_string(&wasm.to_string_lossy())?,
                    value = serde_json::to_string(&config)?,
                )))
            }
        }
    }

    /// The Envoy bootstrap for `layout`.
    pub fn envoy_yaml(&self, layout: &Layout) -> Result<String> {
        let mut listeners = String::new();
        for site in &layout.sites {
            let mut filters: Vec<String> =
                self.http_filter(&site.plugin_config)?.into_iter().collect();
            if site.skip_without_session {
                // The engine's keys only (the sidecar's own section aside).
                let mut engine_config = self.plugin_config(&site.plugin_config);
                if let Some(map) = engine_config.as_object_mut() {
                    map.remove("sidecar");
                }
                let config = filter_core::Config::from_value(&engine_config)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let probes: Vec<(String, String)> = config
                    .session_sources()
                    .iter()
                    .map(|s| {
                        let (h, p) = s.probe();
                        (h.to_string(), p)
                    })
                    .collect();
                for f in &mut filters {
                    *f = crate::envoy_config::skip_unless(f, &probes);
                }
            }
            let access_log = match &layout.access_log {
                None => String::new(),
                Some(a) => format!(
                    r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format:
                text_format_source:
                  inline_string: {format}
"#,
                    path = serde_json::to_string(&a.path.to_string_lossy())?,
                    format = serde_json::to_string(&a.format)?,
                ),
            };
            listeners.push_str(&listener(
                &site.name,
                site.port,
                &site.name,
                &access_log,
                &filters,
            ));
        }
        let mut clusters = list_item(&cluster("upstream", layout.upstream), 2);
        clusters.push_str(&list_item(&cluster(BACKEND_CLUSTER, layout.backend), 2));
        if *self == Shape::Sidecar {
            let mut seen = Vec::new();
            for site in &layout.sites {
                let addr = crate::sidecar::site_addr(&site.plugin_config)?;
                if !seen.contains(&addr) {
                    seen.push(addr);
                    clusters.push_str(&list_item(&crate::sidecar::cluster(addr), 2));
                }
            }
        }
        if let Some(r) = layout.refused {
            clusters.push_str(&list_item(&cluster(REFUSED_CLUSTER, r), 2));
        }
        Ok(bootstrap(layout.admin_port, &listeners, &clusters))
    }
}

/// The plugin's counters from Envoy stats (`wasmcustom.transparent_cache.<name>`), by engine
/// counter name.
pub fn plugin_counters(
    stats: &std::collections::HashMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    stats
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("wasmcustom.transparent_cache.")
                .map(|n| (n.to_string(), *v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_filter_layout_has_listeners_and_clusters() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let y = Shape::NoFilter
            .envoy_yaml(&Layout {
                admin_port: 0,
                upstream: a,
                backend: a,
                refused: Some(a),
                sites: vec![
                    Site {
                        name: "one".into(),
                        port: 0,
                        plugin_config: Json::Null,
                        skip_without_session: false,
                    },
                    Site {
                        name: "two".into(),
                        port: 0,
                        plugin_config: Json::Null,
                        skip_without_session: false,
                    },
                ],
                access_log: None,
            })
            .unwrap();
        assert!(y.contains("  - name: one\n"));
        assert!(y.contains("  - name: two\n"));
        assert!(y.contains(&format!("  - name: {BACKEND_CLUSTER}\n")));
        assert!(y.contains(&format!("  - name: {REFUSED_CLUSTER}\n")));
    }

    #[test]
    fn plugin_config_sets_the_request_mode() {
        let c = Shape::Wasm { hold_headers: true }.plugin_config(&serde_json::json!({"a": 1}));
        assert_eq!(c["request_mode"], "hold_headers");
        assert_eq!(c["a"], 1);
    }
}
