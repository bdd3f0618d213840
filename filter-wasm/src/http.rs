//! The HTTP context: one per request. Turns proxy-wasm callbacks into engine events and carries
//! out the engine's [`Decision`]s (flow, then effects); it decides nothing itself.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use filter_core::{Decision, Engine, Flow as EngineFlow, Header, LookupReply, Response, Stream};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::abi;
use crate::root::{dispatch, log_warn, Shared};

/// The state of one request, shared with the root context's timer.
pub struct Flow {
    stream: Option<Stream>,
    /// Request body bytes Envoy keeps buffered for us (after a `StopIterationAndBuffer`): the next
    /// body callback's `body_size` includes them.
    buffered: usize,
    /// The token of the lookup callout in flight.
    lookup: Option<u32>,
    /// The timer the engine asked for ([`filter_core::Effects::hold_deadline_ms`]).
    deadline: Option<u64>,
    /// `content-type` values of a served response without a body: Envoy drops the content type of
    /// a local reply whose body is empty (e.g. a hit served to HEAD), so the response-headers
    /// callback puts them back.
    served_content_type: Vec<Vec<u8>>,
}

impl Flow {
    /// When the root's timer must call [`Flow::on_timer`] (host milliseconds), if at all.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// The root's timer fired for this stream (with it as the effective context).
    pub fn on_timer(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            let d = stream.on_timer();
            if d.flow != EngineFlow::Hold {
                let limit = stream.hold_limit_ms();
                log_warn(&format!(
                    "transparent-cache: request held over {limit} ms without progress; released"
                ));
            }
            self.carry_out_async(d);
        }
    }

    /// Carries out a decision's effects, in order; returns its flow (after a lookup that could
    /// not be dispatched, the flow of the engine's answer to that).
    fn carry_out(&mut self, mut d: Decision) -> EngineFlow {
        loop {
            let e = d.effects;
            for (name, value) in &e.set_request_headers {
                let name = String::from_utf8_lossy(name);
                if let Err(err) = abi::replace_request_header(&name, value) {
                    log_warn(&format!(
                        "transparent-cache: could not set the {name} request header: {err}"
                    ));
                }
            }
            if let Some(verdict) = &e.verdict {
                let _ = abi::set_property(crate::VERDICT_PROPERTY, verdict.as_bytes());
            }
            self.deadline = e.hold_deadline_ms;
            if let Some(reply) = &e.reply {
                self.serve(&reply.response, reply.details);
            }
            // Records wait in the engine's queue for the root context's next tick.
            let Some(callout) = &e.lookup else {
                return d.flow;
            };
            match dispatch(callout) {
                Ok(token) => {
                    self.lookup = Some(token);
                    return d.flow;
                }
                Err(why) => {
                    log_warn(&format!("transparent-cache: lookup not sent: {why}"));
                    let Some(stream) = self.stream.as_mut() else {
                        return EngineFlow::Continue;
                    };
                    d = stream.on_lookup_reply(None);
                }
            }
        }
    }

    /// Carries out a decision made outside the stream's own callbacks (lookup answer, timer).
    fn carry_out_async(&mut self, d: Decision) {
        if self.carry_out(d) == EngineFlow::Release {
            self.lookup = None;
            if let Err(e) = abi::resume_request() {
                log_warn(&format!("transparent-cache: could not resume request: {e}"));
            }
        }
    }

    fn serve(&mut self, response: &Response, details: &str) {
        if response.body.is_empty() {
            self.served_content_type = response
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .collect();
        }
        if let Err(e) =
            abi::send_local_response(response.status, details, &response.headers, &response.body)
        {
            log_warn(&format!(
                "transparent-cache: could not serve the response: {e}"
            ));
            let _ = abi::resume_request();
        }
    }

    fn on_lookup_answer(&mut self, token: u32, body_size: usize) {
        if self.lookup.take_if(|t| *t == token).is_none() {
            return;
        }
        let header = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
        };
        let (status, content_type) = (header(":status"), header("content-type"));
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let d = stream.on_lookup_reply(Some(LookupReply {
            status: status.as_deref(),
            content_type: content_type.as_deref(),
            body: &body,
        }));
        self.carry_out_async(d);
    }
}

/// One request's HTTP context.
pub struct Http {
    context_id: u32,
    flow: Rc<RefCell<Flow>>,
    shared: Rc<Shared>,
}

impl Http {
    pub fn new(context_id: u32, engine: Option<Arc<Engine>>, shared: Rc<Shared>) -> Http {
        Http {
            context_id,
            flow: Rc::new(RefCell::new(Flow {
                stream: engine.map(Stream::new),
                buffered: 0,
                lookup: None,
                deadline: None,
                served_content_type: Vec::new(),
            })),
            shared,
        }
    }

    /// Lets the root's timer see this request while the engine asks for one.
    fn watch(&self) {
        let Ok(flow) = self.flow.try_borrow() else {
            return;
        };
        let mut held = self.shared.held.borrow_mut();
        if flow.deadline.is_some() {
            held.insert(self.context_id, Rc::downgrade(&self.flow));
        } else {
            held.remove(&self.context_id);
        }
    }

    /// Runs a request event against the engine; `size` is the body callback's `body_size`.
    fn request_event(
        &mut self,
        size: Option<usize>,
        event: impl FnOnce(&mut Stream, usize) -> Decision,
    ) -> Action {
        let action = {
            let Ok(mut flow) = self.flow.try_borrow_mut() else {
                return Action::Continue;
            };
            let flow = &mut *flow;
            let Some(stream) = flow.stream.as_mut() else {
                return Action::Continue;
            };
            if stream.is_finished() && flow.deadline.is_none() {
                return Action::Continue;
            }
            let d = event(stream, flow.buffered);
            let action = match flow.carry_out(d) {
                EngineFlow::Hold | EngineFlow::Stop => Action::Pause,
                EngineFlow::Continue | EngineFlow::Release => Action::Continue,
            };
            if let Some(size) = size {
                flow.buffered = if action == Action::Pause { size } else { 0 };
            }
            action
        };
        self.watch();
        action
    }

    /// Runs a response event: the response always streams on untouched.
    fn response_event(&mut self, event: impl FnOnce(&mut Stream) -> Decision) -> Action {
        if let Ok(mut flow) = self.flow.try_borrow_mut() {
            if let Some(d) = flow.stream.as_mut().filter(|s| !s.is_finished()).map(event) {
                flow.carry_out(d);
            }
        }
        Action::Continue
    }
}

fn headers(pairs: Vec<(String, Vec<u8>)>) -> Vec<Header> {
    pairs
        .into_iter()
        .map(|(n, v)| (n.into_bytes(), v))
        .collect()
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Ok(mut flow) = self.flow.try_borrow_mut() {
            flow.on_lookup_answer(token_id, body_size);
        }
        self.watch();
    }

    fn on_done(&mut self) -> bool {
        self.shared.held.borrow_mut().remove(&self.context_id);
        if let Ok(mut flow) = self.flow.try_borrow_mut() {
            if let Some(stream) = flow.stream.as_mut() {
                // The stream is over: an unfinished exchange (a reset) is dropped, unrecorded.
                stream.on_reset();
            }
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let h = headers(self.get_http_request_headers_bytes());
        self.request_event(None, |s, _| s.on_request_headers(h, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.request_event(Some(body_size), |s, buffered| {
            // After a StopIterationAndBuffer Envoy hands back everything buffered so far: the new
            // bytes start where the previous callback's ended.
            let start = if body_size >= buffered { buffered } else { 0 };
            let chunk = if body_size > start {
                hostcalls::get_buffer(BufferType::HttpRequestBody, start, body_size - start)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            s.on_request_body(&chunk, end_of_stream)
        })
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.request_event(None, |s, _| s.on_request_trailers())
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let restore = self
            .flow
            .try_borrow_mut()
            .map(|mut f| std::mem::take(&mut f.served_content_type))
            .unwrap_or_default();
        if !restore.is_empty()
            && self
                .get_http_response_header_bytes("content-type")
                .is_none()
        {
            for value in &restore {
                self.add_http_response_header_bytes("content-type", value);
            }
        }
        let finished = self
            .flow
            .try_borrow()
            .map_or(true, |f| f.stream.as_ref().is_none_or(Stream::is_finished));
        if finished {
            return Action::Continue;
        }
        let h = headers(self.get_http_response_headers_bytes());
        let status = filter_core::http::status(&h).unwrap_or(0);
        self.response_event(|s| s.on_response_headers(status, h, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_event(|s| {
            let chunk = if body_size > 0 {
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            s.on_response_body(&chunk, end_of_stream)
        })
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response_event(Stream::on_response_trailers)
    }
}
