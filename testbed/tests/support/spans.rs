//! Spans Envoy's OpenTelemetry tracer exported to a fake backend used as the collector.

use std::time::{Duration, Instant};

use filter_core::otlp::Span;
use testbed::FakeBackend;

/// Every span the collector received so far.
pub async fn spans(collector: &FakeBackend) -> Vec<Span> {
    collector.spans().await.unwrap()
}

/// Waits until the collector holds a span whose `http.url` ends with `path`, and returns it.
pub async fn span_for(collector: &FakeBackend, path: &str, within: Duration) -> Option<Span> {
    let deadline = Instant::now() + within;
    loop {
        let found = spans(collector)
            .await
            .into_iter()
            .find(|s| s.attr_str("http.url").is_some_and(|u| u.ends_with(path)));
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A backend behaviour that answers every lookup with a hit serving `body` (200, text/plain).
pub fn hit(body: &[u8]) -> testbed::fake_backend::model::Behaviour {
    let ids = filter_core::codec::SpanIds {
        trace_id: [1; 16],
        span_id: [2; 8],
        ..Default::default()
    };
    let resp = filter_core::Response {
        status: 200,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.to_vec(),
    };
    testbed::fake_backend::model::Behaviour::hit_protobuf(filter_core::codec::encode_answer(
        "backend", &ids, &resp,
    ))
}
