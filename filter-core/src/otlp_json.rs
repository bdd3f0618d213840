//! OTLP/JSON (the protobuf JSON mapping with OTLP's exceptions: hex trace and span ids, integer
//! enums) to and from the prost messages of [`crate::otlp`].
//!
//! Decoding accepts lowerCamelCase and snake_case field names, 64-bit integers as strings or
//! numbers, and ignores fields it does not know, as the OTLP specification asks of receivers.

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use crate::codec::DecodeError;
use crate::otlp::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, Resource, ResourceSpans,
    ScopeSpans, Span, TracesData, Value,
};

fn bad<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

fn field<'a>(obj: &'a Map<String, Json>, camel: &str, snake: &str) -> Option<&'a Json> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn object<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>, DecodeError> {
    v.as_object()
        .map_or_else(|| bad(format!("{what} must be a JSON object")), Ok)
}

fn list<'a>(
    obj: &'a Map<String, Json>,
    camel: &str,
    snake: &str,
) -> Result<&'a [Json], DecodeError> {
    match field(obj, camel, snake) {
        None => Ok(&[]),
        Some(Json::Array(items)) => Ok(items),
        Some(_) => bad(format!("`{camel}` must be an array")),
    }
}

fn string(obj: &Map<String, Json>, camel: &str, snake: &str) -> Result<String, DecodeError> {
    match field(obj, camel, snake) {
        None => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => bad(format!("`{camel}` must be a string")),
    }
}

fn int(v: &Json, what: &str) -> Result<i64, DecodeError> {
    match v {
        Json::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().and_then(|u| i64::try_from(u).ok()))
            .map_or_else(|| bad(format!("`{what}` is not a 64-bit integer")), Ok),
        Json::String(s) => s
            .parse()
            .map_err(|_| DecodeError(format!("`{what}` is not an integer: {s:?}"))),
        _ => bad(format!("`{what}` must be an integer")),
    }
}

fn uint(obj: &Map<String, Json>, camel: &str, snake: &str) -> Result<u64, DecodeError> {
    match field(obj, camel, snake) {
        None => Ok(0),
        Some(Json::String(s)) => s
            .parse()
            .map_err(|_| DecodeError(format!("`{camel}` is not an unsigned integer: {s:?}"))),
        Some(Json::Number(n)) => n
            .as_u64()
            .map_or_else(|| bad(format!("`{camel}` is not an unsigned integer")), Ok),
        Some(_) => bad(format!("`{camel}` must be an integer")),
    }
}

fn hex_id(obj: &Map<String, Json>, camel: &str, snake: &str) -> Result<Vec<u8>, DecodeError> {
    let s = string(obj, camel, snake)?;
    if s.len() % 2 != 0 {
        return bad(format!("`{camel}` must be hex"));
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .map_or_else(|| bad(format!("`{camel}` must be hex")), Ok)
        })
        .collect()
}

fn any_value(v: &Json) -> Result<AnyValue, DecodeError> {
    let obj = object(v, "an attribute value")?;
    let value = if let Some(s) = field(obj, "stringValue", "string_value") {
        match s {
            Json::String(s) => Some(Value::StringValue(s.clone())),
            _ => return bad("`stringValue` must be a string"),
        }
    } else if let Some(b) = field(obj, "boolValue", "bool_value") {
        match b {
            Json::Bool(b) => Some(Value::BoolValue(*b)),
            _ => return bad("`boolValue` must be a boolean"),
        }
    } else if let Some(i) = field(obj, "intValue", "int_value") {
        Some(Value::IntValue(int(i, "intValue")?))
    } else if let Some(d) = field(obj, "doubleValue", "double_value") {
        match d.as_f64() {
            Some(d) => Some(Value::DoubleValue(d)),
            None => return bad("`doubleValue` must be a number"),
        }
    } else if let Some(b) = field(obj, "bytesValue", "bytes_value") {
        match b {
            Json::String(s) => Some(Value::BytesValue(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| DecodeError(format!("`bytesValue` is not base64: {e}")))?,
            )),
            _ => return bad("`bytesValue` must be a base64 string"),
        }
    } else if let Some(a) = field(obj, "arrayValue", "array_value") {
        let values = list(object(a, "`arrayValue`")?, "values", "values")?
            .iter()
            .map(any_value)
            .collect::<Result<_, _>>()?;
        Some(Value::ArrayValue(ArrayValue { values }))
    } else if let Some(kv) = field(obj, "kvlistValue", "kvlist_value") {
        let values = key_values(object(kv, "`kvlistValue`")?, "values", "values")?;
        Some(Value::KvlistValue(KeyValueList { values }))
    } else {
        None
    };
    Ok(AnyValue { value })
}

fn key_values(
    obj: &Map<String, Json>,
    camel: &str,
    snake: &str,
) -> Result<Vec<KeyValue>, DecodeError> {
    list(obj, camel, snake)?
        .iter()
        .map(|kv| {
            let kv = object(kv, "an attribute")?;
            Ok(KeyValue {
                key: string(kv, "key", "key")?,
                value: field(kv, "value", "value").map(any_value).transpose()?,
            })
        })
        .collect()
}

fn span(v: &Json) -> Result<Span, DecodeError> {
    let s = object(v, "a span")?;
    let kind = match field(s, "kind", "kind") {
        None => 0,
        Some(Json::String(name)) => match name.as_str() {
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            "SPAN_KIND_PRODUCER" => 4,
            "SPAN_KIND_CONSUMER" => 5,
            _ => 0,
        },
        Some(k) => i32::try_from(int(k, "kind")?).unwrap_or(0),
    };
    Ok(Span {
        trace_id: hex_id(s, "traceId", "trace_id")?,
        span_id: hex_id(s, "spanId", "span_id")?,
        trace_state: string(s, "traceState", "trace_state")?,
        parent_span_id: hex_id(s, "parentSpanId", "parent_span_id")?,
        name: string(s, "name", "name")?,
        kind,
        start_time_unix_nano: uint(s, "startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: uint(s, "endTimeUnixNano", "end_time_unix_nano")?,
        attributes: key_values(s, "attributes", "attributes")?,
        flags: u32::try_from(uint(s, "flags", "flags")?).unwrap_or(0),
    })
}

/// Decodes OTLP JSON into `TracesData`.
pub fn decode(body: &[u8]) -> Result<TracesData, DecodeError> {
    let root: Json =
        serde_json::from_slice(body).map_err(|e| DecodeError(format!("invalid OTLP JSON: {e}")))?;
    let root = object(&root, "the OTLP JSON document")?;
    let mut out = TracesData::default();
    for rs in list(root, "resourceSpans", "resource_spans")? {
        let rs = object(rs, "`resourceSpans` item")?;
        let resource = field(rs, "resource", "resource")
            .map(|r| -> Result<Resource, DecodeError> {
                Ok(Resource {
                    attributes: key_values(object(r, "`resource`")?, "attributes", "attributes")?,
                    dropped_attributes_count: 0,
                })
            })
            .transpose()?;
        let mut scope_spans = Vec::new();
        for ss in list(rs, "scopeSpans", "scope_spans")? {
            let ss = object(ss, "`scopeSpans` item")?;
            let scope = field(ss, "scope", "scope")
                .map(|s| -> Result<InstrumentationScope, DecodeError> {
                    let s = object(s, "`scope`")?;
                    Ok(InstrumentationScope {
                        name: string(s, "name", "name")?,
                        version: string(s, "version", "version")?,
                    })
                })
                .transpose()?;
            scope_spans.push(ScopeSpans {
                scope,
                spans: list(ss, "spans", "spans")?
                    .iter()
                    .map(span)
                    .collect::<Result<_, _>>()?,
                schema_url: string(ss, "schemaUrl", "schema_url")?,
            });
        }
        out.resource_spans.push(ResourceSpans {
            resource,
            scope_spans,
            schema_url: string(rs, "schemaUrl", "schema_url")?,
        });
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value_json(v: &AnyValue) -> Json {
    match &v.value {
        None => json!({}),
        Some(Value::StringValue(s)) => json!({ "stringValue": s }),
        Some(Value::BoolValue(b)) => json!({ "boolValue": b }),
        Some(Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(Value::DoubleValue(d)) => json!({ "doubleValue": d }),
        Some(Value::BytesValue(b)) => {
            json!({ "bytesValue": base64::engine::general_purpose::STANDARD.encode(b) })
        }
        Some(Value::ArrayValue(a)) => {
            json!({ "arrayValue": { "values": a.values.iter().map(any_value_json).collect::<Vec<_>>() } })
        }
        Some(Value::KvlistValue(kv)) => {
            json!({ "kvlistValue": { "values": key_values_json(&kv.values) } })
        }
    }
}

fn key_values_json(kvs: &[KeyValue]) -> Vec<Json> {
    kvs.iter()
        .map(|kv| match &kv.value {
            Some(v) => json!({ "key": kv.key, "value": any_value_json(v) }),
            None => json!({ "key": kv.key }),
        })
        .collect()
}

/// Encodes `TracesData` as OTLP JSON.
pub fn encode(traces: &TracesData) -> Vec<u8> {
    let resource_spans: Vec<Json> = traces
        .resource_spans
        .iter()
        .map(|rs| {
            let scope_spans: Vec<Json> = rs
                .scope_spans
                .iter()
                .map(|ss| {
                    let spans: Vec<Json> = ss
                        .spans
                        .iter()
                        .map(|s| {
                            let mut o = json!({
                                "traceId": hex(&s.trace_id),
                                "spanId": hex(&s.span_id),
                                "name": s.name,
                                "kind": s.kind,
                                "startTimeUnixNano": s.start_time_unix_nano.to_string(),
                                "endTimeUnixNano": s.end_time_unix_nano.to_string(),
                                "attributes": key_values_json(&s.attributes),
                            });
                            if let Some(obj) = o.as_object_mut() {
                                if !s.parent_span_id.is_empty() {
                                    obj.insert(
                                        "parentSpanId".into(),
                                        hex(&s.parent_span_id).into(),
                                    );
                                }
                                if !s.trace_state.is_empty() {
                                    obj.insert("traceState".into(), s.trace_state.clone().into());
                                }
                            }
                            o
                        })
                        .collect();
                    let scope = ss
                        .scope
                        .as_ref()
                        .map(|sc| json!({ "name": sc.name, "version": sc.version }));
                    json!({ "scope": scope, "spans": spans })
                })
                .collect();
            let resource = rs
                .resource
                .as_ref()
                .map(|r| json!({ "attributes": key_values_json(&r.attributes) }));
            json!({ "resource": resource, "scopeSpans": scope_spans })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
        .to_string()
        .into_bytes()
}
