//! The match key: the parts of a request that must be equal for a recording to answer it, hashed
//! with SHA-256 for the index.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::config::MatchKeyConfig;

/// A SHA-256 match key.
pub type KeyHash = [u8; 32];

/// The request parts a key is computed from.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// HTTP method (compared case-insensitively).
    pub method: &'a str,
    /// `:authority` (compared case-insensitively).
    pub host: &'a str,
    /// Path including the query string.
    pub path: &'a str,
    /// Request headers: lower-case name, values in order.
    pub headers: &'a [(String, Vec<Vec<u8>>)],
    /// The request body's exact bytes.
    pub body: &'a [u8],
    /// `sp.session.id`.
    pub session_id: Option<&'a str>,
    /// The service name.
    pub service: Option<&'a str>,
}

/// Bumped when the key's layout changes, so stores re-index.
pub const KEY_SCHEME: u32 = 2;

fn field(h: &mut Sha256, tag: &[u8], value: &[u8]) {
    h.update(tag);
    h.update((value.len() as u64).to_be_bytes());
    h.update(value);
}

fn opt_field(h: &mut Sha256, tag: &[u8], value: Option<&[u8]>) {
    match value {
        Some(v) => field(h, tag, v),
        None => h.update([0xff]),
    }
}

/// One header of the key: its name, how many values, each value as `value_of` gives it.
fn header_field<'v>(
    h: &mut Sha256,
    tag: &[u8],
    name: &str,
    headers: &'v [(String, Vec<Vec<u8>>)],
    value_of: impl Fn(&'v [u8]) -> std::borrow::Cow<'v, [u8]>,
) {
    let name = name.to_ascii_lowercase();
    field(h, tag, name.as_bytes());
    let values: Vec<&Vec<u8>> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
        .flat_map(|(_, vs)| vs.iter())
        .collect();
    h.update((values.len() as u64).to_be_bytes());
    for v in values {
        field(h, b"v", &value_of(v));
    }
}

/// Computes the key of a request under `config`.
pub fn compute(config: &MatchKeyConfig, input: &KeyInput<'_>) -> KeyHash {
    let mut h = Sha256::new();
    h.update(KEY_SCHEME.to_be_bytes());
    field(&mut h, b"m", input.method.to_ascii_uppercase().as_bytes());
    field(&mut h, b"h", input.host.to_ascii_lowercase().as_bytes());
    field(
        &mut h,
        b"p",
        strip_query(input.path, &config.ignore_query_params).as_bytes(),
    );
    for name in &config.headers {
        header_field(&mut h, b"H", name, input.headers, |v| {
            std::borrow::Cow::Borrowed(v)
        });
    }
    for name in &config.caller_headers {
        header_field(&mut h, b"C", name, input.headers, caller_value);
    }
    let body = body_for_key(input.body, &config.ignore_body_fields);
    field(&mut h, b"b", &body);
    if config.include_session_id {
        opt_field(&mut h, b"s", input.session_id.map(str::as_bytes));
    }
    if config.scope_by_service {
        opt_field(&mut h, b"S", input.service.map(str::as_bytes));
    }
    h.finalize().into()
}

/// A caller credential as it enters the key: the filter's redacted form (`sha256:<hex>`). A value
/// that arrives redacted is kept; a raw one (a peer that does not redact) is hashed the same way,
/// so both forms of one secret give one key and the secret itself never reaches the index.
pub fn caller_value(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if filter_core::encoding::is_redacted_value(value) {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(filter_core::codec::redacted(value).into_bytes())
    }
}

/// Lower-case hex of a key.
pub fn to_hex(key: &KeyHash) -> String {
    use std::fmt::Write as _;
    key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The path with the named query parameters removed; the order of the others is kept.
pub fn strip_query(path: &str, ignore: &[String]) -> String {
    if ignore.is_empty() {
        return path.to_owned();
    }
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !ignore.iter().any(|i| i == name)
        })
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The body as it enters the key: its exact bytes, unless fields are ignored and it parses as
/// JSON, in which case the canonical JSON without those fields.
pub fn body_for_key(body: &[u8], ignore_fields: &[String]) -> Vec<u8> {
    if ignore_fields.is_empty() {
        return body.to_vec();
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(mut value) => {
            remove_fields(&mut value, ignore_fields);
            let mut out = Vec::with_capacity(body.len());
            canonical(&value, &mut out);
            out
        }
        Err(_) => body.to_vec(),
    }
}

fn remove_fields(value: &mut Json, ignore: &[String]) {
    match value {
        Json::Object(map) => {
            map.retain(|k, _| !ignore.iter().any(|i| i == k));
            for v in map.values_mut() {
                remove_fields(v, ignore);
            }
        }
        Json::Array(items) => {
            for v in items {
                remove_fields(v, ignore);
            }
        }
        _ => {}
    }
}

/// JSON with object keys sorted, whatever order the map keeps.
fn canonical(value: &Json, out: &mut Vec<u8>) {
    match value {
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Json::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                canonical(v, out);
            }
            out.push(b'}');
        }
        Json::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(path: &'a str, body: &'a [u8]) -> KeyInput<'a> {
        KeyInput {
            method: "GET",
            host: "api.example.com",
            path,
            headers: &[],
            body,
            session_id: Some("s1"),
            service: Some("svc"),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn query_params_are_stripped_by_name() {
        let ig = strings(&["ts", "n"]);
        assert_eq!(strip_query("/a?x=1&ts=2&y", &ig), "/a?x=1&y");
        assert_eq!(strip_query("/a?ts=2&n", &ig), "/a");
        assert_eq!(strip_query("/a", &ig), "/a");
        assert_eq!(strip_query("/a?ts=2", &[]), "/a?ts=2");
    }

    #[test]
    fn json_fields_are_ignored_at_any_depth() {
        let ig = strings(&["ts"]);
        let a = body_for_key(br#"{"a":1,"ts":5,"b":[{"ts":1,"c":2}]}"#, &ig);
        let b = body_for_key(br#"{"b":[{"c":2,"ts":9}],"ts":7,"a":1}"#, &ig);
        assert_eq!(a, b);
        assert_eq!(a, br#"{"a":1,"b":[{"c":2}]}"#.to_vec());
        assert_eq!(body_for_key(b"not json ts", &ig), b"not json ts".to_vec());
    }

    #[test]
    fn each_part_changes_the_key() {
        let c = MatchKeyConfig::default();
        let base = compute(&c, &input("/a", b"x"));
        assert_eq!(base, compute(&c, &input("/a", b"x")));
        assert_ne!(base, compute(&c, &input("/b", b"x")));
        assert_ne!(base, compute(&c, &input("/a", b"y")));
        let mut other_session = input("/a", b"x");
        other_session.session_id = None;
        assert_ne!(base, compute(&c, &other_session));
        let mut other_service = input("/a", b"x");
        other_service.service = Some("other");
        assert_eq!(base, compute(&c, &other_service));
        let scoped = MatchKeyConfig {
            scope_by_service: true,
            ..MatchKeyConfig::default()
        };
        assert_ne!(
            compute(&scoped, &input("/a", b"x")),
            compute(&scoped, &other_service)
        );
    }

    #[test]
    fn callers_are_told_apart_by_their_credentials_raw_or_redacted() {
        let c = MatchKeyConfig::default();
        let with = |name: &str, value: &[u8]| vec![(name.to_string(), vec![value.to_vec()])];
        let key = |headers: &[(String, Vec<Vec<u8>>)]| {
            let mut i = input("/me", b"");
            i.headers = headers;
            compute(&c, &i)
        };
        let alice = key(&with("authorization", b"Bearer alice"));
        let bob = key(&with("authorization", b"Bearer bob"));
        let anonymous = key(&[]);
        assert_ne!(alice, bob);
        assert_ne!(alice, anonymous);
        let redacted = filter_core::codec::redacted(b"Bearer alice");
        assert_eq!(
            alice,
            key(&with("Authorization", redacted.as_bytes())),
            "the filter's redacted form and the raw value are one caller"
        );
        for name in ["cookie", "x-api-key"] {
            assert_ne!(key(&with(name, b"a")), key(&with(name, b"b")), "{name}");
        }
        let opt_out = MatchKeyConfig {
            caller_headers: vec![],
            ..MatchKeyConfig::default()
        };
        let mut a = input("/me", b"");
        let ha = with("authorization", b"Bearer alice");
        a.headers = &ha;
        let mut b = input("/me", b"");
        let hb = with("authorization", b"Bearer bob");
        b.headers = &hb;
        assert_eq!(compute(&opt_out, &a), compute(&opt_out, &b));
    }

    #[test]
    fn configured_headers_enter_the_key() {
        let c = MatchKeyConfig {
            headers: strings(&["X-Tenant"]),
            ..MatchKeyConfig::default()
        };
        let h1 = vec![("x-tenant".to_string(), vec![b"a".to_vec()])];
        let h2 = vec![("x-tenant".to_string(), vec![b"b".to_vec()])];
        let mut a = input("/a", b"");
        a.headers = &h1;
        let mut b = input("/a", b"");
        b.headers = &h2;
        assert_ne!(compute(&c, &a), compute(&c, &b));
        assert_eq!(
            compute(&MatchKeyConfig::default(), &a),
            compute(&MatchKeyConfig::default(), &b)
        );
    }
}
