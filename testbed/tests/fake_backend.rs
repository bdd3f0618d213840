//! The fake backend on its own: every behaviour, observed over plain HTTP.

use std::path::Path;
use std::time::{Duration, Instant};
use testbed::fake_backend::model::{Behaviour, UNDECODABLE_BODY};
use testbed::raw::{self, Body, RawRequest, RawResponse};
use testbed::FakeBackend;

const T: Duration = Duration::from_secs(10);

async fn start() -> FakeBackend {
    FakeBackend::start_with_binary(Path::new(env!("CARGO_BIN_EXE_fake-backend")))
        .await
        .expect("start fake-backend")
}

fn post(path: &str, body: &[u8]) -> RawRequest {
    RawRequest::new("POST", path)
        .header("content-type", "application/x-protobuf")
        .body(Body::ContentLength(vec![body.to_vec()]))
}

async fn inject(fb: &FakeBackend, body: &[u8], timeout: Duration) -> anyhow::Result<RawResponse> {
    raw::send(fb.addr(), &post("/v1/inject", body), timeout).await
}

#[tokio::test]
async fn defaults_are_miss_and_traces_ok_and_everything_is_recorded() {
    let fb = start().await;
    let r = inject(&fb, b"q1", T).await.unwrap();
    assert_eq!((r.status, r.body.len()), (404, 0));
    let r = raw::send(fb.addr(), &post("/v1/traces", b"t1"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let got = fb.received().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/v1/inject");
    assert_eq!(got[0].body_base64, b"q1");
    assert_eq!(
        got[0].header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(got[1].path, "/v1/traces");
    assert!(got[1].received_ms_since_start >= got[0].received_ms_since_start);
    assert!(got[0].received_unix_ms > 0);
    assert_eq!(fb.received_on("/v1/traces").await.unwrap().len(), 1);
    fb.clear_received().await.unwrap();
    assert!(fb.received().await.unwrap().is_empty());
}

#[tokio::test]
async fn status_hit_and_undecodable() {
    let fb = start().await;
    fb.set_inject(&Behaviour::status(500)).await.unwrap();
    assert_eq!(inject(&fb, b"", T).await.unwrap().status, 500);

    fb.set_inject(&Behaviour::hit_protobuf(vec![0x0a, 0x02, 0xff, 0x00]))
        .await
        .unwrap();
    let r = inject(&fb, b"", T).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(r.body, vec![0x0a, 0x02, 0xff, 0x00]);

    fb.set_inject(&Behaviour::Undecodable).await.unwrap();
    let r = inject(&fb, b"", T).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(r.body, UNDECODABLE_BODY);

    fb.set_traces(&Behaviour::status(503)).await.unwrap();
    let r = raw::send(fb.addr(), &post("/v1/traces", b"x"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn behaviours_accept_the_documented_json() {
    let fb = start().await;
    for json in [
        r#"{"kind":"miss"}"#,
        r#"{"kind":"status","status":500}"#,
        r#"{"kind":"hit","content_type":"application/x-protobuf","body_base64":"AAE="}"#,
        r#"{"kind":"undecodable"}"#,
        r#"{"kind":"timeout"}"#,
        r#"{"kind":"slow","delay_ms":5,"then":{"kind":"miss"}}"#,
    ] {
        let req = RawRequest::new("PUT", "/inject-behaviour")
            .body(Body::ContentLength(vec![json.as_bytes().to_vec()]));
        let r = raw::send(fb.control_addr(), &req, T).await.unwrap();
        assert_eq!(r.status, 204, "{json}: {}", r.body_str());
    }
    let req = RawRequest::new("PUT", "/inject-behaviour")
        .body(Body::ContentLength(vec![br#"{"kind":"nope"}"#.to_vec()]));
    assert_eq!(
        raw::send(fb.control_addr(), &req, T).await.unwrap().status,
        400
    );
}

#[tokio::test]
async fn timeout_never_answers_and_slow_delays() {
    let fb = start().await;
    fb.set_inject(&Behaviour::Timeout).await.unwrap();
    let started = Instant::now();
    let err = inject(&fb, b"t", Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(fb.received_on("/v1/inject").await.unwrap().len(), 1);

    fb.set_inject(&Behaviour::slow(
        300,
        Behaviour::hit_protobuf(b"ok".to_vec()),
    ))
    .await
    .unwrap();
    let started = Instant::now();
    let r = inject(&fb, b"s", T).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
}

#[tokio::test]
async fn closed_port_refuses_connections() {
    let p = testbed::closed_port().unwrap();
    let err = raw::send(p.addr(), &RawRequest::new("GET", "/"), T)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
}
