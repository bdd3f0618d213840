//! The wasm plugin through real Envoy beyond the golden cases: records survive the stream,
//! every backend fault fails open, bodies over the limit pass byte for byte, a bad configuration
//! is refused, the verdict reaches the access log (filter state and request header) and a span tag
//! without the upstream ever seeing the header, and a held request is never left hanging.

#[path = "support/spans.rs"]
mod spans;

use anyhow::{Context, Result};
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testbed::demo_upstream::model::Script;
use testbed::fake_backend::model::Behaviour;
use testbed::raw::{self, Body, RawRequest};
use testbed::shape::{self, AccessLog, REFUSED_CLUSTER, VERDICT_LOG_FORMAT};
use testbed::{closed_port, DemoUpstream, Envoy, FakeBackend, HeaderField, Layout, Shape, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(15);

fn base() -> Json {
    json!({
        "backend": {
            "cluster": shape::BACKEND_CLUSTER,
            "authority": "backend.local",
            "lookup_timeout_ms": 300,
            "record_timeout_ms": 2000
        },
        "service_name": "e2e-app",
        // Off: these tests send faults on purpose, and Envoy shares one plugin instance (one
        // engine, one breaker) among listeners with the same configuration. The breaker has its
        // own test below.
        "breaker": false
    })
}

fn with(overlay: Json) -> Json {
    let mut c = base();
    golden::merge(&mut c, &overlay);
    c
}

struct Rig {
    envoy: Envoy,
    up: DemoUpstream,
    backend: FakeBackend,
    _refused: testbed::ClosedPort,
    _dir: tempfile::TempDir,
    access_log: PathBuf,
}

impl Rig {
    /// One Envoy with one listener per configuration (`site_0`, `site_1`, ...), and an access log
    /// that prints the verdict.
    async fn start(shape: Shape, configs: &[Json]) -> Result<Rig> {
        Self::start_with(shape, configs, |y| y).await
    }

    async fn start_with(
        shape: Shape,
        configs: &[Json],
        edit: impl FnOnce(String) -> String + Send + 'static,
    ) -> Result<Rig> {
        let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
        let refused = closed_port()?;
        let dir = tempfile::tempdir()?;
        let access_log = dir.path().join("access.log");
        let layout = Layout {
            admin_port: 0,
            upstream: up.addr(),
            backend: backend.addr(),
            refused: Some(refused.addr()),
            sites: configs
                .iter()
                .enumerate()
                .map(|(i, c)| Site {
                    name: format!("site_{i}"),
                    port: 0,
                    plugin_config: c.clone(),
                    skip_without_session: false,
                })
                .collect(),
            access_log: Some(AccessLog {
                path: access_log.clone(),
                format: VERDICT_LOG_FORMAT.to_string(),
            }),
        };
        let yaml =
            tokio::task::spawn_blocking(move || shape.envoy_yaml(&layout).map(edit)).await??;
        let env = tokio::task::spawn_blocking(move || shape.envoy_env()).await??;
        let envoy = Envoy::start_with_env(&yaml, &[], &env).await?;
        Ok(Rig {
            envoy,
            up,
            backend,
            _refused: refused,
            _dir: dir,
            access_log,
        })
    }

    fn site(&self, i: usize) -> SocketAddr {
        self.envoy
            .listener(&format!("site_{i}"))
            .expect("listener exists")
    }

    async fn wait_for_records(&self, n: usize, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.backend.records().await?;
            if got >= n || Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn access_log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn post(path: &str, body: Body) -> RawRequest {
    RawRequest::new("POST", path)
        .header("content-type", "application/json")
        .body(body)
}

/// Sends the request, and hangs up as soon as the first byte of the response arrives.
async fn send_and_hang_up(addr: SocketAddr, req: &RawRequest) -> Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let (head, writes) = req.encode();
    s.write_all(&head).await?;
    for w in writes {
        s.write_all(&w).await?;
    }
    let mut byte = [0u8; 1];
    tokio::time::timeout(T, s.read(&mut byte))
        .await
        .context("no response")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_misses_give_n_records_even_when_the_client_hangs_up() {
    for shape in Shape::wasm() {
        let rig = Rig::start(shape, &[base()]).await.unwrap();
        let addr = rig.site(0);
        let n = 8;
        for i in 0..n {
            let body = format!("{{\"n\":{i}}}").into_bytes();
            let req = post(&format!("/orders/{i}"), Body::ContentLength(vec![body]));
            if i % 2 == 0 {
                let r = raw::send(addr, &req, T).await.unwrap();
                assert_eq!(r.status, 200, "{}", rig.envoy.log_tail(30));
            } else {
                send_and_hang_up(addr, &req).await.unwrap();
            }
        }
        let got = rig
            .wait_for_records(n, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got, n, "{}: records sent for {n} misses", shape.name());
        let paths: Vec<String> = rig
            .backend
            .received_on("/v1/inject")
            .await
            .unwrap()
            .iter()
            .map(|r| r.path.clone())
            .collect();
        assert_eq!(paths.len(), n, "{}: one lookup per request", shape.name());
        let stats = shape::plugin_counters(&rig.envoy.stats().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = stats.get("records_sent").copied().unwrap_or(0);
        while sent < n as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sent = shape::plugin_counters(&rig.envoy.stats().await.unwrap())
                .get("records_sent")
                .copied()
                .unwrap_or(0);
        }
        assert_eq!(sent, n as u64, "{}: records_sent", shape.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_fault_fails_open_with_the_upstream_answer_unchanged() {
    let faults: Vec<(&str, Behaviour, Json)> = vec![
        ("timeout", Behaviour::Timeout, base()),
        ("status 500", Behaviour::status(500), base()),
        ("undecodable 200", Behaviour::Undecodable, base()),
        (
            "connection refused",
            Behaviour::Miss,
            with(json!({"backend": {"cluster": REFUSED_CLUSTER}})),
        ),
        (
            "slow past the timeout",
            Behaviour::slow(800, Behaviour::hit_protobuf(b"never used".to_vec())),
            base(),
        ),
    ];
    let configs: Vec<Json> = faults.iter().map(|(_, _, c)| c.clone()).collect();
    let script = Script {
        status: 200,
        headers: vec![
            HeaderField::new("content-type", "application/json"),
            HeaderField::new("x-upstream", "real"),
        ],
        body_base64: b"{\"from\":\"upstream\"}".to_vec(),
        trailers: Vec::new(),
    };
    for shape in Shape::wasm() {
        let rig = Rig::start(shape, &configs).await.unwrap();
        rig.up.set_script(&script).await.unwrap();
        for (i, (name, behaviour, _)) in faults.iter().enumerate() {
            rig.backend.set_inject(behaviour).await.unwrap();
            let requests = [
                RawRequest::new("GET", "/fault"),
                post(
                    "/fault",
                    Body::Chunked(vec![b"{\"a\":".to_vec(), b"1}".to_vec()]),
                ),
            ];
            for req in &requests {
                rig.up.clear_requests().await.unwrap();
                let started = Instant::now();
                let r = raw::send(rig.site(i), req, T).await.unwrap();
                let ctx = format!("{} / {name} / {}", shape.name(), req.method);
                assert_eq!(r.status, 200, "{ctx}\n{}", rig.envoy.log_tail(30));
                assert_eq!(r.body, script.body_base64, "{ctx}");
                assert_eq!(r.header("x-upstream").as_deref(), Some("real"), "{ctx}");
                assert_eq!(r.header("x-softprobe-cache"), None, "{ctx}");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{ctx}: took {:?}",
                    started.elapsed()
                );
                let got = rig.up.requests().await.unwrap();
                let complete: Vec<_> = got.iter().filter(|r| r.complete).collect();
                assert_eq!(complete.len(), 1, "{ctx}: upstream requests");
                let want = match &req.body {
                    Body::Chunked(c) => c.concat(),
                    _ => Vec::new(),
                };
                assert_eq!(complete[0].body_base64, want, "{ctx}: upstream body");
            }
        }
        let c = shape::plugin_counters(&rig.envoy.stats().await.unwrap());
        let n = |k: &str| c.get(k).copied().unwrap_or(0);
        assert_eq!(n("lookup_errors_timeout"), 4, "{}: {c:?}", shape.name());
        assert_eq!(n("lookup_errors_status"), 2, "{}: {c:?}", shape.name());
        assert_eq!(n("lookup_errors_undecodable"), 2, "{}: {c:?}", shape.name());
        assert_eq!(n("lookup_errors_transport"), 2, "{}: {c:?}", shape.name());
        assert_eq!(n("hits"), 0, "{}: {c:?}", shape.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_passes_byte_for_byte() {
    let limit = 64 * 1024;
    let config = with(json!({"max_request_body_bytes": limit}));
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    for shape in Shape::wasm() {
        let rig = Rig::start(shape, std::slice::from_ref(&config))
            .await
            .unwrap();
        let chunked: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        for framing in [
            Body::Chunked(chunked),
            Body::ContentLength(vec![body.clone()]),
        ] {
            rig.up.clear_requests().await.unwrap();
            let req = RawRequest::new("PUT", "/big")
                .header("content-type", "application/octet-stream")
                .body(framing);
            let r = raw::send(rig.site(0), &req, T).await.unwrap();
            assert_eq!(
                r.status,
                200,
                "{}\n{}",
                shape.name(),
                rig.envoy.log_tail(30)
            );
            let got = rig.up.requests().await.unwrap();
            assert_eq!(got.len(), 1, "{}", shape.name());
            assert!(got[0].complete);
            assert!(
                got[0].body_base64 == body,
                "{}: the upstream got {} bytes, not the 1 MiB sent",
                shape.name(),
                got[0].body_base64.len()
            );
        }
        assert!(rig
            .backend
            .received_on("/v1/inject")
            .await
            .unwrap()
            .is_empty());
        let c = shape::plugin_counters(&rig.envoy.stats().await.unwrap());
        assert_eq!(c.get("bypass_request_too_large"), Some(&2), "{c:?}");
    }
}

#[tokio::test]
async fn a_bad_config_is_refused_with_the_engines_message() {
    let bad = json!({"mode": "sometimes"});
    let message = filter_core::Config::from_json(bad.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    let up = DemoUpstream::start().await.unwrap();
    let layout = Layout {
        admin_port: 0,
        upstream: up.addr(),
        backend: up.addr(),
        refused: None,
        sites: vec![Site {
            name: "bad".into(),
            port: 0,
            plugin_config: bad,
            skip_without_session: false,
        }],
        access_log: None,
    };
    let yaml = tokio::task::spawn_blocking(move || {
        Shape::Wasm { hold_headers: true }
            .envoy_yaml(&layout)
            .unwrap()
    })
    .await
    .unwrap();
    let err = match Envoy::start(&yaml).await {
        Ok(_) => panic!("Envoy accepted a bad plugin config"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&message),
        "the engine's message {message:?} is not in Envoy's output:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_reaches_the_access_log() {
    let rig = Rig::start(
        Shape::Wasm { hold_headers: true },
        &[base(), with(json!({"rules": {"methods": ["GET"]}}))],
    )
    .await
    .unwrap();
    let req = post("/v", Body::ContentLength(vec![b"{}".to_vec()]));
    raw::send(rig.site(0), &req, T).await.unwrap(); // miss
    rig.backend.set_inject(&Behaviour::Timeout).await.unwrap();
    raw::send(rig.site(0), &req, T).await.unwrap(); // error:timeout
    raw::send(rig.site(1), &req, T).await.unwrap(); // bypass:method
    let lines = rig.access_log_lines(3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("miss POST /v 200 "), "{lines:?}");
    assert!(
        lines[1].starts_with("error:timeout POST /v 200 "),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("bypass:method POST /v 200 "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_the_host_never_answers_is_released_by_the_watchdog() {
    // hold_headers without allow_on_headers_stop_iteration (what an Envoy older than 1.35 does):
    // Envoy stops the body along with the headers, so the lookup never starts. The root context's
    // watchdog releases the request after the lookup timeout plus the margin.
    let rig = Rig::start_with(Shape::Wasm { hold_headers: true }, &[base()], |y| {
        y.replace(
            "allow_on_headers_stop_iteration: true",
            "allow_on_headers_stop_iteration: false",
        )
    })
    .await
    .unwrap();
    let started = Instant::now();
    let req = post("/stuck", Body::ContentLength(vec![b"{\"x\":1}".to_vec()]));
    let r = raw::send(rig.site(0), &req, T).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", rig.envoy.log_tail(30));
    let got = rig.up.requests().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body_base64, b"{\"x\":1}");
    let limit = Duration::from_millis(300 + filter_wasm_margin_ms());
    assert!(
        took >= limit && took < limit + Duration::from_secs(2),
        "released after {took:?}"
    );
    let c = shape::plugin_counters(&rig.envoy.stats().await.unwrap());
    assert_eq!(c.get("lookup_errors_timeout"), Some(&1), "{c:?}");
    let lines = rig.access_log_lines(1).await;
    assert!(
        lines[0].starts_with("error:timeout POST /stuck 200 "),
        "{lines:?}"
    );
}

/// The request header the plugin writes the verdict into (config `verdict_header`'s default).
const VERDICT_HEADER: &str = filter_core::DEFAULT_VERDICT_HEADER;

#[test]
fn the_istio_telemetry_tag_reads_the_header_the_plugin_writes() {
    let telemetry = include_str!("../../istio/base/telemetry-tracing.yaml");
    assert!(
        telemetry.contains(&format!("name: {VERDICT_HEADER}\n")),
        "istio/base/telemetry-tracing.yaml does not tag {VERDICT_HEADER}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_header_of_a_hit_reaches_the_access_log_and_the_span_never_the_upstream() {
    // Envoy's wasm host lets the plugin change the request header map only while the request
    // headers are held: the verdict header is written just before the local reply of a hit whose
    // headers never went upstream (no body, or hold_headers). Anything else keeps the tag's
    // default: writing it earlier would show it to the upstream, and later Envoy refuses.
    for shape in Shape::wasm() {
        let hold = shape == Shape::Wasm { hold_headers: true };
        let collector = FakeBackend::start().await.unwrap();
        let tags = [testbed::tracing::request_header_tag(
            "softprobe.cache.verdict",
            VERDICT_HEADER,
            "unknown",
        )];
        let collector_addr = collector.addr();
        let rig = Rig::start_with(shape, &[base()], move |y| {
            testbed::tracing::with_otel_tracing(&y, collector_addr, &tags).replace(
                "%REQ(:METHOD)%",
                &format!("%REQ({VERDICT_HEADER})% %REQ(:METHOD)%"),
            )
        })
        .await
        .unwrap();
        let ctx = shape.name();
        let body = || Body::Chunked(vec![b"{\"a\":".to_vec(), b"1}".to_vec()]);
        for req in [
            RawRequest::new("GET", "/miss-get"),
            post("/miss-post", body()),
        ] {
            let r = raw::send(rig.site(0), &req, T).await.unwrap();
            assert_eq!(r.status, 200, "{ctx}: {}", rig.envoy.log_tail(30));
        }
        rig.backend
            .set_inject(&spans::hit(b"cached"))
            .await
            .unwrap();
        for req in [
            RawRequest::new("GET", "/hit-get"),
            post("/hit-post", body()),
        ] {
            let r = raw::send(rig.site(0), &req, T).await.unwrap();
            assert_eq!(r.status, 200, "{ctx}: {}", rig.envoy.log_tail(30));
            assert_eq!(r.body, b"cached", "{ctx}");
            assert_eq!(
                r.header("x-softprobe-cache").as_deref(),
                Some("hit"),
                "{ctx}"
            );
        }
        // (a) The upstream never saw the header, whatever it received (stream_headers: the
        // hit POST's headers went upstream before the lookup answered).
        let seen = rig.up.requests().await.unwrap();
        let complete: Vec<&str> = seen
            .iter()
            .filter(|r| r.complete)
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(complete, ["/miss-get", "/miss-post"], "{ctx}");
        for r in &seen {
            assert_eq!(r.header(VERDICT_HEADER), None, "{ctx}: upstream got {r:?}");
        }
        // (b) %REQ(..)% in the access log and the span tag from the request header.
        let hit_post = if hold { "hit" } else { "-" };
        let lines = rig.access_log_lines(4).await;
        for (verdict, header, path) in [
            ("miss", "-", "/miss-get"),
            ("miss", "-", "/miss-post"),
            ("hit", "hit", "/hit-get"),
            ("hit", hit_post, "/hit-post"),
        ] {
            let line = lines
                .iter()
                .find(|l| l.contains(&format!(" {path} ")))
                .unwrap_or_else(|| panic!("{ctx}: no access-log line for {path}: {lines:?}"));
            assert!(
                line.starts_with(&format!("{verdict} {header} ")),
                "{ctx}: {path}: {line:?}"
            );
            let span = spans::span_for(&collector, path, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{ctx}: no span for {path}; {}", rig.envoy.log_tail(30)));
            let tag = if header == "-" { "unknown" } else { header };
            assert_eq!(
                span.attr_str("softprobe.cache.verdict"),
                Some(tag),
                "{ctx}: {path}: {span:?}"
            );
        }
        assert!(
            !rig.envoy
                .log()
                .contains("could not write the verdict header"),
            "{ctx}: {}",
            rig.envoy.log_tail(30)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdict_header_false_writes_no_header() {
    let rig = Rig::start_with(
        Shape::Wasm { hold_headers: true },
        &[with(json!({"verdict_header": false}))],
        |y| {
            y.replace(
                "%REQ(:METHOD)%",
                &format!("%REQ({VERDICT_HEADER})% %REQ(:METHOD)%"),
            )
        },
    )
    .await
    .unwrap();
    let r = raw::send(rig.site(0), &RawRequest::new("GET", "/off"), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let lines = rig.access_log_lines(1).await;
    assert!(lines[0].starts_with("miss - GET /off 200 "), "{lines:?}");
}

/// `filter_wasm::HOLD_MARGIN_MS` (the plugin is a cdylib, so it is not a dependency here).
fn filter_wasm_margin_ms() -> u64 {
    1000
}

/// A backend that black-holes lookups costs the lookup timeout five times, then the breaker opens
/// and requests go straight upstream (no wait, counted); after the back-off one probe goes, and
/// once the backend answers again the lookups come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_backend_opens_the_breaker_and_a_probe_closes_it() {
    let config = with(json!({
        "backend": {"lookup_timeout_ms": 200},
        "breaker": {"consecutive_failures": 3, "backoff_ms": 600, "max_backoff_ms": 600}
    }));
    for shape in [
        Shape::Wasm {
            hold_headers: false,
        },
        Shape::Native { hold_headers: true },
    ] {
        let ctx = shape.name();
        let rig = Rig::start(shape, std::slice::from_ref(&config))
            .await
            .unwrap();
        rig.backend.set_inject(&Behaviour::Timeout).await.unwrap();
        let get = || RawRequest::new("GET", "/breaker");
        let mut slow = 0;
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(
                raw::send(rig.site(0), &get(), T).await.unwrap().status,
                200,
                "{ctx}"
            );
            if started.elapsed() >= Duration::from_millis(190) {
                slow += 1;
            }
        }
        assert_eq!(slow, 3, "{ctx}: each lookup waited for its timeout");
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(
                raw::send(rig.site(0), &get(), T).await.unwrap().status,
                200,
                "{ctx}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(150),
                "{ctx}: open breaker, no lookup: {:?}",
                started.elapsed()
            );
        }
        let c = shape.counters(&rig.envoy.stats().await.unwrap());
        let n =
            |c: &std::collections::BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
        assert_eq!(n(&c, "lookup_breaker_opened"), 1, "{ctx}: {c:?}");
        assert_eq!(n(&c, "bypass_breaker_open"), 3, "{ctx}: {c:?}");
        assert_eq!(n(&c, "lookups"), 3, "{ctx}: {c:?}");
        // The backend is back; after the back-off a probe closes the breaker.
        rig.backend.set_inject(&Behaviour::Miss).await.unwrap();
        tokio::time::sleep(Duration::from_millis(650)).await;
        for _ in 0..2 {
            assert_eq!(
                raw::send(rig.site(0), &get(), T).await.unwrap().status,
                200,
                "{ctx}"
            );
        }
        let c = shape.counters(&rig.envoy.stats().await.unwrap());
        assert_eq!(
            n(&c, "lookups"),
            5,
            "{ctx}: the probe and the next lookup: {c:?}"
        );
        assert_eq!(n(&c, "misses"), 2, "{ctx}: {c:?}");
    }
}
