//! W3C trace context: the caller's `traceparent` makes our spans its children, and `tracestate`
//! may carry the Softprobe session id (`x-sp-session-id=<id>`).

use crate::http::{self, Header};

/// The caller's span, from a valid `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The `tracestate` header, passed on as it came (when it is UTF-8).
    pub trace_state: String,
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        if !pair
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Parses `traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; `None` when absent
/// or invalid (all-zero ids, version `ff`, wrong lengths).
pub fn parent(headers: &[Header]) -> Option<Parent> {
    let value = http::header(headers, "traceparent")?;
    let mut parts = value.trim_ascii().split(|&b| b == b'-');
    let version = hex::<1>(parts.next()?)?;
    let trace_id = hex::<16>(parts.next()?)?;
    let span_id = hex::<8>(parts.next()?)?;
    let _flags = hex::<1>(parts.next()?)?;
    if version == [0xff] || (version == [0] && parts.next().is_some()) {
        return None;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let trace_state = http::header(headers, "tracestate")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
        .to_string();
    Some(Parent {
        trace_id,
        span_id,
        trace_state,
    })
}

/// The key of the Softprobe session entry in `tracestate`.
pub const SESSION_TRACESTATE_KEY: &[u8] = b"x-sp-session-id";

/// The session id carried in `tracestate`, if any.
pub fn session_from_tracestate(headers: &[Header]) -> Option<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"tracestate"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .find_map(|entry| {
            let (key, value) = entry.split_at(entry.iter().position(|&b| b == b'=')?);
            let value = value.get(1..)?.trim_ascii();
            (key.trim_ascii() == SESSION_TRACESTATE_KEY && !value.is_empty())
                .then(|| value.to_vec())
        })
}
