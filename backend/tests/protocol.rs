//! The Softprobe endpoints against the real binary: record, lookup, match-key options, bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

mod common;

use std::io::Write as _;

use common::*;

async fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), extra).await;
    (dir, server)
}

/// A started server with a match-key config file.
async fn start_with_config(name: &str, text: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", path.to_str().unwrap()],
    )
    .await;
    (dir, server)
}

fn binary() -> Vec<u8> {
    (0..=255u8).rev().chain(0..=255u8).collect()
}

#[tokio::test]
async fn record_then_lookup_is_a_byte_exact_hit() {
    let (_dir, server) = start(&[]).await;
    let mut e = Exchange::post("/upload?v=1", &[0, 159, 146, 150, 255], &binary());
    e.status = 201;
    e.resp_headers = vec![
        (
            "content-type".into(),
            vec!["application/octet-stream".into()],
        ),
        (
            "set-cookie".into(),
            vec!["a=1".into(), "b=2".into(), "c=3".into()],
        ),
        ("x-trace".into(), vec!["one".into()]),
    ];
    let r = post(&server.at("/v1/traces"), PROTOBUF, e.extract()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], PROTOBUF);
    assert!(
        r.bytes().await.unwrap().is_empty(),
        "empty ExportTraceServiceResponse"
    );

    let answer = lookup(&server, &e).await.expect("hit");
    assert_eq!(answer.status, 201);
    assert_eq!(answer.body, binary());
    assert_eq!(
        answer.header("set-cookie").unwrap(),
        &vec!["a=1".to_string(), "b=2".into(), "c=3".into()]
    );
    assert_eq!(answer.header("x-trace").unwrap(), &vec!["one".to_string()]);
    assert_eq!(
        answer.header("content-type").unwrap(),
        &vec!["application/octet-stream".to_string()]
    );
}

#[tokio::test]
async fn unrecorded_request_is_a_404_with_an_empty_body() {
    let (_dir, server) = start(&[]).await;
    record(&server, &Exchange::get("/known", b"k")).await;
    assert!(lookup(&server, &Exchange::get("/unknown", b""))
        .await
        .is_none());
    let mut other_method = Exchange::get("/known", b"");
    other_method.method = "DELETE".into();
    assert!(lookup(&server, &other_method).await.is_none());
    let mut other_host = Exchange::get("/known", b"");
    other_host.host = "other.example.com".into();
    assert!(lookup(&server, &other_host).await.is_none());
    assert!(lookup(&server, &Exchange::get("/known", b""))
        .await
        .is_some());
}

#[tokio::test]
async fn default_key_has_the_body_and_the_session_id() {
    let (_dir, server) = start(&[]).await;
    record(&server, &Exchange::post("/q", b"{\"a\":1}", b"one")).await;
    assert!(lookup(&server, &Exchange::post("/q", b"{\"a\":2}", b""))
        .await
        .is_none());
    let mut other_session = Exchange::post("/q", b"{\"a\":1}", b"");
    other_session.session = Some("session-2".into());
    assert!(lookup(&server, &other_session).await.is_none());
    other_session.session = None;
    assert!(lookup(&server, &other_session).await.is_none());
    let hit = lookup(&server, &Exchange::post("/q", b"{\"a\":1}", b"")).await;
    assert_eq!(hit.unwrap().body, b"one");
    // Headers are not in the default key; query strings are.
    let with_header = Exchange::post("/q", b"{\"a\":1}", b"").with_req_header("x-tenant", "t");
    assert!(lookup(&server, &with_header).await.is_some());
    assert!(
        lookup(&server, &Exchange::post("/q?x=1", b"{\"a\":1}", b""))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn newest_recording_wins() {
    let (_dir, server) = start(&[]).await;
    for body in ["first", "second", "third"] {
        record(&server, &Exchange::get("/n", body.as_bytes())).await;
    }
    assert_eq!(
        lookup(&server, &Exchange::get("/n", b""))
            .await
            .unwrap()
            .body,
        b"third"
    );
}

#[tokio::test]
async fn ignored_query_params_are_left_out_of_the_key() {
    let (_dir, server) = start_with_config(
        "key.toml",
        "[match_key]\nignore_query_params = [\"ts\", \"nonce\"]\n",
    )
    .await;
    record(
        &server,
        &Exchange::get("/items?id=7&ts=100&nonce=a", b"seven"),
    )
    .await;
    let hit = lookup(&server, &Exchange::get("/items?id=7&ts=999", b"")).await;
    assert_eq!(hit.unwrap().body, b"seven");
    assert!(lookup(&server, &Exchange::get("/items?id=7", b""))
        .await
        .is_some());
    assert!(lookup(&server, &Exchange::get("/items?id=8&ts=100", b""))
        .await
        .is_none());
}

#[tokio::test]
async fn one_callers_recording_never_answers_another_caller() {
    let (_dir, server) = start(&[]).await;
    // Recorded through the filter: credentials arrive redacted.
    let alice = Exchange::get("/me", b"alice's profile").with_req_header(
        "authorization",
        "sha256:6a2f1ac61b6bb82e5c9bd2fe1a6b1b1e9b43cfe2a5ed9c16f64dd31f0ee3b1c2",
    );
    record(&server, &alice).await;
    assert_eq!(
        lookup(&server, &alice).await.unwrap().body,
        b"alice's profile"
    );
    for (name, value) in [
        ("authorization", "Bearer bob"),
        (
            "authorization",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("cookie", "session=alice"),
        ("x-api-key", "k"),
    ] {
        let other = Exchange::get("/me", b"").with_req_header(name, value);
        assert!(lookup(&server, &other).await.is_none(), "{name}: {value}");
    }
    assert!(lookup(&server, &Exchange::get("/me", b"")).await.is_none());

    // A peer that does not redact: the raw value and its redacted form are one caller.
    let raw = Exchange::get("/raw", b"carol").with_req_header("cookie", "session=carol");
    record(&server, &raw).await;
    let redacted = format!("sha256:{}", sha256_hex(b"session=carol"));
    let same = Exchange::get("/raw", b"").with_req_header("cookie", &redacted);
    assert_eq!(lookup(&server, &same).await.unwrap().body, b"carol");

    // The opt-out: callers share recordings.
    let (_dir2, shared) = start_with_config("key.toml", "[match_key]\ncaller_headers = []\n").await;
    record(&shared, &alice).await;
    let bob = Exchange::get("/me", b"").with_req_header("authorization", "Bearer bob");
    assert_eq!(
        lookup(&shared, &bob).await.unwrap().body,
        b"alice's profile"
    );
}

#[tokio::test]
async fn the_latest_recording_replaces_the_one_before_and_ttl_expires_it() {
    let (_dir, server) = start_with_config("r.toml", "[retention]\nttl_seconds = 1\n").await;
    record(&server, &Exchange::get("/v", b"one")).await;
    record(&server, &Exchange::get("/v", b"two")).await;
    assert_eq!(
        lookup(&server, &Exchange::get("/v", b""))
            .await
            .unwrap()
            .body,
        b"two"
    );
    assert_eq!(list(&server, "").await["total"], 1, "an upsert, not a pile");
    assert_eq!(metric(&server, "backend_replaced_total").await, 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(lookup(&server, &Exchange::get("/v", b"")).await.is_none());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&server, "backend_expired_total").await < 1 {
        assert!(std::time::Instant::now() < deadline, "never deleted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(list(&server, "").await["total"], 0);
}

#[tokio::test]
async fn configured_headers_enter_the_key() {
    let (_dir, server) = start_with_config(
        "key.json",
        r#"{"match_key": {"headers": ["X-Tenant", "authorization"]}}"#,
    )
    .await;
    let secret = "sha256:0b14d501a594442a01c6859541bcb3e8164d183d32937b851835442f69d5c94e";
    let a = Exchange::get("/t", b"tenant-a")
        .with_req_header("x-tenant", "a")
        .with_req_header("authorization", secret);
    record(&server, &a).await;
    let b = Exchange::get("/t", b"tenant-b")
        .with_req_header("x-tenant", "b")
        .with_req_header("authorization", secret);
    record(&server, &b).await;
    assert_eq!(lookup(&server, &a).await.unwrap().body, b"tenant-a");
    assert_eq!(lookup(&server, &b).await.unwrap().body, b"tenant-b");
    let other_secret = Exchange::get("/t", b"")
        .with_req_header("x-tenant", "a")
        .with_req_header("authorization", "sha256:ffff");
    assert!(lookup(&server, &other_secret).await.is_none());
    assert!(lookup(&server, &Exchange::get("/t", b"")).await.is_none());
}

#[tokio::test]
async fn ignored_json_body_fields_are_left_out_at_any_depth() {
    let (_dir, server) = start_with_config(
        "key.toml",
        "[match_key]\nignore_body_fields = [\"timestamp\", \"requestId\"]\n",
    )
    .await;
    let recorded = br#"{"order":{"id":1,"timestamp":"2024-01-01","items":[{"sku":"x","requestId":"r1"}]},"requestId":"a"}"#;
    record(&server, &Exchange::post("/orders", recorded, b"created")).await;
    let later = br#"{"requestId":"b","order":{"items":[{"requestId":"r2","sku":"x"}],"id":1,"timestamp":"2025-06-01"}}"#;
    let hit = lookup(&server, &Exchange::post("/orders", later, b"")).await;
    assert_eq!(hit.unwrap().body, b"created");
    let different = br#"{"order":{"id":2,"timestamp":"x","items":[{"sku":"x"}]}}"#;
    assert!(lookup(&server, &Exchange::post("/orders", different, b""))
        .await
        .is_none());
    // A body that is not JSON is still compared byte for byte.
    record(&server, &Exchange::post("/raw", b"timestamp=1", b"raw")).await;
    assert!(
        lookup(&server, &Exchange::post("/raw", b"timestamp=2", b""))
            .await
            .is_none()
    );
    assert!(
        lookup(&server, &Exchange::post("/raw", b"timestamp=1", b""))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn scope_by_service_separates_services() {
    let (_dir, server) =
        start_with_config("key.toml", "[match_key]\nscope_by_service = true\n").await;
    let mut a = Exchange::get("/s", b"from-a");
    a.service = "svc-a".into();
    record(&server, &a).await;
    let mut b = Exchange::get("/s", b"");
    b.service = "svc-b".into();
    assert!(lookup(&server, &b).await.is_none());
    assert_eq!(lookup(&server, &a).await.unwrap().body, b"from-a");

    // Without the option, services share recordings.
    let (_dir2, shared) = start(&[]).await;
    record(&shared, &a).await;
    assert_eq!(lookup(&shared, &b).await.unwrap().body, b"from-a");
}

#[tokio::test]
async fn json_record_and_json_answers() {
    let (_dir, server) = start(&[]).await;
    let mut e = Exchange::post("/j", b"{\"q\":1}", &binary());
    e.resp_headers = vec![("vary".into(), vec!["a".into(), "b".into()])];
    let r = post(&server.at("/v1/traces"), JSON, e.extract_json()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], JSON);
    assert_eq!(r.text().await.unwrap(), "{}");

    // A JSON lookup asking for JSON.
    let r = common::client()
        .post(server.at("/v1/inject"))
        .header("content-type", JSON)
        .header("accept", JSON)
        .body(e.inject_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], JSON);
    let answer = read_json_answer(&r.bytes().await.unwrap());
    assert_eq!(answer.body, binary());
    assert_eq!(
        answer.header("vary").unwrap(),
        &vec!["a".to_string(), "b".into()]
    );

    // A protobuf lookup asking for JSON gets JSON; asking for protobuf gets protobuf.
    let r = common::client()
        .post(server.at("/v1/inject"))
        .header("content-type", PROTOBUF)
        .header("accept", "application/json")
        .body(e.inject())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], JSON);
    assert_eq!(read_json_answer(&r.bytes().await.unwrap()).body, binary());
    assert_eq!(lookup(&server, &e).await.unwrap().body, binary());
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let (_dir, server) = start(&[]).await;
    let e = Exchange::get("/gz", b"zipped");
    let r = common::client()
        .post(server.at("/v1/traces"))
        .header("content-type", PROTOBUF)
        .header("content-encoding", "gzip")
        .body(gzip(&e.extract()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = common::client()
        .post(server.at("/v1/inject"))
        .header("content-type", JSON)
        .header("content-encoding", "gzip")
        .header("accept", PROTOBUF)
        .body(gzip(&e.inject_json()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(read_answer(&r.bytes().await.unwrap()).body, b"zipped");
}

#[tokio::test]
async fn non_extract_spans_are_accepted_and_ignored() {
    let (_dir, server) = start(&[]).await;
    // An ordinary OTLP span (no sp.span.type) and an inject span sent to /v1/traces.
    let mut plain =
        serde_json::from_slice::<serde_json::Value>(&Exchange::get("/x", b"").inject_json())
            .unwrap();
    plain["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] =
        serde_json::json!([{"key": "http.route", "value": {"stringValue": "/x"}}]);
    let r = post(
        &server.at("/v1/traces"),
        JSON,
        serde_json::to_vec(&plain).unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(
        &server.at("/v1/traces"),
        PROTOBUF,
        Exchange::get("/x", b"").inject(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(list(&server, "").await["total"], 0);
    assert_eq!(metric(&server, "backend_ignored_spans_total").await, 2);
}

async fn expect_status(server: &Server, path: &str, ct: &str, body: Vec<u8>, want: u16) -> String {
    let r = post(&server.at(path), ct, body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, want, "{path} {ct}: {text}");
    assert!(!text.trim().is_empty(), "a {want} explains itself");
    text
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers_and_the_server_stays_up() {
    let (_dir, mut server) = start(&[]).await;
    let mut expected_bad = 0;
    for path in ["/v1/traces", "/v1/inject"] {
        let t = expect_status(&server, path, PROTOBUF, vec![0xff, 0xff, 0xff, 0x0f], 400).await;
        assert!(t.contains("protobuf"), "{t}");
        let t = expect_status(&server, path, JSON, b"{\"resourceSpans\": [".to_vec(), 400).await;
        assert!(t.to_lowercase().contains("json"), "{t}");
        let t = expect_status(&server, path, JSON, b"[1, 2]".to_vec(), 400).await;
        assert!(!t.is_empty());
        let t = expect_status(&server, path, PROTOBUF, vec![], 400).await;
        assert!(t.contains("empty"), "{t}");
        let t = expect_status(&server, path, JSON, vec![], 400).await;
        assert!(t.contains("empty"), "{t}");
        let big = vec![b'a'; 20 << 20];
        let t = expect_status(&server, path, PROTOBUF, big, 413).await;
        assert!(t.contains("max-body-bytes"), "{t}");
        expected_bad += 6;
        assert!(server.alive());
    }
    // A gzip body that inflates past the limit, a bad gzip, an unknown encoding.
    let bomb = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 17 << 20]).unwrap();
        enc.finish().unwrap()
    };
    for (encoding, body, want) in [
        ("gzip", bomb, 413),
        ("gzip", b"not gzip".to_vec(), 400),
        ("br", b"x".to_vec(), 415),
    ] {
        let r = common::client()
            .post(server.at("/v1/traces"))
            .header("content-type", PROTOBUF)
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{encoding}");
        expected_bad += 1;
    }
    // Decodable, but not a usable span.
    let mut no_path = Exchange::get("/p", b"x");
    no_path.path = String::new();
    let mut json: serde_json::Value = serde_json::from_slice(&no_path.extract_json()).unwrap();
    let attrs = json["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
        .as_array_mut()
        .unwrap();
    // The path falls back to the `:path` header attribute (the agents' way): take both away.
    attrs.retain(|a| a["key"] != "url.path" && a["key"] != "http.request.header.:path");
    let t = expect_status(
        &server,
        "/v1/traces",
        JSON,
        serde_json::to_vec(&json).unwrap(),
        400,
    )
    .await;
    assert!(t.contains("url.path"), "{t}");
    let mut bad_status = Exchange::get("/p", b"x");
    bad_status.status = 1000;
    let t = expect_status(&server, "/v1/traces", PROTOBUF, bad_status.extract(), 400).await;
    assert!(t.contains("status"), "{t}");
    let mut only_extract =
        serde_json::from_slice::<serde_json::Value>(&Exchange::get("/p", b"x").extract_json())
            .unwrap();
    only_extract["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"][0]["value"]
        ["stringValue"] = "extract".into();
    let t = expect_status(
        &server,
        "/v1/inject",
        JSON,
        serde_json::to_vec(&only_extract).unwrap(),
        400,
    )
    .await;
    assert!(t.contains("inject"), "{t}");
    expected_bad += 3;

    assert!(server.alive());
    let r = common::client()
        .get(server.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(&server, "backend_bad_requests_total").await,
        expected_bad
    );
    assert_eq!(metric(&server, "backend_recordings").await, 0);
    // Still records and answers.
    record(&server, &Exchange::get("/after", b"fine")).await;
    assert_eq!(
        lookup(&server, &Exchange::get("/after", b""))
            .await
            .unwrap()
            .body,
        b"fine"
    );
}
