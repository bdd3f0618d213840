//! One Envoy ext_proc stream: turns each `ProcessingRequest` into engine events and each engine
//! [`Decision`] into the `ProcessingResponse` Envoy waits for. No I/O here: lookups are handed back
//! to the caller ([`Step::Lookup`]), records are returned with the response ([`Step::Respond`]).
//!
//! The processing modes (see the crate README for their cost):
//! - static, in the Envoy filter config ([`STATIC_MODE`]): request headers SEND, request body
//!   BUFFERED_PARTIAL (headers and body are held until the body is answered, never a 413),
//!   response headers SEND, response body STREAMED (each chunk is answered at once), trailers SKIP;
//! - per stream, `mode_override` on the header responses switches off every phase the stream no
//!   longer needs: everything after an ineligible request, the response phases when the mode never
//!   records, the response body when the response will not be recorded. A hit is answered with an
//!   `ImmediateResponse`, so it never reaches the response phases.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::BoolValue;
use filter_core::{Callout, Decision, Flow, Header, LookupResult, Response, Stream};

/// The processing mode the Envoy filter config must set (and the one [`Phases`] assumes).
pub const STATIC_MODE: ProcessingMode = ProcessingMode {
    request_header_mode: HeaderSendMode::Send as i32,
    response_header_mode: HeaderSendMode::Send as i32,
    request_body_mode: BodySendMode::BufferedPartial as i32,
    response_body_mode: BodySendMode::Streamed as i32,
    request_trailer_mode: HeaderSendMode::Skip as i32,
    response_trailer_mode: HeaderSendMode::Skip as i32,
};

/// Which message of the stream is being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// What the host does with one `ProcessingRequest`.
#[derive(Debug)]
pub enum Step {
    /// Send this response; if `record_queued`, the engine queued a record: wake the sender
    /// (never on the stream's path).
    Respond {
        response: Box<ProcessingResponse>,
        record_queued: bool,
    },
    /// Make this lookup, then call [`Phases::after_lookup`] and send what it returns.
    Lookup(Callout),
    /// Send nothing (a message without a body, or one sent in async mode).
    Nothing,
}

/// Things worth counting that the engine does not see.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Notes {
    /// The request body arrived incomplete (over Envoy's buffer limit, or followed by trailers),
    /// so the request went upstream without a lookup.
    pub request_body_incomplete: bool,
}

/// The state of one ext_proc stream.
#[derive(Debug)]
pub struct Phases {
    stream: Stream,
    /// Whether the engine's mode records responses (else the response phases are skipped).
    records: bool,
    /// Whether Envoy sends header values as `raw_value` (Envoy 1.27+); mutations use the same field.
    raw_values: bool,
    /// The phase whose answer waits for a lookup.
    pending: Option<Phase>,
    /// Request headers the engine asked to set (the session in `tracestate`), sent with the
    /// answer to the request headers.
    edits: Vec<Header>,
    /// The client's `content-length` when it is at most `keep_length_max`: set again on the
    /// forwarded request, and the body read in BUFFERED mode. Envoy 1.28+ removes it in
    /// BUFFERED_PARTIAL mode (so a body mutation could not make it wrong), which would send the
    /// upstream a chunked request instead; we never change a body, so the client's length holds.
    content_length: Option<u64>,
    /// [`crate::config::SidecarSettings::keep_content_length_max_bytes`].
    keep_length_max: u64,
    /// The engine's hold deadline ([`filter_core::Effects::hold_deadline_ms`]).
    deadline_ms: Option<u64>,
    pub notes: Notes,
}

/// What the stream does when the engine's hold deadline passes ([`Phases::on_timer`]).
#[derive(Debug)]
pub enum Expired {
    /// Not yet, or nothing is held: keep waiting for Envoy.
    Nothing,
    /// Let the request go: end the ext_proc stream, so Envoy stops waiting for this server and
    /// sends on what it holds (the stream is not processed further).
    Release,
    /// Send this answer instead (strict mode's 502).
    Reply(Box<ProcessingResponse>),
}

fn mode(f: impl FnOnce(&mut ProcessingMode)) -> ProcessingMode {
    let mut m = STATIC_MODE;
    f(&mut m);
    m
}

/// Every later phase skipped.
fn skip_all() -> ProcessingMode {
    mode(|m| {
        m.request_body_mode = BodySendMode::None as i32;
        m.response_header_mode = HeaderSendMode::Skip as i32;
        m.response_body_mode = BodySendMode::None as i32;
    })
}

fn headers_of(map: Option<&HeaderMap>) -> (Vec<Header>, bool) {
    let Some(map) = map else {
        return (Vec::new(), false);
    };
    let mut raw = false;
    let headers = map
        .headers
        .iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes().to_vec()
            } else {
                raw = true;
                h.raw_value.clone()
            };
            (h.key.as_bytes().to_vec(), value)
        })
        .collect();
    (headers, raw)
}

fn common(
    mode_override: Option<ProcessingMode>,
) -> (Option<CommonResponse>, Option<ProcessingMode>) {
    (Some(CommonResponse::default()), mode_override)
}

/// A plain "continue" for `phase`, with an optional mode override.
pub fn continue_response(
    phase: Phase,
    mode_override: Option<ProcessingMode>,
) -> ProcessingResponse {
    use processing_response::Response as R;
    let (response, mode_override) = common(mode_override);
    let r = match phase {
        Phase::RequestHeaders => R::RequestHeaders(HeadersResponse { response }),
        Phase::ResponseHeaders => R::ResponseHeaders(HeadersResponse { response }),
        Phase::RequestBody => R::RequestBody(BodyResponse { response }),
        Phase::ResponseBody => R::ResponseBody(BodyResponse { response }),
        Phase::RequestTrailers => R::RequestTrailers(TrailersResponse::default()),
        Phase::ResponseTrailers => R::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse {
        response: Some(r),
        mode_override,
        ..ProcessingResponse::default()
    }
}

impl Phases {
    /// A stream's phases; a request's `content-length` up to `keep_length_max` bytes reaches the
    /// upstream as the client sent it (0: never, the upstream sees a chunked request).
    pub fn new(stream: Stream, keep_length_max: u64) -> Phases {
        let records = stream.engine().config().mode().records();
        Phases {
            stream,
            records,
            raw_values: false,
            pending: None,
            edits: Vec::new(),
            content_length: None,
            keep_length_max,
            deadline_ms: None,
            notes: Notes::default(),
        }
    }

    /// The engine's stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Handles one message from Envoy.
    pub fn handle(&mut self, req: ProcessingRequest) -> Step {
        let Some(msg) = req.request else {
            return Step::Nothing;
        };
        // `observability_mode` is never configured for this server: every message is answered.
        self.dispatch(msg)
    }

    fn dispatch(&mut self, msg: processing_request::Request) -> Step {
        use processing_request::Request as Q;
        match msg {
            Q::RequestHeaders(h) => {
                let (headers, raw) = headers_of(h.headers.as_ref());
                self.raw_values = raw;
                self.content_length = filter_core::http::content_length(&headers)
                    .filter(|n| *n <= self.keep_length_max);
                let d = self.stream.on_request_headers(headers, h.end_of_stream);
                self.decide(Phase::RequestHeaders, d, h.end_of_stream)
            }
            Q::RequestBody(b) => {
                let d = self.stream.on_request_body(&b.body, b.end_of_stream);
                if !b.end_of_stream && matches!(d.flow, Flow::Hold | Flow::Continue) {
                    // BUFFERED_PARTIAL sends one message: without end_of_stream, the rest of the
                    // body goes upstream without us (Envoy's buffer limit, or trailers follow).
                    // Never look up a truncated body: let it all go on.
                    self.notes.request_body_incomplete = true;
                    return self.respond(Phase::RequestBody, Some(skip_all()), false);
                }
                self.decide(Phase::RequestBody, d, b.end_of_stream)
            }
            Q::RequestTrailers(_) => {
                let d = self.stream.on_request_trailers();
                self.decide(Phase::RequestTrailers, d, true)
            }
            Q::ResponseHeaders(h) => {
                let (headers, raw) = headers_of(h.headers.as_ref());
                self.raw_values |= raw;
                let status = filter_core::http::status(&headers).unwrap_or(0);
                let d = self
                    .stream
                    .on_response_headers(status, headers, h.end_of_stream);
                self.decide(Phase::ResponseHeaders, d, h.end_of_stream)
            }
            Q::ResponseBody(b) => {
                let d = self.stream.on_response_body(&b.body, b.end_of_stream);
                self.decide(Phase::ResponseBody, d, b.end_of_stream)
            }
            Q::ResponseTrailers(_) => {
                let d = self.stream.on_response_trailers();
                self.decide(Phase::ResponseTrailers, d, true)
            }
        }
    }

    /// When the engine wants [`Phases::on_timer`] called (engine clock, ms), if at all.
    pub fn hold_deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// The hold deadline passed while Envoy sent nothing (a client stalled mid-body: Envoy holds
    /// the request, this server has no message to answer).
    pub fn on_timer(&mut self) -> Expired {
        let d = self.stream.on_timer();
        self.deadline_ms = d.effects.hold_deadline_ms;
        match (d.flow, d.effects.reply) {
            (_, Some(reply)) => {
                Expired::Reply(Box::new(self.immediate(reply.response, reply.details)))
            }
            (Flow::Release, None) => Expired::Release,
            _ => Expired::Nothing,
        }
    }

    /// The lookup asked for by [`Step::Lookup`] ended: the response to send.
    pub fn after_lookup(&mut self, result: LookupResult<'_>) -> ProcessingResponse {
        let phase = self.pending.take().unwrap_or(Phase::RequestHeaders);
        let d = self.stream.on_lookup_result(result);
        match self.decide(phase, d, true) {
            Step::Respond { response, .. } => *response,
            // The engine never asks for a second lookup; answer "continue" if it ever did.
            Step::Lookup(_) | Step::Nothing => continue_response(phase, Some(skip_all())),
        }
    }

    /// The mode for the rest of the stream once a request phase is answered with "continue".
    fn request_override(&self, phase: Phase, end_of_stream: bool) -> Option<ProcessingMode> {
        if self.stream.is_finished() {
            return Some(skip_all());
        }
        let body_done = end_of_stream || phase != Phase::RequestHeaders;
        let buffered = |m: &mut ProcessingMode| {
            if self.content_length.is_some() {
                m.request_body_mode = BodySendMode::Buffered as i32;
            }
        };
        match (self.records, body_done) {
            (true, false) => self.content_length.map(|_| mode(buffered)),
            (true, true) => Some(mode(|m| m.request_body_mode = BodySendMode::None as i32)),
            (false, done) => Some(mode(|m| {
                if done {
                    m.request_body_mode = BodySendMode::None as i32;
                } else {
                    buffered(m);
                }
                m.response_header_mode = HeaderSendMode::Skip as i32;
                m.response_body_mode = BodySendMode::None as i32;
            })),
        }
    }

    fn decide(&mut self, phase: Phase, d: Decision, end_of_stream: bool) -> Step {
        let request_phase = matches!(
            phase,
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers
        );
        let e = d.effects;
        self.deadline_ms = e.hold_deadline_ms;
        if !e.set_request_headers.is_empty() {
            self.edits = e.set_request_headers;
        }
        if let Some(callout) = e.lookup {
            self.pending = Some(phase);
            return Step::Lookup(callout);
        }
        if let Some(reply) = e.reply {
            return Step::Respond {
                response: Box::new(self.immediate(reply.response, reply.details)),
                record_queued: false,
            };
        }
        let o = if e.record_queued && phase == Phase::ResponseHeaders {
            // Recorded complete with the headers: the response body is not needed.
            Some(mode(|m| {
                m.request_body_mode = BodySendMode::None as i32;
                m.response_body_mode = BodySendMode::None as i32;
            }))
        } else if e.record_queued {
            None
        } else if request_phase {
            self.request_override(phase, end_of_stream)
        } else if phase == Phase::ResponseHeaders && self.stream.is_finished() {
            // Not recorded (status, size) or already complete: skip the response body.
            Some(mode(|m| {
                m.request_body_mode = BodySendMode::None as i32;
                m.response_body_mode = BodySendMode::None as i32;
            }))
        } else {
            None
        };
        self.respond(phase, o, e.record_queued)
    }

    fn respond(
        &self,
        phase: Phase,
        mode_override: Option<ProcessingMode>,
        record_queued: bool,
    ) -> Step {
        let mut response = continue_response(phase, mode_override);
        if phase == Phase::RequestHeaders
            && (!self.edits.is_empty() || self.content_length.is_some())
        {
            if let Some(processing_response::Response::RequestHeaders(HeadersResponse {
                response: Some(common),
            })) = response.response.as_mut()
            {
                common.header_mutation = Some(self.edit_mutation());
            }
        }
        Step::Respond {
            response: Box::new(response),
            record_queued,
        }
    }

    /// The engine's request header edits as an ext_proc mutation: each replaces its name.
    fn edit_mutation(&self) -> HeaderMutation {
        let length = self
            .content_length
            .map(|n| (b"content-length".to_vec(), n.to_string().into_bytes()));
        #[allow(deprecated)] // ext_proc reads `append`, not `append_action`
        let set_headers = self
            .edits
            .iter()
            .chain(length.iter())
            .map(|(name, value)| HeaderValueOption {
                header: Some(self.header_value(&String::from_utf8_lossy(name), value.clone())),
                append: Some(BoolValue { value: false }),
                ..HeaderValueOption::default()
            })
            .collect();
        HeaderMutation {
            set_headers,
            remove_headers: Vec::new(),
        }
    }

    fn header_value(&self, key: &str, value: Vec<u8>) -> HeaderValue {
        if self.raw_values {
            HeaderValue {
                key: key.to_string(),
                value: String::new(),
                raw_value: value,
            }
        } else {
            // Envoy 1.26 reads only the string field; the engine already rejected CR, LF and NUL.
            HeaderValue {
                key: key.to_string(),
                value: String::from_utf8_lossy(&value).into_owned(),
                raw_value: Vec::new(),
            }
        }
    }

    /// A locally generated answer: the recorded status, headers (repeats kept in order) and body.
    fn immediate(&self, response: Response, details: &str) -> ProcessingResponse {
        let mut seen: Vec<String> = Vec::new();
        let set_headers = response
            .headers
            .into_iter()
            .map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                // The first value of a name replaces Envoy's default (e.g. `content-type:
                // text/plain`); later ones are appended.
                let append = seen.contains(&name);
                if !append {
                    seen.push(name.clone());
                }
                #[allow(deprecated)] // ext_proc reads `append`, not `append_action`
                HeaderValueOption {
                    header: Some(self.header_value(&name, value)),
                    append: Some(BoolValue { value: append }),
                    ..HeaderValueOption::default()
                }
            })
            .collect();
        ProcessingResponse {
            response: Some(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus {
                        code: i32::from(response.status),
                    }),
                    headers: Some(HeaderMutation {
                        set_headers,
                        remove_headers: Vec::new(),
                    }),
                    body: response.body,
                    grpc_status: None,
                    details: details.to_string(),
                },
            )),
            ..ProcessingResponse::default()
        }
    }
}

#[cfg(test)]
mod tests;
