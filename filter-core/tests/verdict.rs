//! `Stream::verdict` and `Stream::on_hold_expired`: what hosts log and how they give up holding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

use std::sync::Arc;

use filter_core::{
    AtomicCounters, Config, Counter, Engine, Flow, LookupFailure, LookupResult, Node, Services,
    Stream,
};

fn stream(config: &str) -> (Stream, Arc<AtomicCounters>) {
    let counters = Arc::new(AtomicCounters::default());
    let engine = Engine::new(
        Config::from_json(config.as_bytes()).unwrap(),
        &Node::default(),
        Services {
            metrics: counters.clone(),
            clock: Box::new(|| 1),
            seed: 3,
        },
    );
    (Stream::new(Arc::new(engine)), counters)
}

fn get(path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), b"api.example.com".to_vec()),
    ]
}

fn post() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = get("/p");
    h[0].1 = b"POST".to_vec();
    h
}

#[test]
fn verdicts() {
    let (mut s, _) = stream("{}");
    assert_eq!(s.verdict(), "pending");
    assert!(s
        .on_request_headers(get("/a"), true)
        .effects
        .lookup
        .is_some());
    assert_eq!(s.verdict(), "pending");
    s.on_lookup_result(LookupResult::Answer {
        status: 404,
        content_type: None,
        body: b"",
    });
    assert_eq!(s.verdict(), "miss");
    // A response bypass after the lookup keeps the request's verdict.
    s.on_response_headers(500, vec![], true);
    assert_eq!(s.verdict(), "miss");

    let (mut s, _) = stream("{}");
    s.on_request_headers(get("/a"), true);
    s.on_lookup_result(LookupResult::Failed(LookupFailure::Transport));
    assert_eq!(s.verdict(), "error:transport");

    let (mut s, _) = stream(r#"{"rules": {"methods": ["POST"]}}"#);
    s.on_request_headers(get("/a"), true);
    assert_eq!(s.verdict(), "bypass:method");

    let (mut s, _) = stream(r#"{"mode": "record_only"}"#);
    s.on_request_headers(get("/a"), true);
    assert_eq!(s.verdict(), "record");
    s.on_response_headers(500, vec![], true);
    assert_eq!(s.verdict(), "bypass:status");
}

#[test]
fn hold_expired_counts_a_timeout_and_releases() {
    // Awaiting the lookup.
    let (mut s, c) = stream("{}");
    s.on_request_headers(get("/a"), true);
    assert_eq!(s.on_hold_expired().flow, Flow::Release);
    assert_eq!(s.verdict(), "error:timeout");
    assert_eq!(c.get(Counter::LookupErrorTimeout), 1);
    // A late answer changes nothing.
    let late = s.on_lookup_result(LookupResult::Answer {
        status: 404,
        content_type: None,
        body: b"",
    });
    assert_eq!(late.flow, Flow::Continue);
    assert_eq!(c.get(Counter::Misses), 0);

    // Still buffering the body (hold_headers).
    let (mut s, c) = stream(r#"{"request_mode": "hold_headers"}"#);
    assert_eq!(s.on_request_headers(post(), false).flow, Flow::Hold);
    assert_eq!(s.on_hold_expired().flow, Flow::Release);
    assert_eq!(c.get(Counter::LookupErrorTimeout), 1);
    assert_eq!(s.on_request_body(b"x", true).flow, Flow::Continue);

    // Strict mode serves its 502.
    let (mut s, _) = stream(r#"{"on_backend_error": "fail"}"#);
    s.on_request_headers(get("/a"), true);
    assert_eq!(s.on_hold_expired().reply().map(|r| r.status), Some(502));

    // Nothing held: nothing to do.
    let (mut s, _) = stream(r#"{"mode": "record_only"}"#);
    s.on_request_headers(get("/a"), true);
    assert_eq!(s.on_hold_expired().flow, Flow::Continue);
}
