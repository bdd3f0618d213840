//! One request's engine work, written once and run two ways by `cargo bench -p bench --bench
//! engine`: natively (this crate as an rlib) and as a wasm32 module under wasmtime (this crate as a
//! cdylib, through the exports in `ffi`).
//!
//! A [`Session`] holds one [`Engine`] and the stream in flight. A request goes through it in three
//! steps, each returning the bytes a host would hand back to the proxy:
//!
//! 1. [`Session::request`]: request headers and the body in [`CHUNK`]-sized pieces in; the inject
//!    span (the lookup callout's body) out;
//! 2. [`Session::answer`]: the lookup answer in (404, or 200 with a recorded response); on a hit the
//!    response body to serve out;
//! 3. [`Session::response`] (miss only): response headers and body in; the extract span (the record
//!    callout's body) out.
//!
//! Under wasm every input is copied into the VM's memory and every output out of it, as Envoy does
//! for a proxy-wasm plugin; natively both are borrowed. That difference is what the bench shows.

use std::sync::Arc;

use filter_core::codec::{self, SpanIds};
use filter_core::{
    AtomicCounters, Config, Engine, LookupResult, Node, RecordResult, Services, Stream,
};

/// The size of the body pieces fed to the engine (Envoy hands a body over in slices of this order).
pub const CHUNK: usize = 64 * 1024;

/// The body sizes every bench runs: 0 B, 1 KiB, 64 KiB, 1 MiB.
pub const SIZES: [usize; 4] = [0, 1024, 64 * 1024, 1024 * 1024];

/// The engine configuration of the benches: record and inject, bodies up to 2 MiB.
pub const CONFIG: &str = r#"{
  "mode": "record_and_inject",
  "service_name": "bench-app",
  "max_request_body_bytes": 2097152,
  "max_response_body_bytes": 2097152,
  "backend": {"cluster": "softprobe_backend", "authority": "backend.local"}
}"#;

/// `n` bytes of binary (non-UTF-8) body, the same every time: the engine base64-encodes it.
pub fn body(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8 | 0x80
        })
        .collect()
}

/// A 200 `/v1/inject` answer (protobuf) carrying a recorded 200 response with `body`.
pub fn hit_answer(body: &[u8]) -> Vec<u8> {
    let response = filter_core::Response {
        status: 200,
        headers: vec![
            ("content-type".into(), b"application/octet-stream".to_vec()),
            ("x-upstream".into(), b"recorded".to_vec()),
        ],
        body: body.to_vec(),
    };
    codec::encode_answer("bench-app", &SpanIds::default(), &response)
}

fn request_headers(body_len: usize) -> Vec<filter_core::Header> {
    let h = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
    vec![
        h(":method", "POST"),
        h(":scheme", "http"),
        h(":path", "/api/v1/items/42?expand=owner"),
        h(":authority", "api.example.com"),
        h("content-type", "application/octet-stream"),
        h("content-length", &body_len.to_string()),
        h("user-agent", "bench/1.0"),
        h("accept", "*/*"),
        h("x-request-id", "7f8a2c1e-1f0e-4a9b-9d7e-0c6b2a1f3e4d"),
        h("authorization", "Bearer not-a-real-token"),
    ]
}

fn response_headers(body_len: usize) -> Vec<filter_core::Header> {
    let h = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
    vec![
        h(":status", "200"),
        h("content-type", "application/octet-stream"),
        h("content-length", &body_len.to_string()),
        h("date", "Mon, 23 Nov 2026 18:00:00 GMT"),
        h("server", "upstream"),
    ]
}

/// One engine and the stream in flight.
pub struct Session {
    engine: Arc<Engine>,
    stream: Option<Stream>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// An engine with [`CONFIG`].
    pub fn new() -> Session {
        let config = match Config::from_json(CONFIG.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("bench config: {e}"),
        };
        let engine = Engine::new(
            config,
            &Node::default(),
            Services {
                metrics: Arc::new(AtomicCounters::default()),
                clock: Box::new(|| 1_700_000_000_000_000_000),
                seed: 7,
            },
        );
        Session {
            engine: Arc::new(engine),
            stream: None,
        }
    }

    /// Request headers and `body` (in [`CHUNK`] pieces) in; the inject span out (empty if the
    /// engine did not look up, which the benches treat as a failure).
    pub fn request(&mut self, body: &[u8]) -> Vec<u8> {
        let mut stream = Stream::new(self.engine.clone());
        let mut decision = stream.on_request_headers(request_headers(body.len()), body.is_empty());
        let mut chunks = body.chunks(CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            decision = stream.on_request_body(chunk, chunks.peek().is_none());
        }
        self.stream = Some(stream);
        decision.effects.lookup.map(|c| c.body).unwrap_or_default()
    }

    /// The lookup answer in (`status` 404: a miss; 200: `answer` is the protobuf inject answer). On
    /// a hit, the response body to serve out; otherwise empty.
    pub fn answer(&mut self, status: u16, answer: &[u8]) -> Vec<u8> {
        let Some(stream) = self.stream.as_mut() else {
            return Vec::new();
        };
        let decision = stream.on_lookup_result(LookupResult::Answer {
            status,
            content_type: Some(b"application/x-protobuf"),
            body: answer,
        });
        match decision.effects.reply {
            Some(reply) => {
                self.stream = None;
                reply.response.body
            }
            None => Vec::new(),
        }
    }

    /// After a miss: response headers and `body` (in [`CHUNK`] pieces) in; the extract span out.
    pub fn response(&mut self, body: &[u8]) -> Vec<u8> {
        let Some(mut stream) = self.stream.take() else {
            return Vec::new();
        };
        let mut decision =
            stream.on_response_headers(200, response_headers(body.len()), body.is_empty());
        let mut chunks = body.chunks(CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            decision = stream.on_response_body(chunk, chunks.peek().is_none());
        }
        if !decision.effects.record_queued {
            return Vec::new();
        }
        // Take the record back out of the engine's queue, as a host's sender would.
        let records = self.engine.records();
        match records.next() {
            Some(out) => {
                records.finish(out.ticket, RecordResult::Status(200));
                out.callout.body
            }
            None => Vec::new(),
        }
    }
}

/// The wasm exports: the host copies inputs into memory it got from [`ffi::guest_alloc`], calls a
/// step, and copies the output (a `ptr << 32 | len` pair into memory the guest keeps until the next
/// step) out.
#[cfg(target_arch = "wasm32")]
mod ffi {
    use super::Session;
    use std::cell::RefCell;

    thread_local! {
        static SESSION: RefCell<Session> = RefCell::new(Session::new());
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Takes ownership of `len` bytes at `ptr` (allocated by `guest_alloc`).
    ///
    /// # Safety
    /// `ptr`/`len` must come from `guest_alloc(len)` and not be used again.
    unsafe fn take(ptr: *mut u8, len: u32) -> Vec<u8> {
        if len == 0 {
            return Vec::new();
        }
        // SAFETY: allocated by guest_alloc with capacity `len` and filled by the host.
        unsafe { Vec::from_raw_parts(ptr, len as usize, len as usize) }
    }

    fn publish(out: Vec<u8>) -> u64 {
        OUT.with(|o| {
            let mut o = o.borrow_mut();
            *o = out;
            ((o.as_ptr() as u64) << 32) | o.len() as u64
        })
    }

    /// Memory for `len` input bytes, which the next step takes back.
    #[no_mangle]
    pub extern "C" fn guest_alloc(len: u32) -> *mut u8 {
        let mut v = Vec::<u8>::with_capacity(len as usize);
        let p = v.as_mut_ptr();
        std::mem::forget(v);
        p
    }

    /// # Safety
    /// See [`take`].
    #[no_mangle]
    pub unsafe extern "C" fn guest_request(ptr: *mut u8, len: u32) -> u64 {
        let body = unsafe { take(ptr, len) };
        publish(SESSION.with(|s| s.borrow_mut().request(&body)))
    }

    /// # Safety
    /// See [`take`].
    #[no_mangle]
    pub unsafe extern "C" fn guest_answer(status: u32, ptr: *mut u8, len: u32) -> u64 {
        let answer = unsafe { take(ptr, len) };
        publish(SESSION.with(|s| s.borrow_mut().answer(status as u16, &answer)))
    }

    /// # Safety
    /// See [`take`].
    #[no_mangle]
    pub unsafe extern "C" fn guest_response(ptr: *mut u8, len: u32) -> u64 {
        let body = unsafe { take(ptr, len) };
        publish(SESSION.with(|s| s.borrow_mut().response(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_yields_inject_and_extract_spans() {
        let mut s = Session::new();
        let b = body(100_000);
        assert!(!s.request(&b).is_empty());
        assert!(s.answer(404, &[]).is_empty());
        let extract = s.response(&b);
        assert!(
            extract.len() > b.len() * 4 / 3,
            "base64 body in the extract span"
        );
    }

    #[test]
    fn a_hit_serves_the_recorded_body() {
        let mut s = Session::new();
        let b = body(1024);
        assert!(!s.request(&b).is_empty());
        assert_eq!(s.answer(200, &hit_answer(&b)), b);
    }

    #[test]
    fn the_largest_size_is_within_the_limits() {
        let mut s = Session::new();
        assert!(!s.request(&body(SIZES[3])).is_empty());
    }
}
