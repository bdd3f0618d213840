//! The shared conformance scenarios (`golden::conformance`) over a mock host: the same host calls,
//! in the same order, as every in-proxy host.

use std::sync::Arc;

use filter_core::{AtomicCounters, Callout, Config, Engine, LookupReply, Node, Response, Services};
use golden::conformance::{self, Call};
use proxy_wasm::types::Action;

use super::Flow;
use crate::abi::HostError;
use crate::host::Host;

#[derive(Default)]
struct Mock {
    calls: Vec<Call>,
    dispatch_fails: bool,
    tokens: u32,
}

impl Host for Mock {
    fn set_request_header(&mut self, name: &str, _value: &[u8]) -> Result<(), HostError> {
        self.calls.push(Call::SetRequestHeader(name.into()));
        Ok(())
    }
    fn set_verdict(&mut self, verdict: &str) -> Result<(), HostError> {
        self.calls.push(Call::Verdict(verdict.into()));
        Ok(())
    }
    fn send_local_response(&mut self, r: &Response, details: &str) -> Result<(), HostError> {
        self.calls.push(Call::Reply(r.status, details.into()));
        Ok(())
    }
    fn resume_request(&mut self) -> Result<(), HostError> {
        self.calls.push(Call::Resume);
        Ok(())
    }
    fn dispatch(&mut self, _callout: &Callout) -> Result<u32, String> {
        if self.dispatch_fails {
            return Err("no such cluster".into());
        }
        self.calls.push(Call::Lookup);
        self.tokens += 1;
        Ok(self.tokens)
    }
    fn log_warn(&mut self, _message: &str) {}
}

fn action(a: Action) -> Call {
    if a == Action::Pause {
        Call::Pause
    } else {
        Call::Continue
    }
}

fn bytes(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The plugin's stream over the mock host.
struct WasmDriver {
    flow: Flow,
    host: Mock,
}

impl WasmDriver {
    fn calls(&mut self, last: Option<Call>) -> Vec<Call> {
        let mut calls = std::mem::take(&mut self.host.calls);
        calls.extend(last);
        calls
    }
}

impl conformance::Driver for WasmDriver {
    fn request_headers(&mut self, h: Vec<(Vec<u8>, Vec<u8>)>, eos: bool) -> Vec<Call> {
        let a = self.flow.request_headers(&mut self.host, h, eos);
        self.calls(Some(action(a)))
    }
    fn request_body(&mut self, chunk: &[u8], eos: bool) -> Vec<Call> {
        // Envoy's body_size counts what it buffered for us before.
        let size = self.flow.buffered + chunk.len();
        let a = self.flow.request_body(&mut self.host, chunk, size, eos);
        self.calls(Some(action(a)))
    }
    fn lookup_reply(&mut self, status: &str, content_type: Option<&str>, body: &[u8]) -> Vec<Call> {
        let reply = LookupReply {
            status: Some(status.as_bytes()),
            content_type: content_type.map(str::as_bytes),
            body,
        };
        let token = self.host.tokens;
        self.flow.lookup_answer(&mut self.host, token, Some(reply));
        self.calls(None)
    }
    fn response_headers(&mut self, h: Vec<(Vec<u8>, Vec<u8>)>, eos: bool) -> Vec<Call> {
        let status = filter_core::http::status(&h).unwrap_or(0);
        self.flow
            .response(&mut self.host, |s| s.on_response_headers(status, h, eos));
        self.calls(Some(Call::Continue))
    }
    fn response_body(&mut self, chunk: &[u8], eos: bool) -> Vec<Call> {
        self.flow
            .response(&mut self.host, |s| s.on_response_body(chunk, eos));
        self.calls(Some(Call::Continue))
    }
}

#[test]
fn conformance_with_every_in_proxy_host() {
    let errors = conformance::replay("wasm", |sc| {
        let engine = Engine::new(
            Config::from_value(&sc.config).unwrap(),
            &Node::default(),
            Services {
                metrics: Arc::new(AtomicCounters::default()),
                clock: Box::new(|| 1_000_000_000),
                seed: 5,
            },
        );
        Box::new(WasmDriver {
            flow: Flow::new(Some(Arc::new(engine))),
            host: Mock {
                dispatch_fails: sc.dispatch_fails,
                ..Mock::default()
            },
        })
    });
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// A host that refuses every call (each returns an error status, never a panic).
#[derive(Default)]
struct Refusing {
    resumes: u32,
    replies: u32,
}

impl Host for Refusing {
    fn set_request_header(&mut self, _: &str, _: &[u8]) -> Result<(), HostError> {
        Err(HostError(2))
    }
    fn set_verdict(&mut self, _: &str) -> Result<(), HostError> {
        Err(HostError(2))
    }
    fn send_local_response(&mut self, _: &Response, _: &str) -> Result<(), HostError> {
        self.replies += 1;
        Err(HostError(2))
    }
    fn resume_request(&mut self) -> Result<(), HostError> {
        self.resumes += 1;
        Err(HostError(2))
    }
    fn dispatch(&mut self, _: &Callout) -> Result<u32, String> {
        Err("BadArgument".into())
    }
    fn log_warn(&mut self, _: &str) {}
}

fn flow(config: &str) -> Flow {
    let engine = Engine::new(
        Config::from_json(config.as_bytes()).unwrap(),
        &Node::default(),
        Services {
            metrics: Arc::new(AtomicCounters::default()),
            clock: Box::new(|| 1_000_000_000),
            seed: 5,
        },
    );
    Flow::new(Some(Arc::new(engine)))
}

#[test]
fn a_host_error_in_any_callback_leaves_the_stream_passing_through() {
    let get = || bytes(&[(":method", "GET"), (":path", "/x"), (":authority", "h")]);
    // Request headers: the lookup cannot be dispatched, the verdict cannot be published.
    let mut f = flow("{}");
    let mut host = Refusing::default();
    assert_eq!(f.request_headers(&mut host, get(), true), Action::Continue);
    assert_eq!(f.deadline(), None, "nothing held");

    // Request headers of the inbound piece: the tracestate cannot be written.
    let mut f = flow(r#"{"traffic_direction": "inbound", "mode": "propagate_only"}"#);
    let mut h = get();
    h.extend(bytes(&[("x-softprobe-session-id", "s")]));
    assert_eq!(f.request_headers(&mut host, h, true), Action::Continue);

    // A body event after a failed dispatch: passes.
    let mut f = flow("{}");
    let mut post = bytes(&[(":method", "POST"), (":path", "/x"), (":authority", "h")]);
    post.extend(bytes(&[("content-type", "text/plain")]));
    assert_eq!(f.request_headers(&mut host, post, false), Action::Continue);
    assert_eq!(f.request_body(&mut host, b"abc", 3, true), Action::Continue);
    assert_eq!(f.deadline(), None);

    // A hit whose local reply is refused: the request is resumed instead (upstream).
    let mut f = flow("{}");
    let mut ok = Mock::default();
    f.request_headers(&mut ok, get(), true);
    let answer = filter_core::codec::encode_answer(
        "b",
        &filter_core::codec::SpanIds::default(),
        &Response {
            status: 200,
            headers: vec![],
            body: b"hit".to_vec(),
        },
    );
    let reply = LookupReply {
        status: Some(b"200"),
        content_type: Some(b"application/x-protobuf"),
        body: &answer,
    };
    f.lookup_answer(&mut host, ok.tokens, Some(reply));
    assert_eq!((host.replies, host.resumes), (1, 1));
    assert_eq!(f.deadline(), None);

    // A miss whose resume is refused: nothing stays held on our side.
    let mut f = flow("{}");
    f.request_headers(&mut ok, get(), true);
    let miss = LookupReply {
        status: Some(b"404"),
        content_type: None,
        body: b"",
    };
    f.lookup_answer(&mut host, ok.tokens, Some(miss));
    assert_eq!(host.resumes, 2);
    assert_eq!(f.deadline(), None);

    // Response events: always go on.
    let mut f = flow(r#"{"mode": "record_only"}"#);
    f.request_headers(&mut host, get(), true);
    f.response(&mut host, |s| s.on_response_headers(200, bytes(&[]), false));
    f.response(&mut host, |s| s.on_response_body(b"ok", true));
    f.on_timer(&mut host);
    f.done();
}
