//! Health, metrics and the admin API over the recordings.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::body;
use crate::error::ApiError;
use crate::export::{self, ImportError};
use crate::key;
use crate::pipe;
use crate::recording::Recording;
use crate::state::AppState;
use crate::store::StoreError;

/// Default page size of the recordings list.
pub const DEFAULT_LIMIT: u64 = 100;
/// Largest page size of the recordings list.
pub const MAX_LIMIT: u64 = 1000;

/// RFC 3339 time of a Unix-nanosecond timestamp.
pub fn rfc3339(unix_nanos: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_nanos)).to_string()
}

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.blocking(|s| s.stats()).await {
        Ok(stats) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render(&stats),
        )
            .into_response(),
        Err(e) => state.fail(e),
    }
}

/// Paging of `GET /admin/recordings`.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// Recordings skipped (oldest first).
    pub offset: Option<u64>,
    /// Page size, at most [`MAX_LIMIT`].
    pub limit: Option<u64>,
}

/// One row of the recordings list.
#[derive(Debug, Serialize)]
pub struct Summary {
    id: u64,
    key: String,
    service: Option<String>,
    session_id: Option<String>,
    method: String,
    host: String,
    path: String,
    status: u16,
    recorded_at: String,
    recorded_at_unix_nanos: u64,
}

/// The list page.
#[derive(Debug, Serialize)]
pub struct ListPage {
    total: u64,
    offset: u64,
    limit: u64,
    recordings: Vec<Summary>,
}

/// A full recording with its key.
#[derive(Debug, Serialize)]
pub struct Full {
    key: String,
    recorded_at: String,
    #[serde(flatten)]
    recording: Recording,
}

fn key_hex(state: &AppState, rec: &Recording) -> String {
    key::to_hex(&rec.key(state.store.key_config()))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("recording id must be a number, got {id:?}")))
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no recording {id}"))
}

/// `GET /admin/recordings?offset=&limit=`.
pub async fn list(State(state): State<AppState>, Query(page): Query<Page>) -> Response {
    let offset = page.offset.unwrap_or(0);
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    match state.blocking(move |s| s.list(offset, limit)).await {
        Ok((total, recs)) => {
            let recordings = recs
                .into_iter()
                .map(|r| Summary {
                    id: r.id,
                    key: key_hex(&state, &r),
                    service: r.service,
                    session_id: r.session_id,
                    method: r.request.method,
                    host: r.request.host,
                    path: r.request.path,
                    status: r.response.status,
                    recorded_at: rfc3339(r.recorded_at_unix_nanos),
                    recorded_at_unix_nanos: r.recorded_at_unix_nanos,
                })
                .collect();
            Json(ListPage {
                total,
                offset,
                limit,
                recordings,
            })
            .into_response()
        }
        Err(e) => state.fail(e),
    }
}

/// `GET /admin/recordings/{id}`.
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let result = async {
        let id = parse_id(&id)?;
        let rec = state.blocking(move |s| s.get(id)).await?;
        rec.ok_or_else(|| not_found(id))
    }
    .await;
    match result {
        Ok(rec) => Json(Full {
            key: key_hex(&state, &rec),
            recorded_at: rfc3339(rec.recorded_at_unix_nanos),
            recording: rec,
        })
        .into_response(),
        Err(e) => state.fail(e),
    }
}

/// `DELETE /admin/recordings/{id}`: 204, or 404 when there is none.
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let result = async {
        let id = parse_id(&id)?;
        if state.blocking(move |s| s.delete(id)).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => state.fail(e),
    }
}

/// `DELETE /admin/recordings`: removes every recording.
pub async fn clear(State(state): State<AppState>) -> Response {
    match state.blocking(|s| s.clear()).await {
        Ok(n) => Json(serde_json::json!({ "deleted": n })).into_response(),
        Err(e) => state.fail(e),
    }
}

/// `GET /admin/export`: every recording as one JSON document, streamed (a page of recordings
/// read at a time), so its size is not bounded by memory.
pub async fn export(State(state): State<AppState>) -> Response {
    let (tx, rx) = pipe::channel();
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || {
        let mut out = pipe::ChannelWriter::new(tx);
        match export::write(&store, &mut out) {
            Ok(count) => tracing::info!(exported = count, "export done"),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::warn!("export cut short: the client went away");
            }
            Err(e) => {
                tracing::error!(error = %e, "export failed");
                out.abort(e);
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// `POST /admin/import`: adds the recordings of an export document, streamed: parsed one
/// recording at a time (each at most `--max-body-bytes`), committed in batches. Recordings of
/// batches committed before an error stay stored.
pub async fn import(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let gzip = body::is_gzip(&headers)?;
        let (tx, rx) = pipe::channel();
        let forward = tokio::spawn(pipe::forward(body, tx));
        let store = Arc::clone(&state.store);
        let limit = u64::try_from(state.max_body_bytes).unwrap_or(u64::MAX);
        let done = tokio::task::spawn_blocking(move || {
            let reader = pipe::ChannelReader::new(rx);
            let mut commit = |batch| store.insert(batch);
            if gzip {
                export::import(flate2::read::GzDecoder::new(reader), limit, &mut commit)
            } else {
                export::import(reader, limit, &mut commit)
            }
        })
        .await;
        forward.abort();
        match done {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(import_error(e)),
            Err(e) => Err(ApiError::internal(format!("import task failed: {e}"))),
        }
    }
    .await;
    match result {
        Ok(done) => {
            crate::metrics::add(&state.metrics.evicted, done.evicted);
            crate::metrics::add(&state.metrics.replaced, done.replaced);
            Json(serde_json::json!({
                "imported": done.imported,
                "evicted": done.evicted,
                "replaced": done.replaced,
            }))
            .into_response()
        }
        Err(e) => state.fail(e),
    }
}

fn import_error(e: ImportError) -> ApiError {
    match e {
        ImportError::Invalid(_) | ImportError::Read(_) => ApiError::bad_request(e.to_string()),
        ImportError::TooLarge(_) | ImportError::Store(StoreError::TooLarge { .. }) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        ImportError::Store(e) => ApiError::internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }
}
