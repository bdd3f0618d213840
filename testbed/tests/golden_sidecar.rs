//! Every golden case of `golden/cases/` through real Envoy with `envoy.filters.http.ext_proc` and
//! the `filter-sidecar` process, checked with `filter_core::golden::verify` (the verifier the
//! plugins use); plus the fail-open path: the sidecar killed mid-run (traffic flows upstream
//! unchanged) and restarted (hits and records work again), and the drain on SIGTERM.
//!
//! One Envoy, one listener and one sidecar per distinct plugin configuration; the cases run one
//! after the other (they share the demo upstream and the fake backend; counters come from each
//! sidecar's `/metrics`).

use anyhow::{bail, Context, Result};
use filter_core::golden::{self, Backend, Case, Observed, UpstreamSaw};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::demo_upstream::model::Script;
use testbed::fake_backend::model::Behaviour;
use testbed::raw::{self, Body, RawRequest};
use testbed::shape::REFUSED_CLUSTER;
use testbed::sidecar::Sidecar;
use testbed::{closed_port, DemoUpstream, Envoy, FakeBackend, HeaderField, Layout, Shape, Site};

const T: Duration = Duration::from_secs(15);
/// How long to wait for a record that must not come.
const NO_RECORD_GRACE: Duration = Duration::from_millis(150);
/// How long a record may take to reach the backend.
const RECORD_DEADLINE: Duration = Duration::from_secs(5);

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden")
}

fn base_config() -> Json {
    let text = std::fs::read(golden_dir().join("base-config.json")).expect("base-config.json");
    serde_json::from_slice(&text).expect("base-config.json is JSON")
}

/// The plugin configuration a case runs with.
fn case_config(case: &Case, base: &Json) -> Json {
    let mut c = golden::case_config(case, base);
    if matches!(case.backend, Backend::Refused) {
        golden::merge(
            &mut c,
            &serde_json::json!({"backend": {"cluster": REFUSED_CLUSTER}}),
        );
    }
    c
}

struct Site1 {
    sidecar: Sidecar,
    listener: SocketAddr,
}

struct Rig {
    envoy: Envoy,
    up: DemoUpstream,
    backend: FakeBackend,
    /// Plugin configuration (as JSON text) → its sidecar and listener.
    sites: HashMap<String, Site1>,
    _refused: testbed::ClosedPort,
}

impl Rig {
    async fn start(configs: &[Json]) -> Result<Rig> {
        let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
        let refused = closed_port()?;
        let mut keys: Vec<String> = configs.iter().map(Json::to_string).collect();
        keys.sort();
        keys.dedup();
        let mut sidecars = Vec::new();
        let mut sites = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let config: Json = serde_json::from_str(k)?;
            // The sidecar calls the backend itself: the refused cases point it at a closed port.
            let target = if config["backend"]["cluster"] == REFUSED_CLUSTER {
                refused.addr()
            } else {
                backend.addr()
            };
            let sidecar = Box::pin(Sidecar::start(&config, &format!("http://{target}"))).await?;
            let mut site_config = config.clone();
            golden::merge(
                &mut site_config,
                &serde_json::json!({"sidecar": {"listen": sidecar.grpc_addr().to_string()}}),
            );
            sites.push(Site {
                name: format!("case_config_{i}"),
                port: 0,
                plugin_config: site_config,
            });
            sidecars.push(sidecar);
        }
        let layout = Layout {
            admin_port: 0,
            upstream: up.addr(),
            backend: backend.addr(),
            refused: Some(refused.addr()),
            sites: sites.clone(),
            access_log: None,
        };
        let yaml = Shape::Sidecar.envoy_yaml(&layout)?;
        let envoy = Box::pin(Envoy::start(&yaml)).await?;
        let mut by_key = HashMap::new();
        for ((k, s), sidecar) in keys.iter().zip(&sites).zip(sidecars) {
            let listener = envoy
                .listener(&s.name)
                .with_context(|| format!("listener {} not found", s.name))?;
            by_key.insert(k.clone(), Site1 { sidecar, listener });
        }
        Ok(Rig {
            envoy,
            up,
            backend,
            sites: by_key,
            _refused: refused,
        })
    }

    fn site(&self, config: &Json) -> Result<&Site1> {
        self.sites
            .get(&config.to_string())
            .context("no listener for the case's config")
    }

    /// Runs one case; returns the mismatches.
    async fn run(&self, case: &Case, base: &Json) -> Result<Vec<String>> {
        let site = self.site(&case_config(case, base))?;

        // Script the parties.
        let u = &case.upstream;
        self.up
            .set_script(&Script {
                status: u.status,
                headers: u
                    .headers
                    .iter()
                    .map(|(n, v)| HeaderField::new(n, v.to_vec()))
                    .collect(),
                body_base64: u.body.to_vec(),
            })
            .await?;
        let behaviour = match &case.backend {
            Backend::Timeout => Behaviour::Timeout,
            Backend::Refused => Behaviour::Miss,
            b => match golden::backend_answer(b) {
                Some((200, content_type, body)) => Behaviour::Hit {
                    content_type,
                    body_base64: body,
                },
                Some((status, _, _)) => Behaviour::status(status),
                None => bail!("no answer for backend {b:?}"),
            },
        };
        self.backend.set_inject(&behaviour).await?;
        self.up.clear_requests().await?;
        self.backend.clear_received().await?;
        let before = site.sidecar.counters().await?;

        // The request, as the case's client sends it.
        let req = &case.request;
        let mut raw_req = RawRequest::new(&req.method, &req.path);
        raw_req.headers = vec![HeaderField::new("host", &req.authority)];
        for (n, v) in &req.headers {
            raw_req.headers.push(HeaderField::new(n, v.to_vec()));
        }
        let chunks: Vec<Vec<u8>> = req.body.iter().map(|b| b.to_vec()).collect();
        raw_req.body = match chunks.len() {
            0 => Body::None,
            1 => Body::ContentLength(chunks),
            _ => Body::Chunked(chunks),
        };
        raw_req.chunk_delay = Duration::from_millis(5);
        let resp = raw::send(site.listener, &raw_req, T).await?;

        // Records: wait for the expected one (and for the sidecar to count the backend's
        // answer); otherwise give a wrong one a moment to show up.
        let counted = |c: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>| {
            let n = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
            let sum = |m| n(m, "records_sent") + n(m, "record_failures") + n(m, "records_dropped");
            sum(c) > sum(before)
        };
        if case.expect.extract.is_some() {
            let deadline = Instant::now() + RECORD_DEADLINE;
            loop {
                let done = counted(&site.sidecar.counters().await?, &before)
                    && !self.backend.received_on("/v1/traces").await?.is_empty();
                if done || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            tokio::time::sleep(NO_RECORD_GRACE).await;
        }
        let after = site.sidecar.counters().await?;

        let mut errors = Vec::new();
        let complete: Vec<_> = self
            .up
            .requests()
            .await?
            .into_iter()
            .filter(|r| r.complete)
            .collect();
        if complete.len() > 1 {
            errors.push(format!(
                "upstream: expected at most one request, got {}",
                complete.len()
            ));
        }
        let received = self.backend.received().await?;
        let bodies = |path: &str| -> Vec<(Option<String>, Vec<u8>)> {
            received
                .iter()
                .filter(|r| r.path == path)
                .map(|r| (r.header("content-type"), r.body_base64.clone()))
                .collect()
        };
        let counters = after
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(before.get(k).copied().unwrap_or(0)),
                )
            })
            .collect();
        let observed = Observed {
            client_status: resp.status,
            client_headers: resp
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            client_body: resp.body.clone(),
            upstream: complete.first().map(|r| UpstreamSaw {
                method: r.method.clone(),
                path: r.path.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                body: r.body_base64.clone(),
            }),
            inject: bodies("/v1/inject"),
            extract: bodies("/v1/traces"),
            counters: Some(counters),
        };
        // A refused connection never reaches the backend, so the lookup it carried cannot be
        // seen there: check everything else (the counters still show the transport error).
        let mut case = case.clone();
        if matches!(case.backend, Backend::Refused) {
            case.expect.inject = None;
        }
        errors.extend(golden::verify(&case, &observed));
        Ok(errors)
    }
}

/// Runs a test body on a runtime whose threads have 8 MiB stacks: in debug builds, polling these
/// deeply nested futures (Envoy, sidecar, raw client) needs more than a test thread's 2 MiB.
fn on_big_stack<F>(body: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let task = rt.spawn(body);
    match rt.block_on(task) {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[test]
fn golden_cases_sidecar() {
    on_big_stack(replay_all());
}

async fn replay_all() {
    let started = Instant::now();
    let base = base_config();
    let cases = golden::load_dir(&golden_dir().join("cases")).expect("load golden cases");
    assert!(!cases.is_empty(), "no golden cases found");
    let configs: Vec<Json> = cases.iter().map(|c| case_config(c, &base)).collect();
    let rig = Box::pin(Rig::start(&configs))
        .await
        .unwrap_or_else(|e| panic!("sidecar: could not start the rig: {e:#}"));
    eprintln!(
        "sidecar: rig ({} sidecars + envoy) up in {} ms",
        rig.sites.len(),
        started.elapsed().as_millis()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        match Box::pin(rig.run(case, &base)).await {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => failures.push(format!(
                "{} [sidecar]:\n    {}",
                case.name,
                errors.join("\n    ")
            )),
            Err(e) => failures.push(format!("{} [sidecar]: {e:#}", case.name)),
        }
        eprintln!("sidecar {}: {} ms", case.name, t.elapsed().as_millis());
    }
    eprintln!(
        "sidecar: {} cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let tails: Vec<String> = rig.sites.values().map(|s| s.sidecar.log_tail(20)).collect();
        panic!(
            "{} of {} golden cases failed through Envoy (sidecar):\n{}\n\n--- envoy log tail ---\n{}\n--- sidecar logs ---\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n"),
            rig.envoy.log_tail(60),
            tails.join("\n")
        );
    }
}

/// One Envoy + one sidecar with the base config, for the fail-open tests.
async fn single() -> Result<(Rig, Json)> {
    let config = base_config();
    let rig = Box::pin(Rig::start(std::slice::from_ref(&config))).await?;
    Ok((rig, config))
}

fn get(path: &str) -> RawRequest {
    let mut r = RawRequest::new("GET", path);
    r.headers = vec![HeaderField::new("host", "api.example.com")];
    r
}

fn header<'a>(resp: &'a raw::RawResponse, name: &str) -> Option<&'a [u8]> {
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.as_slice())
}

/// Waits until `n` records reached the backend.
async fn wait_records(backend: &FakeBackend, n: usize) -> Result<()> {
    let deadline = Instant::now() + RECORD_DEADLINE;
    loop {
        let got = backend.received_on("/v1/traces").await?.len();
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("expected {n} records, the backend got {got}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hit_behaviour(body: &str) -> Behaviour {
    let (_, content_type, bytes) = golden::backend_answer(&Backend::Hit {
        response: serde_json::from_value(serde_json::json!({
            "status": 200,
            "headers": [["content-type", "text/plain"]],
            "body": body,
        }))
        .expect("recorded response"),
        json: false,
    })
    .expect("an answer");
    Behaviour::Hit {
        content_type,
        body_base64: bytes,
    }
}

#[test]
fn sidecar_killed_mid_run_fails_open_and_catches_up_after_a_restart() -> Result<()> {
    on_big_stack(kill_and_restart())
}

async fn kill_and_restart() -> Result<()> {
    let (mut rig, config) = Box::pin(single()).await?;
    let key = config.to_string();
    let addr = rig.site(&config)?.listener;

    // Up: a miss goes upstream and is recorded; a hit is served.
    let r = raw::send(addr, &get("/before"), T).await?;
    assert_eq!(r.status, 200);
    wait_records(&rig.backend, 1).await?;
    rig.backend.set_inject(&hit_behaviour("cached")).await?;
    let r = raw::send(addr, &get("/before-hit"), T).await?;
    assert_eq!((r.status, r.body.as_slice()), (200, b"cached".as_slice()));
    assert_eq!(header(&r, "x-softprobe-cache"), Some(b"hit".as_slice()));

    // Killed: every request reaches the upstream unchanged (no hit although the backend has one),
    // nothing is looked up or recorded.
    let site = rig.sites.get_mut(&key).context("site")?;
    site.sidecar.kill();
    rig.backend.clear_received().await?;
    rig.up.clear_requests().await?;
    let t = Instant::now();
    for i in 0..5 {
        let mut req = get(&format!("/down/{i}"));
        if i % 2 == 1 {
            req = RawRequest::new("POST", &format!("/down/{i}"));
            req.headers = vec![
                HeaderField::new("host", "api.example.com"),
                HeaderField::new("content-type", "text/plain"),
            ];
            req.body = Body::Chunked(vec![b"part-1 ".to_vec(), b"part-2".to_vec()]);
        }
        let r = raw::send(addr, &req, T).await?;
        assert_eq!(r.status, 200, "request {i} with the sidecar down");
        assert_eq!(header(&r, "x-softprobe-cache"), None);
    }
    let down_ms = t.elapsed().as_millis();
    let seen = rig.up.requests().await?;
    assert_eq!(seen.len(), 5, "every request reached the upstream");
    for (i, s) in seen.iter().enumerate() {
        assert!(s.complete);
        assert_eq!(s.path, format!("/down/{i}"));
        let want: &[u8] = if i % 2 == 1 { b"part-1 part-2" } else { b"" };
        assert_eq!(s.body_base64, want, "body of /down/{i} unchanged");
    }
    assert!(rig.backend.received().await?.is_empty());
    eprintln!("sidecar down: 5 requests in {down_ms} ms");

    // Restarted on the same port: hits and records work again.
    let site = rig.sites.get_mut(&key).context("site")?;
    site.sidecar.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = raw::send(addr, &get("/after-hit"), T).await?;
        if header(&r, "x-softprobe-cache") == Some(b"hit".as_slice()) {
            assert_eq!(r.body, b"cached");
            break;
        }
        assert_eq!(r.status, 200);
        if Instant::now() > deadline {
            bail!("no hit within 10 s of the restart");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.backend.set_inject(&Behaviour::Miss).await?;
    rig.backend.clear_received().await?;
    let r = raw::send(addr, &get("/after-miss"), T).await?;
    assert_eq!(r.status, 200);
    wait_records(&rig.backend, 1).await?;
    // The restarted sidecar counts from zero: one hit (at least) and the record, once answered.
    let deadline = Instant::now() + RECORD_DEADLINE;
    loop {
        let c = rig.site(&config)?.sidecar.counters().await?;
        if c["hits"] >= 1 && c["records_sent"] >= 1 {
            break;
        }
        if Instant::now() > deadline {
            bail!("counters after the restart: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[test]
fn sigterm_drains_open_streams_and_flushes_queued_records() -> Result<()> {
    on_big_stack(sigterm_drain())
}

async fn sigterm_drain() -> Result<()> {
    let (mut rig, config) = Box::pin(single()).await?;
    let key = config.to_string();
    let addr = rig.site(&config)?.listener;
    // Records take a while to be accepted: they are still queued when SIGTERM arrives.
    rig.backend
        .set_traces(&Behaviour::slow(400, Behaviour::status(200)))
        .await?;
    for i in 0..3 {
        let r = raw::send(addr, &get(&format!("/drain/{i}")), T).await?;
        assert_eq!(r.status, 200);
    }
    let site = rig.sites.get_mut(&key).context("site")?;
    let status = site.sidecar.terminate(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit status {status}");
    let records = rig.backend.received_on("/v1/traces").await?;
    assert_eq!(records.len(), 3, "every queued record was flushed");
    // Down: traffic still flows.
    let r = raw::send(addr, &get("/after"), T).await?;
    assert_eq!(r.status, 200);
    Ok(())
}

/// Added latency of the sidecar per kind of request (median and p90 of 200 sequential requests,
/// each on a new connection), against the same Envoy without a filter. On demand:
/// `cargo test -p testbed --test golden_sidecar -- --ignored --nocapture latency`.
#[test]
#[ignore]
fn latency_by_processing_path() -> Result<()> {
    on_big_stack(latency())
}

async fn latency() -> Result<()> {
    const N: usize = 200;
    let (rig, mut config) = Box::pin(single()).await?;
    let addr = rig.site(&config)?.listener;
    let plain = Box::pin(Envoy::start(&testbed::envoy_config::plain(
        0,
        0,
        rig.up.addr(),
    )))
    .await?;
    golden::merge(
        &mut config,
        &serde_json::json!({"rules": {"exclude_paths": ["/skip/.*"]}}),
    );
    let skip = Box::pin(Rig::start(std::slice::from_ref(&config))).await?;
    let skip_addr = skip.site(&config)?.listener;
    let body = vec![b'x'; 4096];
    let post = |path: &str| {
        let mut r = RawRequest::new("POST", path);
        r.headers = vec![
            HeaderField::new("host", "api.example.com"),
            HeaderField::new("content-type", "application/octet-stream"),
        ];
        r.body = Body::ContentLength(vec![body.clone()]);
        r
    };
    async fn measure(addr: SocketAddr, req: &RawRequest) -> Result<(u128, u128)> {
        let mut us = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            let r = raw::send(addr, req, T).await?;
            us.push(t.elapsed().as_micros());
            assert_eq!(r.status, 200);
        }
        us.sort_unstable();
        Ok((us[N / 2], us[N * 9 / 10]))
    }
    let mut rows = Vec::new();
    rows.push((
        "no filter, GET",
        measure(plain.listener_addr(), &get("/x")).await?,
    ));
    rows.push((
        "no filter, POST 4 KiB",
        measure(plain.listener_addr(), &post("/x")).await?,
    ));
    rows.push((
        "sidecar, ineligible GET (skip all)",
        measure(skip_addr, &get("/skip/x")).await?,
    ));
    rig.backend.set_inject(&Behaviour::Miss).await?;
    rows.push((
        "sidecar, GET miss + record",
        measure(addr, &get("/miss")).await?,
    ));
    rows.push((
        "sidecar, POST 4 KiB miss + record",
        measure(addr, &post("/miss")).await?,
    ));
    rig.backend.set_inject(&hit_behaviour("cached")).await?;
    rows.push(("sidecar, GET hit", measure(addr, &get("/hit")).await?));
    for (what, (p50, p90)) in rows {
        eprintln!("{what:40} p50 {p50:>6} us   p90 {p90:>6} us");
    }
    Ok(())
}
