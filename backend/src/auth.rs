//! Who may call what: the admin token guards `/admin/*`, the ingest key guards `/v1/inject` and
//! `/v1/traces`. Both are read from a file (`--admin-token-file`, `--ingest-key-file`: a mounted
//! Kubernetes Secret) or from the environment (`BACKEND_ADMIN_TOKEN`, `BACKEND_INGEST_KEY`),
//! never from a flag value, which any local user could read from the process list.
//!
//! A caller presents a secret as `authorization: Bearer <secret>`, as the Softprobe runtime
//! expects; on the ingest endpoints `x-public-key: <secret>` (what Softprobe's agents send) is
//! accepted too. The admin token also opens the ingest endpoints. `/healthz` and `/metrics` stay
//! open: probes and scrapers carry no secrets, and neither answer holds recorded data.
//!
//! Without a token a server listens on loopback only: [`check_listen`] refuses any other address.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::state::AppState;

/// Shortest secret accepted: shorter ones are guessable.
pub const MIN_SECRET_BYTES: usize = 16;
/// Environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "BACKEND_ADMIN_TOKEN";
/// Environment variable holding the ingest key.
pub const INGEST_KEY_ENV: &str = "BACKEND_INGEST_KEY";

/// The configured secrets.
#[derive(Clone, Default)]
pub struct Auth {
    admin: Option<Vec<u8>>,
    ingest: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin", &self.admin.is_some())
            .field("ingest", &self.ingest.is_some())
            .finish()
    }
}

fn load(what: &str, file: Option<&Path>, env: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let (value, from) = match file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read the {what} file {}: {e}", path.display())
            })?;
            (Some(text), path.display().to_string())
        }
        None => (
            std::env::var_os(env).map(|v| v.into_encoded_bytes()),
            format!("${env}"),
        ),
    };
    let Some(mut value) = value else {
        return Ok(None);
    };
    while value.last().is_some_and(u8::is_ascii_whitespace) {
        value.pop();
    }
    if value.len() < MIN_SECRET_BYTES || value.iter().any(|b| !b.is_ascii_graphic()) {
        anyhow::bail!(
            "the {what} in {from} must be at least {MIN_SECRET_BYTES} printable ASCII characters \
             without spaces (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(Some(value))
}

impl Auth {
    /// Reads the secrets: each from its file when given, else from its environment variable.
    pub fn load(admin_file: Option<&Path>, ingest_file: Option<&Path>) -> anyhow::Result<Auth> {
        Ok(Auth {
            admin: load("admin token", admin_file, ADMIN_TOKEN_ENV)?,
            ingest: load("ingest key", ingest_file, INGEST_KEY_ENV)?,
        })
    }

    /// These secrets, for tests and embedding.
    pub fn new(admin: Option<&str>, ingest: Option<&str>) -> Auth {
        Auth {
            admin: admin.map(|s| s.as_bytes().to_vec()),
            ingest: ingest.map(|s| s.as_bytes().to_vec()),
        }
    }

    /// Which secret a path needs; `None` when it is open or no secret is configured for it.
    fn required(&self, path: &str) -> Option<Required<'_>> {
        if path.starts_with("/admin/") || path == "/admin" {
            return self.admin.as_deref().map(|a| Required {
                name: "admin token",
                accepted: [Some(a), None],
                public_key_header: false,
            });
        }
        if path.starts_with("/v1/") {
            return self.ingest.as_deref().map(|i| Required {
                name: "ingest key",
                accepted: [Some(i), self.admin.as_deref()],
                public_key_header: true,
            });
        }
        None
    }

    /// Whether a request to `path` with these headers may go on; `Err` names the secret it
    /// lacks.
    pub fn allows(&self, path: &str, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(required) = self.required(path) else {
            return Ok(());
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| {
                let v = v.as_bytes();
                let (scheme, token) = (v.get(..7)?, v.get(7..)?);
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| token.trim_ascii())
            });
        let public_key = headers
            .get_all("x-public-key")
            .iter()
            .filter(|_| required.public_key_header)
            .map(|v| v.as_bytes());
        let mut presented = bearer.chain(public_key);
        if presented.any(|p| required.accepted.iter().flatten().any(|a| same(p, a))) {
            Ok(())
        } else {
            Err(required.name)
        }
    }
}

struct Required<'a> {
    /// The secret's name, for the refusal.
    name: &'static str,
    accepted: [Option<&'a [u8]>; 2],
    public_key_header: bool,
}

/// Equal in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: answers 401 to a guarded path without its secret.
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(name) = state.auth.allows(req.uri().path(), req.headers()) {
        crate::metrics::add(&state.metrics.unauthorized, 1);
        tracing::warn!(
            path = req.uri().path(),
            "refused: missing or wrong credentials"
        );
        let error = format!("this endpoint needs `authorization: Bearer <{name}>`");
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Bearer"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            serde_json::json!({ "error": error }).to_string(),
        )
            .into_response();
    }
    next.run(req).await
}

/// Refuses to serve a non-loopback address unless both secrets are set: without them any pod
/// of the cluster could read, poison or wipe the recordings.
pub fn check_listen(listen: SocketAddr, auth: &Auth) -> anyhow::Result<()> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if auth.admin.is_none() {
        missing.push(format!(
            "an admin token (--admin-token-file or ${ADMIN_TOKEN_ENV})"
        ));
    }
    if auth.ingest.is_none() {
        missing.push(format!(
            "an ingest key (--ingest-key-file or ${INGEST_KEY_ENV})"
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {listen} without {}: set them (a Kubernetes Secret, see \
         istio/overlays/local-backend), or listen on 127.0.0.1",
        missing.join(" and ")
    )
}

#[cfg(test)]
mod tests;
