//! End-to-end testbed for transparent-cache: runs real processes on
//! 127.0.0.1 (Envoy, the `demo-upstream` and `fake-backend` binaries of this
//! crate) and lets tests assert on what each of them saw.
//!
//! Every process lives in its own temp dir with its log, is killed (with its
//! process group) on drop, and binds ephemeral ports, so tests can run in
//! parallel. The API is async (tokio).

mod artifact;
pub mod backend;
pub mod bins;
pub mod demo_upstream;
pub mod envoy;
pub mod envoy_config;
pub mod fake_backend;
pub mod h2c;
pub mod header;
pub mod http1;
pub mod interop;
pub mod native;
pub mod plugin;
pub mod proc;
pub mod raw;
pub mod service;
pub mod shape;
pub mod sidecar;
pub mod tracing;

pub use backend::RealBackend;
pub use demo_upstream::DemoUpstream;
pub use envoy::Envoy;
pub use fake_backend::FakeBackend;
pub use header::HeaderField;
pub use proc::{closed_port, free_port, ClosedPort, Proc};
pub use shape::{Layout, Shape, Site};
