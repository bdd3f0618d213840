//! A lean upstream and backend for the benches, in this process on their own thread: every answer
//! is fixed in advance and nothing is stored, so the numbers measure Envoy and the filter rather
//! than a recording test server. HTTP/1.1 comes from the testbed's server loop.

use anyhow::{Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use testbed::http1::server::{serve, Handler, Request, Response};
use testbed::HeaderField;

/// What `/v1/inject` answers.
#[derive(Debug, Clone)]
pub enum Inject {
    /// 404: a miss.
    Miss,
    /// 200 with this protobuf answer.
    Hit(Arc<Vec<u8>>),
}

#[derive(Debug)]
struct State {
    upstream_body: RwLock<Arc<Vec<u8>>>,
    inject: RwLock<Inject>,
    upstream_served: AtomicU64,
    lookups: AtomicU64,
    records: AtomicU64,
    record_bytes: AtomicU64,
}

/// Counts of what the servers saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub upstream_served: u64,
    pub lookups: u64,
    pub records: u64,
    pub record_bytes: u64,
}

/// The running upstream (cluster `upstream`) and backend (the testbed's backend cluster).
pub struct Servers {
    pub upstream: SocketAddr,
    pub backend: SocketAddr,
    state: Arc<State>,
}

struct Upstream(Arc<State>);
struct Backend(Arc<State>);

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Handler for Upstream {
    fn handle(&self, _req: Request) -> impl Future<Output = Response> + Send {
        self.0.upstream_served.fetch_add(1, Ordering::Relaxed);
        let body = read(&self.0.upstream_body);
        async move {
            Response {
                status: 200,
                headers: vec![HeaderField::new("content-type", "application/octet-stream")],
                body: body.as_ref().clone(),
            }
        }
    }
}

impl Handler for Backend {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        let path = req
            .head
            .target
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let resp = match path.as_str() {
            "/v1/inject" => {
                self.0.lookups.fetch_add(1, Ordering::Relaxed);
                match read(&self.0.inject) {
                    Inject::Miss => Response::empty(404),
                    Inject::Hit(answer) => Response {
                        status: 200,
                        headers: vec![HeaderField::new("content-type", "application/x-protobuf")],
                        body: answer.as_ref().clone(),
                    },
                }
            }
            "/v1/traces" => {
                self.0.records.fetch_add(1, Ordering::Relaxed);
                self.0
                    .record_bytes
                    .fetch_add(req.body.len() as u64, Ordering::Relaxed);
                Response::empty(200)
            }
            _ => Response::empty(404),
        };
        async move { resp }
    }
}

impl Servers {
    /// Binds both on 127.0.0.1 and serves them from one thread of their own.
    pub fn start() -> Result<Servers> {
        let up = std::net::TcpListener::bind("127.0.0.1:0")?;
        let be = std::net::TcpListener::bind("127.0.0.1:0")?;
        up.set_nonblocking(true)?;
        be.set_nonblocking(true)?;
        let state = Arc::new(State {
            upstream_body: RwLock::new(Arc::new(Vec::new())),
            inject: RwLock::new(Inject::Miss),
            upstream_served: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            record_bytes: AtomicU64::new(0),
        });
        let servers = Servers {
            upstream: up.local_addr()?,
            backend: be.local_addr()?,
            state: state.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("servers runtime")?;
        std::thread::Builder::new()
            .name("bench-servers".into())
            .spawn(move || {
                rt.block_on(async move {
                    let up = tokio::net::TcpListener::from_std(up)?;
                    let be = tokio::net::TcpListener::from_std(be)?;
                    let u = tokio::spawn(serve(up, Arc::new(Upstream(state.clone()))));
                    let b = tokio::spawn(serve(be, Arc::new(Backend(state))));
                    let _ = tokio::join!(u, b);
                    std::io::Result::Ok(())
                })
            })?;
        Ok(servers)
    }

    /// The upstream answers 200 with `size` bytes of body; the backend answers lookups per `path`
    /// (a hit carries a recorded 200 response with the same body).
    pub fn set(&self, path: crate::Path, size: usize) {
        let body = Arc::new(crate::body(size));
        let inject = match path {
            crate::Path::Miss => Inject::Miss,
            crate::Path::Hit => Inject::Hit(Arc::new(crate::hit_answer(&body))),
        };
        *self
            .state
            .upstream_body
            .write()
            .unwrap_or_else(|e| e.into_inner()) = body;
        *self.state.inject.write().unwrap_or_else(|e| e.into_inner()) = inject;
    }

    /// What the servers saw so far.
    pub fn seen(&self) -> Seen {
        Seen {
            upstream_served: self.state.upstream_served.load(Ordering::Relaxed),
            lookups: self.state.lookups.load(Ordering::Relaxed),
            records: self.state.records.load(Ordering::Relaxed),
            record_bytes: self.state.record_bytes.load(Ordering::Relaxed),
        }
    }
}
