//! The Softprobe endpoints: `POST /v1/traces` (record) and `POST /v1/inject` (lookup).

use std::hash::{BuildHasher as _, RandomState};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use filter_core::codec::{self, decode_traces, encode_answer, read_span, Format, SpanIds};
use filter_core::otlp::Span;
use filter_core::otlp_json;

use crate::body;
use crate::error::ApiError;
use crate::key::{self, KeyInput};
use crate::metrics::add;
use crate::recording::{require, Recording, HOST_ATTRS, METHOD_ATTRS, PATH_ATTRS};
use crate::state::AppState;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Protobuf => PROTOBUF,
        Format::Json => JSON,
    }
}

fn request_format(headers: &HeaderMap) -> Format {
    Format::from_content_type(headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()))
}

/// The format of an inject answer: what `accept` asks for, else the request's own format.
pub fn answer_format(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    match accept {
        Some(a) if a.contains("json") => Format::Json,
        Some(a) if a.contains("protobuf") => Format::Protobuf,
        _ => request_format(headers),
    }
}

fn random_u64() -> u64 {
    loop {
        let v = RandomState::new().hash_one(crate::store::now_unix_nanos());
        if v != 0 {
            return v;
        }
    }
}

fn span_type(span: &Span) -> Option<&str> {
    span.attr_str(codec::ATTR_SPAN_TYPE)
}

/// `POST /v1/traces`: stores every extract span, durably, before answering 200.
pub async fn traces(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let format = request_format(&headers);
    match record(&state, &headers, body, format).await {
        Ok(()) => {
            let answer = match format {
                Format::Json => "{}",
                Format::Protobuf => "",
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type(format))],
                answer,
            )
                .into_response()
        }
        Err(e) => state.fail(e),
    }
}

async fn record(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    format: Format,
) -> Result<(), ApiError> {
    let bytes = body::read(headers, body, state.max_body_bytes).await?;
    let traces = decode_traces(&bytes, format).map_err(|e| ApiError::bad_request(e.0))?;
    let now = crate::store::now_unix_nanos();
    let mut recordings = Vec::new();
    let mut ignored = 0;
    for (resource, span) in traces.spans() {
        if span_type(span) != Some("extract") {
            ignored += 1;
            continue;
        }
        let http = read_span(resource, span)
            .map_err(|e| ApiError::bad_request(format!("invalid extract span: {e}")))?;
        let rec = Recording::from_span(http, now)
            .map_err(|e| ApiError::bad_request(format!("invalid extract span: {e}")))?;
        recordings.push(rec);
    }
    add(&state.metrics.ignored_spans, ignored);
    if recordings.is_empty() {
        return Ok(());
    }
    let count = recordings.len() as u64;
    let inserted = state.record(recordings).await?;
    add(&state.metrics.recorded, count);
    add(&state.metrics.evicted, inserted.evicted);
    add(&state.metrics.replaced, inserted.replaced);
    tracing::debug!(ids = ?inserted.ids, evicted = inserted.evicted, replaced = inserted.replaced, "recorded");
    Ok(())
}

/// `POST /v1/inject`: 200 with the newest recording whose key equals the request's, else 404.
pub async fn inject(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let format = answer_format(&headers);
    match lookup(&state, &headers, body, format).await {
        Ok(Some(answer)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type(format))],
            answer,
        )
            .into_response(),
        // As the Softprobe runtime answers a miss (a 404 is a miss whatever its body).
        Ok(None) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, JSON)],
            r#"{"error":"no inject match"}"#,
        )
            .into_response(),
        Err(e) => state.fail(e),
    }
}

async fn lookup(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    answer: Format,
) -> Result<Option<Vec<u8>>, ApiError> {
    let bytes = body::read(headers, body, state.max_body_bytes).await?;
    let traces =
        decode_traces(&bytes, request_format(headers)).map_err(|e| ApiError::bad_request(e.0))?;
    let (resource, span) = traces
        .spans()
        .find(|(_, s)| span_type(s) == Some("inject"))
        .or_else(|| traces.spans().find(|(_, s)| span_type(s).is_none()))
        .ok_or_else(|| {
            ApiError::bad_request("no inject span (`sp.span.type` = \"inject\") in the request")
        })?;
    let http = read_span(resource, span)
        .map_err(|e| ApiError::bad_request(format!("invalid inject span: {e}")))?;
    let bad = |e: String| ApiError::bad_request(format!("invalid inject span: {e}"));
    let key = key::compute(
        state.store.key_config(),
        &KeyInput {
            method: require(&http.method, METHOD_ATTRS).map_err(bad)?,
            host: require(&http.host, HOST_ATTRS).map_err(bad)?,
            path: require(&http.path, PATH_ATTRS).map_err(bad)?,
            headers: &http.request_headers,
            body: &http.request_body,
            session_id: http.session_id.as_deref(),
            service: http.service_name.as_deref(),
        },
    );
    let found = state.blocking(move |s| s.lookup(&key)).await?;
    let Some(rec) = found else {
        add(&state.metrics.misses, 1);
        tracing::debug!(key = %key::to_hex(&key), "miss");
        return Ok(None);
    };
    add(&state.metrics.hits, 1);
    tracing::debug!(key = %key::to_hex(&key), id = rec.id, "hit");
    let ids = SpanIds {
        trace_id: span.trace_id.as_slice().try_into().unwrap_or_else(|_| {
            (u128::from(random_u64()) << 64 | u128::from(random_u64())).to_be_bytes()
        }),
        span_id: random_u64().to_be_bytes(),
        parent_span_id: span.span_id.as_slice().try_into().ok(),
        trace_state: span.trace_state.clone(),
    };
    let service = rec
        .service
        .as_deref()
        .or(http.service_name.as_deref())
        .unwrap_or("backend");
    let proto = encode_answer(service, &ids, &rec.to_response());
    match answer {
        Format::Protobuf => Ok(Some(proto)),
        Format::Json => {
            let traces = decode_traces(&proto, Format::Protobuf).map_err(ApiError::internal)?;
            Ok(Some(otlp_json::encode(&traces)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_decides_the_answer_format() {
        let mut h = HeaderMap::new();
        assert_eq!(answer_format(&h), Format::Protobuf);
        h.insert(header::CONTENT_TYPE, JSON.parse().unwrap());
        assert_eq!(answer_format(&h), Format::Json);
        h.insert(header::ACCEPT, PROTOBUF.parse().unwrap());
        assert_eq!(answer_format(&h), Format::Protobuf);
        h.insert(header::ACCEPT, "application/json, */*".parse().unwrap());
        assert_eq!(answer_format(&h), Format::Json);
    }
}
