//! The Softprobe span codec: builds the inject and extract spans of the protocol from a request and
//! response, and reads spans back (inject answers here, recordings in the backend).

use std::borrow::Cow;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::encoding;
use crate::http::{self, Header, Response};
use crate::otlp::{self, ResourceSpans, Span, TracesData, Value};
use crate::wire::{self, Attr, SpanOut, TracesOut, Val};

pub const ATTR_SPAN_TYPE: &str = "sp.span.type";
pub const ATTR_SESSION_ID: &str = "sp.session.id";
pub const ATTR_SERVICE_NAME: &str = "sp.service.name";
pub const ATTR_DIRECTION: &str = "sp.traffic.direction";
pub const ATTR_HOST: &str = "url.host";
pub const ATTR_PATH: &str = "url.path";
pub const ATTR_METHOD: &str = "http.request.method";
pub const REQUEST_HEADER_PREFIX: &str = "http.request.header.";
pub const REQUEST_BODY: &str = "http.request.body";
pub const RESPONSE_STATUS: &str = "http.response.status_code";
pub const RESPONSE_HEADER_PREFIX: &str = "http.response.header.";
pub const RESPONSE_BODY: &str = "http.response.body";
/// Suffix of the sibling attribute that marks a base64 body.
pub const ENCODING_SUFFIX: &str = ".encoding";

const SCOPE_NAME: &str = "transparent-cache";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which way the traffic flows through the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    fn span_kind(self) -> i32 {
        match self {
            Direction::Outbound => otlp::SPAN_KIND_CLIENT,
            Direction::Inbound => otlp::SPAN_KIND_SERVER,
        }
    }
}

/// Header names whose values never leave the pod in clear text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redactor {
    names: Vec<String>,
}

impl Redactor {
    /// Names are compared case-insensitively.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Self {
        Redactor {
            names: names
                .into_iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn is_redacted(&self, lower_name: &str) -> bool {
        self.names.iter().any(|n| n == lower_name)
    }
}

/// `sha256:<hex>` of a value: equal secrets still match, different ones still differ.
pub fn redacted(value: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    crate::trace::push_hex(&mut out, &Sha256::digest(value));
    out
}

/// Trace identity of one span.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
}

/// The request side of an exchange, borrowed from the engine's buffers.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    pub authority: &'a [u8],
    pub path: &'a [u8],
    /// Every request header as received, pseudo-headers included.
    pub headers: &'a [Header],
    pub body: &'a [u8],
    /// The standard base64 of a body that travels as base64 ([`body_needs_base64`]), when the
    /// caller already has it: written as is (no second encoding), and `body` is then ignored. The
    /// engine sets it for a request body that goes into both the inject and the extract span.
    pub body_base64: Option<&'a str>,
}

/// The response side of an exchange.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    pub status: u16,
    /// Response headers; pseudo-headers (`:status`) are skipped.
    pub headers: &'a [Header],
    pub body: &'a [u8],
}

/// Everything a span says besides the HTTP exchange.
#[derive(Debug, Clone, Copy)]
pub struct SpanMeta<'a> {
    pub service_name: &'a str,
    pub direction: Direction,
    pub session_id: Option<&'a [u8]>,
    pub ids: &'a SpanIds,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub redactor: &'a Redactor,
}

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// A string value when the bytes are UTF-8, else a bytes value (array items only: the runtime
/// drops arrays anyway, and our backend reads bytes items exactly).
fn item<'a>(line: Cow<'a, [u8]>) -> Val<'a> {
    match line {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => Val::Str(Cow::Borrowed(s)),
            Err(_) => Val::Bytes(Cow::Borrowed(b)),
        },
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => Val::Str(Cow::Owned(s)),
            Err(e) => Val::Bytes(Cow::Owned(e.into_bytes())),
        },
    }
}

/// A string attribute that must keep its exact bytes (a header value, `url.path`, `url.host`): a
/// string when the bytes are UTF-8, else their base64 marked by
/// `transparent_cache.encoding.<key> = "base64"`, so two different values never read as one text
/// (and one lookup key). HTTP/2 lets a non-UTF-8 `:path` through Envoy.
fn push_text<'a>(key: impl Into<Cow<'a, str>>, value: Cow<'a, [u8]>, out: &mut Vec<Attr<'a>>) {
    let key = key.into();
    if std::str::from_utf8(&value).is_ok() {
        out.push(Attr::new(key, item(value)));
    } else {
        out.push(Attr::new(
            [encoding::ENCODING_PREFIX, &key].concat(),
            Val::Str(Cow::Borrowed("base64")),
        ));
        out.push(Attr::new(key, Val::Base64(value)));
    }
}

/// One string attribute per header name (see [`crate::encoding`]): repeated lines combined,
/// non-UTF-8 values as marked base64, and the exact lines in an extra array attribute when the
/// name repeats.
fn push_headers<'a>(
    prefix: &str,
    headers: &'a [Header],
    redactor: &Redactor,
    skip_pseudo: bool,
    out: &mut Vec<Attr<'a>>,
) {
    for (name, values) in http::group(headers) {
        if skip_pseudo && name.starts_with(':') {
            continue;
        }
        // `concat`, not `format!`: one exact allocation per key, on every header of every span.
        let key = [prefix, &name].concat();
        let lines: Vec<Cow<'a, [u8]>> = if redactor.is_redacted(&name) {
            values
                .iter()
                .map(|v| Cow::Owned(redacted(v).into_bytes()))
                .collect()
        } else {
            values.iter().map(|v| Cow::Borrowed(*v)).collect()
        };
        let combined: Cow<'a, [u8]> = match lines.as_slice() {
            [one] => one.clone(),
            many => Cow::Owned(encoding::combine(&name, many)),
        };
        let lines_key = (lines.len() > 1).then(|| [encoding::LINES_PREFIX, &key].concat());
        push_text(key, combined, out);
        if let Some(k) = lines_key {
            out.push(Attr::new(
                k,
                Val::Array(lines.into_iter().map(item).collect()),
            ));
        }
    }
}

/// Whether the body of a message with these headers goes into a span as base64.
pub fn body_needs_base64(headers: &[Header], body: &[u8]) -> bool {
    encoding::body_is_base64(
        http::header(headers, "content-type"),
        http::header(headers, "content-encoding"),
        body,
    )
}

fn push_body<'a>(
    attr: &'static str,
    body: &'a [u8],
    base64: Option<&'a str>,
    headers: &[Header],
    out: &mut Vec<Attr<'a>>,
) {
    let value = match base64 {
        Some("") => return,
        // Already encoded by the caller: written as is.
        Some(b64) => Val::Str(Cow::Borrowed(b64)),
        None if body.is_empty() => return,
        None if !body_needs_base64(headers, body) => {
            if let Ok(s) = std::str::from_utf8(body) {
                out.push(Attr::new(attr, Val::Str(Cow::Borrowed(s))));
                return;
            }
            Val::Base64(Cow::Borrowed(body))
        }
        None => Val::Base64(Cow::Borrowed(body)),
    };
    out.push(Attr::new(attr, value));
    out.push(Attr::new(
        format!("{attr}{ENCODING_SUFFIX}"),
        Val::Str(Cow::Borrowed("base64")),
    ));
}

/// The standard base64 of a request body when a span carries it as base64 (see
/// [`body_needs_base64`]), else `None`.
pub fn body_base64(headers: &[Header], body: &[u8]) -> Option<String> {
    (!body.is_empty() && body_needs_base64(headers, body)).then(|| encoding::base64(body))
}

fn request_attrs<'a>(
    span_type: &'static str,
    meta: &SpanMeta<'a>,
    req: &RequestView<'a>,
) -> Vec<Attr<'a>> {
    let mut attrs = Vec::with_capacity(8 + req.headers.len());
    attrs.push(Attr::new(
        ATTR_SPAN_TYPE,
        Val::Str(Cow::Borrowed(span_type)),
    ));
    if let Some(id) = meta.session_id {
        attrs.push(Attr::new(ATTR_SESSION_ID, Val::Str(text(id))));
    }
    attrs.push(Attr::new(
        ATTR_SERVICE_NAME,
        Val::Str(Cow::Borrowed(meta.service_name)),
    ));
    attrs.push(Attr::new(
        ATTR_DIRECTION,
        Val::Str(Cow::Borrowed(meta.direction.as_str())),
    ));
    push_text(ATTR_HOST, Cow::Borrowed(req.authority), &mut attrs);
    push_text(ATTR_PATH, Cow::Borrowed(req.path), &mut attrs);
    attrs.push(Attr::new(ATTR_METHOD, Val::Str(text(req.method))));
    push_headers(
        REQUEST_HEADER_PREFIX,
        req.headers,
        meta.redactor,
        false,
        &mut attrs,
    );
    push_body(
        REQUEST_BODY,
        req.body,
        req.body_base64,
        req.headers,
        &mut attrs,
    );
    attrs
}

fn push_response<'a>(resp: &ResponseView<'a>, redactor: &Redactor, attrs: &mut Vec<Attr<'a>>) {
    attrs.push(Attr::new(RESPONSE_STATUS, Val::Int(i64::from(resp.status))));
    push_headers(RESPONSE_HEADER_PREFIX, resp.headers, redactor, true, attrs);
    push_body(RESPONSE_BODY, resp.body, None, resp.headers, attrs);
}

fn traces<'a>(meta: &SpanMeta<'a>, name: &'a str, attributes: Vec<Attr<'a>>) -> Vec<u8> {
    wire::encode(&TracesOut {
        service_name: meta.service_name,
        scope_name: SCOPE_NAME,
        scope_version: SCOPE_VERSION,
        span: SpanOut {
            trace_id: meta.ids.trace_id,
            span_id: meta.ids.span_id,
            parent_span_id: meta.ids.parent_span_id,
            trace_state: &meta.ids.trace_state,
            name,
            kind: meta.direction.span_kind(),
            start_time_unix_nano: meta.start_unix_nanos,
            end_time_unix_nano: meta.end_unix_nanos,
            attributes,
        },
    })
}

/// The `POST /v1/inject` body: one `inject` span describing the request.
pub fn encode_inject(meta: &SpanMeta<'_>, req: &RequestView<'_>) -> Vec<u8> {
    traces(meta, "inject", request_attrs("inject", meta, req))
}

/// The `POST /v1/traces` body: one `extract` span with the request and the response.
pub fn encode_extract(
    meta: &SpanMeta<'_>,
    req: &RequestView<'_>,
    resp: &ResponseView<'_>,
) -> Vec<u8> {
    let mut attrs = request_attrs("extract", meta, req);
    push_response(resp, meta.redactor, &mut attrs);
    traces(meta, "extract", attrs)
}

/// A 200 inject answer carrying `resp` (what a backend sends on a hit). Header values are sent as
/// they are: redaction happened when the recording was made.
pub fn encode_answer(service_name: &str, ids: &SpanIds, resp: &Response) -> Vec<u8> {
    let headers: Vec<Header> = resp
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
        .collect();
    let view = ResponseView {
        status: resp.status,
        headers: &headers,
        body: &resp.body,
    };
    let mut attrs = vec![Attr::new(ATTR_SPAN_TYPE, Val::Str(Cow::Borrowed("inject")))];
    push_response(&view, &Redactor::default(), &mut attrs);
    let meta = SpanMeta {
        service_name,
        direction: Direction::Outbound,
        session_id: None,
        ids,
        start_unix_nanos: 0,
        end_unix_nanos: 0,
        redactor: &Redactor::default(),
    };
    traces(&meta, "inject", attrs)
}

/// How a body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// JSON when the content type says so, else protobuf (the contract's default).
    pub fn from_content_type(content_type: Option<&[u8]>) -> Format {
        match content_type {
            Some(ct) if ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) => Format::Json,
            _ => Format::Protobuf,
        }
    }
}

/// Why a body could not be read as spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// Decodes an OTLP `TracesData` (or `ExportTraceServiceRequest`) in either format.
pub fn decode_traces(body: &[u8], format: Format) -> Result<TracesData, DecodeError> {
    match format {
        Format::Protobuf => <TracesData as prost::Message>::decode(body)
            .map_err(|e| DecodeError(format!("invalid OTLP protobuf: {e}"))),
        Format::Json => crate::otlp_json::decode(body),
    }
}

/// Header values as read from a span: lower-case name, one or more values.
pub type HeaderValues = Vec<(String, Vec<Vec<u8>>)>;

/// The HTTP exchange a span describes, with bodies decoded to their exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpSpan {
    pub span_type: Option<String>,
    pub session_id: Option<String>,
    /// `sp.service.name`, else the resource's `service.name`.
    pub service_name: Option<String>,
    pub direction: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub request_headers: HeaderValues,
    pub request_body: Vec<u8>,
    /// Present when the span carries any `http.response.*` attribute.
    pub response: Option<SpanResponse>,
}

/// The response attributes of a span, not yet sanitized.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpanResponse {
    /// `http.response.status_code`, when present.
    pub status: Option<i64>,
    pub headers: HeaderValues,
    pub body: Vec<u8>,
}

fn scalar_text(key: &str, v: &Value) -> Result<Vec<u8>, DecodeError> {
    match v {
        Value::StringValue(s) => Ok(s.as_bytes().to_vec()),
        Value::BytesValue(b) => Ok(b.clone()),
        Value::IntValue(i) => Ok(i.to_string().into_bytes()),
        Value::DoubleValue(d) => Ok(d.to_string().into_bytes()),
        Value::BoolValue(b) => Ok(b.to_string().into_bytes()),
        _ => err(format!("attribute `{key}` must be a string or bytes")),
    }
}

fn array_lines(key: &str, a: &otlp::ArrayValue) -> Result<Vec<Vec<u8>>, DecodeError> {
    a.values
        .iter()
        .map(|item| match &item.value {
            Some(v) => scalar_text(key, v),
            None => err(format!("attribute `{key}` has an empty array item")),
        })
        .collect()
}

/// Our exactness attributes of one span ([`crate::encoding`]).
#[derive(Default)]
struct Exact<'s> {
    /// Header attributes whose string is base64.
    base64: Vec<&'s str>,
    /// Header attributes with their exact lines.
    lines: Vec<(&'s str, &'s otlp::ArrayValue)>,
}

impl<'s> Exact<'s> {
    fn of(span: &'s Span) -> Exact<'s> {
        let mut exact = Exact::default();
        for kv in &span.attributes {
            if !kv.key.starts_with(encoding::OWN_PREFIX) {
                continue;
            }
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            if let Some(key) = kv.key.strip_prefix(encoding::ENCODING_PREFIX) {
                if matches!(value, Some(Value::StringValue(e)) if e.eq_ignore_ascii_case("base64"))
                {
                    exact.base64.push(key);
                }
            } else if let Some(key) = kv.key.strip_prefix(encoding::LINES_PREFIX) {
                if let Some(Value::ArrayValue(a)) = value {
                    exact.lines.push((key, a));
                }
            }
        }
        exact
    }

    /// The lines of header attribute `key` (lower-case header `name`).
    fn header_lines(&self, key: &str, name: &str, v: &Value) -> Result<Vec<Vec<u8>>, DecodeError> {
        if let Some((_, a)) = self.lines.iter().find(|(k, _)| *k == key) {
            return array_lines(key, a);
        }
        match v {
            Value::StringValue(s) if self.base64.contains(&key) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| {
                        DecodeError(format!("attribute `{key}` is not valid base64: {e}"))
                    })?;
                Ok(encoding::split(name, bytes))
            }
            Value::StringValue(s) => Ok(encoding::split(name, s.as_bytes().to_vec())),
            Value::ArrayValue(a) => array_lines(key, a),
            other => Ok(vec![scalar_text(key, other)?]),
        }
    }
}

fn first<'h>(headers: &'h HeaderValues, name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.first())
        .map(Vec::as_slice)
}

fn first_text(headers: &HeaderValues, name: &str) -> Option<String> {
    first(headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A body attribute read back by [`encoding::read_body`]: decoded when marked base64, or when
/// its message's content type is not textual and the text is strict base64.
fn body_of(span: &Span, key: &str, headers: &HeaderValues) -> Result<Vec<u8>, DecodeError> {
    let encoding_key = format!("{key}{ENCODING_SUFFIX}");
    let marked = match span.attr(&encoding_key) {
        None => false,
        Some(Value::StringValue(e)) if e.eq_ignore_ascii_case("base64") => true,
        Some(Value::StringValue(e)) if e.is_empty() || e.eq_ignore_ascii_case("utf-8") => false,
        Some(_) => return err(format!("attribute `{encoding_key}` must be \"base64\"")),
    };
    match span.attr(key) {
        None => Ok(Vec::new()),
        Some(Value::StringValue(s)) => {
            let textual = encoding::is_textual(
                first(headers, "content-type"),
                first(headers, "content-encoding"),
            );
            encoding::read_body(s, marked, textual)
                .map_err(|e| DecodeError(format!("attribute `{key}` is {e}")))
        }
        Some(Value::BytesValue(b)) => Ok(b.clone()),
        Some(_) => err(format!("attribute `{key}` must be a string or bytes")),
    }
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    match span.attr(key)? {
        Value::StringValue(s) => Some(s.clone()),
        Value::BytesValue(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Reads the HTTP exchange out of one span, as written by our filter or by the real agents:
/// method, path and host fall back to the `:method`, `:path` and `:authority` header attributes
/// (the agents send no `http.request.method`), the status to `:status`, and bodies and header
/// values are read by the rules of [`crate::encoding`].
pub fn read_span(resource: &ResourceSpans, span: &Span) -> Result<HttpSpan, DecodeError> {
    let exact = Exact::of(span);
    let mut out = HttpSpan {
        span_type: string_attr(span, ATTR_SPAN_TYPE),
        session_id: string_attr(span, ATTR_SESSION_ID).filter(|s| !s.is_empty()),
        service_name: string_attr(span, ATTR_SERVICE_NAME)
            .or_else(|| resource.resource_str("service.name").map(str::to_owned)),
        direction: string_attr(span, ATTR_DIRECTION),
        method: string_attr(span, ATTR_METHOD),
        host: string_attr(span, ATTR_HOST),
        path: string_attr(span, ATTR_PATH),
        ..HttpSpan::default()
    };
    let mut response: Option<SpanResponse> = None;
    for kv in &span.attributes {
        let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else {
            continue;
        };
        if let Some(name) = kv.key.strip_prefix(REQUEST_HEADER_PREFIX) {
            let name = name.to_ascii_lowercase();
            let lines = exact.header_lines(&kv.key, &name, value)?;
            out.request_headers.push((name, lines));
        } else if let Some(name) = kv.key.strip_prefix(RESPONSE_HEADER_PREFIX) {
            let name = name.to_ascii_lowercase();
            let lines = exact.header_lines(&kv.key, &name, value)?;
            response
                .get_or_insert_with(SpanResponse::default)
                .headers
                .push((name, lines));
        } else if kv.key == RESPONSE_STATUS {
            let status = match value {
                Value::IntValue(i) => *i,
                Value::StringValue(s) => s.trim().parse().map_err(|_| {
                    DecodeError(format!("`{RESPONSE_STATUS}` is not a number: {s:?}"))
                })?,
                _ => return err(format!("`{RESPONSE_STATUS}` must be an integer")),
            };
            response.get_or_insert_with(SpanResponse::default).status = Some(status);
        } else if kv.key.starts_with("http.response.") {
            response.get_or_insert_with(SpanResponse::default);
        }
    }
    let h = &out.request_headers;
    let method = out.method.take().or_else(|| first_text(h, ":method"));
    let path = out.path.take().or_else(|| first_text(h, ":path"));
    let host = (out.host.take())
        .or_else(|| first_text(h, ":authority"))
        .or_else(|| first_text(h, "host"));
    out.method = method.filter(|m| !m.is_empty());
    out.path = path.filter(|p| !p.is_empty());
    out.host = host.filter(|h| !h.is_empty());
    out.request_body = body_of(span, REQUEST_BODY, &out.request_headers)?;
    if let Some(r) = response.as_mut() {
        if r.status.is_none() {
            r.status = first_text(&r.headers, ":status").and_then(|s| s.trim().parse().ok());
        }
        r.body = body_of(span, RESPONSE_BODY, &r.headers)?;
    }
    out.response = response;
    Ok(out)
}

/// Why a 200 inject answer was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The body is not a `TracesData` in the announced format, or an attribute is malformed.
    Undecodable(String),
    /// No span carries an `http.response.*` attribute.
    NoResponse,
    /// The recorded response breaks a sanitizing rule (status range, header syntax).
    Rejected(String),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnswerError::Undecodable(m) => write!(f, "undecodable inject answer: {m}"),
            AnswerError::NoResponse => {
                f.write_str("inject answer has no http.response.* attribute")
            }
            AnswerError::Rejected(m) => write!(f, "inject answer rejected: {m}"),
        }
    }
}

impl std::error::Error for AnswerError {}

/// Decodes a 200 `/v1/inject` answer into the response to serve, sanitized as the contract says;
/// `redactor` names the headers whose hashed values ([`redacted`]) are never served.
pub fn decode_answer(
    body: &[u8],
    format: Format,
    redactor: &Redactor,
) -> Result<Response, AnswerError> {
    let traces = decode_traces(body, format).map_err(|e| AnswerError::Undecodable(e.0))?;
    for (rs, span) in traces.spans() {
        let has_response = span
            .attributes
            .iter()
            .any(|kv| kv.key.starts_with("http.response."));
        if !has_response {
            continue;
        }
        let read = read_span(rs, span).map_err(|e| AnswerError::Undecodable(e.0))?;
        let recorded = read.response.unwrap_or_default();
        return sanitize(recorded, redactor);
    }
    Err(AnswerError::NoResponse)
}

/// Applies the contract's rules for injected responses. A header of a sensitive name (in
/// `redactor` or the default list) whose value is a hash our redaction made is dropped: a hit
/// never serves `set-cookie: sha256:...` as if it were the secret.
pub fn sanitize(recorded: SpanResponse, redactor: &Redactor) -> Result<Response, AnswerError> {
    let status = recorded.status.unwrap_or(200);
    let status = match u16::try_from(status) {
        Ok(s) if (200..=599).contains(&s) => s,
        _ => {
            return Err(AnswerError::Rejected(format!(
                "status {status} is outside 200-599"
            )))
        }
    };
    let mut headers = Vec::new();
    for (name, values) in recorded.headers {
        if name.starts_with(':') || http::HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if !http::is_token(name.as_bytes()) {
            return Err(AnswerError::Rejected(format!(
                "header name {name:?} is not an RFC 9110 token"
            )));
        }
        let sensitive =
            redactor.is_redacted(&name) || crate::config::DEFAULT_REDACT.contains(&name.as_str());
        for value in values {
            if sensitive && encoding::is_redacted_value(&value) {
                continue;
            }
            if !http::is_safe_value(&value) {
                return Err(AnswerError::Rejected(format!(
                    "header `{name}` has a value with CR, LF or NUL"
                )));
            }
            headers.push((name.clone(), value));
        }
    }
    Ok(Response {
        status,
        headers,
        body: recorded.body,
    })
}
