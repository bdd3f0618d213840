//! `make publish` end to end, offline: the reproducible build (twice, in different target dirs,
//! same sha256), the upload through the S3 API to a real S3-compatible server on 127.0.0.1 (moto),
//! the rendered manifests, and the uploaded object loaded by Envoy 1.40 through
//! `vm_config.code.remote` (http_uri + sha256, the integrity check Istio relies on) — plus a wrong
//! sha256 refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use istio_check::{repo_root, yaml_docs, IstioApi};
use sha2::{Digest, Sha256};
use testbed::{envoy_config, raw, DemoUpstream, Envoy, FakeBackend};

const BUCKET: &str = "transparent-cache-wasm";

struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(log: &Path) -> Moto {
    let out = Command::new(repo_root().join("istio-check/ensure-moto.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ensure-moto: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let moto = Moto { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "moto did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// One plain HTTP/1.1 request; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

/// The cargo target dir this test runs from (`<target>/debug/deps/publish-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn publish(step: &str, dist: &Path, target: &Path, moto: SocketAddr) -> String {
    let out = Command::new(repo_root().join("scripts/publish.sh"))
        .arg(step)
        .env("DIST_DIR", dist)
        .env("PUBLISH_TARGET_DIR", target)
        .env("R2_ACCOUNT_ID", "local-test")
        .env("R2_ACCESS_KEY_ID", "test-key-id")
        .env("R2_SECRET_ACCESS_KEY", "test-secret")
        .env("R2_BUCKET", BUCKET)
        .env("R2_ENDPOINT_URL", format!("http://{moto}"))
        .env("R2_PUBLIC_BASE_URL", format!("http://{moto}/{BUCKET}"))
        .env("PUBLISH_ALLOW_HTTP", "1")
        .env("SOFTPROBE_API_KEY", "pk_test_publish")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "publish.sh {step} failed:\n{stderr}");
    stderr
}

fn release_value(dist: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dist.join("release.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_string()
}

fn wasm_filter(url: &str, sha: &str, fail_open: bool) -> String {
    format!(
        r#"name: transparent-cache
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
  config:
    name: transparent-cache
    root_id: transparent-cache
    fail_open: {fail_open}
    vm_config:
      vm_id: transparent-cache
      runtime: envoy.wasm.runtime.v8
      code:
        remote:
          http_uri: {{ uri: "{url}", cluster: wasm_source, timeout: 10s }}
          sha256: "{sha}"
          retry_policy: {{ num_retries: 1 }}
    configuration:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: '{{"backend": {{"cluster": "backend", "authority": "backend.local"}}}}'
"#
    )
}

async fn envoy_with(
    url: &str,
    sha: &str,
    fail_open: bool,
    moto: SocketAddr,
    up: &DemoUpstream,
    fb: &FakeBackend,
) -> Envoy {
    let yaml = envoy_config::with_filters(
        0,
        0,
        up.addr(),
        &[wasm_filter(url, sha, fail_open)],
        &[
            envoy_config::cluster("wasm_source", moto),
            envoy_config::cluster("backend", fb.addr()),
        ],
    );
    Envoy::start(&yaml).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_uploads_a_reproducible_build_that_envoy_loads_by_sha256() {
    let work = tempfile::tempdir().unwrap();
    let moto = start_moto(&work.path().join("moto.log"));
    // An R2 bucket with public access: anonymous GETs of its objects are allowed.
    assert_eq!(http(moto.addr, "PUT", &format!("/{BUCKET}"), b"").0, 200);
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{BUCKET}/*"}}]}}"#
    );
    let (st, _) = http(
        moto.addr,
        "PUT",
        &format!("/{BUCKET}?policy"),
        policy.as_bytes(),
    );
    assert!((200..300).contains(&st), "bucket policy: {st}");

    // Build, upload, render.
    let t0 = Instant::now();
    let dist = work.path().join("dist");
    let log = publish(
        "all",
        &dist,
        &target_dir().join("istio-check-publish"),
        moto.addr,
    );
    eprintln!("publish all: {:?}", t0.elapsed());
    assert!(log.contains("public URL serves the same bytes"), "{log}");
    let wasm = std::fs::read(dist.join("filter_wasm.wasm")).unwrap();
    let sha = hex(&Sha256::digest(&wasm));
    let version = release_value(&dist, "WASM_VERSION");
    let key = release_value(&dist, "WASM_KEY");
    let url = release_value(&dist, "WASM_URL");
    assert_eq!(release_value(&dist, "WASM_SHA256"), sha);
    assert!(key.contains(&version) && key.contains(&sha), "{key}");
    assert_eq!(url, format!("http://{}/{BUCKET}/{key}", moto.addr));

    // The object in the bucket is the build, byte for byte.
    let (st, body) = http(moto.addr, "GET", &format!("/{BUCKET}/{key}"), b"");
    assert_eq!(st, 200);
    assert_eq!(hex(&Sha256::digest(&body)), sha);

    // The rendered manifests carry the URL and sha256 and still pass the Istio 1.18 field check.
    let api = IstioApi::load().unwrap();
    let rendered = dist.join("istio");
    let wp = &yaml_docs(
        &std::fs::read_to_string(rendered.join("overlays/wasmplugin/wasmplugin.yaml")).unwrap(),
    )
    .unwrap()[0];
    assert_eq!(wp["spec"]["url"], url.as_str());
    assert_eq!(wp["spec"]["sha256"], sha.as_str());
    assert_eq!(
        wp["spec"]["pluginConfig"]["backend"]["api_key"],
        "pk_test_publish"
    );
    assert!(api.check_spec("WasmPlugin", &wp["spec"]).is_empty());
    let ef = &yaml_docs(
        &std::fs::read_to_string(rendered.join("overlays/fail-open/envoyfilter-wasm.yaml"))
            .unwrap(),
    )
    .unwrap()[0];
    let text = serde_json::to_string(ef).unwrap();
    assert!(
        text.contains(&url) && text.contains(&sha) && !text.contains("__"),
        "{text}"
    );

    // Reproducible: a second build from scratch in another target dir gives the same bytes.
    let t1 = Instant::now();
    let other_target = tempfile::tempdir().unwrap();
    let dist2 = work.path().join("dist2");
    publish("build", &dist2, other_target.path(), moto.addr);
    eprintln!("second build from scratch: {:?}", t1.elapsed());
    assert_eq!(
        hex(&Sha256::digest(
            std::fs::read(dist2.join("filter_wasm.wasm")).unwrap()
        )),
        sha,
        "two builds differ"
    );

    // Envoy 1.40 fetches the module from the bucket, checks its sha256 and runs it: the plugin
    // looks the request up on the backend and counts it.
    let up = DemoUpstream::start().await.unwrap();
    let fb = FakeBackend::start().await.unwrap();
    let envoy = envoy_with(&url, &sha, false, moto.addr, &up, &fb).await;
    let resp = raw::send(
        envoy.listener_addr(),
        &raw::RawRequest::new("GET", "/hello"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", envoy.log_tail(30));
    assert_eq!(
        fb.received_on("/v1/inject").await.unwrap().len(),
        1,
        "the plugin did not run"
    );
    let stats = envoy.stats().await.unwrap();
    assert!(
        stats
            .get("wasmcustom.transparent_cache.requests")
            .copied()
            .unwrap_or(0)
            >= 1,
        "stat names: {:?}",
        stats
            .keys()
            .filter(|k| k.contains("transparent_cache"))
            .collect::<Vec<_>>()
    );
    assert!(
        stats
            .get("wasmcustom.transparent_cache.misses")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    let prom = envoy.admin_get("/stats/prometheus").await.unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("transparent_cache_requests")),
        "prometheus names: {:?}",
        prom.lines()
            .filter(|l| l.contains("transparent_cache"))
            .collect::<Vec<_>>()
    );
    drop(envoy);

    // A wrong sha256: the module is refused. Fail closed, requests get 503; with fail_open they
    // pass through without the filter.
    let wrong = format!(
        "{}{}",
        if sha.starts_with('0') { "1" } else { "0" },
        &sha[1..]
    );
    let fb2 = FakeBackend::start().await.unwrap();
    // The status of a request through an Envoy that refused the module.
    let status_without_module = |fail_open: bool| {
        let (url, wrong, up, fb2) = (&url, &wrong, &up, &fb2);
        async move {
            let mut envoy = envoy_with(url, wrong, fail_open, moto.addr, up, fb2).await;
            envoy
                .wait_for_log("failed to load", Duration::from_secs(15))
                .await
                .unwrap();
            raw::send(
                envoy.listener_addr(),
                &raw::RawRequest::new("GET", "/hello"),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(status_without_module(false).await, 503);
    assert_eq!(status_without_module(true).await, 200);
    assert!(fb2.received_on("/v1/inject").await.unwrap().is_empty());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
