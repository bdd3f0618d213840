//! The host calls a stream makes, each returning an error rather than panicking: [`Envoy`] makes
//! them through the ABI ([`crate::abi`]) or the SDK's non-panicking host calls; tests use a mock.

use filter_core::{Callout, Response};
use proxy_wasm::hostcalls;
use std::time::Duration;

use crate::abi::{self, HostError};

/// What the plugin asks of its host for one stream (the current, effective context).
pub trait Host {
    /// Sets (replacing) a request header; only before the headers go upstream.
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Publishes the verdict (filter state `wasm.transparent_cache.verdict`).
    fn set_verdict(&mut self, verdict: &str) -> Result<(), HostError>;
    /// Answers the client locally.
    fn send_local_response(&mut self, r: &Response, details: &str) -> Result<(), HostError>;
    /// Lets a held request go on.
    fn resume_request(&mut self) -> Result<(), HostError>;
    /// Makes a callout; the token its answer comes back with.
    fn dispatch(&mut self, callout: &Callout) -> Result<u32, String>;
    /// Writes a warning to Envoy's log.
    fn log_warn(&mut self, message: &str);
}

/// The real host.
pub struct Envoy;

impl Host for Envoy {
    fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        abi::replace_request_header(name, value)
    }

    fn set_verdict(&mut self, verdict: &str) -> Result<(), HostError> {
        abi::set_property(crate::VERDICT_PROPERTY, verdict.as_bytes())
    }

    fn send_local_response(&mut self, r: &Response, details: &str) -> Result<(), HostError> {
        abi::send_local_response(r.status, details, &r.headers, &r.body)
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        abi::resume_request()
    }

    fn dispatch(&mut self, callout: &Callout) -> Result<u32, String> {
        dispatch(callout)
    }

    fn log_warn(&mut self, message: &str) {
        log_warn(message);
    }
}

/// Makes a callout to the engine's cluster (the root context sends records with it too). The one
/// SDK host call left: it registers the callout's token with the SDK's dispatcher, which routes
/// the answer to the context that made it; it panics only on a status Envoy's `http_call` never
/// returns (Envoy answers `Ok`, `BadArgument` or `InternalFailure`).
pub fn dispatch(callout: &Callout) -> Result<u32, String> {
    hostcalls::dispatch_http_call(
        &callout.cluster,
        callout.header_pairs(),
        Some(&callout.body),
        Vec::new(),
        Duration::from_millis(callout.timeout_ms),
    )
    .map_err(|s| format!("the host refused the call ({s:?}; is the cluster defined?)"))
}

/// A warning in Envoy's log.
pub fn log_warn(message: &str) {
    abi::log(abi::LOG_WARN, message);
}
