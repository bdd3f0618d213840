//! # filter-native
//!
//! The transparent-cache engine ([`filter_core`]) as an Envoy dynamic module: a native shared
//! object (`libtransparent_cache.so`) loaded by `envoy.filters.http.dynamic_modules`, so local
//! Envoy deployments run the cache without a wasm VM, with the same behaviour as the proxy-wasm
//! plugin.
//!
//! - [`abi`]: our minimal binding of the Envoy 1.40 dynamic-module ABI (the only `unsafe` code)
//!   and the exported event hooks, each of which catches panics and fails open;
//! - [`sdk`]: the safe API over it (`HttpFilterConfig` / `HttpFilter`, host traits
//!   `EnvoyHttpFilterConfig` / `EnvoyHttpFilter`), shaped like Envoy's Rust SDK;
//! - [`filter`]: the cache filter over that API.
pub mod abi;
pub mod filter;
pub mod sdk;

use sdk::{EnvoyHttpFilter, EnvoyHttpFilterConfig, HttpFilterConfig};

/// What the config-new hook builds: the cache filter for a JSON config (the filter's
/// `filter_config`, a `google.protobuf.StringValue`; empty means all defaults). `Err` carries the
/// engine's message; Envoy then rejects the filter.
pub fn new_filter_config<EC, EHF>(
    envoy: &mut EC,
    _name: &str,
    config: &[u8],
) -> Result<Box<dyn HttpFilterConfig<EC, EHF>>, String>
where
    EC: EnvoyHttpFilterConfig,
    EHF: EnvoyHttpFilter + 'static,
{
    filter::new_config(envoy, config).map(|c| Box::new(c) as Box<dyn HttpFilterConfig<EC, EHF>>)
}
