//! The admin API, metrics, logs and the command line against the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // a test crate

mod common;

use std::process::Command;

use common::*;
use serde_json::Value as Json;

async fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]).await;
    (dir, server)
}

#[tokio::test]
async fn list_get_delete_and_clear() {
    let (_dir, server) = start().await;
    for i in 0..5 {
        let mut e = Exchange::get(&format!("/a/{i}"), format!("r{i}").as_bytes());
        e.status = 200 + i;
        record(&server, &e).await;
    }
    let mut binary = Exchange::post("/bin", b"req", &[0xff, 0xfe]);
    binary
        .req_headers
        .push(("x-multi".into(), vec!["1".into(), "2".into()]));
    record(&server, &binary).await;

    let page = list(&server, "?offset=1&limit=2").await;
    assert_eq!(page["total"], 6);
    let rows = page["recordings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["path"], "/a/1");
    assert_eq!(rows[1]["path"], "/a/2");
    assert_eq!(rows[0]["method"], "GET");
    assert_eq!(rows[0]["host"], "api.example.com");
    assert_eq!(rows[0]["service"], "checkout");
    assert_eq!(rows[0]["status"], 201);
    assert_eq!(rows[0]["key"].as_str().unwrap().len(), 64);
    assert!(rows[0]["recorded_at"].as_str().unwrap().ends_with('Z'));
    let all = list(&server, "").await;
    let ids: Vec<u64> = all["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);

    // The full recording: UTF-8 bodies as strings, others base64.
    let full = get_json(&server, &format!("/admin/recordings/{}", ids[5])).await;
    assert_eq!(full["request"]["path"], "/bin");
    assert_eq!(full["request"]["body"], "req");
    assert_eq!(full["response"]["body"]["base64"], b64(&[0xff, 0xfe]));
    let multi = full["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "x-multi")
        .unwrap();
    assert_eq!(multi["values"], serde_json::json!(["1", "2"]));
    assert_eq!(full["key"], all["recordings"][5]["key"]);

    let c = client();
    let status = |req: reqwest::RequestBuilder| async move { req.send().await.unwrap().status() };
    assert_eq!(
        status(c.get(server.at("/admin/recordings/999999"))).await,
        404
    );
    assert_eq!(status(c.get(server.at("/admin/recordings/abc"))).await, 400);

    let first = server.at(&format!("/admin/recordings/{}", ids[0]));
    assert_eq!(status(c.delete(&first)).await, 204);
    assert_eq!(status(c.delete(&first)).await, 404);
    assert!(lookup(&server, &Exchange::get("/a/0", b"")).await.is_none());
    assert!(lookup(&server, &Exchange::get("/a/1", b"")).await.is_some());
    assert_eq!(list(&server, "").await["total"], 5);

    let r = c
        .delete(server.at("/admin/recordings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Json = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["deleted"], 5);
    assert_eq!(list(&server, "").await["total"], 0);
    assert!(lookup(&server, &Exchange::get("/a/1", b"")).await.is_none());
    assert_eq!(metric(&server, "backend_store_bytes").await, 0);
}

#[tokio::test]
async fn export_and_import_move_a_session_between_machines() {
    let (_d1, a) = start().await;
    let binary: Vec<u8> = (0..=255).collect();
    let mut e1 = Exchange::post("/e1", &[0x80, 0x81], &binary);
    e1.resp_headers = vec![("set-cookie".into(), vec!["x=1".into(), "y=2".into()])];
    let e2 = Exchange::get("/e2", b"two");
    record(&a, &e1).await;
    record(&a, &e2).await;
    let doc = client().get(a.at("/admin/export")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
    let doc = doc.bytes().await.unwrap().to_vec();
    let parsed: Json = serde_json::from_slice(&doc).unwrap();
    assert_eq!(parsed["recordings"].as_array().unwrap().len(), 2);

    let (_d2, b) = start().await;
    assert!(lookup(&b, &e1).await.is_none());
    let r = post(&b.at("/admin/import"), JSON, doc.clone()).await;
    assert_eq!(r.status(), 200);
    let body: Json = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["imported"], 2);
    let hit = lookup(&b, &e1).await.unwrap();
    assert_eq!(hit.body, binary);
    assert_eq!(
        hit.header("set-cookie").unwrap(),
        &vec!["x=1".to_string(), "y=2".into()]
    );
    assert_eq!(lookup(&b, &e2).await.unwrap().body, b"two");

    let r = post(&b.at("/admin/import"), JSON, b"{\"nope\": 1}".to_vec()).await;
    assert_eq!(r.status(), 400);

    // The same document through the command line, on a stopped store.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("offline");
    let file = dir.path().join("session.json");
    std::fs::write(&file, &doc).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["import", "--data"])
        .arg(&data)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["export", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exported["recordings"].as_array().unwrap().len(), 2);
    assert_eq!(exported["recordings"][0]["request"]["path"], "/e1");
    let server = Server::start(&data, &[]).await;
    assert_eq!(lookup(&server, &e1).await.unwrap().body, binary);
}

#[tokio::test]
async fn imports_stream_past_the_body_limit_and_hold_each_recording_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"), &["--max-body-bytes", "131072"]).await;
    let big = vec![b'r'; 64 << 10];
    let n = 40;
    for i in 0..n {
        record(&a, &Exchange::get(&format!("/big/{i}"), &big)).await;
    }
    let doc = client().get(a.at("/admin/export")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
    let doc = doc.bytes().await.unwrap().to_vec();
    assert!(doc.len() > 2 << 20, "a document far over the body limit");

    let b = Server::start(&dir.path().join("b"), &["--max-body-bytes", "131072"]).await;
    let r = post_request(&b.at("/admin/import"), JSON, gzip(&doc))
        .header("content-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Json = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["imported"], n);
    assert_eq!(
        lookup(&b, &Exchange::get("/big/39", b""))
            .await
            .unwrap()
            .body,
        big
    );

    let huge = Exchange::get("/huge", &vec![b'h'; 200 << 10]);
    let c = Server::start(&dir.path().join("c"), &[]).await;
    record(&c, &huge).await;
    let doc = client().get(c.at("/admin/export")).send().await.unwrap();
    let doc = doc.bytes().await.unwrap().to_vec();
    let r = post(&b.at("/admin/import"), JSON, doc).await;
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(text.contains("larger than 131072 bytes"), "{text}");
}

#[tokio::test]
async fn cli_export_refuses_a_store_held_by_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _server = Server::start(&data, &[]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["export", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin API"));
}

#[tokio::test]
async fn metrics_count_recordings_hits_misses_and_bad_requests() {
    let (_dir, server) = start().await;
    let text = metrics_text(&server).await;
    assert!(text.contains("# TYPE backend_hits_total counter"), "{text}");
    record(&server, &Exchange::get("/m1", b"1")).await;
    record(&server, &Exchange::get("/m2", b"2")).await;
    assert!(lookup(&server, &Exchange::get("/m1", b"")).await.is_some());
    assert!(lookup(&server, &Exchange::get("/none", b""))
        .await
        .is_none());
    assert!(lookup(&server, &Exchange::get("/none2", b""))
        .await
        .is_none());
    let r = post(&server.at("/v1/inject"), PROTOBUF, vec![0xff]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(metric(&server, "backend_recordings").await, 2);
    assert_eq!(metric(&server, "backend_recorded_total").await, 2);
    assert_eq!(metric(&server, "backend_hits_total").await, 1);
    assert_eq!(metric(&server, "backend_misses_total").await, 2);
    assert_eq!(metric(&server, "backend_bad_requests_total").await, 1);
    assert!(metric(&server, "backend_store_bytes").await > 0);
    assert!(metric(&server, "backend_store_file_bytes").await > 0);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--log-format", "json"]).await;
    record(&server, &Exchange::get("/log", b"l")).await;
    let logs = server.logs();
    let lines: Vec<Json> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["path"] == "/v1/traces"),
        "{logs}"
    );
}

#[test]
fn help_documents_every_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_backend"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let top = run(&["--help"]);
    for word in ["serve", "export", "import", "--log-format", "--log-level"] {
        assert!(top.contains(word), "{word} missing from:\n{top}");
    }
    let serve = run(&["serve", "--help"]);
    for flag in [
        "--listen",
        "--data",
        "--config",
        "--max-store-bytes",
        "--max-body-bytes",
        "--log-format",
        "--log-level",
        "127.0.0.1:4318",
        "16777216",
    ] {
        assert!(serve.contains(flag), "{flag} missing from:\n{serve}");
    }
    let import = run(&["import", "--help"]);
    assert!(import.contains("<FILE>"), "{import}");
}

/// With an admin token and an ingest key, each guarded endpoint refuses a caller without its
/// secret (401), accepts it with it, and a non-loopback listen without them is refused at start.
#[tokio::test]
async fn tokens_guard_admin_and_ingest_and_a_public_listen_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (
        "admin-token-0123456789abcdef",
        "ingest-key-0123456789abcdef",
    );
    let admin_file = dir.path().join("admin-token");
    let ingest_file = dir.path().join("ingest-key");
    std::fs::write(&admin_file, format!("{admin}\n")).unwrap();
    std::fs::write(&ingest_file, ingest).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--admin-token-file",
            admin_file.to_str().unwrap(),
            "--ingest-key-file",
            ingest_file.to_str().unwrap(),
        ],
    )
    .await;
    let e = Exchange::get("/guarded", b"secret answer");
    let c = client();
    let traces = |key: Option<&str>| {
        let mut r = post_request(&server.at("/v1/traces"), PROTOBUF, e.extract());
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.send()
    };
    assert_eq!(traces(None).await.unwrap().status(), 401);
    assert_eq!(
        traces(Some("wrong-key-0123456789abcdef"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(traces(Some(ingest)).await.unwrap().status(), 200);
    let inject = post_request(&server.at("/v1/inject"), PROTOBUF, e.inject())
        .header("x-public-key", ingest)
        .send()
        .await
        .unwrap();
    assert_eq!(inject.status(), 200, "the agents' x-public-key is accepted");

    let admin_get = |key: &str| {
        c.get(server.at("/admin/export"))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    let refused = c.get(server.at("/admin/recordings")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert!(refused.text().await.unwrap().contains("admin token"));
    assert_eq!(
        admin_get(ingest).await.unwrap().status(),
        401,
        "the ingest key is not admin"
    );
    assert_eq!(admin_get(admin).await.unwrap().status(), 200);
    let cleared = c
        .delete(server.at("/admin/recordings"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cleared.status(),
        401,
        "nobody wipes the store without the token"
    );
    for open in ["/healthz", "/metrics"] {
        assert_eq!(c.get(server.at(open)).send().await.unwrap().status(), 200);
    }
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("backend_unauthorized_total 5"),
        "{metrics}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path().join("other"))
        .env_remove("BACKEND_ADMIN_TOKEN")
        .env_remove("BACKEND_INGEST_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0") && err.contains("admin token"),
        "{err}"
    );
}
