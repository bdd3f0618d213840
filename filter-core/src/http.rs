//! HTTP values as the hosts hand them over: names and values as bytes, repeated headers in order.

use std::borrow::Cow;

/// One header line. Names from Envoy are lower-case; values may be any bytes (not only UTF-8).
pub type Header = (Vec<u8>, Vec<u8>);

/// The first value of a header, by case-insensitive name: in owned [`Header`]s, or in borrowed
/// `(&[u8], &[u8])` pairs (the dynamic module's view of Envoy's headers).
pub fn header<'a, N: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: &'a [(N, V)],
    name: &str,
) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_ref())
}

/// The `content-length` value, when it is a number.
pub fn content_length<N: AsRef<[u8]>, V: AsRef<[u8]>>(headers: &[(N, V)]) -> Option<u64> {
    std::str::from_utf8(header(headers, "content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A status code from its header value (`:status`): three ASCII digits, 100-999 (surrounding
/// whitespace allowed). `None` for anything else.
pub fn parse_status(value: &[u8]) -> Option<u16> {
    let v = value.trim_ascii();
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v)
        .ok()?
        .parse()
        .ok()
        .filter(|s| *s >= 100)
}

/// The `:status` of a response header list.
pub fn status(headers: &[Header]) -> Option<u16> {
    parse_status(header(headers, ":status")?)
}

/// Headers grouped by lower-case name, first appearance first, values in the order they came.
/// A name that is already lower-case UTF-8 (what Envoy hands over) is borrowed, not copied.
pub fn group(headers: &[Header]) -> Vec<(Cow<'_, str>, Vec<&[u8]>)> {
    let mut out: Vec<(Cow<'_, str>, Vec<&[u8]>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = lower(name);
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => out.push((name, vec![value.as_slice()])),
        }
    }
    out
}

/// `name` as lower-case text (invalid UTF-8 replaced), borrowed when it already is.
fn lower(name: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(name) {
        Ok(s) if !s.bytes().any(|b| b.is_ascii_uppercase()) => Cow::Borrowed(s),
        _ => Cow::Owned(String::from_utf8_lossy(name).to_ascii_lowercase()),
    }
}

/// True for RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header name that is an RFC 9110 token.
pub fn is_token(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b))
}

/// A header value without CR, LF or NUL.
pub fn is_safe_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

/// Hop-by-hop and framing headers the host must own; never replayed from a recording.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

#[cfg(test)]
mod tests {
    #[test]
    fn statuses_are_three_digits() {
        assert_eq!(super::parse_status(b"200"), Some(200));
        assert_eq!(super::parse_status(b" 404 "), Some(404));
        for bad in [&b""[..], b"20", b"2000", b"abc", b"099", b"-20", b"2 0"] {
            assert_eq!(super::parse_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_group_by_lower_case_name_borrowing_lower_case_ones() {
        let h = |n: &[u8], v: &[u8]| (n.to_vec(), v.to_vec());
        let headers = [
            h(b"x-a", b"1"),
            h(b"X-A", b"2"),
            h(b"b\xff", b"3"),
            h(b"x-a", b"4"),
        ];
        let g = super::group(&headers);
        let names: Vec<&str> = g.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["x-a", "b\u{fffd}"]);
        assert_eq!(g[0].1, [&b"1"[..], b"2", b"4"]);
        assert!(matches!(g[0].0, std::borrow::Cow::Borrowed(_)));
    }
}

/// A complete HTTP response, as replayed on a hit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, in order; repeated names appear once per value.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}
