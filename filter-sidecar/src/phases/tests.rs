use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers};
use filter_core::codec::{encode_answer, SpanIds};
use filter_core::{AtomicCounters, Config, Counter, Engine, Node, Services};

use super::*;

use processing_request::Request as Q;
use processing_response::Response as R;

fn engine(json: &str) -> (Arc<Engine>, Arc<AtomicCounters>) {
    let counters = Arc::new(AtomicCounters::default());
    let engine = Engine::new(
        Config::from_json(json.as_bytes()).unwrap(),
        &Node::default(),
        Services {
            metrics: counters.clone(),
            clock: Box::new(|| 1),
            seed: 1,
        },
    );
    (Arc::new(engine), counters)
}

fn phases(json: &str) -> (Phases, Arc<AtomicCounters>) {
    let (e, c) = engine(json);
    (Phases::new(Stream::new(e), 1 << 20), c)
}

fn map(headers: &[(&str, &[u8])], raw: bool) -> Option<HeaderMap> {
    Some(HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: if raw {
                    String::new()
                } else {
                    String::from_utf8_lossy(v).into_owned()
                },
                raw_value: if raw { v.to_vec() } else { Vec::new() },
            })
            .collect(),
    })
}

fn msg(r: Q) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(r),
        ..ProcessingRequest::default()
    }
}

fn req_headers(method: &str, path: &str, extra: &[(&str, &[u8])], eos: bool) -> ProcessingRequest {
    let mut h: Vec<(&str, &[u8])> = vec![
        (":method", method.as_bytes()),
        (":path", path.as_bytes()),
        (":authority", b"api.example.com"),
        (":scheme", b"http"),
    ];
    h.extend_from_slice(extra);
    msg(Q::RequestHeaders(HttpHeaders {
        headers: map(&h, true),
        end_of_stream: eos,
        ..HttpHeaders::default()
    }))
}

fn resp_headers(status: &str, extra: &[(&str, &[u8])], eos: bool) -> ProcessingRequest {
    let mut h: Vec<(&str, &[u8])> = vec![(":status", status.as_bytes())];
    h.extend_from_slice(extra);
    msg(Q::ResponseHeaders(HttpHeaders {
        headers: map(&h, true),
        end_of_stream: eos,
        ..HttpHeaders::default()
    }))
}

fn req_body(b: &[u8], eos: bool) -> ProcessingRequest {
    msg(Q::RequestBody(HttpBody {
        body: b.to_vec(),
        end_of_stream: eos,
        ..HttpBody::default()
    }))
}

fn resp_body(b: &[u8], eos: bool) -> ProcessingRequest {
    msg(Q::ResponseBody(HttpBody {
        body: b.to_vec(),
        end_of_stream: eos,
        ..HttpBody::default()
    }))
}

/// The response of a `Step::Respond`, and the record it queued (taken back out of the engine's
/// queue).
macro_rules! respond {
    ($p:ident, $e:expr) => {{
        let step = $e;
        match step {
            Step::Respond {
                response,
                record_queued,
            } => {
                let rec = record_queued
                    .then(|| $p.stream().engine().records().next().map(|o| o.callout))
                    .flatten();
                (*response, rec)
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }};
}

fn lookup(step: Step) -> Callout {
    match step {
        Step::Lookup(c) => c,
        other => panic!("expected a lookup, got {other:?}"),
    }
}

fn is_continue(r: &ProcessingResponse, phase: Phase) {
    let ok = match (&r.response, phase) {
        (Some(R::RequestHeaders(h)), Phase::RequestHeaders)
        | (Some(R::ResponseHeaders(h)), Phase::ResponseHeaders) => {
            h.response == Some(CommonResponse::default())
        }
        (Some(R::RequestBody(b)), Phase::RequestBody)
        | (Some(R::ResponseBody(b)), Phase::ResponseBody) => {
            b.response == Some(CommonResponse::default())
        }
        (Some(R::RequestTrailers(_)), Phase::RequestTrailers)
        | (Some(R::ResponseTrailers(_)), Phase::ResponseTrailers) => true,
        _ => false,
    };
    assert!(ok, "expected a plain continue for {phase:?}, got {r:?}");
}

const MISS: filter_core::LookupResult<'static> = filter_core::LookupResult::Answer {
    status: 404,
    content_type: None,
    body: b"",
};

fn hit_answer(resp: &Response) -> Vec<u8> {
    let ids = SpanIds {
        trace_id: [1; 16],
        span_id: [2; 8],
        ..SpanIds::default()
    };
    encode_answer("backend", &ids, resp)
}

#[test]
fn bodiless_miss_looks_up_on_the_headers_then_streams_and_records_the_response() {
    let (mut p, c) = phases("{}");
    let callout = lookup(p.handle(req_headers("GET", "/items", &[], true)));
    assert_eq!(callout.header(":path"), Some("/v1/inject"));
    let r = p.after_lookup(MISS);
    is_continue(&r, Phase::RequestHeaders);
    // No body will come: skip it; keep the response phases (this mode records).
    let m = r.mode_override.unwrap();
    assert_eq!(m.request_body_mode, BodySendMode::None as i32);
    assert_eq!(m.response_header_mode, HeaderSendMode::Send as i32);
    assert_eq!(m.response_body_mode, BodySendMode::Streamed as i32);

    let (r, rec) = respond!(
        p,
        p.handle(resp_headers(
            "200",
            &[("content-type", b"application/json")],
            false,
        ))
    );
    is_continue(&r, Phase::ResponseHeaders);
    assert!(r.mode_override.is_none() && rec.is_none());
    let (r, rec) = respond!(p, p.handle(resp_body(b"{\"a\":", false)));
    is_continue(&r, Phase::ResponseBody);
    assert!(rec.is_none());
    let (r, rec) = respond!(p, p.handle(resp_body(b"1}", true)));
    is_continue(&r, Phase::ResponseBody);
    let rec = rec.expect("a record");
    assert_eq!(rec.header(":path"), Some("/v1/traces"));
    assert_eq!(c.get(Counter::Misses), 1);
    assert_eq!(c.get(Counter::BytesBuffered), 7);
}

#[test]
fn a_hit_is_an_immediate_response_with_the_recorded_status_headers_and_body() {
    let (mut p, c) = phases("{}");
    lookup(p.handle(req_headers("GET", "/items", &[], true)));
    let recorded = Response {
        status: 201,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("set-cookie".into(), b"a=1".to_vec()),
            ("set-cookie".into(), b"b=\xff".to_vec()),
        ],
        body: b"\x00\x01binary".to_vec(),
    };
    let answer = hit_answer(&recorded);
    let r = p.after_lookup(filter_core::LookupResult::Answer {
        status: 200,
        content_type: Some(b"application/x-protobuf"),
        body: &answer,
    });
    let Some(R::ImmediateResponse(ir)) = r.response else {
        panic!("expected an immediate response, got {r:?}");
    };
    assert_eq!(ir.status.unwrap().code, 201);
    assert_eq!(ir.body, b"\x00\x01binary");
    let set: Vec<(String, Vec<u8>, bool)> = ir
        .headers
        .unwrap()
        .set_headers
        .into_iter()
        .map(|o| {
            #[allow(deprecated)]
            let append = o.append.unwrap().value;
            let h = o.header.unwrap();
            assert!(
                h.value.is_empty(),
                "Envoy sent raw_value: answer in raw_value"
            );
            (h.key, h.raw_value, append)
        })
        .collect();
    assert_eq!(
        set,
        vec![
            ("content-type".into(), b"application/json".to_vec(), false),
            ("set-cookie".into(), b"a=1".to_vec(), false),
            ("set-cookie".into(), b"b=\xff".to_vec(), true),
            ("x-softprobe-cache".into(), b"hit".to_vec(), false),
        ]
    );
    assert!(r.mode_override.is_none());
    assert!(p.stream().is_finished());
    assert_eq!(c.get(Counter::Hits), 1);
}

#[test]
fn envoy_1_26_headers_come_in_value_and_mutations_answer_in_value() {
    let (mut p, _) = phases("{}");
    let mut m = req_headers("GET", "/x", &[], true);
    if let Some(Q::RequestHeaders(h)) = &mut m.request {
        h.headers = map(
            &[(":method", b"GET"), (":path", b"/x"), (":authority", b"a")],
            false,
        );
    }
    lookup(p.handle(m));
    let answer = hit_answer(&Response {
        status: 200,
        headers: vec![("x-a".into(), b"1".to_vec())],
        body: Vec::new(),
    });
    let r = p.after_lookup(filter_core::LookupResult::Answer {
        status: 200,
        content_type: None,
        body: &answer,
    });
    let Some(R::ImmediateResponse(ir)) = r.response else {
        panic!("{r:?}");
    };
    let h = ir.headers.unwrap().set_headers[0].header.clone().unwrap();
    assert_eq!((h.key.as_str(), h.value.as_str()), ("x-a", "1"));
    assert!(h.raw_value.is_empty());
}

#[test]
fn an_ineligible_request_skips_every_later_phase() {
    let (mut p, c) = phases(r#"{"rules": {"exclude_paths": ["/health.*"]}}"#);
    let (r, rec) = respond!(p, p.handle(req_headers("GET", "/healthz", &[], false)));
    is_continue(&r, Phase::RequestHeaders);
    assert!(rec.is_none());
    assert_eq!(r.mode_override, Some(skip_all()));
    assert_eq!(c.get(Counter::BypassPath), 1);
    // Upgrade / gRPC too.
    let (mut p, _) = phases("{}");
    let (r, _) = respond!(
        p,
        p.handle(req_headers(
            "POST",
            "/svc/M",
            &[("content-type", b"application/grpc")],
            false,
        ))
    );
    assert_eq!(r.mode_override, Some(skip_all()));
}

#[test]
fn a_request_body_is_looked_up_when_complete_and_a_miss_continues_it() {
    let (mut p, c) = phases("{}");
    let (r, _) = respond!(
        p,
        p.handle(req_headers(
            "POST",
            "/q",
            &[("content-length", b"5")],
            false,
        ))
    );
    let Some(R::RequestHeaders(HeadersResponse {
        response: Some(common),
    })) = &r.response
    else {
        panic!("expected a headers answer, got {r:?}");
    };
    let set = &common
        .header_mutation
        .as_ref()
        .expect("a mutation")
        .set_headers;
    let length = set[0].header.as_ref().unwrap();
    assert_eq!(
        (length.key.as_str(), length.raw_value.as_slice()),
        ("content-length", &b"5"[..]),
        "the client's length is set again (Envoy 1.28+ drops it in BUFFERED_PARTIAL)"
    );
    assert_eq!(
        r.mode_override.map(|m| m.request_body_mode),
        Some(BodySendMode::Buffered as i32),
        "a body of known length is read BUFFERED, so Envoy keeps its content-length"
    );
    let callout = lookup(p.handle(req_body(b"hello", true)));
    assert!(!callout.body.is_empty());
    let r = p.after_lookup(filter_core::LookupResult::Failed(
        filter_core::LookupFailure::Timeout,
    ));
    is_continue(&r, Phase::RequestBody);
    assert_eq!(c.get(Counter::LookupErrorTimeout), 1);
    // A lookup error: nothing to record, so the response phases are skipped.
    assert_eq!(r.mode_override, Some(skip_all()));
}

#[test]
fn a_chunked_body_or_one_over_the_limit_keeps_buffered_partial_and_no_length_is_set() {
    let (e, _) = engine("{}");
    for (headers, limit) in [
        (vec![("transfer-encoding", &b"chunked"[..])], 1 << 20),
        (vec![("content-length", &b"2000"[..])], 1000),
    ] {
        let mut p = Phases::new(Stream::new(e.clone()), limit);
        let (r, _) = respond!(p, p.handle(req_headers("POST", "/q", &headers, false)));
        is_continue(&r, Phase::RequestHeaders);
        assert!(r.mode_override.is_none(), "{headers:?}");
    }
}

#[test]
fn a_partial_body_goes_upstream_without_a_lookup() {
    let (mut p, c) = phases("{}");
    respond!(p, p.handle(req_headers("POST", "/q", &[], false)));
    let (r, rec) = respond!(p, p.handle(req_body(b"first megabyte", false)));
    is_continue(&r, Phase::RequestBody);
    assert!(rec.is_none());
    assert!(p.notes.request_body_incomplete);
    assert_eq!(c.get(Counter::Lookups), 0);
    // Whatever comes later passes untouched.
    let (r, rec) = respond!(p, p.handle(resp_headers("200", &[], false)));
    is_continue(&r, Phase::ResponseHeaders);
    assert!(rec.is_none());
}

#[test]
fn a_body_over_the_engine_limit_passes_through() {
    let (mut p, c) = phases(r#"{"max_request_body_bytes": 4}"#);
    respond!(p, p.handle(req_headers("POST", "/q", &[], false)));
    let (r, _) = respond!(p, p.handle(req_body(b"too long", true)));
    is_continue(&r, Phase::RequestBody);
    assert_eq!(r.mode_override, Some(skip_all()));
    assert_eq!(c.get(Counter::BypassRequestTooLarge), 1);
}

#[test]
fn inject_only_skips_the_response_phases() {
    let (mut p, _) = phases(r#"{"mode": "inject_only"}"#);
    lookup(p.handle(req_headers("GET", "/x", &[], true)));
    let r = p.after_lookup(MISS);
    let m = r.mode_override.unwrap();
    assert_eq!(m.response_header_mode, HeaderSendMode::Skip as i32);
    assert_eq!(m.response_body_mode, BodySendMode::None as i32);
}

#[test]
fn record_only_never_looks_up_and_records_a_bodiless_response_at_the_headers() {
    let (mut p, c) = phases(r#"{"mode": "record_only", "recordable_statuses": [204]}"#);
    let (r, _) = respond!(p, p.handle(req_headers("DELETE", "/x", &[], true)));
    is_continue(&r, Phase::RequestHeaders);
    let (r, rec) = respond!(p, p.handle(resp_headers("204", &[], true)));
    is_continue(&r, Phase::ResponseHeaders);
    assert!(rec.is_some());
    assert_eq!(
        r.mode_override.unwrap().response_body_mode,
        BodySendMode::None as i32
    );
    assert_eq!(c.get(Counter::Lookups), 0);
}

#[test]
fn an_unrecordable_status_skips_the_response_body() {
    let (mut p, c) = phases("{}");
    lookup(p.handle(req_headers("GET", "/x", &[], true)));
    p.after_lookup(MISS);
    let (r, rec) = respond!(p, p.handle(resp_headers("500", &[], false)));
    assert!(rec.is_none());
    assert_eq!(
        r.mode_override.unwrap().response_body_mode,
        BodySendMode::None as i32
    );
    assert_eq!(c.get(Counter::BypassStatus), 1);
    // If Envoy sends body chunks anyway, they pass.
    let (r, rec) = respond!(p, p.handle(resp_body(b"x", true)));
    is_continue(&r, Phase::ResponseBody);
    assert!(rec.is_none());
}

#[test]
fn strict_mode_answers_502_locally() {
    let (mut p, _) = phases(r#"{"on_backend_error": "fail"}"#);
    lookup(p.handle(req_headers("GET", "/x", &[], true)));
    let r = p.after_lookup(filter_core::LookupResult::Answer {
        status: 500,
        content_type: None,
        body: b"",
    });
    let Some(R::ImmediateResponse(ir)) = r.response else {
        panic!("{r:?}");
    };
    assert_eq!(ir.status.unwrap().code, 502);
}

#[test]
fn trailers_pass_the_request_through_when_envoy_sends_them() {
    // As on every host: a request with trailers is neither looked up nor recorded.
    let (mut p, c) = phases("{}");
    respond!(p, p.handle(req_headers("POST", "/q", &[], false)));
    let (r, queued) = respond!(
        p,
        p.handle(msg(Q::RequestTrailers(HttpTrailers::default())))
    );
    is_continue(&r, Phase::RequestTrailers);
    assert!(queued.is_none());
    assert_eq!(c.get(Counter::BypassTrailers), 1);
    assert_eq!(c.get(Counter::Lookups), 0);
}

#[test]
fn malformed_messages_never_panic() {
    let (mut p, _) = phases("{}");
    assert!(matches!(
        p.handle(ProcessingRequest::default()),
        Step::Nothing
    ));
    // Headers without any header at all, bodies out of order, a status that is not a number.
    let _ = p.handle(msg(Q::RequestHeaders(HttpHeaders::default())));
    let _ = p.handle(req_body(b"", true));
    let _ = p.after_lookup(MISS);
    let (mut p, _) = phases("{}");
    let _ = p.handle(resp_headers("abc", &[], false));
    let _ = p.handle(resp_body(&[0xff; 10], true));
    let _ = p.handle(msg(Q::ResponseTrailers(HttpTrailers::default())));
    // An answer to a lookup nobody asked for.
    let (mut p, _) = phases("{}");
    let r = p.after_lookup(MISS);
    assert!(r.response.is_some());
}

#[test]
fn a_hit_served_to_head_hands_envoy_the_recorded_body_so_the_headers_survive() {
    let (mut p, _) = phases("{}");
    lookup(p.handle(req_headers("HEAD", "/items/7", &[], true)));
    let answer = hit_answer(&Response {
        status: 200,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: b"{\"id\":7}".to_vec(),
    });
    let r = p.after_lookup(filter_core::LookupResult::Answer {
        status: 200,
        content_type: Some(b"application/x-protobuf"),
        body: &answer,
    });
    let Some(R::ImmediateResponse(ir)) = r.response else {
        panic!("{r:?}");
    };
    // Envoy never sends a local reply's body to a HEAD; it sets the length from it.
    assert_eq!(ir.body, b"{\"id\":7}");
}

/// The sidecar's config holds every request from its headers (ext_proc does), so a client that
/// stalls mid-body meets the engine's deadline: released (the stream ends), or strict mode's 502.
#[test]
fn a_stalled_body_is_released_or_answered_at_the_hold_deadline() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    for (json, strict) in [(r#"{}"#, false), (r#"{"on_backend_error": "fail"}"#, true)] {
        let (config, _) = crate::config::parse(json.as_bytes()).unwrap();
        let now = Arc::new(AtomicU64::new(1_000_000_000));
        let clock = now.clone();
        let engine = Engine::new(
            config,
            &Node::default(),
            Services {
                metrics: Arc::new(AtomicCounters::default()),
                clock: Box::new(move || clock.load(Relaxed)),
                seed: 1,
            },
        );
        let mut p = Phases::new(Stream::new(Arc::new(engine)), 1 << 20);
        let _ = p.handle(req_headers(
            "POST",
            "/up",
            &[("content-type", b"text/plain")],
            false,
        ));
        let at = p.hold_deadline_ms().expect("held from the headers");
        assert!(matches!(p.on_timer(), Expired::Nothing), "early");
        now.store(at * 1_000_000, Relaxed);
        match p.on_timer() {
            Expired::Release => assert!(!strict),
            Expired::Reply(r) => {
                assert!(strict);
                let Some(R::ImmediateResponse(i)) = r.response else {
                    panic!("not an immediate response: {r:?}");
                };
                assert_eq!(i.status.map(|s| s.code), Some(502));
            }
            Expired::Nothing => panic!("nothing at the deadline"),
        }
        assert_eq!(p.hold_deadline_ms(), None);
    }
}
