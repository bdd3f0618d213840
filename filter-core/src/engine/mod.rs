//! The per-request state machine. A host feeds it the events of one HTTP stream and carries out the
//! [`Decision`] each event returns; the engine itself never calls the host.
//!
//! One [`Engine`] per filter configuration (shared by every stream, on every worker thread); one
//! [`Stream`] per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::breaker::{Admission, Breaker};
use crate::codec::{self, Format, RequestView, ResponseView, SpanIds, SpanMeta};
use crate::config::{Config, Mode, OnBackendError, OnErrorAnswer, RequestMode};
use crate::http::{self, Header, Response};
use crate::metrics::{Bypass, Counter, LookupFailure, Metrics};
use crate::records::RecordQueue;
use crate::trace;

mod answer;
mod callout;
mod decision;
mod session;
pub use answer::{is_error_answer, LookupReply, LookupResult, TIMEOUT_SLACK_MS};
pub use callout::{Callout, RecordResult};
pub use decision::{Decision, Effects, Flow, LocalReply};
use session::session_of;

/// Facts about the proxy the filter runs in, read by the host from Envoy's node metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// `WORKLOAD_NAME` (e.g. the Deployment name).
    pub workload_name: Option<String>,
    /// `NAMESPACE`.
    pub namespace: Option<String>,
    /// `NAME` (the pod name).
    pub name: Option<String>,
}

/// What the engine needs from its host besides events.
pub struct Services {
    /// Where counters go.
    pub metrics: Arc<dyn Metrics>,
    /// Wall-clock time in nanoseconds since the Unix epoch (span timestamps only).
    pub clock: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Entropy for trace and span ids; must come from a random source, not the clock.
    pub seed: u64,
}

/// What the state machine decided for one event, before it is turned into the host's
/// [`Decision`] (flow and effects) by [`Stream::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Nothing changes: the event goes on, or stays held if the request is held.
    Continue,
    /// Keep this event's headers or data.
    Hold,
    /// Keep holding, and make this lookup.
    Lookup(Callout),
    /// Answer the client with this response.
    Serve(Response),
    /// Release everything held so far.
    Resume,
    /// Let this event through; this record goes to the engine's queue.
    Record(Callout),
    /// Let this event and everything after it through untouched.
    PassThrough(Bypass),
}

/// How long past the lookup timeout a request may stay held without progress before
/// [`Stream::on_timer`] releases it (the host's timer fires at [`Effects::hold_deadline_ms`]).
pub const HOLD_MARGIN_MS: u64 = 1000;

/// The engine for one filter configuration.
pub struct Engine {
    config: Config,
    service_name: String,
    metrics: Arc<dyn Metrics>,
    clock: Clock,
    ids: AtomicU64,
    records: RecordQueue,
    /// The lookups' circuit breaker ([`crate::breaker`]).
    lookups: Breaker,
}

/// Wall-clock nanoseconds, shared with the record queue.
pub(crate) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(config: Config, node: &Node, services: Services) -> Engine {
        let service_name = config
            .service_name
            .clone()
            .or_else(|| node.workload_name.clone().filter(|s| !s.is_empty()))
            .or_else(|| node.name.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown_service".to_string());
        let clock: Clock = Arc::from(services.clock);
        Engine {
            ids: AtomicU64::new(services.seed),
            records: RecordQueue::new(
                config.records,
                Breaker::new(config.breaker),
                services.metrics.clone(),
                clock.clone(),
            ),
            lookups: Breaker::new(config.breaker),
            metrics: services.metrics,
            clock,
            config,
            service_name,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `sp.service.name` of every span.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    fn count(&self, c: impl Into<Counter>) {
        self.metrics.add(c.into(), 1);
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// A fresh pseudo-random 64-bit value (SplitMix64 over the host's seed; never zero).
    fn random(&self) -> u64 {
        loop {
            let mut z = self
                .ids
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }

    fn span_id(&self) -> [u8; 8] {
        self.random().to_be_bytes()
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        let (hi, lo) = id.split_at_mut(8);
        hi.copy_from_slice(&self.random().to_be_bytes());
        lo.copy_from_slice(&self.random().to_be_bytes());
        id
    }

    /// The record queue every stream of this engine feeds and the host sends from
    /// ([`crate::records`]).
    pub fn records(&self) -> &RecordQueue {
        &self.records
    }
}

/// Which kind of event a step answers (see [`Stream::decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    /// A request event: progress for the hold deadline.
    Request,
    /// A lookup's answer, a timer, a reset.
    Async,
    /// A response event: always `Continue`.
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for request headers.
    Start,
    /// Not ours: everything passes untouched.
    PassThrough,
    /// Buffering the request body for the lookup.
    BufferingRequest,
    /// Copying the request body as it passes (record only).
    CopyingRequest,
    /// The lookup is out.
    AwaitingLookup,
    /// The request went upstream; the response will be recorded if it qualifies.
    Upstream,
    /// Copying the response body as it passes.
    CopyingResponse,
    /// Served locally or finished: nothing more to do.
    Done,
}

/// What the cache did with one request (see [`Stream::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Hit,
    Miss,
    Record,
    Blocked,
    Bypass(Bypass),
    Error(LookupFailure),
}

/// One request's state. Create one per HTTP stream with [`Stream::new`].
#[derive(Debug)]
pub struct Stream {
    engine: Arc<Engine>,
    state: State,
    /// Whether the response of this stream should be recorded once the request is upstream.
    record: bool,
    /// What the cache did with this request, for logs ([`Stream::verdict`]).
    outcome: Outcome,
    headers: Vec<Header>,
    method: Vec<u8>,
    authority: Vec<u8>,
    path: Vec<u8>,
    session_id: Option<Vec<u8>>,
    /// Request headers to set before the request goes on ([`Effects::set_request_headers`]).
    header_edits: Vec<Header>,
    trace: SpanIds,
    body: Vec<u8>,
    /// When the lookup went out, in milliseconds of the engine's clock.
    lookup_started_ms: u64,
    /// The host holds the request (headers and/or body) because of the engine.
    holding: bool,
    /// The last progress (request event) while held, in milliseconds of the engine's clock.
    held_since_ms: Option<u64>,
    /// The request headers went on (or will with this event): they can no longer be changed.
    headers_sent: bool,
    /// The verdict last handed to the host ([`Stream::verdict_update`]).
    published: Option<std::borrow::Cow<'static, str>>,
    /// After the lookup of a request to be recorded whose body is not UTF-8: the body's base64,
    /// which goes into both spans, so it is encoded once and `body` is dropped.
    body_base64: Option<String>,
    start_unix_nanos: u64,
    status: u16,
    response_headers: Vec<Header>,
    response_body: Vec<u8>,
}

fn pseudo_or<'a>(headers: &'a [Header], pseudo: &str, fallback: &str) -> &'a [u8] {
    http::header(headers, pseudo)
        .or_else(|| http::header(headers, fallback))
        .unwrap_or_default()
}

impl Stream {
    pub fn new(engine: Arc<Engine>) -> Stream {
        Stream {
            engine,
            state: State::Start,
            record: false,
            outcome: Outcome::Pending,
            headers: Vec::new(),
            method: Vec::new(),
            authority: Vec::new(),
            path: Vec::new(),
            session_id: None,
            header_edits: Vec::new(),
            trace: SpanIds::default(),
            body: Vec::new(),
            body_base64: None,
            lookup_started_ms: 0,
            holding: false,
            held_since_ms: None,
            headers_sent: false,
            published: None,
            start_unix_nanos: 0,
            status: 0,
            response_headers: Vec::new(),
            response_body: Vec::new(),
        }
    }

    /// The engine this stream belongs to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// True once the engine has nothing more to do with this stream.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::PassThrough | State::Done)
    }

    /// The session id of this request, once its headers arrived.
    pub fn session_id(&self) -> Option<&[u8]> {
        self.session_id.as_deref()
    }

    /// What the cache did with this request, for access logs: `hit`, `miss`, `record` (went
    /// upstream without a lookup, to be recorded), `blocked` (a deliberate error answer of the
    /// backend was served), `bypass:<reason>` (e.g. `bypass:method`),
    /// `error:<kind>` (e.g. `error:timeout`), or `pending` (no outcome yet). After a lookup, a
    /// bypass of the response (status, size) does not change the verdict; without one
    /// (`record_only`) it replaces `record`, saying why nothing was recorded.
    pub fn verdict(&self) -> std::borrow::Cow<'static, str> {
        match self.outcome {
            Outcome::Pending => "pending".into(),
            Outcome::Hit => "hit".into(),
            Outcome::Miss => "miss".into(),
            Outcome::Record => "record".into(),
            Outcome::Blocked => "blocked".into(),
            Outcome::Bypass(b) => {
                let name = Counter::from(b).name();
                format!("bypass:{}", name.strip_prefix("bypass_").unwrap_or(name)).into()
            }
            Outcome::Error(f) => {
                let name = Counter::from(f).name();
                format!(
                    "error:{}",
                    name.strip_prefix("lookup_errors_").unwrap_or(name)
                )
                .into()
            }
        }
    }

    /// The verdict when it changed since the last call (none while `pending`), for
    /// [`Effects::verdict`].
    fn verdict_update(&mut self) -> Option<std::borrow::Cow<'static, str>> {
        let verdict = self.verdict();
        if verdict == "pending" || self.published.as_ref() == Some(&verdict) {
            return None;
        }
        self.published = Some(verdict.clone());
        Some(verdict)
    }

    /// The host held this request longer than it will wait (the lookup timeout plus a margin)
    /// without an answer, e.g. because the host never delivered the body or the callout's
    /// answer: counted and handled like a lookup timeout. The host then releases the request
    /// (or serves the strict-mode 502). Anything but a held request: `Continue`.
    fn on_hold_expired_step(&mut self) -> Step {
        match self.state {
            State::AwaitingLookup => {
                self.on_lookup_result_step(LookupResult::Failed(LookupFailure::Timeout))
            }
            State::BufferingRequest => {
                self.state = State::AwaitingLookup;
                self.on_lookup_result_step(LookupResult::Failed(LookupFailure::Timeout))
            }
            _ => Step::Continue,
        }
    }

    fn bypass(&mut self, why: Bypass) -> Step {
        self.engine.count(why);
        if matches!(self.outcome, Outcome::Pending | Outcome::Record) {
            self.outcome = Outcome::Bypass(why);
        }
        self.state = State::PassThrough;
        self.body = Vec::new();
        self.body_base64 = None;
        self.response_body = Vec::new();
        Step::PassThrough(why)
    }

    fn config(&self) -> &Config {
        &self.engine.config
    }

    /// Turns a step of the state machine into the host's decision: the flow of the event and the
    /// effects (header edits, lookup, reply, record, verdict, hold deadline).
    fn decide(&mut self, step: Step, kind: EventKind) -> Decision {
        let mut effects = Effects {
            set_request_headers: std::mem::take(&mut self.header_edits),
            ..Effects::default()
        };
        let held = if self.holding {
            Flow::Hold
        } else {
            Flow::Continue
        };
        let flow = match step {
            Step::Continue => held,
            Step::Hold => Flow::Hold,
            Step::Lookup(callout) => {
                effects.lookup = Some(callout);
                Flow::Hold
            }
            Step::Serve(response) => {
                let details = match self.outcome {
                    Outcome::Hit => "transparent_cache_hit",
                    Outcome::Blocked => "transparent_cache_blocked",
                    _ => "transparent_cache_backend_error",
                };
                // The verdict into the request header map (config `verdict_header`), for
                // tracers that tag spans from request headers only (Istio 1.18's `Telemetry`
                // custom tags) and access logs: only while the headers are still held, so the
                // upstream never sees it (Envoy refuses changes once they went on).
                if let (Some(name), false) = (&self.config().verdict_header, self.headers_sent) {
                    let verdict = self.verdict().into_owned().into_bytes();
                    effects
                        .set_request_headers
                        .push((name.clone().into_bytes(), verdict));
                }
                effects.reply = Some(LocalReply { response, details });
                Flow::Stop
            }
            Step::Resume | Step::PassThrough(_) if self.holding => Flow::Release,
            Step::Resume | Step::PassThrough(_) => Flow::Continue,
            Step::Record(callout) => {
                effects.record_queued = self.engine.records.push(callout);
                held
            }
        };
        if matches!(flow, Flow::Continue | Flow::Release) && kind != EventKind::Response {
            self.headers_sent = true;
        }
        // Response events never stop the response, and never change what is held.
        let flow = if kind == EventKind::Response {
            Flow::Continue
        } else {
            match flow {
                Flow::Hold => {
                    self.holding = true;
                    if kind == EventKind::Request || self.held_since_ms.is_none() {
                        self.held_since_ms = Some(self.engine.now() / 1_000_000);
                    }
                }
                _ => {
                    self.holding = false;
                    self.held_since_ms = None;
                }
            }
            flow
        };
        effects.hold_deadline_ms = self
            .held_since_ms
            .map(|t| t.saturating_add(self.hold_limit_ms()));
        effects.verdict = self.verdict_update();
        Decision { flow, effects }
    }

    /// The request headers arrived (pseudo-headers included, in order, values as bytes).
    pub fn on_request_headers(&mut self, headers: Vec<Header>, end_of_stream: bool) -> Decision {
        let step = self.on_request_headers_step(headers, end_of_stream);
        self.decide(step, EventKind::Request)
    }

    /// A chunk of the request body arrived (`chunk` holds only the new bytes).
    pub fn on_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision {
        let step = self.on_request_body_step(chunk, end_of_stream);
        self.decide(step, EventKind::Request)
    }

    /// Request trailers arrived: the request body is complete.
    pub fn on_request_trailers(&mut self) -> Decision {
        let step = self.on_request_trailers_step();
        self.decide(step, EventKind::Request)
    }

    /// The lookup callout came back with a response (`reply`), or none at all (`None`: the host
    /// could not make the call, or it ended without response headers). Envoy answers a callout
    /// itself when the backend can't be reached: no headers or a `504` when the callout's timeout
    /// fires, a `503` (`upstream connect error ...`, `no healthy upstream`) when the connection
    /// fails. Those are faults, told apart here from the backend's own answers.
    pub fn on_lookup_reply(&mut self, reply: Option<LookupReply<'_>>) -> Decision {
        let step = self.on_lookup_reply_step(reply);
        self.decide(step, EventKind::Async)
    }

    /// The lookup callout ended, already classified (the sidecar's own client, tests).
    pub fn on_lookup_result(&mut self, result: LookupResult<'_>) -> Decision {
        let step = self.on_lookup_result_step(result);
        self.decide(step, EventKind::Async)
    }

    /// The host's timer fired (armed for [`Effects::hold_deadline_ms`]): a request held past its
    /// deadline without progress (the host never delivered the body, or the lookup's answer) is
    /// counted and handled like a lookup timeout: released (or answered 502 with
    /// `on_backend_error: fail`). Early, or nothing held: nothing changes.
    pub fn on_timer(&mut self) -> Decision {
        let now = self.engine.now() / 1_000_000;
        let limit = self.hold_limit_ms();
        let step = match self.held_since_ms {
            Some(since) if now >= since.saturating_add(limit) => self.on_hold_expired_step(),
            _ => Step::Continue,
        };
        self.decide(step, EventKind::Async)
    }

    /// How long a held request may go without progress: the lookup timeout plus
    /// [`HOLD_MARGIN_MS`].
    pub fn hold_limit_ms(&self) -> u64 {
        self.config()
            .backend
            .lookup_timeout_ms
            .saturating_add(HOLD_MARGIN_MS)
    }

    /// Like [`Stream::on_timer`] past the deadline, whatever the clock says.
    pub fn on_hold_expired(&mut self) -> Decision {
        let step = self.on_hold_expired_step();
        self.decide(step, EventKind::Async)
    }

    /// The stream ended early (client or upstream reset, or the host tore it down): everything
    /// buffered is dropped, nothing is recorded, nothing stays held.
    pub fn on_reset(&mut self) -> Decision {
        if !matches!(self.state, State::Done | State::PassThrough) {
            self.state = State::Done;
        }
        self.body = Vec::new();
        self.body_base64 = None;
        self.response_body = Vec::new();
        self.response_headers = Vec::new();
        self.holding = false;
        self.held_since_ms = None;
        self.decide(Step::Continue, EventKind::Async)
    }

    /// The upstream's response headers arrived.
    pub fn on_response_headers(
        &mut self,
        status: u16,
        headers: Vec<Header>,
        end_of_stream: bool,
    ) -> Decision {
        let step = self.on_response_headers_step(status, headers, end_of_stream);
        self.decide(step, EventKind::Response)
    }

    /// A chunk of the response body passed (`chunk` holds only the new bytes).
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision {
        let step = self.on_response_body_step(chunk, end_of_stream);
        self.decide(step, EventKind::Response)
    }

    /// Response trailers arrived: the response is complete.
    pub fn on_response_trailers(&mut self) -> Decision {
        let step = self.on_response_trailers_step();
        self.decide(step, EventKind::Response)
    }

    /// The request headers arrived (pseudo-headers included, in order, values as bytes).
    fn on_request_headers_step(&mut self, headers: Vec<Header>, end_of_stream: bool) -> Step {
        if self.state != State::Start {
            return Step::Continue;
        }
        self.engine.count(Counter::Requests);
        let mode = self.config().mode;
        if mode == Mode::Off {
            return self.bypass(Bypass::ModeOff);
        }
        self.session_id = session_of(&self.config().session_sources, &headers);
        let propagated = self.propagate(&headers);
        if mode == Mode::PropagateOnly {
            return self.bypass(Bypass::PropagateOnly);
        }
        let method = pseudo_or(&headers, ":method", ":method").to_ascii_uppercase();
        if method == b"CONNECT" || http::header(&headers, "upgrade").is_some() {
            return self.bypass(Bypass::Upgrade);
        }
        if http::header(&headers, "content-type")
            .is_some_and(|ct| ct.starts_with(b"application/grpc"))
        {
            return self.bypass(Bypass::Grpc);
        }
        let authority = pseudo_or(&headers, ":authority", "host").to_vec();
        let path = pseudo_or(&headers, ":path", ":path").to_vec();
        if let Err(why) = self.config().rules.check(&method, &authority, &path) {
            return self.bypass(why);
        }
        if self.config().require_session && self.session_id.is_none() {
            return self.bypass(Bypass::NoSession);
        }
        if mode.looks_up() && self.engine.lookups.is_open(self.engine.now() / 1_000_000) {
            return self.bypass(Bypass::BreakerOpen);
        }
        let limit = self.config().max_request_body_bytes;
        if http::content_length(&headers).is_some_and(|n| n > limit as u64) {
            return self.bypass(Bypass::RequestTooLarge);
        }
        // Our spans continue the caller's trace, or the one the propagation just started.
        let parent = trace::parent(&headers).or_else(|| {
            propagated
                .then(|| trace::parent(&self.header_edits))
                .flatten()
        });
        self.trace = match parent {
            Some(parent) => SpanIds {
                trace_id: parent.trace_id,
                span_id: [0; 8],
                parent_span_id: Some(parent.span_id),
                trace_state: parent.trace_state,
            },
            None => SpanIds {
                trace_id: self.engine.trace_id(),
                ..SpanIds::default()
            },
        };
        self.method = method;
        self.authority = authority;
        self.path = path;
        self.headers = headers;
        self.start_unix_nanos = self.engine.now();
        self.record = mode.records();
        if mode.looks_up() {
            if end_of_stream {
                return self.lookup();
            }
            self.state = State::BufferingRequest;
            match self.config().request_mode {
                RequestMode::HoldHeaders => Step::Hold,
                RequestMode::StreamHeaders => Step::Continue,
            }
        } else {
            self.outcome = Outcome::Record;
            self.state = if end_of_stream {
                State::Upstream
            } else {
                State::CopyingRequest
            };
            Step::Continue
        }
    }

    /// A chunk of the request body arrived (`chunk` holds only the new bytes).
    fn on_request_body_step(&mut self, chunk: &[u8], end_of_stream: bool) -> Step {
        match self.state {
            State::BufferingRequest | State::CopyingRequest => {}
            _ => return Step::Continue,
        }
        if self.body.len().saturating_add(chunk.len()) > self.config().max_request_body_bytes {
            return self.bypass(Bypass::RequestTooLarge);
        }
        self.body.extend_from_slice(chunk);
        self.engine
            .metrics
            .add(Counter::BytesBuffered, chunk.len() as u64);
        match (self.state, end_of_stream) {
            (State::BufferingRequest, true) => self.lookup(),
            (State::BufferingRequest, false) => Step::Hold,
            (_, true) => {
                self.state = State::Upstream;
                Step::Continue
            }
            (_, false) => Step::Continue,
        }
    }

    /// Request trailers arrived. A recording cannot carry them, and the sidecar cannot see them
    /// without a round trip more on every request: the request goes on as it is, neither looked
    /// up nor recorded (held headers and body are released with the trailers).
    fn on_request_trailers_step(&mut self) -> Step {
        match self.state {
            State::BufferingRequest | State::CopyingRequest => self.bypass(Bypass::Trailers),
            _ => Step::Continue,
        }
    }

    fn request_view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            authority: &self.authority,
            path: &self.path,
            headers: &self.headers,
            body: &self.body,
            body_base64: self.body_base64.as_deref(),
        }
    }

    fn meta<'a>(&'a self, ids: &'a SpanIds, end: u64) -> SpanMeta<'a> {
        SpanMeta {
            service_name: &self.engine.service_name,
            direction: self.config().traffic_direction,
            session_id: self.session_id.as_deref(),
            ids,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: end,
            redactor: &self.config().redactor,
        }
    }

    fn span_ids(&self) -> SpanIds {
        SpanIds {
            span_id: self.engine.span_id(),
            ..self.trace.clone()
        }
    }

    fn lookup(&mut self) -> Step {
        // Past the back-off one lookup goes as the breaker's probe; the others keep going straight
        // upstream until it answers.
        if self.engine.lookups.admit(self.engine.now() / 1_000_000) == Admission::Reject {
            return self.bypass(Bypass::BreakerOpen);
        }
        self.state = State::AwaitingLookup;
        self.lookup_started_ms = self.engine.now() / 1_000_000;
        self.engine.count(Counter::Lookups);
        // A binary body that will also be recorded goes into two spans as base64: encode it once
        // here rather than in each span (base64 is most of the engine's work on a miss), and hold
        // only the encoding from now on.
        if self.record {
            if let Some(b64) = codec::body_base64(&self.headers, &self.body) {
                self.body = Vec::new();
                self.body_base64 = Some(b64);
            }
        }
        let ids = self.span_ids();
        let now = self.engine.now();
        let body = codec::encode_inject(&self.meta(&ids, now), &self.request_view());
        let b = &self.config().backend;
        Step::Lookup(
            self.engine
                .callout(&b.inject_path, true, body, b.lookup_timeout_ms),
        )
    }

    /// The lookup callout came back with a response (`reply`), or none at all (`None`: the host
    /// could not make the call, or it ended without response headers). Envoy answers a callout
    /// itself when the backend can't be reached: no headers or a `504` when the callout's timeout
    /// fires, a `503` (`upstream connect error ...`, `no healthy upstream`) when the connection
    /// fails. Those are faults, told apart here from the backend's own answers.
    fn on_lookup_reply_step(&mut self, reply: Option<LookupReply<'_>>) -> Step {
        let elapsed = (self.engine.now() / 1_000_000).saturating_sub(self.lookup_started_ms);
        let timed_out =
            elapsed.saturating_add(TIMEOUT_SLACK_MS) >= self.config().backend.lookup_timeout_ms;
        self.on_lookup_result_step(answer::classify(reply, timed_out))
    }

    /// The lookup callout ended, already classified (the sidecar's own client, tests).
    fn on_lookup_result_step(&mut self, result: LookupResult<'_>) -> Step {
        if self.state != State::AwaitingLookup {
            return Step::Continue;
        }
        let failure = match result {
            LookupResult::Answer { status: 404, .. } => {
                self.engine.lookups.success();
                self.engine.count(Counter::Misses);
                self.outcome = Outcome::Miss;
                self.state = State::Upstream;
                return Step::Resume;
            }
            LookupResult::Answer {
                status: 200,
                content_type,
                body,
            } => match codec::decode_answer(
                body,
                Format::from_content_type(content_type),
                &self.config().redactor,
            ) {
                Ok(mut response) => {
                    self.engine.lookups.success();
                    self.engine.count(Counter::Hits);
                    self.outcome = Outcome::Hit;
                    self.state = State::Done;
                    self.body = Vec::new();
                    self.body_base64 = None;
                    // A HEAD hit keeps the recorded body: Envoy sends a local reply to HEAD as
                    // headers only, with the body's length and content type, as for any HEAD.
                    if let Some(h) = &self.config().hit_header {
                        response.headers.push((h.clone(), b"hit".to_vec()));
                    }
                    return Step::Serve(response);
                }
                Err(codec::AnswerError::Rejected(_)) => LookupFailure::Rejected,
                Err(_) => LookupFailure::Undecodable,
            },
            LookupResult::Answer {
                status,
                content_type,
                body,
            } if is_error_answer(status, content_type, body) => {
                if self.config().on_error_answer == OnErrorAnswer::Serve
                    && self.session_id.is_some()
                {
                    self.engine.lookups.success();
                    return self.serve_error_answer(status, content_type, body);
                }
                LookupFailure::ErrorAnswer
            }
            LookupResult::Answer { .. } => LookupFailure::Status,
            LookupResult::Failed(f) => f,
        };
        self.engine.count(failure);
        // The backend's own well-formed answers say it is there; faults count towards the
        // breaker.
        if matches!(
            failure,
            LookupFailure::Rejected | LookupFailure::ErrorAnswer
        ) {
            self.engine.lookups.success();
        } else if self.engine.lookups.failure(self.engine.now() / 1_000_000) {
            self.engine.count(Counter::LookupBreakerOpened);
        }
        self.outcome = Outcome::Error(failure);
        self.state = State::Done;
        self.body = Vec::new();
        self.body_base64 = None;
        match self.config().on_backend_error {
            OnBackendError::PassThrough => Step::Resume,
            OnBackendError::Fail => Step::Serve(Response {
                status: 502,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
                body: b"transparent-cache: the cache backend lookup failed\n".to_vec(),
            }),
        }
    }

    /// Hands a deliberate error answer of the backend to the caller, as it came.
    fn serve_error_answer(
        &mut self,
        status: u16,
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Step {
        self.engine.count(Counter::Blocked);
        self.outcome = Outcome::Blocked;
        self.state = State::Done;
        self.body = Vec::new();
        self.body_base64 = None;
        let content_type = content_type
            .filter(|ct| http::is_safe_value(ct))
            .unwrap_or(b"application/json");
        let mut headers = vec![("content-type".to_string(), content_type.to_vec())];
        if let Some(h) = &self.config().hit_header {
            headers.push((h.clone(), b"blocked".to_vec()));
        }
        Step::Serve(Response {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    /// The upstream's response headers arrived.
    fn on_response_headers_step(
        &mut self,
        status: u16,
        headers: Vec<Header>,
        end_of_stream: bool,
    ) -> Step {
        if self.state != State::Upstream || !self.record {
            return Step::Continue;
        }
        if !self.config().recordable_statuses.contains(&status) {
            self.bypass(Bypass::Status);
            return Step::Continue;
        }
        // A response to HEAD, a 204 or a 304 has no body whatever its `content-length` says.
        let bodiless = self.method == b"HEAD" || status == 204 || status == 304;
        let limit = self.config().max_response_body_bytes;
        if !bodiless && http::content_length(&headers).is_some_and(|n| n > limit as u64) {
            self.bypass(Bypass::ResponseTooLarge);
            return Step::Continue;
        }
        self.status = status;
        self.response_headers = headers;
        self.state = State::CopyingResponse;
        if end_of_stream {
            return self.finish();
        }
        Step::Continue
    }

    /// A chunk of the response body passed (`chunk` holds only the new bytes).
    fn on_response_body_step(&mut self, chunk: &[u8], end_of_stream: bool) -> Step {
        if self.state != State::CopyingResponse {
            return Step::Continue;
        }
        if self.response_body.len().saturating_add(chunk.len())
            > self.config().max_response_body_bytes
        {
            self.bypass(Bypass::ResponseTooLarge);
            return Step::Continue;
        }
        self.response_body.extend_from_slice(chunk);
        self.engine
            .metrics
            .add(Counter::BytesBuffered, chunk.len() as u64);
        if end_of_stream {
            return self.finish();
        }
        Step::Continue
    }

    /// Response trailers arrived: the response reaches the client whole, but is not recorded (a
    /// recording served without its trailers would not be the upstream's answer).
    fn on_response_trailers_step(&mut self) -> Step {
        if self.state == State::CopyingResponse {
            self.bypass(Bypass::Trailers);
        }
        Step::Continue
    }

    fn finish(&mut self) -> Step {
        self.state = State::Done;
        let ids = self.span_ids();
        let now = self.engine.now();
        let response = ResponseView {
            status: self.status,
            headers: &self.response_headers,
            body: &self.response_body,
        };
        let body = codec::encode_extract(&self.meta(&ids, now), &self.request_view(), &response);
        self.body = Vec::new();
        self.body_base64 = None;
        self.response_body = Vec::new();
        let b = &self.config().backend;
        Step::Record(
            self.engine
                .callout(&b.traces_path, false, body, b.record_timeout_ms),
        )
    }
}

#[cfg(test)]
mod tests;
