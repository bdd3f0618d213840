//! Engine decisions the golden cases cannot express: what each event returns per request mode,
//! bypasses decided at the headers, events after the end, and the callouts' own headers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::metrics::AtomicCounters;

fn engine_with(config: &str) -> (Arc<Engine>, Arc<AtomicCounters>) {
    let counters = Arc::new(AtomicCounters::default());
    let config = Config::from_json(config.as_bytes()).unwrap();
    let engine = Engine::new(
        config,
        &Node::default(),
        Services {
            metrics: counters.clone(),
            clock: Box::new(|| 1_000),
            seed: 1,
        },
    );
    (Arc::new(engine), counters)
}

fn stream(config: &str) -> (Stream, Arc<AtomicCounters>) {
    let (engine, counters) = engine_with(config);
    (Stream::new(engine), counters)
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<Header> {
    let mut h: Vec<Header> = vec![
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
    h
}

fn response(extra: &[(&str, &str)]) -> Vec<Header> {
    let mut h: Vec<Header> = vec![(b":status".to_vec(), b"200".to_vec())];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
    );
    h
}

const MISS: LookupResult<'static> = LookupResult::Answer {
    status: 404,
    content_type: None,
    body: b"",
};

fn hit_answer() -> Vec<u8> {
    codec::encode_answer(
        "test",
        &SpanIds {
            trace_id: [1; 16],
            span_id: [2; 8],
            ..SpanIds::default()
        },
        &Response {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"recorded".to_vec(),
        },
    )
}

fn hit(body: &[u8]) -> LookupResult<'_> {
    LookupResult::Answer {
        status: 200,
        content_type: Some(b"application/x-protobuf"),
        body,
    }
}

/// The lookup a decision asks for, or the record it queued.
fn take_callout(s: &Stream, d: Decision) -> Callout {
    if let Some(c) = d.effects.lookup {
        return c;
    }
    assert!(d.effects.record_queued, "expected a callout, got {d:?}");
    s.engine()
        .records()
        .next()
        .expect("a queued record")
        .callout
}

macro_rules! callout {
    ($s:ident, $e:expr) => {{
        let d = $e;
        take_callout(&$s, d)
    }};
}

/// The local reply a decision sends.
fn reply(d: Decision) -> Option<Response> {
    assert_eq!(d.flow == Flow::Stop, d.effects.reply.is_some(), "{d:?}");
    d.effects.reply.map(|r| r.response)
}

/// A decision that lets the stream go on untouched for `why`.
fn assert_bypass(s: &Stream, d: &Decision, why: Bypass) {
    assert!(matches!(d.flow, Flow::Continue | Flow::Release), "{d:?}");
    assert!(s.is_finished(), "{d:?}");
    let name = Counter::from(why).name();
    assert_eq!(
        s.verdict(),
        format!("bypass:{}", name.strip_prefix("bypass_").unwrap())
    );
}

#[test]
fn hold_headers_holds_the_headers_and_the_body_until_the_lookup() {
    let (mut s, _) = stream(r#"{"request_mode": "hold_headers"}"#);
    let d = s.on_request_headers(request("POST", "/orders", &[]), false);
    assert_eq!(d.flow, Flow::Hold);
    assert_eq!(s.on_request_body(b"{\"a\":", false).flow, Flow::Hold);
    let c = callout!(s, s.on_request_body(b"1}", true));
    assert_eq!(c.header(":path"), Some("/v1/inject"));
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Release);
}

#[test]
fn stream_headers_lets_the_headers_go_and_holds_the_body() {
    let (mut s, _) = stream(r#"{"request_mode": "stream_headers"}"#);
    let d = s.on_request_headers(request("POST", "/orders", &[]), false);
    assert_eq!(d.flow, Flow::Continue);
    assert_eq!(s.on_request_body(b"{\"a\":", false).flow, Flow::Hold);
    assert!(s.on_request_body(b"1}", true).effects.lookup.is_some());
}

#[test]
fn a_request_without_a_body_is_looked_up_at_the_headers_in_both_modes() {
    for mode in ["hold_headers", "stream_headers"] {
        let (mut s, _) = stream(&format!(r#"{{"request_mode": "{mode}"}}"#));
        let d = s.on_request_headers(request("GET", "/items", &[]), true);
        assert!(d.effects.lookup.is_some(), "{mode}: {d:?}");
    }
}

#[test]
fn trailers_pass_the_exchange_through_unlooked_up_and_unrecorded() {
    for mode in ["hold_headers", "stream_headers"] {
        let (mut s, c) = stream(&format!(r#"{{"request_mode": "{mode}"}}"#));
        s.on_request_headers(request("POST", "/orders", &[]), false);
        assert_eq!(s.on_request_body(b"abc", false).flow, Flow::Hold);
        let d = s.on_request_trailers();
        assert_eq!(d.flow, Flow::Release, "{mode}: the held request goes on");
        assert!(d.effects.lookup.is_none(), "{mode}");
        assert_eq!(c.get(Counter::BypassTrailers), 1, "{mode}");
        assert_eq!(c.get(Counter::Lookups), 0, "{mode}");
    }
    // A response with trailers reaches the client whole and is not recorded.
    let (mut s, c) = stream("{}");
    s.on_request_headers(request("GET", "/items", &[]), true);
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Release);
    s.on_response_headers(200, response(&[]), false);
    assert_eq!(s.on_response_body(b"part", false).flow, Flow::Continue);
    let d = s.on_response_trailers();
    assert_eq!(d.flow, Flow::Continue);
    assert!(!d.effects.record_queued);
    assert_eq!(c.get(Counter::BypassTrailers), 1);
    assert_eq!(s.verdict(), "miss");
}

#[test]
fn record_only_never_holds_and_never_looks_up() {
    for mode in ["hold_headers", "stream_headers"] {
        let (mut s, c) = stream(&format!(
            r#"{{"mode": "record_only", "request_mode": "{mode}"}}"#
        ));
        let d = s.on_request_headers(request("POST", "/orders", &[]), false);
        assert_eq!(d.flow, Flow::Continue, "{mode}");
        assert_eq!(s.on_request_body(b"x", true).flow, Flow::Continue, "{mode}");
        assert_eq!(c.get(Counter::Lookups), 0);
        let d = s.on_response_headers(200, response(&[("content-length", "2")]), false);
        assert_eq!(d.flow, Flow::Continue);
        assert!(s.on_response_body(b"ok", true).effects.record_queued);
    }
}

#[test]
fn upgrade_and_connect_bypass_at_the_headers() {
    let (mut s, c) = stream("{}");
    let d = s.on_request_headers(
        request(
            "GET",
            "/ws",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ),
        false,
    );
    assert_bypass(&s, &d, Bypass::Upgrade);
    assert!(s.is_finished());
    let (mut s2, _) = stream("{}");
    let d = s2.on_request_headers(request("CONNECT", "api.example.com:443", &[]), false);
    assert_bypass(&s, &d, Bypass::Upgrade);
    assert_eq!(c.get(Counter::BypassUpgrade), 1);
    assert_eq!(c.get(Counter::Lookups), 0);
}

#[test]
fn grpc_bypasses_at_the_headers() {
    let (mut s, c) = stream("{}");
    let d = s.on_request_headers(
        request(
            "POST",
            "/pkg.Service/Method",
            &[
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        ),
        false,
    );
    assert_bypass(&s, &d, Bypass::Grpc);
    assert_eq!(s.on_request_body(b"\0\0\0\0\0", true).flow, Flow::Continue);
    assert_eq!(c.get(Counter::BypassGrpc), 1);
    assert_eq!(c.get(Counter::Lookups), 0);
}

#[test]
fn a_content_length_over_the_limit_bypasses_at_the_headers() {
    for mode in ["hold_headers", "stream_headers"] {
        let (mut s, c) = stream(&format!(
            r#"{{"request_mode": "{mode}", "max_request_body_bytes": 10}}"#
        ));
        let d = s.on_request_headers(request("POST", "/up", &[("content-length", "11")]), false);
        assert_bypass(&s, &d, Bypass::RequestTooLarge);
        assert_eq!(s.on_request_body(&[b'x'; 11], true).flow, Flow::Continue);
        assert_eq!(c.get(Counter::BypassRequestTooLarge), 1);
        assert_eq!(c.get(Counter::BytesBuffered), 0, "nothing buffered");
        assert_eq!(
            s.on_response_headers(200, response(&[("content-length", "2")]), false)
                .flow,
            Flow::Continue
        );
        assert_eq!(
            s.on_response_body(b"ok", true).flow,
            Flow::Continue,
            "no record"
        );
    }
    // At the limit exactly, the request is looked up.
    let (mut s, _) = stream(r#"{"max_request_body_bytes": 10}"#);
    let d = s.on_request_headers(request("POST", "/up", &[("content-length", "10")]), false);
    assert_eq!(d.flow, Flow::Continue);
}

#[test]
fn events_after_a_served_hit_are_ignored() {
    let (mut s, c) = stream(r#"{"request_mode": "hold_headers"}"#);
    assert!(s
        .on_request_headers(request("GET", "/items", &[]), true)
        .effects
        .lookup
        .is_some());
    let answer = hit_answer();
    let Some(resp) = reply(s.on_lookup_result(hit(&answer))) else {
        panic!("expected a hit");
    };
    assert_eq!(resp.body, b"recorded");
    assert!(s.is_finished());
    // Nothing after Done changes anything or produces a callout.
    assert_eq!(s.on_lookup_result(hit(&answer)).flow, Flow::Continue);
    assert_eq!(s.on_request_body(b"late", true).flow, Flow::Continue);
    assert_eq!(s.on_request_trailers().flow, Flow::Continue);
    assert_eq!(
        s.on_request_headers(request("GET", "/items", &[]), true)
            .flow,
        Flow::Continue
    );
    assert_eq!(
        s.on_response_headers(200, response(&[]), true).flow,
        Flow::Continue
    );
    assert_eq!(s.on_response_body(b"x", true).flow, Flow::Continue);
    assert_eq!(c.get(Counter::Hits), 1);
    assert_eq!(c.get(Counter::Lookups), 1);
    assert_eq!(c.get(Counter::Requests), 1);
}

#[test]
fn events_after_the_record_are_ignored() {
    let (mut s, _) = stream("{}");
    s.on_request_headers(request("GET", "/items", &[]), true);
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Release);
    assert_eq!(
        s.on_response_headers(200, response(&[("content-length", "2")]), false)
            .flow,
        Flow::Continue
    );
    assert!(s.on_response_body(b"ok", true).effects.record_queued);
    assert!(s.is_finished());
    assert_eq!(s.on_response_body(b"more", true).flow, Flow::Continue);
    assert_eq!(s.on_response_trailers().flow, Flow::Continue);
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Continue);
}

#[test]
fn lookup_is_never_returned_twice() {
    let (mut s, c) = stream(r#"{"request_mode": "hold_headers"}"#);
    assert_eq!(
        s.on_request_headers(request("POST", "/x", &[]), false).flow,
        Flow::Hold
    );
    assert!(s.on_request_body(b"body", true).effects.lookup.is_some());
    for d in [
        s.on_request_body(b"", true),
        s.on_request_trailers(),
        s.on_request_headers(request("POST", "/x", &[]), true),
    ] {
        assert!(d.effects.lookup.is_none(), "{d:?}");
    }
    assert_eq!(c.get(Counter::Lookups), 1);
    // The one lookup still resolves.
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Release);
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Continue);
    assert_eq!(c.get(Counter::Misses), 1);
}

#[test]
fn lookup_callout_asks_for_protobuf() {
    let (mut s, _) = stream(
        r#"{"backend": {"cluster": "sp", "authority": "backend.local", "inject_path": "/custom/inject", "lookup_timeout_ms": 250}}"#,
    );
    let c = callout!(s, s.on_request_headers(request("GET", "/items", &[]), true));
    assert_eq!(c.cluster, "sp");
    assert_eq!(c.timeout_ms, 250);
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/custom/inject"));
    assert_eq!(c.header(":authority"), Some("backend.local"));
    assert_eq!(c.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(c.header("accept"), Some("application/x-protobuf"));
    assert_eq!(c.header("authorization"), None, "no key configured");
}

fn recorded(config: &str) -> Callout {
    let (mut s, _) = stream(config);
    s.on_request_headers(request("GET", "/items", &[]), true);
    s.on_lookup_result(MISS);
    callout!(s, s.on_response_headers(200, response(&[]), true))
}

#[test]
fn record_callout_goes_to_the_traces_path_with_the_api_key() {
    let c = recorded(
        r#"{"backend": {"traces_path": "/custom/traces", "api_key": "k-123", "record_timeout_ms": 1234}}"#,
    );
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/custom/traces"));
    assert_eq!(c.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(c.header("authorization"), Some("Bearer k-123"));
    assert_eq!(c.header("accept"), None);
    assert_eq!(c.timeout_ms, 1234);

    // The older agents' header carries the key as it is.
    let c = recorded(r#"{"backend": {"api_key": "k-9", "auth_header": "x-public-key"}}"#);
    assert_eq!(c.header(":path"), Some("/v1/traces"));
    assert_eq!(c.header("x-public-key"), Some("k-9"));
    assert_eq!(c.header("authorization"), None);
}

#[test]
fn no_auth_header_without_an_api_key() {
    for config in ["{}", r#"{"backend": {"api_key": ""}}"#] {
        let c = recorded(config);
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [":method", ":path", ":authority", "content-type"],
            "{config}"
        );
    }
}

#[test]
fn record_results_are_counted() {
    let (engine, c) = engine_with("{}");
    for r in [
        RecordResult::Status(200),
        RecordResult::Status(202),
        RecordResult::Status(299),
        RecordResult::Status(199),
        RecordResult::Status(300),
        RecordResult::Status(500),
        RecordResult::Failed,
        RecordResult::Dropped,
    ] {
        engine.records().push(Callout {
            cluster: "c".into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: 1,
        });
        let out = engine.records().next().unwrap();
        engine.records().finish(out.ticket, r);
    }
    assert_eq!(c.get(Counter::RecordsSent), 3);
    assert_eq!(c.get(Counter::RecordFailures), 4);
    assert_eq!(c.get(Counter::RecordsDropped), 1);
}

#[test]
fn bodiless_responses_are_recorded_whatever_their_content_length() {
    let config = r#"{"max_response_body_bytes": 4, "recordable_statuses": [200, 304]}"#;
    // HEAD: the length describes the GET body that was not sent.
    let (mut s, c) = stream(config);
    s.on_request_headers(request("HEAD", "/big", &[]), true);
    s.on_lookup_result(MISS);
    let d = s.on_response_headers(200, response(&[("content-length", "5000")]), true);
    assert!(d.effects.record_queued, "{d:?}");
    assert_eq!(c.get(Counter::BypassResponseTooLarge), 0);
    // 304: no body either.
    let (mut s, _) = stream(config);
    s.on_request_headers(request("GET", "/big", &[]), true);
    s.on_lookup_result(MISS);
    let d = s.on_response_headers(304, response(&[("content-length", "5000")]), true);
    assert!(d.effects.record_queued, "{d:?}");
    // A GET 200 announcing the same length is not recorded.
    let (mut s, c) = stream(config);
    s.on_request_headers(request("GET", "/big", &[]), true);
    s.on_lookup_result(MISS);
    let d = s.on_response_headers(200, response(&[("content-length", "5000")]), false);
    assert_eq!(d.flow, Flow::Continue);
    assert_eq!(s.on_response_body(&[b'x'; 5000], true).flow, Flow::Continue);
    assert_eq!(c.get(Counter::BypassResponseTooLarge), 1);
}

#[test]
fn a_response_growing_past_the_limit_is_not_recorded() {
    let (mut s, c) = stream(r#"{"max_response_body_bytes": 4}"#);
    s.on_request_headers(request("GET", "/stream", &[]), true);
    s.on_lookup_result(MISS);
    assert_eq!(
        s.on_response_headers(200, response(&[]), false).flow,
        Flow::Continue
    );
    assert_eq!(s.on_response_body(b"abc", false).flow, Flow::Continue);
    assert_eq!(s.on_response_body(b"def", false).flow, Flow::Continue);
    assert_eq!(s.on_response_body(b"ghi", true).flow, Flow::Continue);
    assert_eq!(c.get(Counter::BypassResponseTooLarge), 1);
}

#[test]
fn strict_mode_answers_502_on_a_failed_lookup() {
    let (mut s, c) = stream(r#"{"on_backend_error": "fail"}"#);
    s.on_request_headers(request("GET", "/items", &[]), true);
    let Some(resp) = reply(s.on_lookup_result(LookupResult::Failed(LookupFailure::Timeout))) else {
        panic!("expected a 502");
    };
    assert_eq!(resp.status, 502);
    assert!(!resp.headers.iter().any(|(n, _)| n == "x-softprobe-cache"));
    assert_eq!(c.get(Counter::LookupErrorTimeout), 1);
}

fn binary_body(n: usize) -> Vec<u8> {
    // 0x80..=0xff repeated: never UTF-8.
    (0x80..=0xffu8).cycle().take(n).collect()
}

#[test]
fn a_binary_request_body_is_encoded_once_and_both_spans_carry_its_exact_bytes() {
    let body = binary_body(70_000);
    let (mut s, _) = stream(r#"{"mode": "record_and_inject"}"#);
    s.on_request_headers(request("POST", "/upload", &[]), false);
    let inject = callout!(s, s.on_request_body(&body, true));
    // Held from the lookup on as its base64 only.
    assert!(s.body.is_empty());
    assert_eq!(
        s.body_base64.as_ref().map(String::len),
        Some(70_000usize.div_ceil(3) * 4)
    );
    assert_eq!(s.on_lookup_result(MISS).flow, Flow::Release);
    s.on_response_headers(200, response(&[]), false);
    let record = callout!(s, s.on_response_body(b"ok", true));
    assert!(s.body_base64.is_none(), "dropped once recorded");
    for span_body in [inject.body, record.body] {
        let traces = codec::decode_traces(&span_body, Format::Protobuf).unwrap();
        let (rs, span) = traces.spans().next().unwrap();
        let read = codec::read_span(rs, span).unwrap();
        assert_eq!(read.request_body, body);
    }
}

#[test]
fn a_utf8_body_or_no_record_keeps_the_raw_body() {
    let (mut s, _) = stream(r#"{"mode": "record_and_inject"}"#);
    s.on_request_headers(
        request("POST", "/upload", &[("content-type", "application/json")]),
        false,
    );
    callout!(s, s.on_request_body(b"{\"a\":1}", true));
    assert_eq!(s.body, b"{\"a\":1}");
    assert!(s.body_base64.is_none());

    let (mut s, _) = stream(r#"{"mode": "inject_only"}"#);
    s.on_request_headers(request("POST", "/upload", &[]), false);
    callout!(s, s.on_request_body(&binary_body(10), true));
    assert!(
        s.body_base64.is_none(),
        "nothing will be recorded: no second span"
    );
}

#[test]
fn a_pre_encoded_request_body_writes_the_same_bytes_as_the_raw_body() {
    let body = binary_body(1000);
    let ids = SpanIds::default();
    let redactor = codec::Redactor::default();
    let meta = SpanMeta {
        service_name: "svc",
        direction: codec::Direction::Outbound,
        session_id: None,
        ids: &ids,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        redactor: &redactor,
    };
    let headers = request("POST", "/upload", &[]);
    let raw = RequestView {
        method: b"POST",
        authority: b"api.example.com",
        path: b"/upload",
        headers: &headers,
        body: &body,
        body_base64: None,
    };
    let b64 = codec::body_base64(&headers, &body).unwrap();
    let pre = RequestView {
        body: &[],
        body_base64: Some(&b64),
        ..raw
    };
    let resp = ResponseView {
        status: 200,
        headers: &[],
        body: &body,
    };
    assert_eq!(
        codec::encode_inject(&meta, &raw),
        codec::encode_inject(&meta, &pre)
    );
    assert_eq!(
        codec::encode_extract(&meta, &raw, &resp),
        codec::encode_extract(&meta, &pre, &resp)
    );
    let json = [(b"content-type".to_vec(), b"application/json".to_vec())];
    assert_eq!(codec::body_base64(&json, b"{}"), None);
    assert!(
        codec::body_base64(&[], b"text").is_some(),
        "no content type: binary, as the agents"
    );
}

/// A stream whose engine clock the test moves (milliseconds).
fn timed_stream(config: &str) -> (Stream, Arc<AtomicCounters>, Arc<AtomicU64>) {
    let counters = Arc::new(AtomicCounters::default());
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = now.clone();
    let engine = Engine::new(
        Config::from_json(config.as_bytes()).unwrap(),
        &Node::default(),
        Services {
            metrics: counters.clone(),
            clock: Box::new(move || clock.load(Ordering::Relaxed) * 1_000_000),
            seed: 1,
        },
    );
    (Stream::new(Arc::new(engine)), counters, now)
}

#[test]
fn lookup_replies_are_told_from_envoys_own_local_replies() {
    // (what, ms after the lookup went out, `:status`, body, the counter it lands in)
    type Case<'a> = (&'a str, u64, Option<&'a [u8]>, &'a [u8], Counter);
    let cases: &[Case<'_>] = &[
        // No response headers: a failure, a timeout when it came at the deadline.
        (
            "no reply, early",
            10,
            None,
            b"",
            Counter::LookupErrorTransport,
        ),
        (
            "no reply, at the deadline",
            480,
            None,
            b"",
            Counter::LookupErrorTimeout,
        ),
        // Envoy's timeout reply.
        (
            "504 at the deadline",
            499,
            Some(b"504"),
            b"upstream request timeout",
            Counter::LookupErrorTimeout,
        ),
        // A 504 well before the deadline is the backend's own answer.
        (
            "504 early",
            10,
            Some(b"504"),
            b"gateway timeout",
            Counter::LookupErrorStatus,
        ),
        // Envoy's connection failures.
        (
            "503 connect",
            5,
            Some(b"503"),
            b"upstream connect error or disconnect/reset before headers",
            Counter::LookupErrorTransport,
        ),
        (
            "503 no upstream",
            5,
            Some(b"503"),
            b"no healthy upstream",
            Counter::LookupErrorTransport,
        ),
        (
            "503 of the backend",
            5,
            Some(b"503"),
            b"busy",
            Counter::LookupErrorStatus,
        ),
        (
            "garbage status",
            5,
            Some(b"2xx"),
            b"",
            Counter::LookupErrorTransport,
        ),
        (
            "404",
            5,
            Some(b"404"),
            b"{\"error\":\"no inject match\"}",
            Counter::Misses,
        ),
    ];
    for (what, after_ms, status, body, counter) in cases {
        let (mut s, counters, now) = timed_stream(r#"{"backend": {"lookup_timeout_ms": 500}}"#);
        callout!(s, s.on_request_headers(request("GET", "/x", &[]), true));
        now.fetch_add(*after_ms, Ordering::Relaxed);
        let reply = status.map(|st| LookupReply {
            status: Some(st),
            content_type: None,
            body,
        });
        let d = s.on_lookup_reply(reply);
        assert_eq!(d.flow, Flow::Release, "{what}");
        assert_eq!(counters.get(*counter), 1, "{what}");
    }
}

#[test]
fn the_verdict_is_handed_over_once_per_change() {
    let (mut s, _) = stream("{}");
    let d = s.on_request_headers(request("GET", "/x", &[]), true);
    assert_eq!(d.effects.verdict, None, "pending");
    let d = s.on_lookup_result(MISS);
    assert_eq!(d.effects.verdict.as_deref(), Some("miss"));
    let d = s.on_response_headers(200, response(&[]), false);
    assert_eq!(d.effects.verdict, None, "unchanged");
}

#[test]
fn a_held_request_carries_a_deadline_and_the_timer_releases_it_once_past() {
    let (mut s, counters, now) =
        timed_stream(r#"{"request_mode": "hold_headers", "backend": {"lookup_timeout_ms": 500}}"#);
    let d = s.on_request_headers(request("POST", "/x", &[]), false);
    assert_eq!(d.flow, Flow::Hold);
    assert_eq!(
        d.effects.hold_deadline_ms,
        Some(1_000 + 500 + HOLD_MARGIN_MS)
    );
    // Progress moves the deadline.
    now.fetch_add(100, Ordering::Relaxed);
    let d = s.on_request_body(b"a", false);
    assert_eq!(
        d.effects.hold_deadline_ms,
        Some(1_100 + 500 + HOLD_MARGIN_MS)
    );
    // Early: nothing changes.
    let d = s.on_timer();
    assert_eq!(
        (d.flow, d.effects.hold_deadline_ms),
        (Flow::Hold, Some(1_600 + HOLD_MARGIN_MS))
    );
    now.fetch_add(500 + HOLD_MARGIN_MS, Ordering::Relaxed);
    let d = s.on_timer();
    assert_eq!(d.flow, Flow::Release);
    assert_eq!(d.effects.hold_deadline_ms, None);
    assert_eq!(counters.get(Counter::LookupErrorTimeout), 1);
    assert_eq!(s.on_timer().flow, Flow::Continue, "nothing held any more");
}

#[test]
fn a_reset_drops_everything_and_holds_nothing() {
    let (mut s, counters) = stream(r#"{"request_mode": "hold_headers"}"#);
    assert_eq!(
        s.on_request_headers(request("POST", "/x", &[]), false).flow,
        Flow::Hold
    );
    s.on_request_body(b"partial", false);
    let d = s.on_reset();
    assert_eq!((d.flow, d.effects.hold_deadline_ms), (Flow::Continue, None));
    assert!(s.is_finished());
    assert_eq!(s.on_request_body(b"more", true).flow, Flow::Continue);
    assert_eq!(counters.get(Counter::Lookups), 0);
    assert!(s.engine().records().next().is_none(), "nothing recorded");
}

#[test]
fn response_events_never_hold_even_while_the_request_is_held() {
    // stream_headers: the upstream may answer before the lookup does.
    let (mut s, _) = stream("{}");
    assert_eq!(
        s.on_request_headers(request("POST", "/x", &[]), false).flow,
        Flow::Continue
    );
    assert_eq!(s.on_request_body(b"a", false).flow, Flow::Hold);
    let d = s.on_response_headers(400, response(&[]), false);
    assert_eq!(d.flow, Flow::Continue);
    assert!(
        d.effects.hold_deadline_ms.is_some(),
        "the request is still held"
    );
}

#[test]
fn local_replies_say_why() {
    let (mut s, _) = stream("{}");
    s.on_request_headers(request("GET", "/x", &[]), true);
    let answer = hit_answer();
    let d = s.on_lookup_result(hit(&answer));
    assert_eq!(d.effects.reply.unwrap().details, "transparent_cache_hit");
    let (mut s, _) = stream(r#"{"on_backend_error": "fail"}"#);
    s.on_request_headers(request("GET", "/x", &[]), true);
    let d = s.on_lookup_result(LookupResult::Failed(LookupFailure::Timeout));
    assert_eq!(
        d.effects.reply.unwrap().details,
        "transparent_cache_backend_error"
    );
}

#[test]
fn consecutive_lookup_faults_open_the_breaker_for_every_stream_of_the_engine() {
    let (engine, counters) =
        engine_with(r#"{"breaker": {"consecutive_failures": 2, "backoff_ms": 1000}}"#);
    for _ in 0..2 {
        let mut s = Stream::new(engine.clone());
        assert!(s
            .on_request_headers(request("GET", "/x", &[]), true)
            .effects
            .lookup
            .is_some());
        s.on_lookup_result(LookupResult::Failed(LookupFailure::Timeout));
    }
    assert_eq!(counters.get(Counter::LookupBreakerOpened), 1);
    let mut s = Stream::new(engine.clone());
    let d = s.on_request_headers(request("GET", "/x", &[]), true);
    assert_bypass(&s, &d, Bypass::BreakerOpen);
    assert_eq!(counters.get(Counter::Lookups), 2);
    // A miss (the backend answering) is no fault.
    let (engine, counters) = engine_with(r#"{"breaker": {"consecutive_failures": 2}}"#);
    for _ in 0..5 {
        let mut s = Stream::new(engine.clone());
        s.on_request_headers(request("GET", "/x", &[]), true);
        s.on_lookup_result(MISS);
    }
    assert_eq!(counters.get(Counter::LookupBreakerOpened), 0);
}
