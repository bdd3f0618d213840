//! The HTTP context: one per request. Turns proxy-wasm callbacks into engine events and carries
//! out the engine's [`Decision`]s (flow, then effects) through a [`Host`]; it decides nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use filter_core::{Decision, Engine, Flow as EngineFlow, Header, LookupReply, Response, Stream};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::abi;
use crate::host::{Envoy, Host};
use crate::root::Shared;

/// One request's state, shared with the root context's timer.
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
    /// a local reply whose body is empty, so the response-headers callback puts them back.
    served_content_type: Vec<Vec<u8>>,
}

impl Flow {
    pub fn new(engine: Option<Arc<Engine>>) -> Flow {
        Flow {
            stream: engine.map(Stream::new),
            buffered: 0,
            lookup: None,
            deadline: None,
            served_content_type: Vec::new(),
        }
    }

    /// When the root's timer must call [`Flow::on_timer`] (host milliseconds), if at all.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Whether the engine still needs this stream's events.
    fn active(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.is_finished()) || self.deadline.is_some()
    }

    /// Carries out a decision's effects, in order; returns its flow (after a lookup that could
    /// not be dispatched, the flow of the engine's answer to that).
    fn carry_out(&mut self, host: &mut impl Host, mut d: Decision) -> EngineFlow {
        loop {
            let e = d.effects;
            for (name, value) in &e.set_request_headers {
                let name = String::from_utf8_lossy(name);
                if let Err(err) = host.set_request_header(&name, value) {
                    host.log_warn(&format!(
                        "transparent-cache: could not set the {name} request header: {err}"
                    ));
                }
            }
            if let Some(verdict) = &e.verdict {
                let _ = host.set_verdict(verdict);
            }
            self.deadline = e.hold_deadline_ms;
            if let Some(reply) = &e.reply {
                self.serve(host, &reply.response, reply.details);
            }
            // Records wait in the engine's queue for the root context's next tick.
            let Some(callout) = &e.lookup else {
                return d.flow;
            };
            match host.dispatch(callout) {
                Ok(token) => {
                    self.lookup = Some(token);
                    return d.flow;
                }
                Err(why) => {
                    host.log_warn(&format!("transparent-cache: lookup not sent: {why}"));
                    let Some(stream) = self.stream.as_mut() else {
                        return EngineFlow::Continue;
                    };
                    d = stream.on_lookup_reply(None);
                }
            }
        }
    }

    /// A decision made outside the stream's own callbacks (lookup answer, timer).
    fn carry_out_async(&mut self, host: &mut impl Host, d: Decision) {
        if self.carry_out(host, d) == EngineFlow::Release {
            self.lookup = None;
            if let Err(e) = host.resume_request() {
                host.log_warn(&format!("transparent-cache: could not resume request: {e}"));
            }
        }
    }

    fn serve(&mut self, host: &mut impl Host, response: &Response, details: &str) {
        if response.body.is_empty() {
            self.served_content_type = response
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .collect();
        }
        if let Err(e) = host.send_local_response(response, details) {
            host.log_warn(&format!(
                "transparent-cache: could not serve the response: {e}"
            ));
            let _ = host.resume_request();
        }
    }

    /// A request event; what Envoy does with it.
    fn request(
        &mut self,
        host: &mut impl Host,
        event: impl FnOnce(&mut Stream) -> Decision,
    ) -> Action {
        let Some(d) = self.stream.as_mut().map(event) else {
            return Action::Continue;
        };
        match self.carry_out(host, d) {
            EngineFlow::Hold | EngineFlow::Stop => Action::Pause,
            EngineFlow::Continue | EngineFlow::Release => Action::Continue,
        }
    }

    pub fn request_headers(&mut self, host: &mut impl Host, h: Vec<Header>, eos: bool) -> Action {
        self.request(host, |s| s.on_request_headers(h, eos))
    }

    /// The new bytes of a body callback whose `body_size` is `size`: after a
    /// `StopIterationAndBuffer` Envoy hands back everything buffered so far.
    pub fn body_range(&self, size: usize) -> (usize, usize) {
        let start = if size >= self.buffered {
            self.buffered
        } else {
            0
        };
        (start, size - start)
    }

    pub fn request_body(
        &mut self,
        host: &mut impl Host,
        chunk: &[u8],
        size: usize,
        eos: bool,
    ) -> Action {
        let action = self.request(host, |s| s.on_request_body(chunk, eos));
        self.buffered = if action == Action::Pause { size } else { 0 };
        action
    }

    pub fn request_trailers(&mut self, host: &mut impl Host) -> Action {
        self.request(host, Stream::on_request_trailers)
    }

    /// A response event: the response always streams on untouched.
    pub fn response(&mut self, host: &mut impl Host, event: impl FnOnce(&mut Stream) -> Decision) {
        if let Some(d) = self.stream.as_mut().filter(|s| !s.is_finished()).map(event) {
            self.carry_out(host, d);
        }
    }

    /// The answer to callout `token` (`None`: it came back without response headers).
    pub fn lookup_answer(
        &mut self,
        host: &mut impl Host,
        token: u32,
        reply: Option<LookupReply<'_>>,
    ) {
        if self.lookup.take_if(|t| *t == token).is_none() {
            return;
        }
        if let Some(d) = self.stream.as_mut().map(|s| s.on_lookup_reply(reply)) {
            self.carry_out_async(host, d);
        }
    }

    /// The root's timer fired for this stream (with it as the effective context).
    pub fn on_timer(&mut self, host: &mut impl Host) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let (d, limit) = (stream.on_timer(), stream.hold_limit_ms());
        if d.flow != EngineFlow::Hold {
            host.log_warn(&format!(
                "transparent-cache: request held over {limit} ms without progress; released"
            ));
        }
        self.carry_out_async(host, d);
    }

    /// The stream is over: an unfinished exchange (a reset) is dropped, unrecorded.
    pub fn done(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            stream.on_reset();
        }
        self.deadline = None;
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
            flow: Rc::new(RefCell::new(Flow::new(engine))),
            shared,
        }
    }

    /// Runs `f` on the flow (if it is not busy), then lets the root's timer see the flow while
    /// the engine asks for one.
    fn with<T>(&mut self, busy: T, f: impl FnOnce(&mut Flow) -> T) -> T {
        let out = match self.flow.try_borrow_mut() {
            Ok(mut flow) => f(&mut flow),
            Err(_) => return busy,
        };
        if let Ok(flow) = self.flow.try_borrow() {
            let mut held = self.shared.held.borrow_mut();
            if flow.deadline.is_some() {
                held.insert(self.context_id, Rc::downgrade(&self.flow));
            } else {
                held.remove(&self.context_id);
            }
        }
        out
    }

    fn active(&self) -> bool {
        self.flow.try_borrow().is_ok_and(|f| f.active())
    }
}

/// A header map of the stream (empty when the host refuses it).
fn headers(map_type: u32) -> Vec<Header> {
    abi::header_map(map_type).unwrap_or_default()
}

fn buffer(kind: u32, start: usize, len: usize) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    abi::buffer(kind, start, len).unwrap_or_default()
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let header = |name| {
            abi::header_value(abi::CALL_RESPONSE_HEADERS, name)
                .ok()
                .flatten()
        };
        let (status, content_type) = (header(":status"), header("content-type"));
        let body = buffer(abi::CALL_RESPONSE_BODY, 0, body_size);
        let reply = LookupReply {
            status: status.as_deref(),
            content_type: content_type.as_deref(),
            body: &body,
        };
        self.with((), |f| f.lookup_answer(&mut Envoy, token, Some(reply)));
    }

    fn on_done(&mut self) -> bool {
        self.with((), Flow::done);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let h = headers(abi::REQUEST_HEADERS);
        self.with(Action::Continue, |f| {
            f.request_headers(&mut Envoy, h, end_of_stream)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.active() {
            return Action::Continue;
        }
        self.with(Action::Continue, |f| {
            let (start, len) = f.body_range(body_size);
            let chunk = buffer(abi::REQUEST_BODY, start, len);
            f.request_body(&mut Envoy, &chunk, body_size, end_of_stream)
        })
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        if !self.active() {
            return Action::Continue;
        }
        self.with(Action::Continue, |f| f.request_trailers(&mut Envoy))
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let restore = self.with(Vec::new(), |f| std::mem::take(&mut f.served_content_type));
        // Only a served bodiless hit needs the look (one host call fewer on every other answer).
        if !restore.is_empty()
            && matches!(
                abi::header_value(abi::RESPONSE_HEADERS, "content-type"),
                Ok(None)
            )
        {
            for value in &restore {
                let _ = abi::add_header(abi::RESPONSE_HEADERS, "content-type", value);
            }
        }
        if self.active() {
            let h = headers(abi::RESPONSE_HEADERS);
            let status = filter_core::http::status(&h).unwrap_or(0);
            self.with((), |f| {
                f.response(&mut Envoy, |s| {
                    s.on_response_headers(status, h, end_of_stream)
                })
            });
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.active() {
            let chunk = buffer(abi::RESPONSE_BODY, 0, body_size);
            self.with((), |f| {
                f.response(&mut Envoy, |s| s.on_response_body(&chunk, end_of_stream))
            });
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        self.with((), |f| f.response(&mut Envoy, Stream::on_response_trailers));
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
