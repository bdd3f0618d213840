//! The engine fed arbitrary event sequences (any headers, chunks, lookup replies, timers, resets,
//! in any order) under several configurations: it must never panic, and whatever it queues as a
//! record must be a decodable span.
#![no_main]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use filter_core::{AtomicCounters, Config, Engine, LookupReply, Node, Services, Stream};
use libfuzzer_sys::fuzz_target;

/// Cuts `n` bytes (the next byte says how many, at most 64) off the front.
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&n, rest)) = data.split_first() else {
        return &[];
    };
    let n = usize::from(n % 65).min(rest.len());
    let (chunk, rest) = rest.split_at(n);
    *data = rest;
    chunk
}

/// Headers from bytes: lines split at `\n`, name and value at the first `:` (any bytes).
fn headers(raw: &[u8], pseudo: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = Vec::new();
    if pseudo {
        h.push((b":method".to_vec(), b"POST".to_vec()));
        h.push((b":path".to_vec(), b"/f".to_vec()));
        h.push((b":authority".to_vec(), b"h".to_vec()));
    }
    for line in raw.split(|&b| b == b'\n') {
        let at = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let (n, v) = line.split_at(at);
        h.push((n.to_vec(), v.get(1..).unwrap_or_default().to_vec()));
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut data)) = data.split_first() else {
        return;
    };
    let modes = [
        "record_and_inject",
        "record_only",
        "inject_only",
        "propagate_only",
    ];
    let config = serde_json::json!({
        "mode": modes[usize::from(choice & 3)],
        "request_mode": if choice & 4 == 0 { "stream_headers" } else { "hold_headers" },
        "traffic_direction": if choice & 8 == 0 { "outbound" } else { "inbound" },
        "on_error_answer": if choice & 16 == 0 { "pass_through" } else { "serve" },
        "on_backend_error": if choice & 32 == 0 { "pass_through" } else { "fail" },
        "max_request_body_bytes": 96,
        "max_response_body_bytes": 96,
        "breaker": {"consecutive_failures": 2, "backoff_ms": 5},
        "records": {"max_queued": 4, "max_queued_bytes": 4096, "max_in_flight": 2}
    });
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = now.clone();
    let engine = Arc::new(Engine::new(
        Config::from_value(&config).expect("a valid config"),
        &Node::default(),
        Services {
            metrics: Arc::new(AtomicCounters::default()),
            clock: Box::new(move || clock.load(Ordering::Relaxed) * 1_000_000),
            seed: 1,
        },
    ));
    let mut stream = Stream::new(engine.clone());
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let eos = op & 0x80 != 0;
        let chunk = take(&mut data);
        let _ = match op % 11 {
            0 => stream.on_request_headers(headers(chunk, true), eos),
            1 => stream.on_request_body(chunk, eos),
            2 => stream.on_request_trailers(),
            3 => {
                let (status, body) = chunk.split_at(chunk.len().min(3));
                let ct: &[u8] = if eos {
                    b"application/json"
                } else {
                    b"application/x-protobuf"
                };
                stream.on_lookup_reply(Some(LookupReply {
                    status: Some(status),
                    content_type: Some(ct),
                    body,
                }))
            }
            4 => stream.on_lookup_reply(None),
            5 => stream.on_response_headers(u16::from(op) * 3, headers(chunk, false), eos),
            6 => stream.on_response_body(chunk, eos),
            7 => stream.on_response_trailers(),
            8 => {
                now.fetch_add(u64::from(op), Ordering::Relaxed);
                stream.on_timer()
            }
            9 => stream.on_reset(),
            _ => {
                // A new stream on the same engine (the breaker and the queue carry over).
                stream = Stream::new(engine.clone());
                filter_core::Decision::pass()
            }
        };
        while let Some(out) = engine.records().next() {
            let decoded =
                filter_core::codec::decode_traces(&out.callout.body, filter_core::Format::Protobuf);
            assert!(decoded.is_ok(), "a record the engine made must decode");
            engine
                .records()
                .finish(out.ticket, filter_core::RecordResult::Status(200));
        }
    }
});
