//! The safe API over the dynamic-module ABI, shaped like the filter traits of Envoy's Rust SDK
//! (`HttpFilterConfig` / `HttpFilter`, with the host behind `EnvoyHttpFilter` and
//! `EnvoyHttpFilterConfig`), so the upstream SDK could replace [`crate::abi`] and this module with
//! local changes only. Nothing here is `unsafe`; the host traits are implemented over the raw ABI
//! in [`crate::abi`] and by mocks in tests.
//!
//! Threading (Envoy's rules, see [`crate::abi`]): [`HttpFilterConfig`] is created, scheduled and
//! called back for its own callouts on the **main thread**, while [`HttpFilterConfig::new_http_filter`]
//! and every [`HttpFilter`] event run on the **worker thread** that owns the stream. Hence the
//! config is `Send + Sync`, and the handles that may be used from workers ([`Scheduler`],
//! [`CounterSink`]) are too.

use std::sync::Arc;

/// A header as Envoy or the module holds it: name and value bytes.
pub type HeaderRef<'a> = (&'a [u8], &'a [u8]);

/// What to do after the request or response headers (`FilterHeadersStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    Continue,
    /// Keep the headers; body events still arrive. Resume with
    /// [`EnvoyHttpFilter::continue_decoding`].
    StopIteration,
}

/// What to do after a body frame (`FilterDataStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStatus {
    Continue,
    /// Keep this frame in Envoy's buffer (and the headers, if they were stopped).
    StopIterationAndBuffer,
}

/// What to do after trailers (`FilterTrailersStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailersStatus {
    Continue,
    StopIteration,
}

/// How a callout ended (Envoy's `AsyncClient` outcome). An HTTP answer, including the local
/// replies Envoy makes for a timeout (504) or a refused connection (503), is `Success`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutResult {
    Success,
    Reset,
    ExceedResponseBufferLimit,
    /// A value this binding does not know (a newer ABI).
    Unknown(u32),
}

/// Why a callout could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutInitError {
    /// `:method`, `:path` or `host` (`:authority`) missing.
    MissingRequiredHeaders,
    ClusterNotFound,
    DuplicateCalloutId,
    /// E.g. no healthy host in the cluster.
    CannotCreateRequest,
    Unknown(u32),
}

/// Why a metric operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsError {
    MetricNotFound,
    InvalidLabels,
    /// Metrics can only be defined while the config is being created.
    Frozen,
    Unknown(u32),
}

/// Envoy's log levels for [`EnvoyHttpFilterConfig::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// The handle of a counter defined with [`EnvoyHttpFilterConfig::define_counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterId(pub usize);

/// Wakes the config on the main thread ([`HttpFilterConfig::on_scheduled`]), or a stream on its
/// worker ([`HttpFilter::on_scheduled`]). Callable from any thread; dropping it releases Envoy's
/// scheduler.
pub trait Scheduler: Send + Sync {
    fn commit(&self, event_id: u64);
}

/// Adds to counters defined by the config. Callable from any thread.
pub trait CounterSink: Send + Sync {
    fn increment(&self, id: CounterId, n: u64);
}

/// What the filter config can ask of Envoy. Main thread only.
pub trait EnvoyHttpFilterConfig {
    /// Defines a counter without labels; only while the config is being created.
    fn define_counter(&mut self, name: &str) -> Result<CounterId, MetricsError>;
    /// Where counters defined here are incremented, from any thread.
    fn counter_sink(&self) -> Arc<dyn CounterSink>;
    /// A scheduler that runs [`HttpFilterConfig::on_scheduled`] on the main thread.
    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>>;
    /// A callout bound to the config, not to a stream: it outlives every stream. Its answer arrives
    /// in [`HttpFilterConfig::on_http_callout_done`].
    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError>;
    /// Writes to Envoy's log (`[dynamic_modules]`).
    fn log(&self, level: LogLevel, message: &str);
}

/// What an HTTP filter can ask of Envoy for its stream. Worker thread only, and only during an
/// event of that stream.
pub trait EnvoyHttpFilter {
    /// The request headers, pseudo-headers included, in order.
    fn request_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// The response headers (`:status` included), in order.
    fn response_headers(&mut self) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// The request body frame of the current body event, as Envoy's buffer slices (no copy).
    fn received_request_body(&mut self) -> Vec<&[u8]>;
    /// The response body frame of the current body event, as Envoy's buffer slices (no copy).
    fn received_response_body(&mut self) -> Vec<&[u8]>;
    /// Answers the client locally; nothing (more) goes upstream.
    fn send_response(&mut self, status: u16, headers: &[HeaderRef<'_>], body: &[u8], details: &str);
    /// Answers the client locally with headers only (`:status` among them, sent as given, no
    /// framing added) and ends the stream.
    fn send_response_headers(&mut self, headers: &[HeaderRef<'_>]);
    /// Releases a request stopped earlier (headers and buffered body go on upstream).
    fn continue_decoding(&mut self);
    /// Sets a request header, replacing every line of that name; only in the request-headers
    /// hook (before the headers go upstream). False when Envoy refused it.
    fn set_request_header(&mut self, name: &[u8], value: &[u8]) -> bool;
    /// Sets a string in the stream's dynamic metadata (`namespace` / `key`), where access logs
    /// (`%DYNAMIC_METADATA(namespace:key)%`) and tracers' `metadata` custom tags read it.
    fn set_dynamic_metadata_string(&mut self, namespace: &str, key: &str, value: &str);
    /// A scheduler bound to this stream: [`Scheduler::commit`] (from any thread) runs
    /// [`HttpFilter::on_scheduled`] on the stream's worker, or nothing once the stream is gone.
    /// Dropping it releases Envoy's scheduler.
    fn new_scheduler(&mut self) -> Option<Box<dyn Scheduler>>;
    /// A callout bound to this stream (cancelled if the stream ends first); its answer arrives
    /// in [`HttpFilter::on_http_callout_done`].
    fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutInitError>;
}

/// One filter configuration: created on the main thread, shared by every worker.
pub trait HttpFilterConfig<EC: EnvoyHttpFilterConfig, EHF: EnvoyHttpFilter>: Send + Sync {
    /// A filter for a new stream (worker thread).
    fn new_http_filter(&self, envoy: &mut EHF) -> Box<dyn HttpFilter<EHF>>;

    /// An event committed through a [`Scheduler`] (main thread).
    fn on_scheduled(&self, _envoy: &mut EC, _event_id: u64) {}

    /// A config-level callout ended (main thread). `headers` and `body` are Envoy's, valid for
    /// this call only.
    fn on_http_callout_done(
        &self,
        _envoy: &mut EC,
        _callout_id: u64,
        _result: CalloutResult,
        _headers: &[HeaderRef<'_>],
        _body: &[&[u8]],
    ) {
    }
}

/// One stream's filter (worker thread). Every event defaults to letting the stream through.
pub trait HttpFilter<EHF: EnvoyHttpFilter> {
    fn on_request_headers(&mut self, _envoy: &mut EHF, _end_of_stream: bool) -> HeadersStatus {
        HeadersStatus::Continue
    }
    fn on_request_body(&mut self, _envoy: &mut EHF, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }
    fn on_request_trailers(&mut self, _envoy: &mut EHF) -> TrailersStatus {
        TrailersStatus::Continue
    }
    fn on_response_headers(&mut self, _envoy: &mut EHF, _end_of_stream: bool) -> HeadersStatus {
        HeadersStatus::Continue
    }
    fn on_response_body(&mut self, _envoy: &mut EHF, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }
    fn on_response_trailers(&mut self, _envoy: &mut EHF) -> TrailersStatus {
        TrailersStatus::Continue
    }
    /// A stream-level callout ended. `headers` and `body` are Envoy's, valid for this call only.
    fn on_http_callout_done(
        &mut self,
        _envoy: &mut EHF,
        _callout_id: u64,
        _result: CalloutResult,
        _headers: &[HeaderRef<'_>],
        _body: &[&[u8]],
    ) {
    }
    /// An event committed through the stream's scheduler ([`EnvoyHttpFilter::new_scheduler`]).
    fn on_scheduled(&mut self, _envoy: &mut EHF, _event_id: u64) {}
    /// The stream is over (before the filter is dropped).
    fn on_stream_complete(&mut self, _envoy: &mut EHF) {}
}

/// A filter that lets everything through: what a stream gets when creating its real filter failed.
#[derive(Debug, Default)]
pub struct PassThroughFilter;

impl<EHF: EnvoyHttpFilter> HttpFilter<EHF> for PassThroughFilter {}

/// A config whose filters let everything through: what Envoy gets when building the real config
/// panicked (a bug), so traffic still flows.
#[derive(Debug, Default)]
pub struct PassThroughConfig;

impl<EC: EnvoyHttpFilterConfig, EHF: EnvoyHttpFilter + 'static> HttpFilterConfig<EC, EHF>
    for PassThroughConfig
{
    fn new_http_filter(&self, _envoy: &mut EHF) -> Box<dyn HttpFilter<EHF>> {
        Box::new(PassThroughFilter)
    }
}
