//! The store against the real binary: crash safety, concurrency, the size cap, shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

mod common;

use common::*;

#[tokio::test]
async fn a_recording_survives_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]).await;
    let e = Exchange::post("/durable", &[1, 2, 3, 0xff], &[0xfe, 0, 7]);
    record(&server, &e).await;
    // Killed right after the 2xx: nothing gets a chance to flush.
    server.kill9();
    drop(server);
    let server = Server::start(&data, &[]).await;
    let answer = lookup(&server, &e).await.expect("the recording survived");
    assert_eq!(answer.body, vec![0xfe, 0, 7]);
    assert_eq!(metric(&server, "backend_recordings").await, 1);
}

#[tokio::test]
async fn eight_concurrent_writers_and_readers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Server::start(&dir.path().join("data"), &[]).await);
    const PER_TASK: usize = 25;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let e = Exchange::get(&format!("/w{w}/{i}"), format!("body-{w}-{i}").as_bytes());
                record(&s, &e).await;
            }
        }));
    }
    for r in 0..8 {
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                // Either a miss or the right answer, never an error.
                let e = Exchange::get(&format!("/w{r}/{i}"), b"");
                if let Some(a) = lookup(&s, &e).await {
                    assert_eq!(a.body, format!("body-{r}-{i}").into_bytes());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for w in 0..8 {
        for i in 0..PER_TASK {
            let e = Exchange::get(&format!("/w{w}/{i}"), b"");
            let a = lookup(&server, &e)
                .await
                .unwrap_or_else(|| panic!("lost /w{w}/{i}"));
            assert_eq!(a.body, format!("body-{w}-{i}").into_bytes());
        }
    }
    assert_eq!(list(&server, "").await["total"], 8 * PER_TASK);
    assert_eq!(
        metric(&server, "backend_recorded_total").await,
        8 * PER_TASK as u64
    );
}

#[tokio::test]
async fn the_size_cap_evicts_the_oldest_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 1000];
    let server = Server::start(&dir.path().join("data"), &["--max-store-bytes", "5000"]).await;
    for i in 0..10 {
        record(&server, &Exchange::get(&format!("/cap/{i}"), &body)).await;
    }
    let stored = metric(&server, "backend_recordings").await;
    assert!((2..=4).contains(&stored), "{stored} recordings kept");
    assert!(metric(&server, "backend_store_bytes").await <= 5000);
    assert_eq!(metric(&server, "backend_evicted_total").await, 10 - stored);
    assert!(lookup(&server, &Exchange::get("/cap/0", b""))
        .await
        .is_none());
    assert!(lookup(&server, &Exchange::get("/cap/9", b""))
        .await
        .is_some());
    // One recording larger than the whole cap is refused, not silently dropped.
    let huge = Exchange::get("/cap/huge", &vec![b'y'; 6000]);
    let r = post(&server.at("/v1/traces"), PROTOBUF, huge.extract()).await;
    assert_eq!(r.status(), 413);
    assert!(lookup(&server, &Exchange::get("/cap/9", b""))
        .await
        .is_some());
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]).await;
    record(&server, &Exchange::get("/bye", b"bye")).await;
    let status = server.terminate();
    assert!(status.success(), "{status}: {}", server.logs());
    assert!(server.logs().contains("shutting down"), "{}", server.logs());
    drop(server);
    let server = Server::start(&data, &[]).await;
    assert!(lookup(&server, &Exchange::get("/bye", b"")).await.is_some());
}
