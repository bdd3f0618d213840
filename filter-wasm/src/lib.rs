//! # filter-wasm
//!
//! The transparent-cache proxy-wasm plugin for Envoy and Istio. A thin host adapter: it turns
//! proxy-wasm callbacks into [`filter_core::Stream`] events and carries out the
//! [`filter_core::Decision`]s they return. Everything about caching lives in `filter-core`.
//!
//! * [`root::Root`] (one per plugin configuration and worker): parses the configuration once,
//!   defines the counters, sends the engine's records (so they survive the streams that produced
//!   them) and fires the timers the engine asks for (a request held past its deadline).
//! * [`http::Http`] (one per request): feeds the engine and holds, resumes or answers the request.
//!
//! See `filter-wasm/README.md` for the Envoy configuration and the request modes.
mod abi;
pub mod host;
pub mod http;
pub mod metrics;
pub mod root;

use proxy_wasm::types::LogLevel;

/// The filter state key the verdict is stored under is `wasm.` followed by this
/// (`%FILTER_STATE(wasm.transparent_cache.verdict:PLAIN)%` in an access log).
pub const VERDICT_PROPERTY: &str = "transparent_cache.verdict";

/// Prefix of the counters; Envoy shows them as `wasmcustom.transparent_cache.<counter>`.
pub const STAT_PREFIX: &str = "transparent_cache";

/// How often the root context sends queued records and runs the watchdog.
pub const TICK_MS: u64 = 20;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}

/// Wall-clock milliseconds from the host (0 if it cannot tell).
pub(crate) fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

/// Wall-clock nanoseconds since the Unix epoch from the host (0 if it cannot tell).
pub(crate) fn now_nanos() -> u64 {
    abi::now_nanos().unwrap_or(0)
}
