//! # golden
//!
//! Golden cases: one spec per file (request, chunking, backend behaviour, upstream answer, expected
//! outcome) replayed against every implementation. The engine replays them through a simulated
//! host ([`replay`]); every real host replays the same files through Envoy and checks what it saw
//! with the same [`verify`].
//!
//! The format is documented in `golden/README.md`.

pub mod conformance;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value as Json;

use filter_core::codec::{self, Format, SpanIds};
use filter_core::engine::{
    Decision, Engine, Flow, LookupResult, Node, RecordResult, Services, Stream,
};
use filter_core::http::{Header, Response};
use filter_core::metrics::{AtomicCounters, Counter, LookupFailure};
use filter_core::otlp::{self, Value};
use filter_core::Config;

/// Bytes in a case file: a UTF-8 string, `{"base64": "..."}`, `{"repeat": "ab", "times": 3}`, or
/// `{"json": <any JSON>}` (that document, serialized compactly: hand-written OTLP JSON answers).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Text(String),
    Base64 { base64: String },
    Repeat { repeat: String, times: usize },
    Json { json: Json },
}

impl Bytes {
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Bytes::Text(s) => s.as_bytes().to_vec(),
            Bytes::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .unwrap_or_else(|_| b"<invalid base64 in golden case>".to_vec()),
            Bytes::Repeat { repeat, times } => repeat.as_bytes().repeat(*times),
            Bytes::Json { json } => json.to_string().into_bytes(),
        }
    }
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Text(String::new())
    }
}

/// One golden case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The file name without `.json`; filled in by [`load_dir`].
    #[serde(default)]
    pub name: String,
    pub description: String,
    /// Config keys merged (deeply) over the host's base config.
    #[serde(default)]
    pub config: Json,
    pub request: Request,
    pub backend: Backend,
    /// How the backend answers the record (`/v1/traces`); default 200.
    #[serde(default)]
    pub record: RecordAnswer,
    #[serde(default)]
    pub upstream: Upstream,
    pub expect: Expect,
}

/// How the backend answers a record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordAnswer {
    /// 200.
    #[default]
    Ok,
    /// This status with an empty body.
    Status { status: u16 },
    /// No answer before the record timeout.
    Timeout,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    /// The request target's bytes (a non-UTF-8 one as `{"base64": ...}`, sent over HTTP/2:
    /// Envoy refuses it over HTTP/1.1).
    pub path: Bytes,
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Headers besides the pseudo-headers, in order (repeats allowed).
    #[serde(default)]
    pub headers: Vec<(String, Bytes)>,
    /// The body, as the chunks the client sends (none: no body).
    #[serde(default)]
    pub body: Vec<Bytes>,
    /// The client hangs up once the backend has the lookup, before any answer: nothing is
    /// checked on the client's side, the rest must hold (and the filter must not crash).
    #[serde(default)]
    pub reset_during_lookup: bool,
    /// Sent over HTTP/2 (prior knowledge) instead of HTTP/1.1.
    #[serde(default)]
    pub http2: bool,
    /// Trailers after the body (the body is then sent chunked).
    #[serde(default)]
    pub trailers: Vec<(String, Bytes)>,
    /// The client stalls this long before each body chunk after the first (a slow upload); the
    /// body needs two chunks or more.
    #[serde(default)]
    pub pause_ms: u64,
}

fn default_authority() -> String {
    "api.example.com".into()
}

impl Request {
    pub fn body_bytes(&self) -> Vec<u8> {
        self.body.iter().flat_map(Bytes::to_vec).collect()
    }

    /// The headers as a host hands them to the engine: pseudo-headers first (a CONNECT has
    /// neither `:path` nor `:scheme`).
    pub fn engine_headers(&self) -> Vec<Header> {
        let mut h: Vec<Header> = vec![(b":method".to_vec(), self.method.as_bytes().to_vec())];
        let connect = self.method.eq_ignore_ascii_case("CONNECT");
        if !connect {
            h.push((b":path".to_vec(), self.path.to_vec()));
        }
        h.push((b":authority".to_vec(), self.authority.as_bytes().to_vec()));
        if !connect {
            h.push((b":scheme".to_vec(), b"http".to_vec()));
        }
        h.extend(
            self.headers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())),
        );
        h
    }
}

/// How the backend answers the lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// 404.
    Miss,
    /// 200 with an answer built from this response (`format`: protobuf or json).
    Hit {
        response: Recorded,
        #[serde(default)]
        json: bool,
    },
    /// This exact answer (hand-made answers; status 200 unless given).
    Answer {
        #[serde(default = "ok")]
        status: u16,
        content_type: String,
        body: Bytes,
    },
    /// This status with an empty body.
    Status { status: u16 },
    /// 200 with a body that is not OTLP.
    Undecodable,
    /// No answer before the lookup timeout.
    Timeout,
    /// A hit that arrives after the lookup timed out (a real backend: 200 ms after it).
    Late { response: Recorded },
    /// The backend's port refuses connections.
    Refused,
}

fn ok() -> u16 {
    200
}

/// A recorded response, as a backend returns it on a hit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, Bytes)>,
    #[serde(default)]
    pub body: Bytes,
}

impl Recorded {
    pub fn to_response(&self) -> Response {
        Response {
            status: self.status,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.to_vec()))
                .collect(),
            body: self.body.to_vec(),
        }
    }
}

/// What the upstream answers (default: 200, `content-type: application/json`, `{"ok":true}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, Bytes)>,
    #[serde(default)]
    pub body: Bytes,
    /// Trailers after the body (the body is then sent chunked).
    #[serde(default)]
    pub trailers: Vec<(String, Bytes)>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            status: 200,
            headers: vec![(
                "content-type".into(),
                Bytes::Text("application/json".into()),
            )],
            body: Bytes::Text("{\"ok\":true}".into()),
            trailers: Vec::new(),
        }
    }
}

/// What each party must have seen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub client: ClientExpect,
    /// Whether the upstream received (and answered) the complete request, byte for byte.
    pub upstream_called: bool,
    /// Request headers the upstream must receive with exactly these values, in place of the
    /// client's headers of the same names (the filter's own edits, e.g. `tracestate`).
    #[serde(default)]
    pub upstream_headers: Vec<(String, Bytes)>,
    /// Request headers the upstream must receive with any value (e.g. a created `traceparent`).
    #[serde(default)]
    pub upstream_present: Vec<String>,
    /// The inject span the backend received; `null`: no lookup.
    pub inject: Option<SpanExpect>,
    /// The extract span the backend received; `null`: no record.
    pub extract: Option<SpanExpect>,
    /// Engine counters after the case (checked where the host exposes them).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Headers every call to the backend (lookup and record) must carry with these values.
    #[serde(default)]
    pub backend_headers: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientExpect {
    pub status: u16,
    /// The exact body; omitted: the upstream's body when `upstream_called`.
    #[serde(default)]
    pub body: Option<Bytes>,
    /// Headers that must be present with these values (in this order among themselves).
    #[serde(default)]
    pub headers: Vec<(String, Bytes)>,
    /// Headers that must be absent.
    #[serde(default)]
    pub absent_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanExpect {
    /// Attributes that must be present with these values.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrExpect>,
    /// Attributes that must be absent.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Resource `service.name`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Hex trace id / parent span id, when the case sets `traceparent`.
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub parent_span_id: Option<String>,
    /// `Span.kind` (3 = CLIENT, 2 = SERVER).
    #[serde(default)]
    pub kind: Option<i32>,
}

/// An expected attribute value.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AttrExpect {
    Str(String),
    Int(i64),
    Array(Vec<String>),
    /// `string_value` holding `sha256:<hex>` of this text.
    Sha256Of {
        sha256_of: String,
    },
    /// `string_value` holding the base64 of these bytes.
    Base64Of {
        base64_of: Bytes,
    },
    /// `bytes_value` with these bytes.
    BytesOf {
        bytes_of: Bytes,
    },
    /// `string_value` with these bytes (for long bodies).
    TextOf {
        text_of: Bytes,
    },
    /// An array whose items are `bytes_value` or `string_value` with these bytes.
    ArrayOf {
        array_of: Vec<Bytes>,
    },
}

/// What the parties of one replay saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub client_status: u16,
    pub client_headers: Vec<Header>,
    pub client_body: Vec<u8>,
    /// Trailers of the client's response.
    pub client_trailers: Vec<Header>,
    /// The request the upstream received complete (none: it answered nothing).
    pub upstream: Option<UpstreamSaw>,
    /// Bodies (and content types) of the `/v1/inject` calls the backend received.
    pub inject: Vec<(Option<String>, Vec<u8>)>,
    /// Bodies of the `/v1/traces` calls the backend received.
    pub extract: Vec<(Option<String>, Vec<u8>)>,
    /// Engine counters by name, where the host exposes them.
    pub counters: Option<BTreeMap<String, u64>>,
    /// Request headers of every call the backend received (lookups and records).
    pub backend_headers: Vec<Vec<Header>>,
}

#[derive(Debug, Clone, Default)]
pub struct UpstreamSaw {
    pub method: String,
    pub path: Vec<u8>,
    /// Headers as received (hosts add their own, e.g. `x-forwarded-proto`).
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// Trailers received after the body.
    pub trailers: Vec<Header>,
}

/// Loads every `*.json` case of a directory, sorted by name.
pub fn load_dir(dir: &std::path::Path) -> Result<Vec<Case>, String> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut case: Case =
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            case.name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(case)
        })
        .collect()
}

/// Deep-merges `overlay` into `base` (objects merge, anything else replaces).
pub fn merge(base: &mut Json, overlay: &Json) {
    match (base, overlay) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Json::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The case's config over `base`.
pub fn case_config(case: &Case, base: &Json) -> Json {
    let mut c = base.clone();
    if !case.config.is_null() {
        merge(&mut c, &case.config);
    }
    c
}

/// The `/v1/inject` answer a backend gives for this behaviour: status, content type, body.
/// `None` for behaviours that are not an HTTP answer (timeout, refused).
pub fn backend_answer(b: &Backend) -> Option<(u16, String, Vec<u8>)> {
    match b {
        Backend::Miss => Some((404, String::new(), Vec::new())),
        Backend::Hit { response, json } => {
            let ids = SpanIds {
                trace_id: [1; 16],
                span_id: [2; 8],
                ..SpanIds::default()
            };
            let proto = codec::encode_answer("golden-backend", &ids, &response.to_response());
            if *json {
                let traces = codec::decode_traces(&proto, Format::Protobuf).unwrap_or_default();
                Some((
                    200,
                    "application/json".into(),
                    filter_core::otlp_json::encode(&traces),
                ))
            } else {
                Some((200, "application/x-protobuf".into(), proto))
            }
        }
        Backend::Answer {
            status,
            content_type,
            body,
        } => Some((*status, content_type.clone(), body.to_vec())),
        Backend::Status { status } => Some((*status, String::new(), Vec::new())),
        Backend::Undecodable => Some((
            200,
            "application/x-protobuf".into(),
            b"\xff\xfe this is not a protobuf message \x00\x01".to_vec(),
        )),
        Backend::Late { response } => backend_answer(&Backend::Hit {
            response: response.clone(),
            json: false,
        }),
        Backend::Timeout | Backend::Refused => None,
    }
}

/// Replays a case through the engine with a simulated host that behaves like Envoy: held data is
/// released on `Resume`/`PassThrough`, a `Serve` answers the client and resets the upstream.
pub fn replay(case: &Case, base_config: &Json) -> Result<Observed, String> {
    let config = Config::from_value(&case_config(case, base_config)).map_err(|e| e.to_string())?;
    let counters = Arc::new(AtomicCounters::default());
    let clock = Arc::new(AtomicU64::new(1_700_000_000_000_000_000));
    let now = clock.clone();
    let engine = Arc::new(Engine::new(
        config,
        &Node {
            workload_name: Some("golden-app".into()),
            namespace: Some("default".into()),
            name: Some("golden-app-0".into()),
        },
        Services {
            metrics: counters.clone(),
            clock: Box::new(move || now.load(Ordering::Relaxed)),
            seed: 7,
        },
    ));
    let mut sim = Sim {
        stream: Stream::new(engine),
        clock,
        case,
        obs: Observed::default(),
        served: false,
        edits: Vec::new(),
        headers_upstream: false,
        body_upstream: Vec::new(),
        complete_upstream: false,
    };
    sim.run()?;
    sim.obs.counters = Some(
        counters
            .snapshot()
            .into_iter()
            .map(|(c, n)| (c.name().to_string(), n))
            .collect(),
    );
    Ok(sim.obs)
}

struct Sim<'a> {
    stream: Stream,
    /// The engine's clock (ns): moved on by the client's pauses.
    clock: Arc<AtomicU64>,
    case: &'a Case,
    obs: Observed,
    served: bool,
    /// Request header edits the engine asked for (set, replacing the same names).
    edits: Vec<Header>,
    headers_upstream: bool,
    body_upstream: Vec<u8>,
    complete_upstream: bool,
}

impl Sim<'_> {
    fn run(&mut self) -> Result<(), String> {
        let req = &self.case.request;
        let mut chunks: Vec<Vec<u8>> = req.body.iter().map(Bytes::to_vec).collect();
        let mut headers = req.engine_headers();
        if chunks.len() == 1 && req.trailers.is_empty() {
            let len = chunks.first().map_or(0, Vec::len);
            headers.push((b"content-length".to_vec(), len.to_string().into_bytes()));
            if len == 0 {
                // `content-length: 0`: Envoy ends the stream with the headers.
                chunks.clear();
            }
        }
        // Held data, released on Resume / PassThrough.
        let mut held_headers = false;
        let mut held_body: Vec<u8> = Vec::new();
        let d = self.stream.on_request_headers(headers, chunks.is_empty());
        self.edits = d.effects.set_request_headers.clone();
        let mut pending = Some(d);
        let mut next_chunk = 0usize;
        let mut trailers_sent = false;
        // The chunk the client last paused before.
        let mut paused_before = 0usize;
        while let Some(d) = pending.take() {
            if d.effects.record_queued {
                return Err("record decided on the request path".into());
            }
            // The hold deadline the engine asked for (ms).
            let deadline = d.effects.hold_deadline_ms;
            match d.flow {
                Flow::Continue | Flow::Release => {
                    self.headers_upstream = true;
                    held_headers = false;
                    self.body_upstream.append(&mut held_body);
                }
                Flow::Hold => {
                    if !self.headers_upstream {
                        held_headers = true;
                    }
                }
                Flow::Stop => {
                    let reply = d.effects.reply.ok_or("Stop without a reply")?;
                    self.serve(reply.response);
                    return Ok(());
                }
            }
            if let Some(callout) = &d.effects.lookup {
                if self.case.request.reset_during_lookup {
                    // The client is gone: Envoy resets the stream, the lookup is cancelled.
                    self.saw_lookup(callout);
                    let d = self.stream.on_reset();
                    if d.effects.lookup.is_some() || d.effects.reply.is_some() {
                        return Err("the engine acted on a reset stream".into());
                    }
                    return Ok(());
                }
                pending = Some(self.lookup(callout)?);
                continue;
            }
            // Feed the next chunk; what it returns decides whether it is held.
            let Some(chunk) = chunks.get(next_chunk) else {
                if !req.trailers.is_empty() && !trailers_sent {
                    // The trailers end the request; held data goes with them unless still held.
                    trailers_sent = true;
                    let d = self.stream.on_request_trailers();
                    if !matches!(d.flow, Flow::Hold | Flow::Stop) {
                        self.headers_upstream = true;
                        held_headers = false;
                        self.body_upstream.append(&mut held_body);
                    }
                    pending = Some(d);
                    continue;
                }
                break;
            };
            if req.pause_ms > 0 && next_chunk > 0 && paused_before != next_chunk {
                // The client stalls; like Envoy, the host's timer fires at the deadline.
                paused_before = next_chunk;
                let now = self
                    .clock
                    .fetch_add(req.pause_ms.saturating_mul(1_000_000), Ordering::Relaxed)
                    / 1_000_000
                    + req.pause_ms;
                if deadline.is_some_and(|t| t <= now) {
                    pending = Some(self.stream.on_timer());
                    continue;
                }
            }
            next_chunk += 1;
            let eos = next_chunk == chunks.len() && req.trailers.is_empty();
            let d = self.stream.on_request_body(chunk, eos);
            if d.flow == Flow::Hold {
                held_body.extend_from_slice(chunk);
            } else if d.flow != Flow::Stop {
                self.body_upstream.append(&mut held_body);
                self.body_upstream.extend_from_slice(chunk);
            }
            pending = Some(d);
        }
        if held_headers || !held_body.is_empty() {
            return Err("the request was left held: it would hang".into());
        }
        self.complete_upstream = true;
        self.upstream()
    }

    /// The backend received this lookup.
    fn saw_lookup(&mut self, callout: &filter_core::engine::Callout) {
        self.obs
            .inject
            .push((Some("application/x-protobuf".into()), callout.body.clone()));
        self.obs.backend_headers.push(callout_headers(callout));
    }

    fn lookup(&mut self, callout: &filter_core::engine::Callout) -> Result<Decision, String> {
        self.saw_lookup(callout);
        let answer = backend_answer(&self.case.backend);
        let result = match (&self.case.backend, &answer) {
            // The host's timeout fires first; the late answer is never delivered.
            (Backend::Timeout | Backend::Late { .. }, _) => {
                LookupResult::Failed(LookupFailure::Timeout)
            }
            (Backend::Refused, _) => LookupResult::Failed(LookupFailure::Transport),
            (_, Some((status, ct, body))) => LookupResult::Answer {
                status: *status,
                content_type: (!ct.is_empty()).then_some(ct.as_bytes()),
                body,
            },
            (_, None) => return Err("no answer for backend behaviour".into()),
        };
        Ok(self.stream.on_lookup_result(result))
    }

    fn serve(&mut self, mut resp: Response) {
        // Like Envoy: a local reply to HEAD goes out as headers only.
        if self.case.request.method.eq_ignore_ascii_case("HEAD") {
            resp.body = Vec::new();
        }
        self.served = true;
        self.obs.client_status = resp.status;
        self.obs.client_headers = resp
            .headers
            .into_iter()
            .map(|(n, v)| (n.into_bytes(), v))
            .collect();
        self.obs.client_body = resp.body;
    }

    fn upstream(&mut self) -> Result<(), String> {
        let req = &self.case.request;
        let mut sent: Vec<Header> = req
            .engine_headers()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(b":"))
            .collect();
        if let ([one], true) = (req.body.as_slice(), req.trailers.is_empty()) {
            // Like Envoy: the client's framing goes on.
            sent.push((
                b"content-length".to_vec(),
                one.to_vec().len().to_string().into_bytes(),
            ));
        }
        for (name, value) in &self.edits {
            sent.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            sent.push((name.clone(), value.clone()));
        }
        self.obs.upstream = Some(UpstreamSaw {
            method: req.method.clone(),
            path: req.path.to_vec(),
            headers: sent,
            body: std::mem::take(&mut self.body_upstream),
            trailers: req
                .trailers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        });
        let up = &self.case.upstream;
        let mut headers: Vec<Header> = up
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        let body = if req.method.eq_ignore_ascii_case("HEAD") {
            Vec::new()
        } else {
            up.body.to_vec()
        };
        // Like a real server: no length on responses that cannot have a body (1xx, 204).
        let bodiless = up.status < 200 || up.status == 204;
        if !bodiless
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
        {
            headers.push((
                b"content-length".to_vec(),
                up.body.to_vec().len().to_string().into_bytes(),
            ));
        }
        let mut all = vec![(b":status".to_vec(), up.status.to_string().into_bytes())];
        all.extend(headers.iter().cloned());
        let trailers = !up.trailers.is_empty();
        let eos = body.is_empty() && !trailers;
        let mut decisions: Vec<Decision> =
            vec![self.stream.on_response_headers(up.status, all, eos)];
        if !body.is_empty() {
            // Two chunks, to exercise copying across chunks.
            let mid = body.len() / 2;
            let (a, b) = body.split_at(mid);
            decisions.push(self.stream.on_response_body(a, false));
            decisions.push(self.stream.on_response_body(b, !trailers));
        }
        if trailers {
            decisions.push(self.stream.on_response_trailers());
        }
        for d in decisions {
            if d.flow != Flow::Continue {
                return Err(format!("a response event answered {:?}", d.flow));
            }
            if d.effects.record_queued {
                let out = self
                    .stream
                    .engine()
                    .records()
                    .next()
                    .ok_or("no queued record")?;
                self.obs.backend_headers.push(callout_headers(&out.callout));
                self.obs
                    .extract
                    .push((Some("application/x-protobuf".into()), out.callout.body));
                let result = match (&self.case.backend, &self.case.record) {
                    (Backend::Refused, _) | (_, RecordAnswer::Timeout) => RecordResult::Failed,
                    (_, RecordAnswer::Ok) => RecordResult::Status(200),
                    (_, RecordAnswer::Status { status }) => RecordResult::Status(*status),
                };
                self.stream.engine().records().finish(out.ticket, result);
            }
        }
        self.obs.client_status = up.status;
        self.obs.client_headers = headers;
        self.obs.client_body = body;
        self.obs.client_trailers = up
            .trailers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        Ok(())
    }
}

/// A callout's headers as the backend receives them (pseudo-headers left out).
fn callout_headers(callout: &filter_core::engine::Callout) -> Vec<Header> {
    callout
        .headers
        .iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn describe(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(Value::StringValue(s)) if s.len() > 120 => format!("a string of {} bytes", s.len()),
        Some(v) => format!("{v:?}"),
    }
}

fn attr_matches(expect: &AttrExpect, got: Option<&Value>) -> bool {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let item_bytes = |v: &otlp::AnyValue| match &v.value {
        Some(Value::StringValue(s)) => Some(s.as_bytes().to_vec()),
        Some(Value::BytesValue(b)) => Some(b.clone()),
        _ => None,
    };
    match (expect, got) {
        (AttrExpect::Str(e), Some(Value::StringValue(g))) => e == g,
        (AttrExpect::Int(e), Some(Value::IntValue(g))) => e == g,
        (AttrExpect::Array(e), Some(Value::ArrayValue(g))) => {
            e.len() == g.values.len()
                && e.iter()
                    .zip(&g.values)
                    .all(|(e, g)| matches!(&g.value, Some(Value::StringValue(s)) if s == e))
        }
        (AttrExpect::Sha256Of { sha256_of }, Some(Value::StringValue(g))) => {
            *g == codec::redacted(sha256_of.as_bytes())
        }
        (AttrExpect::Base64Of { base64_of }, Some(Value::StringValue(g))) => {
            *g == b64(&base64_of.to_vec())
        }
        (AttrExpect::BytesOf { bytes_of }, Some(Value::BytesValue(g))) => *g == bytes_of.to_vec(),
        (AttrExpect::TextOf { text_of }, Some(Value::StringValue(g))) => {
            g.as_bytes() == text_of.to_vec()
        }
        (AttrExpect::ArrayOf { array_of }, Some(Value::ArrayValue(g))) => {
            array_of.len() == g.values.len()
                && array_of
                    .iter()
                    .zip(&g.values)
                    .all(|(e, g)| item_bytes(g) == Some(e.to_vec()))
        }
        _ => false,
    }
}

fn verify_span(
    what: &str,
    expect: &SpanExpect,
    body: &(Option<String>, Vec<u8>),
    errors: &mut Vec<String>,
) {
    let format = Format::from_content_type(body.0.as_deref().map(str::as_bytes));
    let traces = match codec::decode_traces(&body.1, format) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!(
                "{what}: the backend received an undecodable body: {e}"
            ));
            return;
        }
    };
    let spans: Vec<_> = traces.spans().collect();
    let [(resource, span)] = spans.as_slice() else {
        errors.push(format!(
            "{what}: expected exactly one span, got {}",
            spans.len()
        ));
        return;
    };
    for (key, e) in &expect.attributes {
        let got = span.attr(key);
        if !attr_matches(e, got) {
            errors.push(format!(
                "{what}: attribute `{key}`: expected {e:?}, got {}",
                describe(got)
            ));
        }
    }
    for key in &expect.absent {
        if span.attr(key).is_some() {
            errors.push(format!(
                "{what}: attribute `{key}` must be absent, got {}",
                describe(span.attr(key))
            ));
        }
    }
    if let Some(name) = &expect.service_name {
        if resource.resource_str("service.name") != Some(name.as_str()) {
            errors.push(format!("{what}: resource service.name: expected {name:?}"));
        }
    }
    if let Some(t) = &expect.trace_id {
        if hex(&span.trace_id) != *t {
            errors.push(format!(
                "{what}: trace id: expected {t}, got {}",
                hex(&span.trace_id)
            ));
        }
    }
    if let Some(p) = &expect.parent_span_id {
        if hex(&span.parent_span_id) != *p {
            errors.push(format!(
                "{what}: parent span id: expected {p}, got {}",
                hex(&span.parent_span_id)
            ));
        }
    }
    if let Some(k) = expect.kind {
        if span.kind != k {
            errors.push(format!(
                "{what}: span kind: expected {k}, got {}",
                span.kind
            ));
        }
    }
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|&b| b == 0) {
        errors.push(format!("{what}: trace id must be 16 non-zero bytes"));
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|&b| b == 0) {
        errors.push(format!("{what}: span id must be 8 non-zero bytes"));
    }
}

fn find<'h>(headers: &'h [Header], name: &str) -> impl Iterator<Item = &'h [u8]> + 'h {
    let name = name.to_ascii_lowercase().into_bytes();
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(&name))
        .map(|(_, v)| v.as_slice())
}

fn show(b: &[u8]) -> String {
    if b.len() > 200 {
        format!("{} bytes", b.len())
    } else {
        format!("{:?}", String::from_utf8_lossy(b))
    }
}

/// Checks what the parties saw against the case. Returns every mismatch, empty when all is well.
pub fn verify(case: &Case, obs: &Observed) -> Vec<String> {
    let mut errors = Vec::new();
    if !case.request.reset_during_lookup {
        verify_client(case, obs, &mut errors);
    }
    verify_rest(case, obs, &mut errors);
    errors
}

fn verify_client(case: &Case, obs: &Observed, errors: &mut Vec<String>) {
    let e = &case.expect;
    let req = &case.request;
    if obs.client_status != e.client.status {
        errors.push(format!(
            "client: status {} (expected {})",
            obs.client_status, e.client.status
        ));
    }
    let expected_body = match (&e.client.body, e.upstream_called) {
        (Some(b), _) => Some(b.to_vec()),
        (None, true) if req.method.eq_ignore_ascii_case("HEAD") => Some(Vec::new()),
        (None, true) => Some(case.upstream.body.to_vec()),
        (None, false) => None,
    };
    if let Some(body) = expected_body {
        if obs.client_body != body {
            errors.push(format!(
                "client: body {} (expected {})",
                show(&obs.client_body),
                show(&body)
            ));
        }
    }
    let mut wanted: Vec<(String, Vec<u8>)> = e
        .client
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.to_vec()))
        .collect();
    if e.upstream_called && e.client.body.is_none() {
        wanted.extend(
            case.upstream
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.to_vec())),
        );
    }
    for (name, value) in &wanted {
        if !find(&obs.client_headers, name).any(|v| v == value.as_slice()) {
            let got: Vec<String> = find(&obs.client_headers, name).map(show).collect();
            errors.push(format!(
                "client: header `{name}`: expected {}, got {got:?}",
                show(value)
            ));
        }
    }
    for name in &e.client.absent_headers {
        if find(&obs.client_headers, name).next().is_some() {
            errors.push(format!("client: header `{name}` must be absent"));
        }
    }
    if e.upstream_called && e.client.body.is_none() {
        for (name, value) in &case.upstream.trailers {
            let value = value.to_vec();
            if !find(&obs.client_trailers, name).any(|v| v == value.as_slice()) {
                errors.push(format!(
                    "client: trailer `{name}`: expected {}, got {:?}",
                    show(&value),
                    find(&obs.client_trailers, name)
                        .map(show)
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
}

fn verify_rest(case: &Case, obs: &Observed, errors: &mut Vec<String>) {
    let e = &case.expect;
    let req = &case.request;
    match (&obs.upstream, e.upstream_called) {
        (None, true) => errors.push("upstream: expected the request, got none".into()),
        (Some(_), false) => errors.push("upstream: expected no request, got one".into()),
        (Some(up), true) => {
            let path = req.path.to_vec();
            if !up.method.eq_ignore_ascii_case(&req.method) || up.path != path {
                errors.push(format!(
                    "upstream: got {} {} (expected {} {})",
                    up.method,
                    show(&up.path),
                    req.method,
                    show(&path)
                ));
            }
            let body = req.body_bytes();
            if up.body != body {
                errors.push(format!(
                    "upstream: body {} (expected {} byte for byte)",
                    show(&up.body),
                    show(&body)
                ));
            }
            // Framing: a body the client sent with `content-length` reaches the upstream with
            // that `content-length`, not re-framed as chunked (over HTTP/1.1; an HTTP/2 client
            // sends no length of its own here).
            if let ([one], false, true) = (req.body.as_slice(), req.http2, req.trailers.is_empty())
            {
                let want = one.to_vec().len().to_string().into_bytes();
                let got: Vec<&[u8]> = find(&up.headers, "content-length").collect();
                if got != [want.as_slice()]
                    || find(&up.headers, "transfer-encoding").next().is_some()
                {
                    let te: Vec<String> =
                        find(&up.headers, "transfer-encoding").map(show).collect();
                    errors.push(format!(
                        "upstream: framing: expected content-length {}, got {:?} (transfer-encoding {te:?})",
                        show(&want),
                        got.into_iter().map(show).collect::<Vec<_>>()
                    ));
                }
            }
            for (name, value) in &req.trailers {
                let value = value.to_vec();
                if !find(&up.trailers, name).any(|v| v == value.as_slice()) {
                    errors.push(format!(
                        "upstream: trailer `{name}`: expected {}, got {:?}",
                        show(&value),
                        find(&up.trailers, name).map(show).collect::<Vec<_>>()
                    ));
                }
            }
            for (name, value) in &e.upstream_headers {
                let value = value.to_vec();
                let got: Vec<&[u8]> = find(&up.headers, name).collect();
                if got != [value.as_slice()] {
                    let got: Vec<String> = got.into_iter().map(show).collect();
                    errors.push(format!(
                        "upstream: header `{name}`: expected {}, got {got:?}",
                        show(&value)
                    ));
                }
            }
            for name in &e.upstream_present {
                if find(&up.headers, name).next().is_none() {
                    errors.push(format!("upstream: header `{name}` missing"));
                }
            }
            // Every client header arrives with its value, repeated headers in their order
            // (but those the filter itself sets, checked above).
            let mut rest = up.headers.as_slice();
            let replaced = |n: &str| {
                e.upstream_headers
                    .iter()
                    .any(|(r, _)| r.eq_ignore_ascii_case(n))
            };
            for (name, value) in req.headers.iter().filter(|(n, _)| !replaced(n)) {
                let value = value.to_vec();
                match rest
                    .iter()
                    .position(|(n, v)| n.eq_ignore_ascii_case(name.as_bytes()) && *v == value)
                {
                    Some(i) => rest = rest.get(i + 1..).unwrap_or_default(),
                    None => errors.push(format!(
                        "upstream: header `{name}: {}` missing or out of order",
                        show(&value)
                    )),
                }
            }
        }
        (None, false) => {}
    }
    for (what, expect, got) in [
        ("inject", &e.inject, &obs.inject),
        ("extract", &e.extract, &obs.extract),
    ] {
        match (expect, got.as_slice()) {
            (None, []) => {}
            (None, got) => errors.push(format!(
                "{what}: expected no call to the backend, got {}",
                got.len()
            )),
            (Some(x), [one]) => verify_span(what, x, one, errors),
            (Some(_), got) => errors.push(format!(
                "{what}: expected one call to the backend, got {}",
                got.len()
            )),
        }
    }
    if let Some(counters) = &obs.counters {
        for (name, want) in &e.counters {
            if !Counter::ALL.iter().any(|c| c.name() == name) {
                errors.push(format!("counters: unknown counter `{name}`"));
            }
            let got = counters.get(name).copied().unwrap_or(0);
            if got != *want {
                errors.push(format!("counters: `{name}` = {got} (expected {want})"));
            }
        }
    }
    if !e.backend_headers.is_empty() && obs.backend_headers.is_empty() {
        errors.push("backend: expected calls carrying headers, got none".into());
    }
    for (i, call) in obs.backend_headers.iter().enumerate() {
        for (name, value) in &e.backend_headers {
            let value = value.to_vec();
            if !find(call, name).any(|v| v == value.as_slice()) {
                let got: Vec<String> = find(call, name).map(show).collect();
                errors.push(format!(
                    "backend call {i}: header `{name}`: expected {}, got {got:?}",
                    show(&value)
                ));
            }
        }
    }
}
