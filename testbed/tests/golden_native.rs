//! Every golden case of `golden/cases/` through real Envoy with the native filter (`filter-native`
//! loaded by `envoy.filters.http.dynamic_modules`), in both request modes, checked with the same
//! replay and `golden::verify` as the wasm plugin. Each run also asserts that Envoy
//! logged the module's ABI version as matched, so an Envoy upgrade that changes the ABI fails here.

#[path = "support/golden.rs"]
mod support;

use support::replay_all;
use testbed::native::ABI_MATCHED_LOG;
use testbed::Shape;

async fn replay(shape: Shape) {
    let log = replay_all(shape).await;
    assert!(
        log.contains(ABI_MATCHED_LOG),
        "{}: Envoy did not log {ABI_MATCHED_LOG:?}: the dynamic-module ABI of this Envoy differs \
         from the one filter-native was written for (see filter-native/README.md)",
        shape.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_native_hold_headers() {
    replay(Shape::Native { hold_headers: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_native_stream_headers() {
    replay(Shape::Native {
        hold_headers: false,
    })
    .await;
}
