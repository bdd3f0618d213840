//! The span tags of istio/ on real Envoy (1.40) with its OpenTelemetry tracer exporting OTLP/HTTP
//! to a local receiver (the testbed's fake backend, which records every `/v1/traces` body):
//! - the request-header tag, as Istio 1.18 renders the Telemetry resource's `customTags` header
//!   entry (an Envoy `request_header` custom tag named by the map key);
//! - the dynamic-metadata tag of tracing/envoyfilter-metadata-tags.yaml (its `custom_tags` exactly),
//!   the metadata written here by Envoy's built-in `set_metadata` filter standing in for a host
//!   that can write it (the native module).

use std::time::{Duration, Instant};

use filter_core::codec::decode_traces;
use filter_core::Format;
use istio_check::{repo_root, yaml_docs};
use serde_json::{json, Value};
use testbed::{envoy_config, raw, DemoUpstream, Envoy, FakeBackend};

fn manifest(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    yaml_docs(&text).unwrap().remove(0)
}

/// The Envoy custom tags Istio 1.18 makes of the Telemetry resource's header tags.
fn telemetry_header_tags() -> Vec<Value> {
    let t = manifest("istio/base/telemetry-tracing.yaml");
    let tags = t["spec"]["tracing"][0]["customTags"].as_object().unwrap();
    tags.iter()
        .map(|(name, tag)| {
            let h = &tag["header"];
            let mut rh = json!({"name": h["name"]});
            if h["defaultValue"].as_str().is_some_and(|d| !d.is_empty()) {
                rh["default_value"] = h["defaultValue"].clone();
            }
            json!({"tag": name, "request_header": rh})
        })
        .collect()
}

/// The custom tags the tracing EnvoyFilter merges into the connection manager.
fn metadata_tags() -> Vec<Value> {
    let ef = manifest("istio/tracing/envoyfilter-metadata-tags.yaml");
    ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["tracing"]["custom_tags"]
        .as_array()
        .unwrap()
        .clone()
}

fn config(up: &DemoUpstream, collector: &FakeBackend, set_verdict: &str) -> String {
    let mut tags = telemetry_header_tags();
    tags.extend(metadata_tags());
    let tracing = json!({
        "random_sampling": {"value": 100},
        "custom_tags": tags,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "service_name": "my-app",
                "http_service": {
                    "http_uri": {"uri": format!("http://{}/v1/traces", collector.addr()), "cluster": "otlp", "timeout": "5s"}
                }
            }
        }
    });
    let set_metadata = format!(
        "name: envoy.filters.http.set_metadata\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config\n  metadata:\n  - metadata_namespace: transparent_cache\n    value: {{ verdict: {set_verdict} }}\n"
    );
    let base = envoy_config::with_filters(
        0,
        0,
        up.addr(),
        &[set_metadata],
        &[envoy_config::cluster("otlp", collector.addr())],
    );
    // Put the tracing block into the connection manager and flush every span at once.
    let base = base.replace(
        "          stat_prefix: ingress_http\n",
        &format!("          stat_prefix: ingress_http\n          tracing: {tracing}\n"),
    );
    format!(
        "{base}\nlayered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      tracing.opentelemetry.min_flush_spans: 1\n      tracing.opentelemetry.flush_interval_ms: 200\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_metadata_tags_reach_the_exported_span() {
    let up = DemoUpstream::start().await.unwrap();
    let collector = FakeBackend::start().await.unwrap();
    let envoy = Envoy::start(&config(&up, &collector, "hit")).await.unwrap();

    let req = raw::RawRequest::new("GET", "/tagged")
        .header("x-softprobe-cache-verdict", "hit")
        .header("x-softprobe-session-id", "session-7");
    let resp = raw::send(envoy.listener_addr(), &req, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let span = loop {
        let bodies = collector.received_on("/v1/traces").await.unwrap();
        let spans: Vec<_> = bodies
            .iter()
            .map(|r| {
                assert_eq!(
                    r.header("content-type").as_deref(),
                    Some("application/x-protobuf")
                );
                decode_traces(&r.body_base64, Format::Protobuf).unwrap()
            })
            .flat_map(|t| t.spans().map(|(_, s)| s.clone()).collect::<Vec<_>>())
            .collect();
        if let Some(s) = spans.into_iter().next() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no span exported; envoy log:\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        span.attr_str("softprobe.cache.verdict"),
        Some("hit"),
        "{span:?}"
    );
    assert_eq!(span.attr_str("softprobe.session.id"), Some("session-7"));
    assert_eq!(
        span.attr_str("softprobe.cache.verdict.metadata"),
        Some("hit"),
        "{span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_fall_back_to_their_defaults() {
    // No header from the filter and no metadata written: the defaults of the manifests show.
    let up = DemoUpstream::start().await.unwrap();
    let collector = FakeBackend::start().await.unwrap();
    let cfg = config(&up, &collector, "x")
        .replace("namespace: transparent_cache", "namespace: someone_else");
    let envoy = Envoy::start(&cfg).await.unwrap();
    let resp = raw::send(
        envoy.listener_addr(),
        &raw::RawRequest::new("GET", "/plain"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bodies = collector.received_on("/v1/traces").await.unwrap();
        if let Some(r) = bodies.first() {
            let t = decode_traces(&r.body_base64, Format::Protobuf).unwrap();
            let (_, span) = t.spans().next().unwrap();
            assert_eq!(span.attr_str("softprobe.cache.verdict"), Some("unknown"));
            assert_eq!(
                span.attr_str("softprobe.cache.verdict.metadata"),
                Some("unknown")
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no span exported; envoy log:\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
