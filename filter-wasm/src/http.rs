//! The HTTP context: one per request. Feeds the engine and carries out its decisions.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use filter_core::{Decision, Engine, Header, LookupReply, Response, Stream};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::abi;
use crate::root::{dispatch, log_warn, Shared};

/// Where a request-side event came from (what `Action::Pause` means there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    Body { size: usize },
    Trailers,
}

#[derive(Debug, Clone, Copy)]
struct Lookup {
    token: u32,
}

/// The state of one request, shared with the root context's watchdog.
pub struct Flow {
    context_id: u32,
    stream: Option<Stream>,
    shared: Rc<Shared>,
    /// Request body bytes Envoy keeps buffered for us (after a `StopIterationAndBuffer`): the next
    /// body callback's `body_size` includes them.
    buffered: usize,
    /// Since when the request is held (reset on every event: progress), or `None`.
    held_since: Option<u64>,
    lookup: Option<Lookup>,
    /// The request headers went on upstream: Envoy's wasm host no longer lets the plugin change
    /// the request header map (it answers `BadArgument`).
    headers_released: bool,
    /// `content-type` values of a served response without a body: Envoy drops the content type of
    /// a local reply whose body is empty (e.g. a hit served to HEAD), so the response-headers
    /// callback puts them back.
    served_content_type: Vec<Vec<u8>>,
}

impl Flow {
    /// Since when the request has been held without progress, in host milliseconds.
    pub fn held_since(&self) -> Option<u64> {
        self.held_since
    }

    /// How long the request may stay held: the lookup timeout plus [`crate::HOLD_MARGIN_MS`].
    pub fn hold_limit_ms(&self) -> u64 {
        self.stream
            .as_ref()
            .map_or(0, |s| s.engine().config().backend.lookup_timeout_ms)
            .saturating_add(crate::HOLD_MARGIN_MS)
    }

    /// Called by the watchdog (with this stream as the effective context): give up holding.
    pub fn expire(&mut self) {
        let limit = self.hold_limit_ms();
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let d = stream.on_hold_expired();
        log_warn(&format!(
            "transparent-cache: request held over {limit} ms without an answer; released"
        ));
        self.lookup = None;
        self.carry_out_async(d);
    }

    fn hold(&mut self) {
        self.held_since = Some(crate::now_ms());
    }

    fn release(&mut self) {
        self.held_since = None;
        self.lookup = None;
    }

    /// The request (headers included) goes on upstream.
    fn resumed(&mut self) {
        self.release();
        self.headers_released = true;
    }

    fn publish(&mut self) {
        if let Some(verdict) = self.stream.as_mut().and_then(Stream::verdict_update) {
            let _ = abi::set_property(crate::VERDICT_PROPERTY, verdict.as_bytes());
        }
    }

    /// Writes the verdict into the request header map (config `verdict_header`), for tracers
    /// that tag spans from request headers only (Istio 1.18's `Telemetry` custom tags) and
    /// access logs (`%REQ(x-softprobe-cache-verdict)%`). Only called just before a local reply
    /// (a hit, or strict mode's 502) while the request headers are still held: the upstream never
    /// gets them, and Envoy reads the map again for the access log and when the span ends. Once
    /// the headers have gone upstream, Envoy's wasm host refuses changes to the map (checked on
    /// Envoy 1.40: `BadArgument` in the response-headers callback), so no other verdict can be
    /// written without the upstream seeing it.
    fn write_verdict_header(&mut self) {
        if self.headers_released {
            return;
        }
        let Some(stream) = &self.stream else {
            return;
        };
        let Some(name) = stream.engine().config().verdict_header.as_deref() else {
            return;
        };
        // Called once, before the one local reply. Not fatal: the verdict is also in the
        // filter state.
        if let Err(e) = abi::replace_request_header(name, stream.verdict().as_bytes()) {
            log_warn(&format!(
                "transparent-cache: could not write the verdict header: {e}"
            ));
        }
    }

    /// Offers a record to the engine's queue; the root context sends it at its next tick.
    fn record(&self, decision: Decision) {
        if let (Decision::Record(callout), Some(stream)) = (decision, &self.stream) {
            stream.engine().records().push(callout);
        }
    }

    /// Carries out a decision returned inside a request callback; returns what Envoy should do
    /// with the event.
    fn on_request_decision(&mut self, decision: Decision, phase: Phase) -> Action {
        let action = match decision {
            Decision::Continue => {
                if self.held_since.is_some() {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Decision::Hold => {
                self.hold();
                Action::Pause
            }
            Decision::Lookup(callout) => match dispatch(&callout) {
                Ok(token) => {
                    self.hold();
                    self.lookup = Some(Lookup { token });
                    Action::Pause
                }
                Err(why) => {
                    log_warn(&format!("transparent-cache: lookup not sent: {why}"));
                    let next = match self.stream.as_mut() {
                        Some(s) => s.on_lookup_reply(None),
                        None => Decision::Resume,
                    };
                    return self.on_request_decision(next, phase);
                }
            },
            Decision::Serve(response) => {
                self.release();
                self.serve(&response);
                Action::Pause
            }
            Decision::Resume | Decision::PassThrough(_) => {
                self.resumed();
                Action::Continue
            }
            d @ Decision::Record(_) => {
                self.record(d);
                Action::Continue
            }
        };
        if let Phase::Body { size } = phase {
            self.buffered = if action == Action::Pause { size } else { 0 };
        }
        if phase == Phase::Headers && action == Action::Continue {
            self.headers_released = true;
        }
        self.publish();
        action
    }

    /// Carries out a decision outside the stream's own callbacks (lookup answer, watchdog).
    fn carry_out_async(&mut self, decision: Decision) {
        match decision {
            Decision::Serve(response) => {
                self.release();
                self.serve(&response);
            }
            Decision::Continue => {}
            other => {
                // Resume / PassThrough, and anything unexpected: never leave the request held.
                self.record(other);
                self.resumed();
                if let Err(e) = abi::resume_request() {
                    log_warn(&format!("transparent-cache: could not resume request: {e}"));
                }
            }
        }
        self.publish();
    }

    fn serve(&mut self, response: &Response) {
        // The request never goes upstream now (or its headers already did): safe to write.
        self.write_verdict_header();
        if response.body.is_empty() {
            self.served_content_type = response
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .collect();
        }
        let details = match self.stream.as_ref().map(Stream::verdict).as_deref() {
            Some("hit") => "transparent_cache_hit",
            Some("blocked") => "transparent_cache_blocked",
            _ => "transparent_cache_backend_error",
        };
        serve(response, details);
    }

    fn on_lookup_answer(&mut self, token: u32, body_size: usize) {
        if self.lookup.take_if(|l| l.token == token).is_none() {
            return;
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let content_type =
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, "content-type")
                .ok()
                .flatten();
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let reply = LookupReply {
            status: status.as_deref(),
            content_type: content_type.as_deref(),
            body: &body,
        };
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let d = stream.on_lookup_reply(Some(reply));
        self.carry_out_async(d);
    }
}

fn serve(response: &Response, details: &str) {
    if let Err(e) =
        abi::send_local_response(response.status, details, &response.headers, &response.body)
    {
        log_warn(&format!(
            "transparent-cache: could not serve the response: {e}"
        ));
        let _ = abi::resume_request();
    }
}

/// One request's HTTP context.
pub struct Http {
    context_id: u32,
    flow: Rc<RefCell<Flow>>,
}

impl Http {
    pub fn new(context_id: u32, engine: Option<Arc<Engine>>, shared: Rc<Shared>) -> Http {
        Http {
            context_id,
            flow: Rc::new(RefCell::new(Flow {
                context_id,
                stream: engine.map(Stream::new),
                shared,
                buffered: 0,
                held_since: None,
                lookup: None,
                headers_released: false,
                served_content_type: Vec::new(),
            })),
        }
    }

    /// Lets the root's watchdog see this request while it is held.
    fn watch(&self) {
        let Ok(flow) = self.flow.try_borrow() else {
            return;
        };
        let mut held = flow.shared.held.borrow_mut();
        if flow.held_since.is_some() {
            held.insert(self.context_id, Rc::downgrade(&self.flow));
        } else {
            held.remove(&self.context_id);
        }
    }

    /// Runs a request-side event against the engine (if the stream still needs it).
    fn request_event(
        &mut self,
        phase: Phase,
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
            if stream.is_finished() && flow.held_since.is_none() {
                return Action::Continue;
            }
            let d = event(stream, flow.buffered);
            if flow.held_since.is_some() {
                // Progress: the hold watchdog counts from the latest event.
                flow.hold();
            }
            flow.on_request_decision(d, phase)
        };
        self.watch();
        action
    }

    /// Runs a response-side event: the response always streams on untouched.
    fn response_event(&mut self, event: impl FnOnce(&mut Stream) -> Decision) -> Action {
        let Ok(mut flow) = self.flow.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(stream) = flow.stream.as_mut() else {
            return Action::Continue;
        };
        if stream.is_finished() {
            return Action::Continue;
        }
        let d = event(stream);
        flow.record(d);
        flow.publish();
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
        if let Ok(flow) = self.flow.try_borrow() {
            flow.shared.held.borrow_mut().remove(&flow.context_id);
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let h = headers(self.get_http_request_headers_bytes());
        self.request_event(Phase::Headers, |s, _| {
            let d = s.on_request_headers(h, end_of_stream);
            // The session carried into `tracestate`: still in the headers callback, so Envoy
            // takes the change before anything goes upstream.
            for (name, value) in s.take_request_header_edits() {
                if let Err(e) = abi::replace_request_header(&String::from_utf8_lossy(&name), &value)
                {
                    log_warn(&format!(
                        "transparent-cache: could not set the {} request header: {e}",
                        String::from_utf8_lossy(&name)
                    ));
                }
            }
            d
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.request_event(Phase::Body { size: body_size }, |s, buffered| {
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
        self.request_event(Phase::Trailers, |s, _| s.on_request_trailers())
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
