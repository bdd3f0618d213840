//! How HTTP values travel in span attributes so that every reader keeps them: the Softprobe
//! runtime keeps only scalar attributes (string, int, double, bool) and drops arrays and bytes
//! without a word, and the real agents read bodies back by their content type alone. These are
//! the rules both our writer ([`crate::codec`]) and our reader follow.
//!
//! - **Repeated header lines** become one string, combined as RFC 9110 §5.3 allows (`", "`);
//!   `cookie` with `"; "` (RFC 9113 §8.2.3); `set-cookie`, which cannot be combined, with `"\n"`,
//!   a byte no field value can hold, so the lines split back exactly.
//! - **Non-UTF-8 header values** (a string cannot hold them) become the base64 of the combined
//!   bytes, marked by the scalar attribute `transparent_cache.encoding.<attribute> = "base64"`.
//! - **Bodies** are text when their message's content type is textual (`text/*`,
//!   `application/json`, `application/xml`, `application/x-www-form-urlencoded`), no
//!   `content-encoding` is applied, and the bytes are UTF-8; otherwise standard base64. This is the
//!   real agents' convention, so a reader can tell from the content type alone; the
//!   `<body attribute>.encoding = "base64"` marker is still sent (it is exact where the content
//!   type can't tell: a textual type whose bytes are not UTF-8).
//! - Reading a body back: marked base64 is decoded; an unmarked string is decoded only when the
//!   content type is not textual **and** the string is strict (canonical, padded) base64;
//!   everything else is the string's own bytes. So a genuine `text/plain` body that looks like
//!   base64 stays text.

use base64::Engine as _;

/// Prefix of our own exactness attributes (never read by the runtime: it has no such names).
pub const OWN_PREFIX: &str = "transparent_cache.";
/// `transparent_cache.encoding.<attribute>`: `"base64"` when that header attribute's string is
/// the base64 of its bytes.
pub const ENCODING_PREFIX: &str = "transparent_cache.encoding.";
/// `transparent_cache.lines.<attribute>`: the exact header lines (an array; the runtime drops
/// it, our backend reads it) when a header was sent more than once.
pub const LINES_PREFIX: &str = "transparent_cache.lines.";

/// The separator that combines repeated lines of header `lower_name` into one value.
pub fn separator(lower_name: &str) -> &'static [u8] {
    match lower_name {
        "set-cookie" => b"\n",
        "cookie" => b"; ",
        _ => b", ",
    }
}

/// Joins header lines with the separator of `lower_name`.
pub fn combine<V: AsRef<[u8]>>(lower_name: &str, lines: &[V]) -> Vec<u8> {
    let sep = separator(lower_name);
    let len = lines.iter().map(|l| l.as_ref().len() + sep.len()).sum();
    let mut out = Vec::with_capacity(len);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(line.as_ref());
    }
    out
}

/// Splits a combined value back into lines where that is exact (`set-cookie` only: every other
/// combination is one line by RFC 9110 semantics).
pub fn split(lower_name: &str, value: Vec<u8>) -> Vec<Vec<u8>> {
    if lower_name == "set-cookie" && value.contains(&b'\n') {
        value.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
    } else {
        vec![value]
    }
}

/// The media type of a `content-type` value, lower-cased, without parameters.
fn media_type(content_type: &[u8]) -> String {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    String::from_utf8_lossy(content_type.get(..end).unwrap_or_default())
        .trim()
        .to_ascii_lowercase()
}

/// Whether a message with these `content-type` and `content-encoding` values carries its body as
/// text (see the module docs). No content type counts as binary, as the agents have it.
pub fn is_textual(content_type: Option<&[u8]>, content_encoding: Option<&[u8]>) -> bool {
    if let Some(ce) = content_encoding {
        let ce = String::from_utf8_lossy(ce);
        let ce = ce.trim();
        if !ce.is_empty() && !ce.eq_ignore_ascii_case("identity") {
            return false;
        }
    }
    let Some(ct) = content_type else {
        return false;
    };
    let media = media_type(ct);
    media.starts_with("text/")
        || matches!(
            media.as_str(),
            "application/json" | "application/xml" | "application/x-www-form-urlencoded"
        )
}

/// Whether a body goes into a span as base64 (else as its UTF-8 text).
pub fn body_is_base64(
    content_type: Option<&[u8]>,
    content_encoding: Option<&[u8]>,
    body: &[u8],
) -> bool {
    !(is_textual(content_type, content_encoding) && std::str::from_utf8(body).is_ok())
}

/// The standard base64 (with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes strict base64: the standard alphabet, canonical padding, no whitespace, no stray
/// trailing bits, and not empty. `None` for anything else.
pub fn strict_base64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Reads a body attribute's string back into bytes (see the module docs).
pub fn read_body(text: &str, marked_base64: bool, textual: bool) -> Result<Vec<u8>, String> {
    if marked_base64 {
        return base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("not valid base64: {e}"));
    }
    if !textual {
        if let Some(bytes) = strict_base64(text) {
            return Ok(bytes);
        }
    }
    Ok(text.as_bytes().to_vec())
}

/// A value our redaction produced: `sha256:` and 64 lower-case hex digits.
pub fn is_redacted_value(value: &[u8]) -> bool {
    value.len() == 71
        && value.starts_with(b"sha256:")
        && value.get(7..).is_some_and(|h| {
            h.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_types_follow_the_agents() {
        for ct in [
            "text/plain",
            "text/html; charset=utf-8",
            "Application/JSON",
            "application/json;charset=utf-8",
            "application/xml",
            "application/x-www-form-urlencoded",
        ] {
            assert!(is_textual(Some(ct.as_bytes()), None), "{ct}");
        }
        for ct in [
            "application/octet-stream",
            "application/problem+json",
            "image/png",
            "",
        ] {
            assert!(!is_textual(Some(ct.as_bytes()), None), "{ct}");
        }
        assert!(!is_textual(None, None));
        assert!(!is_textual(Some(b"application/json"), Some(b"gzip")));
        assert!(is_textual(Some(b"application/json"), Some(b"identity")));
    }

    #[test]
    fn strict_base64_is_canonical_only() {
        assert_eq!(strict_base64("QUJDRA=="), Some(b"ABCD".to_vec()));
        assert_eq!(strict_base64("QUJDRA"), None);
        assert_eq!(strict_base64("QUJDRB=="), None);
        assert_eq!(strict_base64("QUJD RA=="), None);
        assert_eq!(strict_base64(""), None);
        assert_eq!(strict_base64("hello"), None);
    }

    #[test]
    fn bodies_read_back_by_marker_then_type() {
        assert_eq!(read_body("QUJDRA==", false, true).unwrap(), b"QUJDRA==");
        assert_eq!(read_body("QUJDRA==", false, false).unwrap(), b"ABCD");
        assert_eq!(read_body("QUJDRA==", true, true).unwrap(), b"ABCD");
        assert_eq!(
            read_body("not base64", false, false).unwrap(),
            b"not base64"
        );
        assert!(read_body("!!", true, false).is_err());
    }

    #[test]
    fn lines_combine_and_set_cookie_splits_back() {
        assert_eq!(combine("x-multi", &[b"a", b"b"]), b"a, b");
        assert_eq!(combine("cookie", &[b"a=1", b"b=2"]), b"a=1; b=2");
        let sc = combine("set-cookie", &[&b"s1=one; Path=/"[..], b"s2=two"]);
        assert_eq!(sc, b"s1=one; Path=/\ns2=two");
        assert_eq!(
            split("set-cookie", sc),
            vec![b"s1=one; Path=/".to_vec(), b"s2=two".to_vec()]
        );
        assert_eq!(split("x-multi", b"a, b".to_vec()), vec![b"a, b".to_vec()]);
    }

    #[test]
    fn redacted_values_are_recognised() {
        let h = crate::codec::redacted(b"secret");
        assert!(is_redacted_value(h.as_bytes()));
        assert!(!is_redacted_value(b"sha256:abc"));
        assert!(!is_redacted_value(h.to_uppercase().as_bytes()));
    }
}
