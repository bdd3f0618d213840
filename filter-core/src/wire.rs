//! A protobuf writer for the one message shape the filter sends: a `TracesData` holding one span.
//!
//! It borrows every header value and body from the caller and writes them straight into one output
//! buffer whose exact size is computed first, so a body is copied exactly once (into the output) and
//! a base64 body is encoded directly into the output. The result decodes with the prost messages in
//! [`crate::otlp`]; tests check that round trip.

use std::borrow::Cow;

use base64::Engine as _;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

/// An attribute value, borrowed where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// `string_value`.
    Str(Cow<'a, str>),
    /// `string_value` holding the standard base64 encoding of these bytes.
    Base64(Cow<'a, [u8]>),
    /// `bytes_value`.
    Bytes(Cow<'a, [u8]>),
    /// `int_value`.
    Int(i64),
    /// `array_value`.
    Array(Vec<Val<'a>>),
}

/// One `KeyValue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr<'a> {
    pub key: Cow<'a, str>,
    pub value: Val<'a>,
}

impl<'a> Attr<'a> {
    pub fn new(key: impl Into<Cow<'a, str>>, value: Val<'a>) -> Self {
        Attr {
            key: key.into(),
            value,
        }
    }
}

/// The span to write.
#[derive(Debug, Clone, Default)]
pub struct SpanOut<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: &'a str,
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<Attr<'a>>,
}

/// A `TracesData` with one resource (carrying `service.name`), one scope and one span.
#[derive(Debug, Clone)]
pub struct TracesOut<'a> {
    pub service_name: &'a str,
    pub scope_name: &'a str,
    pub scope_version: &'a str,
    pub span: SpanOut<'a>,
}

fn delimited(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn val_len(v: &Val<'_>) -> usize {
    match v {
        Val::Str(s) => key_len(1) + delimited(s.len()),
        Val::Base64(b) => key_len(1) + delimited(b64_len(b.len())),
        Val::Bytes(b) => key_len(7) + delimited(b.len()),
        Val::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        Val::Array(vs) => key_len(5) + delimited(array_len(vs)),
    }
}

fn array_len(vs: &[Val<'_>]) -> usize {
    vs.iter().map(|v| key_len(1) + delimited(val_len(v))).sum()
}

fn attr_len(a: &Attr<'_>) -> usize {
    key_len(1) + delimited(a.key.len()) + key_len(2) + delimited(val_len(&a.value))
}

fn attrs_len(tag: u32, attrs: &[Attr<'_>]) -> usize {
    attrs
        .iter()
        .map(|a| key_len(tag) + delimited(attr_len(a)))
        .sum()
}

fn str_field_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + delimited(s.len())
    }
}

fn span_len(s: &SpanOut<'_>) -> usize {
    key_len(1)
        + delimited(16)
        + key_len(2)
        + delimited(8)
        + str_field_len(3, s.trace_state)
        + s.parent_span_id.map_or(0, |_| key_len(4) + delimited(8))
        + str_field_len(5, s.name)
        + if s.kind != 0 {
            key_len(6) + encoded_len_varint(s.kind as u64)
        } else {
            0
        }
        + 2 * (key_len(7) + 8)
        + attrs_len(9, &s.attributes)
}

fn service_attr<'a>(t: &TracesOut<'a>) -> Attr<'a> {
    Attr::new("service.name", Val::Str(Cow::Borrowed(t.service_name)))
}

fn resource_len(t: &TracesOut<'_>) -> usize {
    attrs_len(1, std::slice::from_ref(&service_attr(t)))
}

fn scope_len(t: &TracesOut<'_>) -> usize {
    str_field_len(1, t.scope_name) + str_field_len(2, t.scope_version)
}

fn scope_spans_len(t: &TracesOut<'_>) -> usize {
    key_len(1) + delimited(scope_len(t)) + key_len(2) + delimited(span_len(&t.span))
}

fn resource_spans_len(t: &TracesOut<'_>) -> usize {
    key_len(1) + delimited(resource_len(t)) + key_len(2) + delimited(scope_spans_len(t))
}

/// The exact encoded size of `t`.
pub fn encoded_len(t: &TracesOut<'_>) -> usize {
    key_len(1) + delimited(resource_spans_len(t))
}

/// Encodes `t` into a buffer allocated once at its exact size.
pub fn encode(t: &TracesOut<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(encoded_len(t));
    header(1, resource_spans_len(t), &mut buf);
    header(1, resource_len(t), &mut buf);
    write_attr(1, &service_attr(t), &mut buf);
    header(2, scope_spans_len(t), &mut buf);
    header(1, scope_len(t), &mut buf);
    write_str(1, t.scope_name, &mut buf);
    write_str(2, t.scope_version, &mut buf);
    write_span(&t.span, &mut buf);
    debug_assert_eq!(buf.len(), buf.capacity());
    buf
}

fn header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn write_bytes(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    header(tag, b.len(), buf);
    buf.extend_from_slice(b);
}

fn write_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        write_bytes(tag, s.as_bytes(), buf);
    }
}

fn write_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn write_span(s: &SpanOut<'_>, buf: &mut Vec<u8>) {
    header(2, span_len(s), buf);
    write_bytes(1, &s.trace_id, buf);
    write_bytes(2, &s.span_id, buf);
    write_str(3, s.trace_state, buf);
    if let Some(p) = &s.parent_span_id {
        write_bytes(4, p, buf);
    }
    write_str(5, s.name, buf);
    if s.kind != 0 {
        encode_key(6, WireType::Varint, buf);
        encode_varint(s.kind as u64, buf);
    }
    write_fixed64(7, s.start_time_unix_nano, buf);
    write_fixed64(8, s.end_time_unix_nano, buf);
    for a in &s.attributes {
        write_attr(9, a, buf);
    }
}

fn write_attr(tag: u32, a: &Attr<'_>, buf: &mut Vec<u8>) {
    header(tag, attr_len(a), buf);
    write_bytes(1, a.key.as_bytes(), buf);
    header(2, val_len(&a.value), buf);
    write_val(&a.value, buf);
}

fn write_val(v: &Val<'_>, buf: &mut Vec<u8>) {
    match v {
        Val::Str(s) => write_bytes(1, s.as_bytes(), buf),
        Val::Bytes(b) => write_bytes(7, b, buf),
        Val::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        Val::Base64(b) => {
            let n = b64_len(b.len());
            header(1, n, buf);
            let start = buf.len();
            buf.resize(start + n, 0);
            if let Some(out) = buf.get_mut(start..) {
                // The slice is exactly the encoded length, so this cannot fail; if it ever did the
                // zero bytes left in place still make a well-formed (if wrong) message.
                let _ = base64::engine::general_purpose::STANDARD.encode_slice(b.as_ref(), out);
            }
        }
        Val::Array(vs) => {
            header(5, array_len(vs), buf);
            for v in vs {
                header(1, val_len(v), buf);
                write_val(v, buf);
            }
        }
    }
}
