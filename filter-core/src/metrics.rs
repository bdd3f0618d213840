//! The engine's counters. Hosts expose them as Envoy stats (wasm, native) or Prometheus text
//! (sidecar) under the names given by [`Counter::name`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request or response went through without the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// `mode: off`.
    ModeOff,
    /// Method not in `rules.methods`.
    Method,
    /// Host excluded (or not included) by the rules.
    Host,
    /// Path excluded (or not included) by the rules.
    Path,
    /// A request to the backend itself.
    BackendHost,
    /// An OTLP export path.
    OtlpPath,
    /// A protocol upgrade (WebSocket, CONNECT-style tunnels).
    Upgrade,
    /// gRPC: streaming with trailers, never cached.
    Grpc,
    /// The request body grew past `max_request_body_bytes`.
    RequestTooLarge,
    /// The response body grew past `max_response_body_bytes` (not recorded).
    ResponseTooLarge,
    /// The upstream status is not in `recordable_statuses` (not recorded).
    Status,
    /// `require_session` is on and the request carries no session.
    NoSession,
    /// `mode: propagate_only`: the session was carried on, nothing looked up or recorded.
    PropagateOnly,
    /// The lookups' circuit breaker is open: straight upstream, no backend call.
    BreakerOpen,
    /// The request or the response has trailers: a recording cannot carry them, so such an
    /// exchange is neither looked up nor recorded.
    Trailers,
}

/// Why a lookup failed (each fails open unless `on_backend_error: fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// No answer within `lookup_timeout_ms`.
    Timeout,
    /// The callout could not be made or the connection failed.
    Transport,
    /// An answer other than 200 or 404.
    Status,
    /// A 200 whose body is not a readable `TracesData`.
    Undecodable,
    /// A readable answer that breaks the injected-response rules.
    Rejected,
    /// A deliberate error answer of the backend (JSON `{"error": ...}`), not served because
    /// `on_error_answer` is `pass_through` or the request has no session.
    ErrorAnswer,
}

macro_rules! counters {
    ($($variant:ident => $name:literal, $help:literal;)*) => {
        /// Every counter the engine keeps.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            /// All counters, in a fixed order (`Counter as usize` indexes it).
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// The stat name, without any host prefix.
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// One line of help text.
            pub fn help(self) -> &'static str {
                match self { $(Counter::$variant => $help,)* }
            }
        }
    };
}

counters! {
    Requests => "requests", "Requests seen by the filter.";
    Lookups => "lookups", "Lookups sent to the backend.";
    Hits => "hits", "Lookups answered with a recorded response that was served.";
    Misses => "misses", "Lookups answered 404.";
    LookupErrorTimeout => "lookup_errors_timeout", "Lookups that timed out.";
    LookupErrorTransport => "lookup_errors_transport", "Lookups that could not reach the backend.";
    LookupErrorStatus => "lookup_errors_status", "Lookups answered with a status other than 200 or 404.";
    LookupErrorUndecodable => "lookup_errors_undecodable", "Lookups answered 200 with an unreadable body.";
    LookupErrorRejected => "lookup_errors_rejected", "Recorded responses rejected by the sanitizing rules.";
    LookupErrorAnswer => "lookup_errors_answer", "Deliberate error answers of the backend passed through (on_error_answer: pass_through).";
    Blocked => "blocked", "Deliberate error answers of the backend handed to the caller (on_error_answer: serve).";
    SessionsPropagated => "sessions_propagated", "Requests whose session was written into the forwarded tracestate.";
    RecordsSent => "records_sent", "Records accepted by the backend (2xx).";
    RecordFailures => "record_failures", "Records refused by the backend or lost in transit.";
    RecordsDropped => "records_dropped", "Records dropped before sending (queue full).";
    RecordBatches => "record_batches", "Record callouts sent (each carries a batch of one or more records).";
    BypassModeOff => "bypass_mode_off", "Requests passed through because mode is off.";
    BypassMethod => "bypass_method", "Requests passed through for their method.";
    BypassHost => "bypass_host", "Requests passed through by a host rule.";
    BypassPath => "bypass_path", "Requests passed through by a path rule.";
    BypassBackendHost => "bypass_backend_host", "Requests to the backend itself.";
    BypassOtlpPath => "bypass_otlp_path", "Requests to OTLP export paths.";
    BypassUpgrade => "bypass_upgrade", "Upgrade (WebSocket) requests.";
    BypassGrpc => "bypass_grpc", "gRPC requests.";
    BypassRequestTooLarge => "bypass_request_too_large", "Requests whose body exceeded max_request_body_bytes.";
    BypassResponseTooLarge => "bypass_response_too_large", "Responses not recorded: body exceeded max_response_body_bytes.";
    BypassStatus => "bypass_status", "Responses not recorded: status not recordable.";
    BypassNoSession => "bypass_no_session", "Requests passed through without a backend call: no session (require_session).";
    BypassPropagateOnly => "bypass_propagate_only", "Requests passed through by mode propagate_only.";
    BypassBreakerOpen => "bypass_breaker_open", "Requests sent upstream without a lookup: the lookups' circuit breaker was open.";
    BypassTrailers => "bypass_trailers", "Requests or responses with trailers: passed through, neither looked up nor recorded.";
    LookupBreakerOpened => "lookup_breaker_opened", "Times the lookups' circuit breaker opened (consecutive lookup faults).";
    RecordBreakerOpened => "record_breaker_opened", "Times the records' circuit breaker opened (consecutive failed records).";
    BytesBuffered => "bytes_buffered", "Body bytes buffered by the filter.";
}

impl From<Bypass> for Counter {
    fn from(b: Bypass) -> Counter {
        match b {
            Bypass::ModeOff => Counter::BypassModeOff,
            Bypass::Method => Counter::BypassMethod,
            Bypass::Host => Counter::BypassHost,
            Bypass::Path => Counter::BypassPath,
            Bypass::BackendHost => Counter::BypassBackendHost,
            Bypass::OtlpPath => Counter::BypassOtlpPath,
            Bypass::Upgrade => Counter::BypassUpgrade,
            Bypass::Grpc => Counter::BypassGrpc,
            Bypass::RequestTooLarge => Counter::BypassRequestTooLarge,
            Bypass::ResponseTooLarge => Counter::BypassResponseTooLarge,
            Bypass::Status => Counter::BypassStatus,
            Bypass::NoSession => Counter::BypassNoSession,
            Bypass::PropagateOnly => Counter::BypassPropagateOnly,
            Bypass::BreakerOpen => Counter::BypassBreakerOpen,
            Bypass::Trailers => Counter::BypassTrailers,
        }
    }
}

impl From<LookupFailure> for Counter {
    fn from(f: LookupFailure) -> Counter {
        match f {
            LookupFailure::Timeout => Counter::LookupErrorTimeout,
            LookupFailure::Transport => Counter::LookupErrorTransport,
            LookupFailure::Status => Counter::LookupErrorStatus,
            LookupFailure::Undecodable => Counter::LookupErrorUndecodable,
            LookupFailure::Rejected => Counter::LookupErrorRejected,
            LookupFailure::ErrorAnswer => Counter::LookupErrorAnswer,
        }
    }
}

/// Where the engine adds to its counters. Called on the request path: keep it cheap.
/// Implementations must be callable from any thread (native Envoy workers share one engine).
pub trait Metrics: Send + Sync {
    fn add(&self, counter: Counter, n: u64);
}

/// Counters kept in process memory; what tests and the sidecar use.
#[derive(Debug)]
pub struct AtomicCounters {
    values: Vec<AtomicU64>,
}

impl Default for AtomicCounters {
    fn default() -> Self {
        AtomicCounters {
            values: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AtomicCounters {
    pub fn get(&self, c: Counter) -> u64 {
        self.values
            .get(c as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Every counter with its value, in [`Counter::ALL`] order.
    pub fn snapshot(&self) -> Vec<(Counter, u64)> {
        Counter::ALL.iter().map(|&c| (c, self.get(c))).collect()
    }
}

impl Metrics for AtomicCounters {
    fn add(&self, counter: Counter, n: u64) {
        if let Some(v) = self.values.get(counter as usize) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }
}
