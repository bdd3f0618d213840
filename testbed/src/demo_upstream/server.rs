//! The demo upstream's servers: the proxied echo/script listener and the
//! control listener.

use super::model::{Echo, RecordedRequest, Script, Stats};
use crate::header::HeaderField;
use crate::http1::server::{Handler, Request, Response};
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    served: u64,
    script: Option<Script>,
    requests: Vec<RecordedRequest>,
}

/// Shared state of both listeners.
#[derive(Default)]
pub struct State(Mutex<Inner>);

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn record(req: &Request, serial: Option<u64>) -> RecordedRequest {
    RecordedRequest {
        serial,
        method: req.head.method.clone(),
        path: req.head.target.clone(),
        path_bytes: req.head.target_bytes.clone(),
        http_minor_version: req.head.minor_version,
        headers: req.head.headers.clone(),
        body_base64: req.body.clone(),
        complete: req.complete,
        trailers: req.trailers.clone(),
    }
}

/// Handler of the proxied listener.
pub struct Proxied(pub Arc<State>);

impl Handler for Proxied {
    async fn handle(&self, req: Request) -> Response {
        let (serial, script) = {
            let mut g = self.0.lock();
            g.served += 1;
            let serial = g.served;
            g.requests.push(record(&req, Some(serial)));
            (serial, g.script.clone())
        };
        let serial_header = HeaderField::new("x-demo-serial", serial.to_string());
        match script {
            Some(s) if !s.trailers.is_empty() => {
                // Chunked, with the trailers after the last chunk (the server sends a body
                // framed by `transfer-encoding` as it is).
                let mut headers = s.headers;
                headers.push(serial_header);
                headers.push(HeaderField::new("transfer-encoding", "chunked"));
                let mut body = crate::http1::wire::encode_chunk(&s.body_base64);
                body.extend_from_slice(&crate::http1::wire::encode_last_chunk(&s.trailers));
                Response {
                    status: s.status,
                    headers,
                    body,
                }
            }
            Some(s) => {
                let mut headers = s.headers;
                headers.push(serial_header);
                Response {
                    status: s.status,
                    headers,
                    body: s.body_base64,
                }
            }
            None => {
                let (body, body_base64) = match String::from_utf8(req.body) {
                    Ok(s) => (s, false),
                    Err(e) => (
                        base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
                        true,
                    ),
                };
                let echo = Echo {
                    serial,
                    method: req.head.method,
                    path: req.head.target,
                    headers: req.head.headers,
                    body,
                    body_base64,
                };
                let mut r = Response::json(200, &echo);
                r.headers.push(serial_header);
                r
            }
        }
    }

    fn incomplete(&self, req: Request) {
        self.0.lock().requests.push(record(&req, None));
    }
}

/// Handler of the control listener.
pub struct Control(pub Arc<State>);

impl Handler for Control {
    async fn handle(&self, req: Request) -> Response {
        let path = req.head.target.split('?').next().unwrap_or_default();
        match (req.head.method.as_str(), path) {
            ("GET", "/health") => Response::text(200, "ok"),
            ("PUT", "/script") => match serde_json::from_slice::<Script>(&req.body) {
                Ok(s) => {
                    self.0.lock().script = Some(s);
                    Response::empty(204)
                }
                Err(e) => Response::text(400, format!("bad script: {e}")),
            },
            ("DELETE", "/script") => {
                self.0.lock().script = None;
                Response::empty(204)
            }
            ("GET", "/requests") => Response::json(200, &self.0.lock().requests),
            ("DELETE", "/requests") => {
                self.0.lock().requests.clear();
                Response::empty(204)
            }
            ("GET", "/stats") => Response::json(
                200,
                &Stats {
                    served: self.0.lock().served,
                },
            ),
            (_, "/health" | "/script" | "/requests" | "/stats") => Response::empty(405),
            _ => Response::text(404, "unknown control path"),
        }
    }
}

/// Binds both listeners, prints `READY proxied=<addr> control=<addr>` (control
/// omitted when not requested) and serves until the process ends.
pub async fn run(listen: SocketAddr, control: Option<SocketAddr>) -> anyhow::Result<()> {
    let state = Arc::new(State::default());
    crate::service::run(listen, control, Proxied(state.clone()), Control(state)).await
}
