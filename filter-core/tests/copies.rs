//! The extract span for a 64 KiB body is built with one copy of the body: the output buffer,
//! allocated once at its exact size. A counting allocator proves it: everything allocated while
//! encoding adds up to the output plus a small, body-independent overhead (attribute keys, the
//! attribute list).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
// a test crate
// The counting allocator is the one unsafe thing here: it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use filter_core::codec::{self, Direction, Redactor, RequestView, ResponseView, SpanIds, SpanMeta};

struct Counting;

thread_local! {
    /// Per thread, so tests running in parallel don't count each other.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(n: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + n));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by `f`, and its result.
fn measure<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (ALLOCATED.with(Cell::get) - before, out)
}

const OVERHEAD: usize = 4096;

fn extract(req_body: &[u8], resp_body: &[u8]) -> (usize, Vec<u8>) {
    let headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":path".to_vec(), b"/upload".to_vec()),
        (
            b"content-type".to_vec(),
            b"application/octet-stream".to_vec(),
        ),
        (b"authorization".to_vec(), b"Bearer secret".to_vec()),
    ];
    let resp_headers = vec![(b"content-type".to_vec(), b"application/json".to_vec())];
    let ids = SpanIds {
        trace_id: [1; 16],
        span_id: [2; 8],
        ..SpanIds::default()
    };
    let redactor = Redactor::new(["authorization"]);
    let meta = SpanMeta {
        service_name: "svc",
        direction: Direction::Outbound,
        session_id: None,
        ids: &ids,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        redactor: &redactor,
    };
    let req = RequestView {
        method: b"POST",
        authority: b"api",
        path: b"/upload",
        headers: &headers,
        body: req_body,
        body_base64: None,
    };
    let resp = ResponseView {
        status: 200,
        headers: &resp_headers,
        body: resp_body,
    };
    measure(|| codec::encode_extract(&meta, &req, &resp))
}

#[test]
fn utf8_body_is_copied_once() {
    let body = "x".repeat(64 * 1024).into_bytes();
    let (allocated, out) = extract(&body, b"{}");
    assert!(out.len() > body.len());
    assert!(
        allocated <= out.len() + OVERHEAD,
        "allocated {allocated} for an output of {}",
        out.len()
    );
}

#[test]
fn binary_body_is_base64_encoded_straight_into_the_output() {
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8 | 0x80).collect();
    assert!(std::str::from_utf8(&body).is_err());
    let (allocated, out) = extract(&body, &body);
    // Two base64 bodies of 4/3 the size; nothing else proportional to them.
    assert!(out.len() > 2 * body.len() * 4 / 3);
    assert!(
        allocated <= out.len() + OVERHEAD,
        "allocated {allocated} for an output of {}",
        out.len()
    );
}
