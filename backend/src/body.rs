//! Reading request bodies: a size limit answered with 413, and `content-encoding: gzip`.

use std::io::Read as _;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt as _;

use crate::error::ApiError;

/// How much more than the limit is read and dropped before a 413, so a client still sending its
/// body gets the answer instead of a reset connection.
const DRAIN_BYTES: usize = 64 << 20;

/// Reads the whole body, at most `limit` bytes, then undoes a gzip content-encoding (the
/// decompressed size is limited too). Empty bodies are rejected.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let raw = read_limited(body, limit).await?;
    let decoded = decode(headers, raw, limit)?;
    if decoded.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty request body"));
    }
    Ok(decoded)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
    )
}

async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            buf = Vec::new();
            if seen > limit.saturating_add(DRAIN_BYTES) {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok(buf)
}

/// Whether the body is gzip-encoded: `false` for none or identity, 415 for anything else.
pub fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content-encoding {other:?} (use gzip or none)"),
        )),
    }
}

fn decode(headers: &HeaderMap, raw: Vec<u8>, limit: usize) -> Result<Vec<u8>, ApiError> {
    match is_gzip(headers)? {
        false => Ok(raw),
        true => {
            let mut out = Vec::new();
            let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::GzDecoder::new(raw.as_slice())
                .take(cap)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}"))
                })?;
            if out.len() > limit {
                return Err(too_large(limit));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, encoding.parse().unwrap());
        h
    }

    #[test]
    fn gzip_is_undone_and_limited() {
        let z = gzip(&[7u8; 1000]);
        assert_eq!(
            decode(&headers("gzip"), z.clone(), 1000).unwrap(),
            vec![7u8; 1000]
        );
        let err = decode(&headers("gzip"), z, 999).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let err = decode(&headers("gzip"), b"nope".to_vec(), 10).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = decode(&headers("br"), b"x".to_vec(), 10).unwrap_err();
        assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn limit_and_empty_body() {
        let h = HeaderMap::new();
        let err = read(&h, Body::from(vec![1u8; 11]), 10).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let err = read(&h, Body::empty(), 10).await.unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(read(&h, Body::from("abc"), 10).await.unwrap(), b"abc");
    }
}
