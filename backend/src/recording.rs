//! A stored recording: one request and the response it got, as read from an extract span.
//!
//! The same JSON form is used in the store, by the admin API and in export documents. Bytes
//! (bodies, header values) are a JSON string when they are UTF-8, else `{"base64": "..."}`.

use base64::Engine as _;
use filter_core::codec::HttpSpan;
use filter_core::http::Response;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::MatchKeyConfig;
use crate::key::{self, KeyHash, KeyInput};

/// Bytes that serialize as a string when UTF-8, else as `{"base64": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap as _;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Base64 { base64: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(s) => Ok(Payload(s.into_bytes())),
            Repr::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map(Payload)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// One header name with all its values, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderField {
    /// Lower-case name.
    pub name: String,
    /// Every value, in the order received.
    pub values: Vec<Payload>,
}

/// The recorded request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// `:authority`.
    pub host: String,
    /// Path including the query string.
    pub path: String,
    /// Request headers as sent by the filter (sensitive values already redacted).
    #[serde(default)]
    pub headers: Vec<HeaderField>,
    /// Exact body bytes.
    #[serde(default)]
    pub body: Payload,
}

/// The recorded response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// Status code, 100-599.
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: Vec<HeaderField>,
    /// Exact body bytes.
    #[serde(default)]
    pub body: Payload,
}

/// One recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// Store id; assigned when stored (ids given in an import are replaced).
    #[serde(default)]
    pub id: u64,
    /// When the backend stored it, in Unix nanoseconds. Newest wins among equal keys.
    pub recorded_at_unix_nanos: u64,
    /// `sp.service.name`, else the resource's `service.name`.
    #[serde(default)]
    pub service: Option<String>,
    /// `sp.session.id`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// `sp.traffic.direction`.
    #[serde(default)]
    pub direction: Option<String>,
    /// The request.
    pub request: RecordedRequest,
    /// The response.
    pub response: RecordedResponse,
}

fn headers_of(values: Vec<(String, Vec<Vec<u8>>)>) -> Vec<HeaderField> {
    values
        .into_iter()
        .map(|(name, values)| HeaderField {
            name,
            values: values.into_iter().map(Payload).collect(),
        })
        .collect()
}

fn headers_for_key(headers: &[HeaderField]) -> Vec<(String, Vec<Vec<u8>>)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                h.values.iter().map(|v| v.0.clone()).collect(),
            )
        })
        .collect()
}

/// Checks a status read from a span: 200 when absent, else 100-599.
pub fn status_of(status: Option<i64>) -> Result<u16, String> {
    let status = status.unwrap_or(200);
    match u16::try_from(status) {
        Ok(s) if (100..=599).contains(&s) => Ok(s),
        _ => Err(format!(
            "`http.response.status_code` {status} is outside 100-599"
        )),
    }
}

/// Where a span's method is read from (the Softprobe agents send only the pseudo-header).
pub const METHOD_ATTRS: &str = "`http.request.method` or `http.request.header.:method`";
/// Where a span's host is read from.
pub const HOST_ATTRS: &str = "`url.host` or `http.request.header.:authority`";
/// Where a span's path is read from.
pub const PATH_ATTRS: &str = "`url.path` or `http.request.header.:path`";

/// Why a span is not a usable request description.
pub fn require<'a>(value: &'a Option<String>, attr: &str) -> Result<&'a str, String> {
    value
        .as_deref()
        .ok_or_else(|| format!("span has no {attr} attribute"))
}

impl Recording {
    /// Builds a recording from a decoded extract span.
    pub fn from_span(span: HttpSpan, recorded_at_unix_nanos: u64) -> Result<Recording, String> {
        let method = require(&span.method, METHOD_ATTRS)?.to_owned();
        let host = require(&span.host, HOST_ATTRS)?.to_owned();
        let path = require(&span.path, PATH_ATTRS)?.to_owned();
        let Some(response) = span.response else {
            return Err("extract span has no `http.response.*` attribute".to_owned());
        };
        Ok(Recording {
            id: 0,
            recorded_at_unix_nanos,
            service: span.service_name,
            session_id: span.session_id,
            direction: span.direction,
            request: RecordedRequest {
                method,
                host,
                path,
                headers: headers_of(span.request_headers),
                body: Payload(span.request_body),
            },
            response: RecordedResponse {
                status: status_of(response.status)?,
                headers: headers_of(response.headers),
                body: Payload(response.body),
            },
        })
    }

    /// The match key of this recording's request.
    pub fn key(&self, config: &MatchKeyConfig) -> KeyHash {
        let headers = if config.headers.is_empty() && config.caller_headers.is_empty() {
            Vec::new()
        } else {
            headers_for_key(&self.request.headers)
        };
        key::compute(
            config,
            &KeyInput {
                method: &self.request.method,
                host: &self.request.host,
                path: &self.request.path,
                headers: &headers,
                body: &self.request.body.0,
                session_id: self.session_id.as_deref(),
                service: self.service.as_deref(),
            },
        )
    }

    /// The response to replay, one header line per value.
    pub fn to_response(&self) -> Response {
        Response {
            status: self.response.status,
            headers: self
                .response
                .headers
                .iter()
                .flat_map(|h| h.values.iter().map(|v| (h.name.clone(), v.0.clone())))
                .collect(),
            body: self.response.body.0.clone(),
        }
    }
}

/// A GET recording for unit tests: `path` on host `h`, service `svc`, answering 200 `body`.
#[cfg(test)]
pub(crate) fn sample(path: &str, at: u64, body: &[u8]) -> Recording {
    Recording {
        id: 0,
        recorded_at_unix_nanos: at,
        service: Some("svc".into()),
        session_id: None,
        direction: None,
        request: RecordedRequest {
            method: "GET".into(),
            host: "h".into(),
            path: path.into(),
            headers: vec![],
            body: Payload::default(),
        },
        response: RecordedResponse {
            status: 200,
            headers: vec![],
            body: Payload(body.to_vec()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_text_or_base64() {
        let text = serde_json::to_string(&Payload(b"hi".to_vec())).unwrap();
        assert_eq!(text, r#""hi""#);
        let bin = serde_json::to_string(&Payload(vec![0xff, 0x00])).unwrap();
        assert_eq!(bin, r#"{"base64":"/wA="}"#);
        for s in [text, bin] {
            let back: Payload = serde_json::from_str(&s).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), s);
        }
        assert!(serde_json::from_str::<Payload>(r#"{"base64":"!!"}"#).is_err());
    }

    #[test]
    fn status_defaults_to_200_and_is_range_checked() {
        assert_eq!(status_of(None), Ok(200));
        assert_eq!(status_of(Some(404)), Ok(404));
        assert!(status_of(Some(99)).is_err());
        assert!(status_of(Some(70000)).is_err());
    }
}
