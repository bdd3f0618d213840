//! JSON shapes of the fake backend's control API.

use crate::header::{base64_bytes, HeaderField};
use serde::{Deserialize, Serialize};

/// Body sent for [`Behaviour::Undecodable`]: field number 0 with wire type 7,
/// which no protobuf decoder accepts.
pub const UNDECODABLE_BODY: &[u8] = b"\x07\xff\xff\xffnot-protobuf";

/// How the fake backend answers one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Behaviour {
    /// 404 with an empty body.
    Miss,
    /// This status with an empty body.
    Status {
        /// Status code.
        status: u16,
    },
    /// 200 with this content type and body.
    Hit {
        /// `content-type` of the answer.
        content_type: String,
        /// Body bytes, base64 in JSON.
        #[serde(with = "base64_bytes")]
        body_base64: Vec<u8>,
    },
    /// Any status with this content type and body (e.g. the runtime's JSON error answers).
    Answer {
        /// Status code.
        status: u16,
        /// `content-type` of the answer (none when empty).
        content_type: String,
        /// Body bytes, base64 in JSON.
        #[serde(with = "base64_bytes")]
        body_base64: Vec<u8>,
    },
    /// 200, `content-type: application/x-protobuf`, [`UNDECODABLE_BODY`].
    Undecodable,
    /// Never answers; the connection stays open until the client gives up.
    Timeout,
    /// Waits `delay_ms`, then behaves like `then`.
    Slow {
        /// Delay before answering, in milliseconds.
        delay_ms: u64,
        /// What to do after the delay.
        then: Box<Behaviour>,
    },
}

impl Behaviour {
    /// `{"kind":"status","status":s}`.
    pub fn status(status: u16) -> Self {
        Behaviour::Status { status }
    }

    /// A protobuf hit with these bytes.
    pub fn hit_protobuf(body: impl Into<Vec<u8>>) -> Self {
        Behaviour::Hit {
            content_type: "application/x-protobuf".to_string(),
            body_base64: body.into(),
        }
    }

    /// `then` after `delay_ms`.
    pub fn slow(delay_ms: u64, then: Behaviour) -> Self {
        Behaviour::Slow {
            delay_ms,
            then: Box::new(then),
        }
    }
}

/// One request received on the backend listener (`GET /received`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Received {
    /// Request method.
    pub method: String,
    /// Request target, e.g. `/v1/inject`.
    pub path: String,
    /// Headers in wire order, exact bytes.
    pub headers: Vec<HeaderField>,
    /// Body bytes, base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub body_base64: Vec<u8>,
    /// False when the client vanished before the body ended.
    pub complete: bool,
    /// Wall-clock time the request was fully received, ms since the Unix epoch.
    pub received_unix_ms: u64,
    /// Same instant, ms since the fake backend started (monotonic).
    pub received_ms_since_start: u64,
}

impl Received {
    /// First value of header `name` (case-insensitive), lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        crate::header::find(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
