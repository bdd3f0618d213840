//! What every handler shares: the store, the counters and the limits.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};

use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::store::{Store, StoreError};

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    /// The recording store.
    pub store: Arc<Store>,
    /// The group-commit writer of `/v1/traces` ([`crate::writer`]).
    pub writer: crate::writer::Writer,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Largest accepted body on the OTLP endpoints.
    pub max_body_bytes: usize,
    /// Who may call the guarded endpoints ([`crate::auth`]).
    pub auth: crate::auth::Auth,
}

impl AppState {
    /// Runs a store operation on the blocking pool; store errors become HTTP errors.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e @ StoreError::TooLarge { .. })) => {
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
            }
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(e) => Err(ApiError::internal(format!("store task failed: {e}"))),
        }
    }

    /// Stores recordings through the group-commit writer; errors as [`AppState::blocking`].
    pub async fn record(
        &self,
        recordings: Vec<crate::recording::Recording>,
    ) -> Result<crate::store::Inserted, ApiError> {
        match self.writer.insert(recordings).await {
            Ok(v) => Ok(v),
            Err(e @ StoreError::TooLarge { .. }) => {
                Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
            }
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    /// Counts and logs an error, then turns it into the answer.
    pub fn fail(&self, e: ApiError) -> Response {
        if e.status.is_client_error() {
            metrics::add(&self.metrics.bad_requests, 1);
            tracing::warn!(status = e.status.as_u16(), error = %e.message, "bad request");
        } else {
            metrics::add(&self.metrics.errors, 1);
            tracing::error!(status = e.status.as_u16(), error = %e.message, "request failed");
        }
        e.into_response()
    }
}
