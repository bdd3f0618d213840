//! The filter's configuration: one JSON document (Istio's `pluginConfig`), parsed and validated once
//! at load. Every error names the key at fault and what it expects. `docs/config.md` is the reference.

use std::fmt;

use serde_json::{Map, Value};

use crate::breaker::BreakerConfig;
use crate::codec::{Direction, Redactor};
use crate::records::RecordLimits;
use crate::rules::{Pattern, Rules};

/// What the filter does with eligible requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Look every request up; record misses.
    RecordAndInject,
    /// Never look up; record every eligible exchange.
    RecordOnly,
    /// Look up; never record.
    InjectOnly,
    /// Never look up, never record: only carry the session into `tracestate`
    /// (`propagate_session`), e.g. on the inbound side of a workload.
    PropagateOnly,
    /// Pass everything through untouched.
    Off,
}

impl Mode {
    pub fn looks_up(self) -> bool {
        matches!(self, Mode::RecordAndInject | Mode::InjectOnly)
    }

    pub fn records(self) -> bool {
        matches!(self, Mode::RecordAndInject | Mode::RecordOnly)
    }
}

/// How request headers are handled while the body is buffered for the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMode {
    /// Headers go upstream at once; the body is held until the lookup answers, and a hit resets the
    /// upstream stream. Works on every Envoy (Istio 1.18's Envoy 1.26 included).
    StreamHeaders,
    /// Headers and body are both held until the lookup answers, so the upstream sees nothing on a hit.
    /// Needs Envoy 1.35+ with `allow_on_headers_stop_iteration: true` for wasm.
    HoldHeaders,
}

/// What happens to a deliberate error answer of the backend: a `/v1/inject` answered with an
/// error status and a JSON `{"error": ...}` body for a request with a session (a Softprobe
/// `error` rule, or its strict policy blocking an unmocked call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnErrorAnswer {
    /// Fail open: the request goes upstream unchanged (counted as `lookup_errors_answer`).
    PassThrough,
    /// Hand the answer (its status and body) to the caller, as Softprobe's strict mode expects.
    Serve,
}

/// Where the session id of a request is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSource {
    /// A request header (lower-case name).
    Header(String),
    /// An entry of the W3C `tracestate` header (lower-case key).
    Tracestate(String),
}

impl std::fmt::Display for SessionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionSource::Header(h) => write!(f, "header:{h}"),
            SessionSource::Tracestate(k) => write!(f, "tracestate:{k}"),
        }
    }
}

impl SessionSource {
    /// The request header this source reads, and an RE2 pattern its (comma-joined) value fully
    /// matches when it may carry a session: for Envoy to skip the filter for requests that
    /// carry none (`ExtensionWithMatcher`, docs/config.md). It may match where the engine then
    /// finds no session (an empty value), never the other way round.
    pub fn probe(&self) -> (&str, String) {
        match self {
            SessionSource::Header(h) => (h, "[\\s\\S]*".into()),
            // A list member `<key>=...`, first or after a comma, with optional blanks before it.
            // Keys are lower-case letters, digits and `_-*/@`: only `*` needs escaping.
            SessionSource::Tracestate(k) => (
                "tracestate",
                format!("(?:[\\s\\S]*,)?[ \\t]*{}=[\\s\\S]*", k.replace('*', "\\*")),
            ),
        }
    }
}

/// What happens when the lookup fails (timeout, bad status, undecodable answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Fail open: the request goes upstream unchanged.
    PassThrough,
    /// Strict: answer 502.
    Fail,
}

/// Where the backend is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Envoy cluster the callouts go to.
    pub(crate) cluster: String,
    /// `:authority` of the callouts; requests to this host are never looked up.
    pub(crate) authority: String,
    pub(crate) inject_path: String,
    pub(crate) traces_path: String,
    /// Header that carries `api_key`: `authorization` carries `Bearer <api_key>`, any other
    /// header the key as it is.
    pub(crate) auth_header: String,
    pub(crate) api_key: Option<String>,
    pub(crate) lookup_timeout_ms: u64,
    pub(crate) record_timeout_ms: u64,
}

/// The validated configuration: read-only once [`Config::from_json`] has checked it (every
/// field has a getter of its name; nothing outside the engine can change a validated value).
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) mode: Mode,
    pub(crate) backend: Backend,
    pub(crate) service_name: Option<String>,
    pub(crate) traffic_direction: Direction,
    /// Where the session id is read from, first match wins.
    pub(crate) session_sources: Vec<SessionSource>,
    /// Lookups and records only for requests with a session (what the Softprobe runtime expects);
    /// requests without one pass through with no backend call.
    pub(crate) require_session: bool,
    /// Write the session into the forwarded request's `tracestate` (and create a `traceparent`
    /// when there is none), so the app's trace propagation carries it to its outbound calls.
    pub(crate) propagate_session: bool,
    pub(crate) on_error_answer: OnErrorAnswer,
    pub(crate) recordable_statuses: Vec<u16>,
    pub(crate) max_request_body_bytes: usize,
    pub(crate) max_response_body_bytes: usize,
    pub(crate) request_mode: RequestMode,
    pub(crate) on_backend_error: OnBackendError,
    pub(crate) rules: Rules,
    pub(crate) redactor: Redactor,
    /// Header added to served hits (value `hit`), or none.
    pub(crate) hit_header: Option<String>,
    /// Request header the host writes the verdict ([`crate::Stream::verdict`]) into once it is
    /// known, at points where the upstream can no longer see it (for tracers that tag spans from
    /// request headers only, e.g. Istio 1.18's `Telemetry` custom tags), or none.
    pub(crate) verdict_header: Option<String>,
    /// The record queue's bounds ([`crate::records`]).
    pub(crate) records: RecordLimits,
    /// The circuit breakers of the lookups and of the records ([`crate::breaker`]).
    pub(crate) breaker: BreakerConfig,
}

impl Backend {
    /// See the `cluster` key in docs/config.md.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// See the `authority` key in docs/config.md.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// See the `inject_path` key in docs/config.md.
    pub fn inject_path(&self) -> &str {
        &self.inject_path
    }

    /// See the `traces_path` key in docs/config.md.
    pub fn traces_path(&self) -> &str {
        &self.traces_path
    }

    /// See the `auth_header` key in docs/config.md.
    pub fn auth_header(&self) -> &str {
        &self.auth_header
    }

    /// See the `api_key` key in docs/config.md.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// See the `lookup_timeout_ms` key in docs/config.md.
    pub fn lookup_timeout_ms(&self) -> u64 {
        self.lookup_timeout_ms
    }

    /// See the `record_timeout_ms` key in docs/config.md.
    pub fn record_timeout_ms(&self) -> u64 {
        self.record_timeout_ms
    }
}

impl Config {
    /// See the `mode` key in docs/config.md.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// See the `backend` key in docs/config.md.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// See the `service_name` key in docs/config.md.
    pub fn service_name(&self) -> Option<&str> {
        self.service_name.as_deref()
    }

    /// See the `traffic_direction` key in docs/config.md.
    pub fn traffic_direction(&self) -> Direction {
        self.traffic_direction
    }

    /// See the `session_sources` key in docs/config.md.
    pub fn session_sources(&self) -> &[SessionSource] {
        &self.session_sources
    }

    /// See the `require_session` key in docs/config.md.
    pub fn require_session(&self) -> bool {
        self.require_session
    }

    /// See the `propagate_session` key in docs/config.md.
    pub fn propagate_session(&self) -> bool {
        self.propagate_session
    }

    /// See the `on_error_answer` key in docs/config.md.
    pub fn on_error_answer(&self) -> OnErrorAnswer {
        self.on_error_answer
    }

    /// See the `recordable_statuses` key in docs/config.md.
    pub fn recordable_statuses(&self) -> &[u16] {
        &self.recordable_statuses
    }

    /// See the `max_request_body_bytes` key in docs/config.md.
    pub fn max_request_body_bytes(&self) -> usize {
        self.max_request_body_bytes
    }

    /// See the `max_response_body_bytes` key in docs/config.md.
    pub fn max_response_body_bytes(&self) -> usize {
        self.max_response_body_bytes
    }

    /// See the `request_mode` key in docs/config.md.
    pub fn request_mode(&self) -> RequestMode {
        self.request_mode
    }

    /// See the `on_backend_error` key in docs/config.md.
    pub fn on_backend_error(&self) -> OnBackendError {
        self.on_backend_error
    }

    /// See the `rules` key in docs/config.md.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// See the `redactor` key in docs/config.md.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// See the `hit_header` key in docs/config.md.
    pub fn hit_header(&self) -> Option<&str> {
        self.hit_header.as_deref()
    }

    /// See the `verdict_header` key in docs/config.md.
    pub fn verdict_header(&self) -> Option<&str> {
        self.verdict_header.as_deref()
    }

    /// See the `records` key in docs/config.md.
    pub fn records(&self) -> RecordLimits {
        self.records
    }

    /// See the `breaker` key in docs/config.md.
    pub fn breaker(&self) -> BreakerConfig {
        self.breaker
    }
}

/// Default of [`Config::verdict_header`].
pub const DEFAULT_VERDICT_HEADER: &str = "x-softprobe-cache-verdict";

/// The session header of the Softprobe spec, and its `tracestate` key.
pub const SESSION_HEADER: &str = "x-softprobe-session-id";
/// The older session header (and `tracestate` key) the Softprobe agents still accept.
pub const LEGACY_SESSION_HEADER: &str = "x-sp-session-id";

/// Default of [`Config::session_sources`]: the spec's header, its `tracestate` entry, then the
/// older name in both places.
pub fn default_session_sources() -> Vec<SessionSource> {
    vec![
        SessionSource::Header(SESSION_HEADER.into()),
        SessionSource::Tracestate(SESSION_HEADER.into()),
        SessionSource::Header(LEGACY_SESSION_HEADER.into()),
        SessionSource::Tracestate(LEGACY_SESSION_HEADER.into()),
    ]
}

/// Default redacted headers.
pub const DEFAULT_REDACT: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-public-key",
];

/// Methods looked up and recorded unless `rules.methods` says otherwise.
pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Largest body limit accepted (bodies are buffered in memory).
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;
const MAX_TIMEOUT_MS: u64 = 600_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::RecordAndInject,
            backend: Backend {
                cluster: "outbound|443||o.softprobe.ai".into(),
                authority: "o.softprobe.ai".into(),
                inject_path: "/v1/inject".into(),
                traces_path: "/v1/traces".into(),
                auth_header: "authorization".into(),
                api_key: None,
                lookup_timeout_ms: 500,
                record_timeout_ms: 5000,
            },
            service_name: None,
            traffic_direction: Direction::Outbound,
            session_sources: default_session_sources(),
            require_session: false,
            propagate_session: false,
            on_error_answer: OnErrorAnswer::PassThrough,
            recordable_statuses: vec![200],
            max_request_body_bytes: 256 * 1024,
            max_response_body_bytes: 1024 * 1024,
            request_mode: RequestMode::StreamHeaders,
            on_backend_error: OnBackendError::PassThrough,
            rules: Rules::default(),
            redactor: Redactor::new(DEFAULT_REDACT),
            hit_header: Some("x-softprobe-cache".into()),
            verdict_header: Some(DEFAULT_VERDICT_HEADER.into()),
            records: RecordLimits::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// A configuration error: the key at fault (dotted path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid transparent-cache config: {}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

const TOP_KEYS: &[&str] = &[
    "mode",
    "backend",
    "service_name",
    "traffic_direction",
    "session_id_sources",
    "require_session",
    "propagate_session",
    "on_error_answer",
    "recordable_statuses",
    "max_request_body_bytes",
    "max_response_body_bytes",
    "request_mode",
    "on_backend_error",
    "rules",
    "redact_headers",
    "mark_hits",
    "hit_header",
    "verdict_header",
    "records",
    "breaker",
];
const BREAKER_KEYS: &[&str] = &["consecutive_failures", "backoff_ms", "max_backoff_ms"];
const RECORDS_KEYS: &[&str] = &[
    "max_queued",
    "max_queued_bytes",
    "max_in_flight",
    "batch_max_records",
    "batch_max_bytes",
    "linger_ms",
];
const BACKEND_KEYS: &[&str] = &[
    "cluster",
    "authority",
    "inject_path",
    "traces_path",
    "auth_header",
    "api_key",
    "lookup_timeout_ms",
    "record_timeout_ms",
];
const RULES_KEYS: &[&str] = &[
    "methods",
    "include_hosts",
    "exclude_hosts",
    "include_paths",
    "exclude_paths",
    "exempt_otlp_paths",
];

/// Keys that were renamed: old name, new name, how to write the new one.
const RENAMED: &[(&str, &str, &str)] = &[(
    "session_id_headers",
    "session_id_sources",
    "list each header as \"header:<name>\", and tracestate entries as \"tracestate:<key>\"",
)];

/// Walks one JSON object, remembering which keys were read so the rest can be reported.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if s.len() > 40 {
        kind.to_string()
    } else {
        format!("{kind} ({s})")
    }
}

impl<'a> Obj<'a> {
    fn new(path: &str, v: &'a Value, known: &[&str]) -> Result<Self, ConfigError> {
        let Value::Object(map) = v else {
            return Err(ConfigError {
                key: path.into(),
                message: format!("expected an object, got {}", describe(v)),
            });
        };
        let obj = Obj {
            path: path.into(),
            map,
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let mut message = format!("unknown config key `{}`", obj.key(key));
                if let Some((_, to, how)) = RENAMED.iter().find(|(from, ..)| from == key) {
                    message.push_str(&format!("; it was replaced by `{}` ({how})", obj.key(to)));
                } else if let Some(s) = suggest(key, known) {
                    message.push_str(&format!("; did you mean `{}`?", obj.key(s)));
                } else {
                    message.push_str(&format!("; known keys here: {}", known.join(", ")));
                }
                return Err(ConfigError {
                    key: obj.key(key),
                    message,
                });
            }
        }
        Ok(obj)
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn err(&self, k: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: self.key(k),
            message: message.into(),
        }
    }

    fn expected(&self, k: &str, what: &str, got: &Value) -> ConfigError {
        self.err(k, format!("expected {what}, got {}", describe(got)))
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn string(&self, k: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.expected(k, "a string", v)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.expected(k, "true or false", v)),
        }
    }

    fn uint(&self, k: &str, what: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                Some(n) => Err(self.err(k, format!("{n} is too large; the maximum is {max}"))),
                None => Err(self.expected(k, what, v)),
            },
        }
    }

    fn choice<T: Copy>(&self, k: &str, options: &[(&str, T)]) -> Result<Option<T>, ConfigError> {
        let Some(s) = self.string(k)? else {
            return Ok(None);
        };
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, v)) => Ok(Some(*v)),
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
                Err(self.err(
                    k,
                    format!("unknown value {s:?}; expected one of {}", names.join(", ")),
                ))
            }
        }
    }

    fn strings(&self, k: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(self.expected(&format!("{k}[{i}]"), "a string", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.expected(k, "an array of strings", v)),
        }
    }

    fn header_names(&self, k: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(names) = self.strings(k)? else {
            return Ok(None);
        };
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                if crate::http::is_token(n.as_bytes()) {
                    Ok(n.to_ascii_lowercase())
                } else {
                    Err(self.err(
                        &format!("{k}[{i}]"),
                        format!("{n:?} is not a valid header name"),
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn session_sources(&self, k: &str) -> Result<Option<Vec<SessionSource>>, ConfigError> {
        let Some(items) = self.strings(k)? else {
            return Ok(None);
        };
        if items.is_empty() {
            return Err(self.err(
                k,
                "must name at least one source, e.g. \"header:x-softprobe-session-id\"",
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let key = format!("{k}[{i}]");
                let (kind, name) = item.split_once(':').unwrap_or(("", item));
                let name = name.trim();
                match kind.trim() {
                    "header" if crate::http::is_token(name.as_bytes()) => {
                        Ok(SessionSource::Header(name.to_ascii_lowercase()))
                    }
                    "tracestate" if crate::trace::is_tracestate_key(name.as_bytes()) => {
                        Ok(SessionSource::Tracestate(name.to_string()))
                    }
                    "header" => Err(self.err(&key, format!("{name:?} is not a valid header name"))),
                    "tracestate" => Err(self.err(
                        &key,
                        format!("{name:?} is not a W3C tracestate key (lower-case letters, digits, `_-*/`)"),
                    )),
                    _ => Err(self.err(
                        &key,
                        format!("{item:?} must be \"header:<name>\" or \"tracestate:<key>\""),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn patterns(&self, k: &str) -> Result<Vec<Pattern>, ConfigError> {
        let Some(items) = self.strings(k)? else {
            return Ok(Vec::new());
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::new(p).map_err(|e| {
                    self.err(
                        &format!("{k}[{i}]"),
                        format!("invalid pattern {p:?} (a regular expression matched against the whole value): {e}"),
                    )
                })
            })
            .collect()
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// The known key most like `key`: a small edit distance, or all of its words in the same order.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    let close = known
        .iter()
        .map(|k| (distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    close.or_else(|| {
        let words: Vec<&str> = lower.split('_').filter(|w| !w.is_empty()).collect();
        known.iter().copied().find(|k| {
            let mut rest = k.split('_');
            !words.is_empty() && words.iter().all(|w| rest.any(|kw| kw.starts_with(w)))
        })
    })
}

impl Config {
    /// Parses and validates a configuration. Empty input (no `pluginConfig`) means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let root: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError {
            key: String::new(),
            message: format!("not valid JSON: {e}"),
        })?;
        Config::from_value(&root)
    }

    /// Validates an already-parsed JSON document.
    pub fn from_value(root: &Value) -> Result<Config, ConfigError> {
        let top = Obj::new("", root, TOP_KEYS)?;
        let mut c = Config::default();
        if let Some(m) = top.choice(
            "mode",
            &[
                ("record_and_inject", Mode::RecordAndInject),
                ("record_only", Mode::RecordOnly),
                ("inject_only", Mode::InjectOnly),
                ("propagate_only", Mode::PropagateOnly),
                ("off", Mode::Off),
            ],
        )? {
            c.mode = m;
        }
        if let Some(b) = top.get("backend") {
            read_backend(&Obj::new("backend", b, BACKEND_KEYS)?, &mut c.backend)?;
        }
        if let Some(s) = top.string("service_name")? {
            if s.trim().is_empty() {
                return Err(top.err(
                    "service_name",
                    "must not be empty; leave it out to use the workload name",
                ));
            }
            c.service_name = Some(s.to_string());
        }
        if let Some(d) = top.choice(
            "traffic_direction",
            &[
                ("outbound", Direction::Outbound),
                ("inbound", Direction::Inbound),
            ],
        )? {
            c.traffic_direction = d;
        }
        if let Some(sources) = top.session_sources("session_id_sources")? {
            c.session_sources = sources;
        }
        if let Some(b) = top.bool("require_session")? {
            c.require_session = b;
        }
        c.propagate_session = top
            .bool("propagate_session")?
            .unwrap_or(c.traffic_direction == Direction::Inbound);
        if c.propagate_session
            && !c
                .session_sources
                .iter()
                .any(|s| matches!(s, SessionSource::Tracestate(_)))
        {
            return Err(top.err(
                "propagate_session",
                "needs a `tracestate:<key>` entry in `session_id_sources` (the key it writes)",
            ));
        }
        if let Some(m) = top.choice(
            "on_error_answer",
            &[
                ("pass_through", OnErrorAnswer::PassThrough),
                ("serve", OnErrorAnswer::Serve),
            ],
        )? {
            c.on_error_answer = m;
        }
        if let Some(v) = top.get("recordable_statuses") {
            c.recordable_statuses = read_statuses(&top, v)?;
        }
        let limit = "a number of bytes (a non-negative integer)";
        if let Some(n) = top.uint("max_request_body_bytes", limit, MAX_BODY_LIMIT)? {
            c.max_request_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = top.uint("max_response_body_bytes", limit, MAX_BODY_LIMIT)? {
            c.max_response_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(m) = top.choice(
            "request_mode",
            &[
                ("stream_headers", RequestMode::StreamHeaders),
                ("hold_headers", RequestMode::HoldHeaders),
            ],
        )? {
            c.request_mode = m;
        }
        if let Some(m) = top.choice(
            "on_backend_error",
            &[
                ("pass_through", OnBackendError::PassThrough),
                ("fail", OnBackendError::Fail),
            ],
        )? {
            c.on_backend_error = m;
        }
        let mut rules = Rules::new(&c.backend.authority);
        if let Some(r) = top.get("rules") {
            read_rules(&Obj::new("rules", r, RULES_KEYS)?, &mut rules)?;
        }
        c.rules = rules;
        if let Some(names) = top.header_names("redact_headers")? {
            c.redactor = Redactor::new(names);
        }
        if let Some(name) = top.string("hit_header")? {
            if !crate::http::is_token(name.as_bytes()) {
                return Err(top.err("hit_header", format!("{name:?} is not a valid header name")));
            }
            c.hit_header = Some(name.to_ascii_lowercase());
        }
        if top.bool("mark_hits")? == Some(false) {
            c.hit_header = None;
        }
        match top.get("verdict_header") {
            None => {}
            Some(Value::Bool(false)) => c.verdict_header = None,
            Some(Value::String(name)) if crate::http::is_token(name.as_bytes()) => {
                c.verdict_header = Some(name.to_ascii_lowercase());
            }
            Some(Value::String(name)) => {
                return Err(top.err(
                    "verdict_header",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            Some(v) => return Err(top.expected("verdict_header", "a header name or false", v)),
        }
        if let Some(r) = top.get("records") {
            read_records(&Obj::new("records", r, RECORDS_KEYS)?, &mut c.records)?;
        }
        match top.get("breaker") {
            None => {}
            Some(Value::Bool(false)) => c.breaker.consecutive_failures = 0,
            Some(b @ Value::Object(_)) => {
                read_breaker(&Obj::new("breaker", b, BREAKER_KEYS)?, &mut c.breaker)?;
            }
            Some(v) => return Err(top.expected("breaker", "an object or false", v)),
        }
        Ok(c)
    }
}

fn read_backend(b: &Obj<'_>, out: &mut Backend) -> Result<(), ConfigError> {
    if let Some(s) = b.string("cluster")? {
        if s.is_empty() {
            return Err(b.err("cluster", "must name the Envoy cluster of the backend"));
        }
        out.cluster = s.into();
    }
    if let Some(s) = b.string("authority")? {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(b.err("authority", format!("{s:?} is not a host name")));
        }
        out.authority = s.to_ascii_lowercase();
    }
    for (key, slot) in [
        ("inject_path", &mut out.inject_path),
        ("traces_path", &mut out.traces_path),
    ] {
        if let Some(s) = b.string(key)? {
            if !s.starts_with('/') || !s.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(b.err(key, format!("{s:?} must be a path starting with `/`")));
            }
            *slot = s.into();
        }
    }
    if let Some(s) = b.string("auth_header")? {
        if !crate::http::is_token(s.as_bytes()) {
            return Err(b.err("auth_header", format!("{s:?} is not a valid header name")));
        }
        out.auth_header = s.to_ascii_lowercase();
    }
    if let Some(s) = b.string("api_key")? {
        if !crate::http::is_safe_value(s.as_bytes()) {
            return Err(b.err("api_key", "must not contain CR, LF or NUL"));
        }
        out.api_key = (!s.is_empty()).then(|| s.to_string());
    }
    let ms = "a duration in milliseconds (a positive integer)";
    for (key, slot) in [
        ("lookup_timeout_ms", &mut out.lookup_timeout_ms),
        ("record_timeout_ms", &mut out.record_timeout_ms),
    ] {
        if let Some(n) = b.uint(key, ms, MAX_TIMEOUT_MS)? {
            if n == 0 {
                return Err(b.err(key, "must be at least 1 ms"));
            }
            *slot = n;
        }
    }
    Ok(())
}

fn read_breaker(b: &Obj<'_>, out: &mut BreakerConfig) -> Result<(), ConfigError> {
    if let Some(n) = b.uint(
        "consecutive_failures",
        "a number of faults (0 turns the breaker off)",
        1_000_000,
    )? {
        out.consecutive_failures = u32::try_from(n).unwrap_or(u32::MAX);
    }
    let ms = "a duration in milliseconds (a positive integer)";
    for (key, slot) in [
        ("backoff_ms", &mut out.backoff_ms),
        ("max_backoff_ms", &mut out.max_backoff_ms),
    ] {
        if let Some(n) = b.uint(key, ms, 3_600_000)? {
            if n == 0 {
                return Err(b.err(key, "must be at least 1 ms"));
            }
            *slot = n;
        }
    }
    if out.max_backoff_ms < out.backoff_ms {
        return Err(b.err(
            "max_backoff_ms",
            format!("must be at least backoff_ms ({})", out.backoff_ms),
        ));
    }
    Ok(())
}

fn read_records(r: &Obj<'_>, out: &mut RecordLimits) -> Result<(), ConfigError> {
    let count = "a number of records (a positive integer)";
    for (key, slot, what, max) in [
        ("max_queued", &mut out.max_queued, count, 1_000_000),
        (
            "max_queued_bytes",
            &mut out.max_queued_bytes,
            "a number of bytes (a positive integer)",
            4 * MAX_BODY_LIMIT,
        ),
        ("max_in_flight", &mut out.max_in_flight, count, 1024),
        (
            "batch_max_records",
            &mut out.batch_max_records,
            count,
            10_000,
        ),
        (
            "batch_max_bytes",
            &mut out.batch_max_bytes,
            "a number of bytes (a positive integer)",
            4 * MAX_BODY_LIMIT,
        ),
    ] {
        if let Some(n) = r.uint(key, what, max)? {
            if n == 0 {
                return Err(r.err(key, "must be at least 1"));
            }
            *slot = usize::try_from(n).unwrap_or(usize::MAX);
        }
    }
    if let Some(n) = r.uint("linger_ms", "milliseconds (an integer, 0 for none)", 1000)? {
        out.linger_ms = n;
    }
    Ok(())
}

fn read_statuses(top: &Obj<'_>, v: &Value) -> Result<Vec<u16>, ConfigError> {
    let key = "recordable_statuses";
    let Value::Array(items) = v else {
        return Err(top.expected(key, "an array of HTTP status codes", v));
    };
    items
        .iter()
        .enumerate()
        .map(
            |(i, item)| match item.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(s) if (100..=599).contains(&s) => Ok(s),
                _ => Err(top.expected(
                    &format!("{key}[{i}]"),
                    "an HTTP status code (100-599)",
                    item,
                )),
            },
        )
        .collect()
}

fn read_rules(r: &Obj<'_>, rules: &mut Rules) -> Result<(), ConfigError> {
    if let Some(methods) = r.strings("methods")? {
        rules.methods = methods
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                if crate::http::is_token(m.as_bytes()) {
                    Ok(m.to_ascii_uppercase())
                } else {
                    Err(r.err(
                        &format!("methods[{i}]"),
                        format!("{m:?} is not an HTTP method"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
    }
    rules.include_hosts = r.patterns("include_hosts")?;
    rules.exclude_hosts = r.patterns("exclude_hosts")?;
    rules.include_paths = r.patterns("include_paths")?;
    rules.exclude_paths = r.patterns("exclude_paths")?;
    if let Some(b) = r.bool("exempt_otlp_paths")? {
        rules.exempt_otlp_paths = b;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
