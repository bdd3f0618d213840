//! The shared conformance scenarios (`golden::conformance`) over a mock host: the same host calls,
//! in the same order, as every in-proxy host.

use std::sync::Arc;

use filter_core::{AtomicCounters, Callout, Config, Engine, LookupReply, Node, Response, Services};
use golden::conformance::{self, Call, Event};
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

#[test]
fn conformance_with_every_in_proxy_host() {
    let mut errors = Vec::new();
    for sc in conformance::scenarios() {
        let config = Config::from_value(&sc.config).unwrap();
        let engine = Engine::new(
            config,
            &Node::default(),
            Services {
                metrics: Arc::new(AtomicCounters::default()),
                clock: Box::new(|| 1_000_000_000),
                seed: 5,
            },
        );
        let mut flow = Flow::new(Some(Arc::new(engine)));
        let mut host = Mock {
            dispatch_fails: sc.dispatch_fails,
            ..Mock::default()
        };
        let mut got = Vec::new();
        for (event, _) in &sc.steps {
            host.calls.clear();
            match event.clone() {
                Event::RequestHeaders {
                    method,
                    path,
                    headers,
                    end_of_stream,
                } => {
                    let mut h = bytes(&[(":method", method), (":path", path)]);
                    h.extend(bytes(&[(":authority", "api.example.com")]));
                    h.extend(bytes(&headers));
                    let a = flow.request_headers(&mut host, h, end_of_stream);
                    host.calls.push(action(a));
                }
                Event::RequestBody {
                    chunk,
                    end_of_stream,
                } => {
                    // Envoy's body_size counts what it buffered for us before.
                    let size = flow.buffered + chunk.len();
                    let a = flow.request_body(&mut host, &chunk, size, end_of_stream);
                    host.calls.push(action(a));
                }
                Event::LookupReply {
                    status,
                    content_type,
                    body,
                } => {
                    let reply = LookupReply {
                        status: Some(status.as_bytes()),
                        content_type: content_type.map(str::as_bytes),
                        body: &body,
                    };
                    let token = host.tokens;
                    flow.lookup_answer(&mut host, token, Some(reply));
                }
                Event::ResponseHeaders {
                    status,
                    headers,
                    end_of_stream,
                } => {
                    let h = bytes(&headers);
                    flow.response(&mut host, |s| {
                        s.on_response_headers(status, h, end_of_stream)
                    });
                    host.calls.push(Call::Continue);
                }
                Event::ResponseBody {
                    chunk,
                    end_of_stream,
                } => {
                    flow.response(&mut host, |s| s.on_response_body(&chunk, end_of_stream));
                    host.calls.push(Call::Continue);
                }
            }
            got.push(std::mem::take(&mut host.calls));
        }
        errors.extend(conformance::check("wasm", &sc, &got));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
