//! # filter-core
//!
//! The transparent-cache engine: configuration, eligibility rules, the per-request state machine,
//! the Softprobe OTLP codec, redaction and limits. Pure Rust with no I/O and no host SDK: hosts
//! (the proxy-wasm plugin, the Envoy dynamic module, the ext_proc sidecar) feed it events and carry
//! out the decisions it returns.
//!
//! ```
//! use std::sync::Arc;
//! use filter_core::{Config, Engine, Flow, Node, Services, Stream, AtomicCounters};
//!
//! let config = Config::from_json(br#"{"mode": "record_and_inject"}"#).unwrap();
//! let engine = Arc::new(Engine::new(config, &Node::default(), Services {
//!     metrics: Arc::new(AtomicCounters::default()),
//!     clock: Box::new(|| 0),
//!     seed: 42,
//! }));
//! let mut stream = Stream::new(engine);
//! let headers = vec![
//!     (b":method".to_vec(), b"GET".to_vec()),
//!     (b":path".to_vec(), b"/items".to_vec()),
//!     (b":authority".to_vec(), b"api.example.com".to_vec()),
//! ];
//! // A request without a body is held while the backend is asked.
//! let d = stream.on_request_headers(headers, true);
//! assert_eq!(d.flow, Flow::Hold);
//! assert!(d.effects.lookup.is_some());
//! ```
#![forbid(unsafe_code)]
pub mod breaker;
pub mod codec;
pub mod config;
pub mod encoding;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod otlp_json;
pub mod records;
pub mod rules;
pub mod trace;
pub mod wire;

pub use codec::{AnswerError, DecodeError, Direction, Format, Redactor};
pub use config::{Config, ConfigError, Mode, OnBackendError, RequestMode, DEFAULT_VERDICT_HEADER};
pub use engine::{
    Callout, Decision, Effects, Engine, Flow, LocalReply, LookupReply, LookupResult, Node,
    RecordResult, Services, Stream,
};
pub use http::{Header, Response};
pub use metrics::{AtomicCounters, Bypass, Counter, LookupFailure, Metrics};
pub use records::{Outgoing, RecordLimits, RecordQueue};
