//! W3C trace context: the caller's `traceparent` makes our spans its children, and `tracestate`
//! may carry the Softprobe session id (`x-softprobe-session-id=<id>`, or the older
//! `x-sp-session-id=<id>`). On the inbound side the filter writes that entry itself
//! ([`propagate`]).

use crate::http::{self, Header};

/// The caller's span, from a valid `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The `tracestate` header, passed on as it came (when it is UTF-8).
    pub trace_state: String,
}

/// Appends `bytes` as lower-case hex (what `traceparent` and our redaction hashes use).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
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

/// A W3C `tracestate` key: a lower-case letter then up to 255 of `a-z 0-9 _ - * /`, or the
/// multi-tenant form `tenant@system`.
pub fn is_tracestate_key(key: &[u8]) -> bool {
    let simple = |k: &[u8], first_digit_ok: bool| {
        (1..=256).contains(&k.len())
            && k.first()
                .is_some_and(|b| b.is_ascii_lowercase() || (first_digit_ok && b.is_ascii_digit()))
            && k.iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.iter().position(|&b| b == b'@') {
        None => simple(key, false),
        Some(at) => {
            let (tenant, system) = key.split_at(at);
            let system = system.get(1..).unwrap_or_default();
            simple(tenant, true)
                && tenant.len() <= 241
                && simple(system, false)
                && system.len() <= 14
        }
    }
}

/// A W3C `tracestate` value: 1-256 printable ASCII characters but `,` and `=`, not ending in a
/// space.
pub fn is_tracestate_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

/// The entries of every `tracestate` line, in order, trimmed, empty ones left out.
fn entries(headers: &[Header]) -> impl Iterator<Item = &[u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"tracestate"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

fn entry_key(entry: &[u8]) -> &[u8] {
    let end = entry.iter().position(|&b| b == b'=').unwrap_or(entry.len());
    entry.get(..end).unwrap_or_default().trim_ascii()
}

/// The value of the `tracestate` entry `key`, if any and not empty.
pub fn tracestate_entry(headers: &[Header], key: &str) -> Option<Vec<u8>> {
    entries(headers).find_map(|entry| {
        let at = entry.iter().position(|&b| b == b'=')?;
        let value = entry.get(at + 1..)?.trim_ascii();
        (entry_key(entry) == key.as_bytes() && !value.is_empty()).then(|| value.to_vec())
    })
}

/// At most this many `tracestate` entries (W3C): the rightmost are dropped beyond it.
const MAX_ENTRIES: usize = 32;

/// The request headers to set so that the forwarded request carries `session` in its
/// `tracestate` entry `key`: `tracestate` with that entry first (W3C: an updated entry moves to
/// the left) and every other entry kept, and a new `traceparent` (from `new_ids`: trace id, span
/// id) when there is no valid one. Empty when the entry is already there with that value, or
/// when `session` cannot be a `tracestate` value.
pub fn propagate(
    headers: &[Header],
    key: &str,
    session: &[u8],
    new_ids: impl FnOnce() -> ([u8; 16], [u8; 8]),
) -> Vec<Header> {
    if !is_tracestate_value(session) || tracestate_entry(headers, key).as_deref() == Some(session) {
        return Vec::new();
    }
    let mut value = Vec::with_capacity(key.len() + 1 + session.len());
    value.extend_from_slice(key.as_bytes());
    value.push(b'=');
    value.extend_from_slice(session);
    for entry in entries(headers)
        .filter(|e| entry_key(e) != key.as_bytes())
        .take(MAX_ENTRIES - 1)
    {
        value.push(b',');
        value.extend_from_slice(entry);
    }
    let mut edits = vec![(b"tracestate".to_vec(), value)];
    if parent(headers).is_none() {
        let (trace_id, span_id) = new_ids();
        let mut tp = String::with_capacity(55);
        tp.push_str("00-");
        push_hex(&mut tp, &trace_id);
        tp.push('-');
        push_hex(&mut tp, &span_id);
        tp.push_str("-01");
        edits.push((b"traceparent".to_vec(), tp.into_bytes()));
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn entries_are_found_by_key() {
        let headers = h(&[
            ("tracestate", "congo=t61, x-softprobe-session-id=s1"),
            ("tracestate", "x-sp-session-id=s2"),
        ]);
        assert_eq!(
            tracestate_entry(&headers, "x-softprobe-session-id").unwrap(),
            b"s1"
        );
        assert_eq!(
            tracestate_entry(&headers, "x-sp-session-id").unwrap(),
            b"s2"
        );
        assert_eq!(tracestate_entry(&headers, "congo").unwrap(), b"t61");
        assert!(tracestate_entry(&headers, "rojo").is_none());
        assert!(tracestate_entry(&h(&[("tracestate", "k=")]), "k").is_none());
    }

    #[test]
    fn propagation_prepends_and_keeps_the_rest() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let headers = h(&[
            ("traceparent", tp),
            ("tracestate", "congo=t61,x-softprobe-session-id=old"),
        ]);
        let edits = propagate(&headers, "x-softprobe-session-id", b"s1", || unreachable!());
        assert_eq!(
            edits,
            h(&[("tracestate", "x-softprobe-session-id=s1,congo=t61")])
        );
        // Already there: nothing to do.
        let headers = h(&[
            ("traceparent", tp),
            ("tracestate", "x-softprobe-session-id=s1"),
        ]);
        assert!(propagate(&headers, "x-softprobe-session-id", b"s1", || unreachable!()).is_empty());
        // A value tracestate cannot hold is not written.
        assert!(propagate(&[], "x-softprobe-session-id", b"a,b", || unreachable!()).is_empty());
    }

    #[test]
    fn propagation_creates_a_traceparent_when_none_is_valid() {
        let edits = propagate(&h(&[("traceparent", "garbage")]), "k", b"s", || {
            ([0xab; 16], [0xcd; 8])
        });
        assert_eq!(
            edits,
            h(&[
                ("tracestate", "k=s"),
                (
                    "traceparent",
                    "00-abababababababababababababababab-cdcdcdcdcdcdcdcd-01"
                ),
            ])
        );
        assert!(parent(&edits).is_some());
    }

    #[test]
    fn keys_and_values_follow_w3c() {
        assert!(is_tracestate_key(b"x-softprobe-session-id"));
        assert!(is_tracestate_key(b"tenant1@vendor"));
        assert!(!is_tracestate_key(b"X-Upper"));
        assert!(!is_tracestate_key(b""));
        assert!(!is_tracestate_key(b"1abc"));
        assert!(is_tracestate_value(b"sess-1"));
        assert!(!is_tracestate_value(b"a=b"));
        assert!(!is_tracestate_value(b"trailing "));
        assert!(!is_tracestate_value(b""));
    }
}
