//! The cache filter over a mock Envoy: what it asks of the host for each kind of request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use filter_core::codec::{self, Format, SpanIds};
use filter_core::{Counter, Response};

use super::*;
use crate::sdk::{CalloutInitError, MetricsError};
use golden::conformance::{self, Call};

#[derive(Default)]
struct Counters {
    names: Mutex<Vec<String>>,
    values: Mutex<BTreeMap<String, u64>>,
}

impl CounterSink for Counters {
    fn increment(&self, id: CounterId, n: u64) {
        let name = self.names.lock().unwrap()[id.0].clone();
        *self.values.lock().unwrap().entry(name).or_default() += n;
    }
}

#[derive(Default)]
struct Commits(AtomicU64);

impl Scheduler for Arc<Commits> {
    fn commit(&self, _event_id: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Sent = (String, Vec<(String, String)>, Vec<u8>, u64);
type Served = (u16, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

#[derive(Default)]
struct MockConfig {
    counters: Arc<Counters>,
    commits: Arc<Commits>,
    callouts: Vec<Sent>,
    fail_callouts: bool,
    logs: Vec<String>,
}

impl MockConfig {
    fn counter(&self, c: Counter) -> u64 {
        let values = self.counters.values.lock().unwrap();
        values.get(c.name()).copied().unwrap_or(0)
    }
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

impl EnvoyHttpFilterConfig for MockConfig {
    fn define_counter(&mut self, name: &str) -> Result<CounterId, MetricsError> {
        let mut names = self.counters.names.lock().unwrap();
        names.push(name.to_string());
        Ok(CounterId(names.len() - 1))
    }
    fn counter_sink(&self) -> Arc<dyn CounterSink> {
        self.counters.clone()
    }
    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>> {
        Some(Box::new(self.commits.clone()))
    }
    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError> {
        if self.fail_callouts {
            return Err(CalloutInitError::ClusterNotFound);
        }
        self.callouts
            .push((cluster.into(), owned(headers), body.to_vec(), timeout_ms));
        Ok(self.callouts.len() as u64)
    }
    fn log(&self, _level: LogLevel, message: &str) {
        let _ = message;
    }
}

#[derive(Default)]
struct MockStream {
    request_headers: Vec<(Vec<u8>, Vec<u8>)>,
    response_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The current body frame, as Envoy's slices.
    frame: Vec<Vec<u8>>,
    callouts: Vec<Sent>,
    fail_callouts: bool,
    sent: Vec<Served>,
    continued: u32,
    /// Dynamic metadata writes: (namespace, key, value).
    metadata: Vec<(String, String, String)>,
    /// Request headers set: (name, value).
    set_headers: Vec<(Vec<u8>, Vec<u8>)>,
    commits: Arc<Commits>,
    /// Every host call in order, in the conformance scenarios' words.
    calls: Vec<Call>,
}

impl MockStream {
    /// The last verdict written to the dynamic metadata.
    fn verdict(&self) -> Option<&str> {
        self.metadata
            .iter()
            .rev()
            .find(|(ns, k, _)| ns == "transparent_cache" && k == "verdict")
            .map(|(_, _, v)| v.as_str())
    }
}

impl EnvoyHttpFilter for MockStream {
    fn request_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.request_headers.clone()
    }
    fn response_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.response_headers.clone()
    }
    fn received_request_body(&mut self) -> Vec<&[u8]> {
        self.frame.iter().map(Vec::as_slice).collect()
    }
    fn received_response_body(&mut self) -> Vec<&[u8]> {
        self.frame.iter().map(Vec::as_slice).collect()
    }
    fn send_response(
        &mut self,
        status: u16,
        headers: &[HeaderRef<'_>],
        body: &[u8],
        details: &str,
    ) {
        self.calls.push(Call::Reply(status, details.into()));
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        self.sent.push((status, headers, body.to_vec()));
    }
    fn send_response_headers(&mut self, headers: &[HeaderRef<'_>]) {
        let status = headers
            .iter()
            .find(|(n, _)| *n == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        self.calls
            .push(Call::Reply(status, "transparent_cache_hit".into()));
        let headers = headers
            .iter()
            .filter(|(n, _)| *n != b":status")
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        self.sent.push((status, headers, Vec::new()));
    }
    fn continue_decoding(&mut self) {
        self.calls.push(Call::Resume);
        self.continued += 1;
    }
    fn set_request_header(&mut self, name: &[u8], value: &[u8]) -> bool {
        self.calls
            .push(Call::SetRequestHeader(String::from_utf8_lossy(name).into()));
        self.set_headers.push((name.to_vec(), value.to_vec()));
        true
    }
    fn set_dynamic_metadata_string(&mut self, namespace: &str, key: &str, value: &str) {
        self.calls.push(Call::Verdict(value.into()));
        self.metadata
            .push((namespace.into(), key.into(), value.into()));
    }
    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>> {
        Some(Box::new(self.commits.clone()))
    }
    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError> {
        if self.fail_callouts {
            return Err(CalloutInitError::CannotCreateRequest);
        }
        self.calls.push(Call::Lookup);
        self.callouts
            .push((cluster.into(), owned(headers), body.to_vec(), timeout_ms));
        Ok(100 + self.callouts.len() as u64)
    }
}

const BASE: &str = r#"{"backend": {"cluster": "softprobe_backend", "authority": "backend.local", "lookup_timeout_ms": 300}, "service_name": "unit"}"#;

fn config(json: &str) -> (MockConfig, CacheConfig) {
    let mut envoy = MockConfig::default();
    let c = new_config(&mut envoy, json.as_bytes()).unwrap();
    (envoy, c)
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> MockStream {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), method.as_bytes().to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), b"api.example.com".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    MockStream {
        request_headers: h,
        ..MockStream::default()
    }
}

fn filter(c: &CacheConfig, s: &mut MockStream) -> Box<dyn HttpFilter<MockStream>> {
    <CacheConfig as HttpFilterConfig<MockConfig, MockStream>>::new_http_filter(c, s)
}

fn answer(status: u16, body: &[u8]) -> Vec<u8> {
    let ids = SpanIds {
        trace_id: [1; 16],
        span_id: [2; 8],
        ..SpanIds::default()
    };
    let resp = Response {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.to_vec(),
    };
    codec::encode_answer("backend", &ids, &resp)
}

fn status_headers(status: &str) -> Vec<(&'static [u8], &[u8])> {
    vec![(b":status".as_slice(), status.as_bytes())]
}

#[test]
fn a_bad_config_is_rejected_with_the_engines_message() {
    let mut envoy = MockConfig::default();
    let err = new_config(&mut envoy, br#"{"mode": "record_and_injekt"}"#)
        .err()
        .unwrap();
    assert!(err.contains("mode"), "{err}");
    let err = new_config(&mut envoy, b"{").err().unwrap();
    assert!(err.contains("not valid JSON"), "{err}");
}

#[test]
fn every_engine_counter_is_defined_under_its_own_name() {
    let (envoy, _c) = config(BASE);
    let names = envoy.counters.names.lock().unwrap().clone();
    let want: Vec<String> = Counter::ALL.iter().map(|c| c.name().to_string()).collect();
    assert_eq!(names, want);
}

#[test]
fn a_hit_is_served_locally_and_nothing_goes_upstream() {
    let (envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    assert_eq!(
        f.on_request_headers(&mut s, true),
        HeadersStatus::StopIteration
    );
    let (cluster, headers, body, timeout) = s.callouts[0].clone();
    assert_eq!(cluster, "softprobe_backend");
    assert_eq!(timeout, 300);
    for name in [":method", ":path", ":authority"] {
        assert!(headers.iter().any(|(n, _)| n == name), "{name} missing");
    }
    assert!(!body.is_empty());
    let ans = answer(200, b"cached");
    let ct: &[u8] = b"application/x-protobuf";
    let mut h = status_headers("200");
    h.push((b"content-type", ct));
    f.on_http_callout_done(&mut s, 101, CalloutResult::Success, &h, &[&ans]);
    assert_eq!(s.sent.len(), 1);
    assert_eq!(s.sent[0].0, 200);
    assert_eq!(s.sent[0].2, b"cached");
    assert!(s.sent[0]
        .1
        .iter()
        .any(|(n, v)| n == b"x-softprobe-cache" && v == b"hit"));
    assert_eq!(s.continued, 0);
    assert_eq!(envoy.counter(Counter::Hits), 1);
}

#[test]
fn a_hit_without_body_keeps_its_content_type() {
    // A recording with an empty body: sent as headers only (Envoy's local reply would drop the
    // content type of an empty body).
    let (_envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    let ans = answer(200, b"");
    let mut h = status_headers("200");
    h.push((b"content-type", b"application/x-protobuf"));
    f.on_http_callout_done(&mut s, 101, CalloutResult::Success, &h, &[&ans]);
    let (status, headers, body) = &s.sent[0];
    assert_eq!(*status, 200);
    assert!(body.is_empty());
    assert!(headers
        .iter()
        .any(|(n, v)| n == b"content-type" && v == b"text/plain"));
}

#[test]
fn a_hit_to_head_hands_envoy_the_recorded_body() {
    // Envoy sends a local reply to HEAD as headers only, with the body's length and type.
    let (_envoy, c) = config(BASE);
    let mut s = request("HEAD", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    let ans = answer(200, b"the GET body");
    let mut h = status_headers("200");
    h.push((b"content-type", b"application/x-protobuf"));
    f.on_http_callout_done(&mut s, 101, CalloutResult::Success, &h, &[&ans]);
    assert_eq!(s.sent[0].2, b"the GET body");
}

#[test]
fn a_miss_resumes_and_the_response_is_recorded_from_the_main_thread() {
    let (mut envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    f.on_http_callout_done(
        &mut s,
        101,
        CalloutResult::Success,
        &status_headers("404"),
        &[],
    );
    assert_eq!(s.continued, 1);
    assert!(s.sent.is_empty());
    s.response_headers = vec![
        (b":status".to_vec(), b"200".to_vec()),
        (b"content-type".to_vec(), b"text/plain".to_vec()),
        (b"content-length".to_vec(), b"5".to_vec()),
    ];
    assert_eq!(
        f.on_response_headers(&mut s, false),
        HeadersStatus::Continue
    );
    s.frame = vec![b"he".to_vec(), b"llo".to_vec()];
    assert_eq!(f.on_response_body(&mut s, true), BodyStatus::Continue);
    drop(f); // the record survives its stream
    assert_eq!(c.queued_records(), 1);
    assert_eq!(envoy.commits.0.load(Ordering::Relaxed), 1);
    <CacheConfig as HttpFilterConfig<MockConfig, MockStream>>::on_scheduled(&c, &mut envoy, 0);
    assert_eq!(c.queued_records(), 0);
    let (cluster, headers, body, timeout) = envoy.callouts[0].clone();
    assert_eq!(cluster, "softprobe_backend");
    assert_eq!(timeout, 5000);
    assert!(headers
        .iter()
        .any(|(n, v)| n == ":path" && v == "/v1/traces"));
    let traces = codec::decode_traces(&body, Format::Protobuf).unwrap();
    let (_, span) = traces.spans().next().unwrap();
    assert_eq!(span.attr_str("http.response.body"), Some("hello"));
    <CacheConfig as HttpFilterConfig<MockConfig, MockStream>>::on_http_callout_done(
        &c,
        &mut envoy,
        1,
        CalloutResult::Success,
        &status_headers("200"),
        &[],
    );
    assert_eq!(envoy.counter(Counter::Misses), 1);
    assert_eq!(envoy.counter(Counter::RecordsSent), 1);
}

#[test]
fn a_body_is_held_in_envoys_buffer_until_the_lookup_and_read_slice_by_slice() {
    let (envoy, c) = config(BASE);
    let mut s = request("POST", "/orders", &[("content-type", "text/plain")]);
    let mut f = filter(&c, &mut s);
    // stream_headers (default): headers go upstream, the body is held.
    assert_eq!(f.on_request_headers(&mut s, false), HeadersStatus::Continue);
    s.frame = vec![b"ab".to_vec(), b"cd".to_vec()];
    assert_eq!(
        f.on_request_body(&mut s, false),
        BodyStatus::StopIterationAndBuffer
    );
    assert!(s.callouts.is_empty());
    s.frame = vec![b"ef".to_vec()];
    assert_eq!(
        f.on_request_body(&mut s, true),
        BodyStatus::StopIterationAndBuffer
    );
    let traces = codec::decode_traces(&s.callouts[0].2, Format::Protobuf).unwrap();
    let (_, span) = traces.spans().next().unwrap();
    assert_eq!(span.attr_str("http.request.body"), Some("abcdef"));
    f.on_http_callout_done(
        &mut s,
        101,
        CalloutResult::Success,
        &status_headers("404"),
        &[],
    );
    assert_eq!(s.continued, 1);
    assert_eq!(envoy.counter(Counter::BytesBuffered), 6);
}

#[test]
fn hold_headers_stops_the_headers_too() {
    let (_envoy, c) = config(r#"{"request_mode": "hold_headers"}"#);
    let mut s = request("POST", "/orders", &[]);
    let mut f = filter(&c, &mut s);
    assert_eq!(
        f.on_request_headers(&mut s, false),
        HeadersStatus::StopIteration
    );
    s.frame = vec![b"x".to_vec()];
    assert_eq!(
        f.on_request_body(&mut s, true),
        BodyStatus::StopIterationAndBuffer
    );
    assert_eq!(s.callouts.len(), 1);
}

#[test]
fn a_callout_that_cannot_start_fails_open_at_once() {
    let (envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    s.fail_callouts = true;
    let mut f = filter(&c, &mut s);
    assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
    assert_eq!(envoy.counter(Counter::LookupErrorTransport), 1);
    assert_eq!(s.continued, 0);
}

#[test]
fn a_timed_out_lookup_resumes_the_request() {
    let (envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    std::thread::sleep(std::time::Duration::from_millis(260));
    f.on_http_callout_done(
        &mut s,
        101,
        CalloutResult::Success,
        &status_headers("504"),
        &[b"upstream request timeout"],
    );
    assert_eq!(s.continued, 1);
    assert_eq!(envoy.counter(Counter::LookupErrorTimeout), 1);
}

#[test]
fn answers_to_other_callouts_are_ignored() {
    let (_envoy, c) = config(BASE);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    f.on_http_callout_done(
        &mut s,
        999,
        CalloutResult::Success,
        &status_headers("404"),
        &[],
    );
    assert_eq!(s.continued, 0);
}

#[test]
fn records_past_the_queue_limit_are_dropped_and_counted() {
    let (envoy, c) = config(r#"{"mode": "record_only", "records": {"max_queued": 16}}"#);
    for _ in 0..16 + 2 {
        let mut s = request("GET", "/r", &[]);
        let mut f = filter(&c, &mut s);
        assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
        s.response_headers = vec![(b":status".to_vec(), b"200".to_vec())];
        f.on_response_headers(&mut s, true);
    }
    assert_eq!(c.queued_records(), 16);
    assert_eq!(envoy.counter(Counter::RecordsDropped), 2);
}

#[test]
fn a_record_that_cannot_be_sent_is_counted_as_failed() {
    let (mut envoy, c) = config(r#"{"mode": "record_only"}"#);
    let mut s = request("GET", "/r", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    s.response_headers = vec![(b":status".to_vec(), b"200".to_vec())];
    f.on_response_headers(&mut s, true);
    envoy.fail_callouts = true;
    <CacheConfig as HttpFilterConfig<MockConfig, MockStream>>::on_scheduled(&c, &mut envoy, 0);
    assert_eq!(envoy.counter(Counter::RecordFailures), 1);
    assert!(envoy.logs.is_empty());
}

#[test]
fn passed_through_requests_never_read_the_response() {
    let (envoy, c) = config(r#"{"mode": "off"}"#);
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    assert_eq!(f.on_request_headers(&mut s, true), HeadersStatus::Continue);
    s.frame = vec![b"x".to_vec()];
    assert_eq!(f.on_response_body(&mut s, true), BodyStatus::Continue);
    assert_eq!(envoy.counter(Counter::BypassModeOff), 1);
    assert_eq!(envoy.counter(Counter::BytesBuffered), 0);
}

#[test]
fn the_verdict_is_written_to_the_dynamic_metadata_once_known() {
    let (_envoy, c) = config(BASE);
    // A hit: written before the local reply.
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    assert_eq!(s.verdict(), None, "nothing while pending");
    let ans = answer(200, b"cached");
    let ct: &[u8] = b"application/x-protobuf";
    let mut h = status_headers("200");
    h.push((b"content-type", ct));
    f.on_http_callout_done(&mut s, 101, CalloutResult::Success, &h, &[&ans]);
    assert_eq!(s.verdict(), Some("hit"));
    assert_eq!(s.metadata.len(), 1);
    // A miss.
    let mut s = request("GET", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    f.on_http_callout_done(
        &mut s,
        101,
        CalloutResult::Success,
        &status_headers("404"),
        &[],
    );
    assert_eq!(s.verdict(), Some("miss"));
    // A bypass, at the request headers.
    let mut s = request("CONNECT", "/", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, true);
    assert_eq!(s.verdict(), Some("bypass:upgrade"));
}

fn wait_for_commits(s: &MockStream, n: u64, within: std::time::Duration) -> u64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = s.commits.0.load(Ordering::Relaxed);
        if got >= n || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_watchdog_releases_a_request_whose_body_never_completes() {
    let (envoy, c) = config(
        r#"{"backend": {"cluster": "softprobe_backend", "authority": "backend.local", "lookup_timeout_ms": 1}, "request_mode": "hold_headers"}"#,
    );
    let mut s = request("POST", "/slow", &[]);
    let mut f = filter(&c, &mut s);
    let started = std::time::Instant::now();
    assert_eq!(
        f.on_request_headers(&mut s, false),
        HeadersStatus::StopIteration
    );
    s.frame = vec![b"{\"partial\":".to_vec()];
    assert_eq!(
        f.on_request_body(&mut s, false),
        BodyStatus::StopIterationAndBuffer
    );
    assert_eq!(c.watched_streams(), 1);
    // Before the limit a scheduled event (e.g. a late one) changes nothing.
    f.on_scheduled(&mut s, 1);
    assert_eq!(s.continued, 0);
    assert_eq!(c.watched_streams(), 1, "re-armed");
    // The helper thread wakes the stream after lookup timeout + margin.
    assert_eq!(
        wait_for_commits(&s, 1, std::time::Duration::from_secs(5)),
        1
    );
    assert!(
        started.elapsed()
            >= std::time::Duration::from_millis(1 + filter_core::engine::HOLD_MARGIN_MS)
    );
    assert_eq!(c.watched_streams(), 0, "the entry goes with the commit");
    f.on_scheduled(&mut s, 1);
    assert_eq!(s.continued, 1, "released");
    assert_eq!(s.callouts.len(), 0, "no lookup was ever made");
    assert_eq!(envoy.counter(Counter::LookupErrorTimeout), 1);
    assert_eq!(s.verdict(), Some("error:timeout"));
    // Nothing more happens to it.
    f.on_scheduled(&mut s, 1);
    assert_eq!(s.continued, 1);
    assert_eq!(c.watched_streams(), 0);
}

#[test]
fn progress_and_release_stop_the_watchdog() {
    let (_envoy, c) = config(
        r#"{"backend": {"cluster": "softprobe_backend", "authority": "backend.local"}, "request_mode": "hold_headers"}"#,
    );
    let mut s = request("POST", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, false);
    assert_eq!(c.watched_streams(), 1);
    s.frame = vec![b"{}".to_vec()];
    f.on_request_body(&mut s, true);
    assert_eq!(c.watched_streams(), 1, "held for the lookup");
    f.on_http_callout_done(
        &mut s,
        101,
        CalloutResult::Success,
        &status_headers("404"),
        &[],
    );
    assert_eq!(s.continued, 1);
    assert_eq!(c.watched_streams(), 0, "released");
    // A stream that goes away while held leaves nothing behind.
    let mut s = request("POST", "/items", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, false);
    assert_eq!(c.watched_streams(), 1);
    drop(f);
    assert_eq!(c.watched_streams(), 0);
}

#[test]
fn strict_mode_serves_its_502_when_the_watchdog_fires() {
    let (_envoy, c) = config(
        r#"{"backend": {"cluster": "softprobe_backend", "authority": "backend.local", "lookup_timeout_ms": 1}, "on_backend_error": "fail"}"#,
    );
    let mut s = request("POST", "/slow", &[]);
    let mut f = filter(&c, &mut s);
    f.on_request_headers(&mut s, false);
    s.frame = vec![b"x".to_vec()];
    f.on_request_body(&mut s, false);
    assert_eq!(
        wait_for_commits(&s, 1, std::time::Duration::from_secs(5)),
        1
    );
    f.on_scheduled(&mut s, 1);
    assert_eq!(s.sent.len(), 1);
    assert_eq!(s.sent[0].0, 502);
    assert_eq!(s.continued, 0);
    assert_eq!(s.verdict(), Some("error:timeout"));
}

/// The module's filter over the mock stream.
struct NativeDriver {
    _config: CacheConfig,
    filter: Box<dyn HttpFilter<MockStream>>,
    stream: MockStream,
}

impl NativeDriver {
    fn calls(&mut self, last: Option<Call>) -> Vec<Call> {
        let mut calls = std::mem::take(&mut self.stream.calls);
        calls.extend(last);
        calls
    }
}

fn paused(stop: bool) -> Option<Call> {
    Some(if stop { Call::Pause } else { Call::Continue })
}

impl conformance::Driver for NativeDriver {
    fn request_headers(&mut self, h: Vec<(Vec<u8>, Vec<u8>)>, eos: bool) -> Vec<Call> {
        self.stream.request_headers = h;
        let status = self.filter.on_request_headers(&mut self.stream, eos);
        self.calls(paused(status != HeadersStatus::Continue))
    }
    fn request_body(&mut self, chunk: &[u8], eos: bool) -> Vec<Call> {
        self.stream.frame = vec![chunk.to_vec()];
        let status = self.filter.on_request_body(&mut self.stream, eos);
        self.calls(paused(status != BodyStatus::Continue))
    }
    fn lookup_reply(&mut self, status: &str, content_type: Option<&str>, body: &[u8]) -> Vec<Call> {
        let mut h: Vec<(&[u8], &[u8])> = vec![(b":status", status.as_bytes())];
        if let Some(ct) = content_type {
            h.push((b"content-type", ct.as_bytes()));
        }
        let id = 100 + self.stream.callouts.len() as u64;
        let (f, s) = (&mut self.filter, &mut self.stream);
        f.on_http_callout_done(s, id, CalloutResult::Success, &h, &[body]);
        self.calls(None)
    }
    fn response_headers(&mut self, h: Vec<(Vec<u8>, Vec<u8>)>, eos: bool) -> Vec<Call> {
        self.stream.response_headers = h;
        self.filter.on_response_headers(&mut self.stream, eos);
        self.calls(Some(Call::Continue))
    }
    fn response_body(&mut self, chunk: &[u8], eos: bool) -> Vec<Call> {
        self.stream.frame = vec![chunk.to_vec()];
        self.filter.on_response_body(&mut self.stream, eos);
        self.calls(Some(Call::Continue))
    }
}

/// The shared conformance scenarios (`golden::conformance`): the same host calls, in the same
/// order, as every in-proxy host.
#[test]
fn conformance_with_every_in_proxy_host() {
    let errors = conformance::replay("native", |sc| {
        let (_envoy, c) = config(&sc.config.to_string());
        let mut stream = MockStream {
            fail_callouts: sc.dispatch_fails,
            ..MockStream::default()
        };
        let filter = filter(&c, &mut stream);
        Box::new(NativeDriver {
            _config: c,
            filter,
            stream,
        })
    });
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
