//! Health, metrics and the admin API over the recordings.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::body;
use crate::error::ApiError;
use crate::export::ExportDocument;
use crate::key;
use crate::recording::Recording;
use crate::state::AppState;

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

/// `GET /admin/export`: every recording as one JSON document.
pub async fn export(State(state): State<AppState>) -> Response {
    match state.blocking(|s| s.all()).await {
        Ok(all) => Json(ExportDocument::new(all)).into_response(),
        Err(e) => state.fail(e),
    }
}

/// `POST /admin/import`: adds the recordings of an export document.
pub async fn import(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = body::read(&headers, body, state.max_import_bytes).await?;
        let doc = ExportDocument::parse(&bytes).map_err(ApiError::bad_request)?;
        let count = doc.recordings.len();
        let inserted = state.blocking(move |s| s.insert(doc.recordings)).await?;
        Ok::<_, ApiError>((count, inserted))
    }
    .await;
    match result {
        Ok((count, inserted)) => {
            crate::metrics::add(&state.metrics.evicted, inserted.evicted);
            Json(serde_json::json!({ "imported": count, "evicted": inserted.evicted }))
                .into_response()
        }
        Err(e) => state.fail(e),
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
