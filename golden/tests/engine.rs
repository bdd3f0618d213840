//! Replays every golden case through the engine with a simulated host, in both request modes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

use std::path::PathBuf;

use golden::{self, Case};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../golden")
}

fn cases() -> Vec<Case> {
    golden::load_dir(&root().join("cases")).unwrap()
}

fn base(request_mode: &str) -> serde_json::Value {
    let text = std::fs::read(root().join("base-config.json")).unwrap();
    let mut base: serde_json::Value = serde_json::from_slice(&text).unwrap();
    golden::merge(
        &mut base,
        &serde_json::json!({ "request_mode": request_mode }),
    );
    base
}

fn replay_all(request_mode: &str) {
    let cases = cases();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in &cases {
        match golden::replay(case, &base(request_mode)) {
            Ok(observed) => {
                let errors = golden::verify(case, &observed);
                if !errors.is_empty() {
                    failures.push(format!("{}:\n  {}", case.name, errors.join("\n  ")));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed ({request_mode}):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_cases_pass_with_headers_held() {
    replay_all("hold_headers");
}

#[test]
fn golden_cases_pass_with_headers_streamed() {
    replay_all("stream_headers");
}

/// Every span the engine sends decodes back to what was put in (protobuf, and through OTLP JSON).
#[test]
fn golden_spans_round_trip() {
    for case in &cases() {
        let observed = golden::replay(case, &base("hold_headers")).unwrap();
        for (_, body) in observed.inject.iter().chain(&observed.extract) {
            let traces =
                filter_core::codec::decode_traces(body, filter_core::Format::Protobuf).unwrap();
            let json = filter_core::otlp_json::encode(&traces);
            let again =
                filter_core::codec::decode_traces(&json, filter_core::Format::Json).unwrap();
            assert_eq!(traces, again, "{}: JSON round trip", case.name);
            let (rs, span) = traces.spans().next().unwrap();
            let read = filter_core::codec::read_span(rs, span).unwrap();
            assert_eq!(
                read.request_body,
                case.request.body_bytes(),
                "{}: request body",
                case.name
            );
            assert_eq!(
                read.method.as_deref(),
                Some(case.request.method.as_str()),
                "{}",
                case.name
            );
            // A non-UTF-8 path reads back as the base64 text it travels as.
            let path = case.request.path.to_vec();
            let want = String::from_utf8(path.clone())
                .unwrap_or_else(|_| filter_core::encoding::base64(&path));
            assert_eq!(read.path.as_deref(), Some(want.as_str()), "{}", case.name);
        }
    }
}
