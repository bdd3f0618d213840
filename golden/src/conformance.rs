//! One event sequence, the same host calls on every in-proxy host: the scenarios the wasm plugin
//! and the dynamic module each replay over their mock host (`filter-wasm/src/http/tests.rs`,
//! `filter-native/src/filter/tests.rs`), beside the golden replay through real Envoy. A host that
//! drifts (decides something itself, or carries effects out in another order) fails here with the
//! scenario's name.
//!
//! The ext_proc sidecar is not replayed here: it answers Envoy's messages rather than making host
//! calls (no pause, resume or verdict property); its phases have their own tests and it runs every
//! golden case through Envoy.

use filter_core::codec::{self, SpanIds};
use filter_core::Response;
use serde_json::{json, Value as Json};

/// What the host delivers.
#[derive(Debug, Clone)]
pub enum Event {
    /// Request headers (pseudo-headers added by the driver from `method` and `path`).
    RequestHeaders {
        method: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        end_of_stream: bool,
    },
    RequestBody {
        chunk: Vec<u8>,
        end_of_stream: bool,
    },
    /// The lookup callout came back with this response.
    LookupReply {
        status: &'static str,
        content_type: Option<&'static str>,
        body: Vec<u8>,
    },
    ResponseHeaders {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        end_of_stream: bool,
    },
    ResponseBody {
        chunk: Vec<u8>,
        end_of_stream: bool,
    },
}

/// What the host does, in order, in the host-neutral words every adapter's mock records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// The callback lets its event go on.
    Continue,
    /// The callback holds its event.
    Pause,
    /// A request header is set (by name: values may carry random ids).
    SetRequestHeader(String),
    /// A lookup callout is dispatched.
    Lookup,
    /// A local reply: status and details.
    Reply(u16, String),
    /// A held request is resumed.
    Resume,
    /// The verdict is published.
    Verdict(String),
}

/// One scenario: a config, then each event with the calls it must cause.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub config: Json,
    /// Whether the host's callout dispatch fails (the cluster is missing).
    pub dispatch_fails: bool,
    pub steps: Vec<(Event, Vec<Call>)>,
}

fn hit_answer(status: u16, body: &str) -> Vec<u8> {
    let response = Response {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.as_bytes().to_vec(),
    };
    let ids = SpanIds {
        trace_id: [1; 16],
        span_id: [2; 8],
        ..SpanIds::default()
    };
    codec::encode_answer("backend", &ids, &response)
}

fn verdict(v: &str) -> Call {
    Call::Verdict(v.into())
}

fn reply(status: u16, details: &str) -> Call {
    Call::Reply(status, details.into())
}

fn set(name: &str) -> Call {
    Call::SetRequestHeader(name.into())
}

fn get(path: &'static str, headers: Vec<(&'static str, &'static str)>) -> Event {
    Event::RequestHeaders {
        method: "GET",
        path,
        headers,
        end_of_stream: true,
    }
}

/// Every scenario.
pub fn scenarios() -> Vec<Scenario> {
    let base = json!({"backend": {"cluster": "softprobe_backend", "authority": "backend.local"}});
    let with = |overlay: Json| {
        let mut c = base.clone();
        crate::merge(&mut c, &overlay);
        c
    };
    let miss = || Event::LookupReply {
        status: "404",
        content_type: Some("application/json"),
        body: br#"{"error":"no inject match"}"#.to_vec(),
    };
    vec![
        Scenario {
            name: "a hit held from the headers is served, the verdict header written first",
            config: with(json!({"request_mode": "hold_headers"})),
            dispatch_fails: false,
            steps: vec![
                (get("/items", vec![]), vec![Call::Lookup, Call::Pause]),
                (
                    Event::LookupReply {
                        status: "200",
                        content_type: Some("application/x-protobuf"),
                        body: hit_answer(200, "recorded"),
                    },
                    vec![
                        set("x-softprobe-cache-verdict"),
                        verdict("hit"),
                        reply(200, "transparent_cache_hit"),
                    ],
                ),
            ],
        },
        Scenario {
            name: "a streamed POST is held by its body, then resumed and recorded on a miss",
            config: base.clone(),
            dispatch_fails: false,
            steps: vec![
                (
                    Event::RequestHeaders {
                        method: "POST",
                        path: "/orders",
                        headers: vec![("content-type", "application/json")],
                        end_of_stream: false,
                    },
                    vec![Call::Continue],
                ),
                (
                    Event::RequestBody {
                        chunk: b"{\"a\":".to_vec(),
                        end_of_stream: false,
                    },
                    vec![Call::Pause],
                ),
                (
                    Event::RequestBody {
                        chunk: b"1}".to_vec(),
                        end_of_stream: true,
                    },
                    vec![Call::Lookup, Call::Pause],
                ),
                (miss(), vec![verdict("miss"), Call::Resume]),
                (
                    Event::ResponseHeaders {
                        status: 200,
                        headers: vec![("content-type", "text/plain"), ("content-length", "2")],
                        end_of_stream: false,
                    },
                    vec![Call::Continue],
                ),
                (
                    Event::ResponseBody {
                        chunk: b"ok".to_vec(),
                        end_of_stream: true,
                    },
                    vec![Call::Continue],
                ),
            ],
        },
        Scenario {
            name: "a lookup that cannot be dispatched fails open at once",
            config: base.clone(),
            dispatch_fails: true,
            steps: vec![(
                get("/items", vec![]),
                vec![verdict("error:transport"), Call::Continue],
            )],
        },
        Scenario {
            name: "strict mode answers a fault with 502",
            config: with(json!({"on_backend_error": "fail"})),
            dispatch_fails: false,
            steps: vec![
                (get("/strict", vec![]), vec![Call::Lookup, Call::Pause]),
                (
                    Event::LookupReply {
                        status: "503",
                        content_type: Some("text/plain"),
                        body: b"no healthy upstream".to_vec(),
                    },
                    vec![
                        set("x-softprobe-cache-verdict"),
                        verdict("error:transport"),
                        reply(502, "transparent_cache_backend_error"),
                    ],
                ),
            ],
        },
        Scenario {
            name: "a deliberate error answer for a session is served in strict mode",
            config: with(json!({"on_error_answer": "serve"})),
            dispatch_fails: false,
            steps: vec![
                (
                    get("/external", vec![("x-softprobe-session-id", "s1")]),
                    vec![Call::Lookup, Call::Pause],
                ),
                (
                    Event::LookupReply {
                        status: "599",
                        content_type: Some("application/json"),
                        body: br#"{"error":"blocked"}"#.to_vec(),
                    },
                    vec![
                        set("x-softprobe-cache-verdict"),
                        verdict("blocked"),
                        reply(599, "transparent_cache_blocked"),
                    ],
                ),
            ],
        },
        Scenario {
            name: "an ineligible request passes untouched",
            config: with(json!({"rules": {"methods": ["POST"]}})),
            dispatch_fails: false,
            steps: vec![(
                get("/items", vec![]),
                vec![verdict("bypass:method"), Call::Continue],
            )],
        },
        Scenario {
            name: "the inbound piece writes the session into tracestate and creates a traceparent",
            config: with(json!({"traffic_direction": "inbound", "mode": "propagate_only"})),
            dispatch_fails: false,
            steps: vec![(
                get("/checkout", vec![("x-softprobe-session-id", "s2")]),
                vec![
                    set("tracestate"),
                    set("traceparent"),
                    verdict("bypass:propagate_only"),
                    Call::Continue,
                ],
            )],
        },
    ]
}

/// Checks what one host did per step against the scenario: every mismatch, with the scenario's
/// name and the step's index.
pub fn check(host: &str, scenario: &Scenario, got: &[Vec<Call>]) -> Vec<String> {
    let mut errors = Vec::new();
    if got.len() != scenario.steps.len() {
        errors.push(format!(
            "{host}: {}: {} steps replayed, {} in the scenario",
            scenario.name,
            got.len(),
            scenario.steps.len()
        ));
    }
    for (i, ((event, want), got)) in scenario.steps.iter().zip(got).enumerate() {
        if want != got {
            errors.push(format!(
                "{host}: {}: step {i} ({event:?}):\n    expected {want:?}\n    got      {got:?}",
                scenario.name
            ));
        }
    }
    errors
}

/// A host adapter over its mock host, driven by the scenarios: each method delivers one event
/// and returns the calls the adapter made for it, in order (for a request event, ending with the
/// callback's `Continue` or `Pause`; for a response event, with `Continue`).
pub trait Driver {
    /// Request headers, pseudo-headers first.
    fn request_headers(
        &mut self,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        end_of_stream: bool,
    ) -> Vec<Call>;
    fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<Call>;
    /// The answer to the lookup the adapter dispatched last.
    fn lookup_reply(&mut self, status: &str, content_type: Option<&str>, body: &[u8]) -> Vec<Call>;
    /// Response headers, `:status` first.
    fn response_headers(
        &mut self,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        end_of_stream: bool,
    ) -> Vec<Call>;
    fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<Call>;
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Replays every scenario through a fresh driver per scenario; every mismatch, empty when the
/// host conforms.
pub fn replay(host: &str, mut driver: impl FnMut(&Scenario) -> Box<dyn Driver>) -> Vec<String> {
    let mut errors = Vec::new();
    for sc in scenarios() {
        let mut d = driver(&sc);
        let got: Vec<Vec<Call>> = sc
            .steps
            .iter()
            .map(|(event, _)| match event {
                Event::RequestHeaders {
                    method,
                    path,
                    headers,
                    end_of_stream,
                } => {
                    let mut h = pairs(&[(":method", method), (":path", path)]);
                    h.extend(pairs(&[(":authority", "api.example.com")]));
                    h.extend(pairs(headers));
                    d.request_headers(h, *end_of_stream)
                }
                Event::RequestBody {
                    chunk,
                    end_of_stream,
                } => d.request_body(chunk, *end_of_stream),
                Event::LookupReply {
                    status,
                    content_type,
                    body,
                } => d.lookup_reply(status, *content_type, body),
                Event::ResponseHeaders {
                    status,
                    headers,
                    end_of_stream,
                } => {
                    let mut h = vec![(b":status".to_vec(), status.to_string().into_bytes())];
                    h.extend(pairs(headers));
                    d.response_headers(h, *end_of_stream)
                }
                Event::ResponseBody {
                    chunk,
                    end_of_stream,
                } => d.response_body(chunk, *end_of_stream),
            })
            .collect();
        errors.extend(check(host, &sc, &got));
    }
    errors
}
