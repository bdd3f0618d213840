//! The fake backend's servers: `/v1/inject` + `/v1/traces` with configurable
//! behaviour, and the control listener.

use super::model::{Behaviour, Received, UNDECODABLE_BODY};
use crate::header::HeaderField;
use crate::http1::server::{Handler, Request, Response};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Inner {
    inject: Behaviour,
    traces: Behaviour,
    received: Vec<Received>,
}

/// Shared state of both listeners.
pub struct State {
    inner: Mutex<Inner>,
    started: Instant,
}

impl State {
    fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                inject: Behaviour::Miss,
                traces: Behaviour::status(200),
                received: Vec::new(),
            }),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, req: &Request) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let r = Received {
            method: req.head.method.clone(),
            path: req.head.target.clone(),
            headers: req.head.headers.clone(),
            body_base64: req.body.clone(),
            complete: req.complete,
            received_unix_ms: unix_ms,
            received_ms_since_start: self.started.elapsed().as_millis() as u64,
        };
        self.lock().received.push(r);
    }
}

/// Plays `b` (boxed for the recursion of `slow`).
fn play(b: Behaviour) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        match b {
            Behaviour::Miss => Response::empty(404),
            Behaviour::Status { status } => Response::empty(status),
            Behaviour::Hit {
                content_type,
                body_base64,
            } => Response {
                status: 200,
                headers: vec![HeaderField::new("content-type", content_type)],
                body: body_base64,
            },
            Behaviour::Answer {
                status,
                content_type,
                body_base64,
            } => Response {
                status,
                headers: if content_type.is_empty() {
                    Vec::new()
                } else {
                    vec![HeaderField::new("content-type", content_type)]
                },
                body: body_base64,
            },
            Behaviour::Undecodable => Response {
                status: 200,
                headers: vec![HeaderField::new("content-type", "application/x-protobuf")],
                body: UNDECODABLE_BODY.to_vec(),
            },
            Behaviour::Timeout => std::future::pending().await,
            Behaviour::Slow { delay_ms, then } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                play(*then).await
            }
        }
    })
}

/// Handler of the backend listener.
pub struct Backend(pub Arc<State>);

impl Handler for Backend {
    async fn handle(&self, req: Request) -> Response {
        self.0.record(&req);
        let path = req.head.target.split('?').next().unwrap_or_default();
        let behaviour = {
            let g = self.0.lock();
            match path {
                "/v1/inject" => Some(g.inject.clone()),
                "/v1/traces" => Some(g.traces.clone()),
                _ => None,
            }
        };
        match (req.head.method.as_str(), behaviour) {
            ("POST", Some(b)) => play(b).await,
            (_, Some(_)) => Response::empty(405),
            (_, None) => Response::text(404, "fake backend: unknown path"),
        }
    }

    fn incomplete(&self, req: Request) {
        self.0.record(&req);
    }
}

/// Handler of the control listener.
pub struct Control(pub Arc<State>);

fn parse(body: &[u8]) -> Result<Behaviour, Response> {
    serde_json::from_slice(body).map_err(|e| Response::text(400, format!("bad behaviour: {e}")))
}

impl Handler for Control {
    async fn handle(&self, req: Request) -> Response {
        let path = req.head.target.split('?').next().unwrap_or_default();
        match (req.head.method.as_str(), path) {
            ("GET", "/health") => Response::text(200, "ok"),
            ("PUT", "/inject-behaviour") => match parse(&req.body) {
                Ok(b) => {
                    self.0.lock().inject = b;
                    Response::empty(204)
                }
                Err(r) => r,
            },
            ("PUT", "/traces-behaviour") => match parse(&req.body) {
                Ok(b) => {
                    self.0.lock().traces = b;
                    Response::empty(204)
                }
                Err(r) => r,
            },
            ("GET", "/received") => Response::json(200, &self.0.lock().received),
            ("DELETE", "/received") => {
                self.0.lock().received.clear();
                Response::empty(204)
            }
            (_, "/health" | "/inject-behaviour" | "/traces-behaviour" | "/received") => {
                Response::empty(405)
            }
            _ => Response::text(404, "unknown control path"),
        }
    }
}

/// Binds both listeners, prints `READY proxied=<addr> control=<addr>` (control
/// omitted when not requested) and serves until the process ends.
pub async fn run(listen: SocketAddr, control: Option<SocketAddr>) -> anyhow::Result<()> {
    let state = Arc::new(State::new());
    crate::service::run(listen, control, Backend(state.clone()), Control(state)).await
}
