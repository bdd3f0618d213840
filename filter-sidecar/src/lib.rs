//! # filter-sidecar
//!
//! The transparent-cache engine beside the proxy, as an Envoy external processor
//! (`envoy.filters.http.ext_proc`, gRPC). Envoy sends each request's headers and buffered body;
//! the sidecar asks the backend itself (its own pooled HTTP client) and answers a hit with an
//! `ImmediateResponse`, anything else with "continue"; responses are copied as they stream past
//! and recorded from a bounded queue, never on the client's path. See the crate README for the
//! processing modes, their cost and the Istio 1.18 wiring.
#![forbid(unsafe_code)]
pub mod backend;
pub mod config;
pub mod metrics;
pub mod phases;
pub mod records;
pub mod server;
pub mod service;
