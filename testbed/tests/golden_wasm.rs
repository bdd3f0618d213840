//! Every golden case of `golden/cases/` through real Envoy with the wasm plugin, in both request
//! modes (hold_headers and stream_headers), checked with `golden::verify`.
//!
//! One Envoy per request mode, with one listener per distinct plugin configuration; the cases run
//! one after the other against it (they share the demo upstream, the fake backend and the counters).

#[path = "support/golden.rs"]
mod support;

use support::replay_all;
use testbed::Shape;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_wasm_hold_headers() {
    replay_all(Shape::Wasm { hold_headers: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_wasm_stream_headers() {
    replay_all(Shape::Wasm {
        hold_headers: false,
    })
    .await;
}
