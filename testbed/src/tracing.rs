//! Envoy's OpenTelemetry tracer for end-to-end tests: [`with_otel_tracing`] turns any bootstrap of
//! the testbed into one whose connection managers trace every request with the given custom tags
//! and export the spans over OTLP/HTTP to a collector (e.g. a [`crate::FakeBackend`], which keeps
//! every `/v1/traces` body), flushing each span at once.

use serde_json::{json, Value as Json};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// The cluster the tracer exports to.
pub const COLLECTOR_CLUSTER: &str = "otlp";

/// The custom tag Istio 1.18 renders from a `Telemetry` header tag: span tag `tag` from request
/// header `header`, `default` when the header is missing.
pub fn request_header_tag(tag: &str, header: &str, default: &str) -> Json {
    json!({"tag": tag, "request_header": {"name": header, "default_value": default}})
}

/// A `metadata` custom tag: span tag `tag` from the request's dynamic metadata
/// `namespace` / `key` (what `istio/tracing/envoyfilter-metadata-tags.yaml` merges in).
pub fn metadata_tag(tag: &str, namespace: &str, key: &str, default: &str) -> Json {
    json!({
        "tag": tag,
        "metadata": {
            "kind": {"request": {}},
            "metadata_key": {"key": namespace, "path": [{"key": key}]},
            "default_value": default
        }
    })
}

/// `yaml` (a testbed bootstrap) with tracing in every HTTP connection manager (after its
/// `stat_prefix`), 100% sampling, `custom_tags`, the OpenTelemetry tracer exporting to
/// `collector`, the [`COLLECTOR_CLUSTER`] cluster and a runtime that flushes every span at once.
pub fn with_otel_tracing(yaml: &str, collector: SocketAddr, custom_tags: &[Json]) -> String {
    let tracing = json!({
        "random_sampling": {"value": 100},
        "custom_tags": custom_tags,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "service_name": "testbed",
                "http_service": {
                    "http_uri": {
                        "uri": format!("http://{collector}/v1/traces"),
                        "cluster": COLLECTOR_CLUSTER,
                        "timeout": "5s"
                    }
                }
            }
        }
    });
    let mut out = String::new();
    for line in yaml.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("          stat_prefix: ") {
            let _ = writeln!(out, "          tracing: {tracing}");
        }
        if line == "  clusters:" {
            for (i, l) in crate::envoy_config::cluster(COLLECTOR_CLUSTER, collector)
                .trim_end()
                .lines()
                .enumerate()
            {
                let marker = if i == 0 { "- " } else { "  " };
                let _ = writeln!(out, "  {marker}{l}");
            }
        }
    }
    out.push_str(
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      tracing.opentelemetry.min_flush_spans: 1\n      tracing.opentelemetry.flush_interval_ms: 200\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_goes_into_every_connection_manager() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let y = crate::envoy_config::plain(0, 0, a);
        let t = with_otel_tracing(&y, a, &[request_header_tag("t", "x-h", "unknown")]);
        assert_eq!(t.matches("          tracing: {").count(), 1);
        assert!(t.contains("  - name: otlp\n"));
        assert!(t.contains("\"request_header\":{\"default_value\":\"unknown\",\"name\":\"x-h\"}"));
        assert!(t.ends_with("flush_interval_ms: 200\n"));
    }
}
