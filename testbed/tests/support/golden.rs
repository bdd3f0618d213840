//! The golden-case replay through real Envoy, shared by every in-proxy shape (wasm, native):
//! one Envoy per shape with one listener per distinct plugin configuration; the cases run one
//! after the other against it (they share the demo upstream, the fake backend and the counters),
//! checked with `filter_core::golden::verify`.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use filter_core::golden::{self, Backend, Case, Observed, UpstreamSaw};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::demo_upstream::model::Script;
use testbed::fake_backend::model::Behaviour;
use testbed::raw::{self, Body, RawRequest};
use testbed::shape::REFUSED_CLUSTER;
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

/// The plugin configuration a case runs with (before the shape adds its request mode).
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

struct Rig {
    shape: Shape,
    envoy: Envoy,
    up: DemoUpstream,
    backend: FakeBackend,
    /// Plugin configuration (as JSON text) → listener address.
    sites: HashMap<String, std::net::SocketAddr>,
    _refused: testbed::ClosedPort,
}

impl Rig {
    async fn start(shape: Shape, configs: &[Json]) -> Result<Rig> {
        let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
        let refused = closed_port()?;
        let mut keys: Vec<String> = configs.iter().map(Json::to_string).collect();
        keys.sort();
        keys.dedup();
        let sites: Vec<Site> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Site {
                name: format!("case_config_{i}"),
                port: 0,
                plugin_config: serde_json::from_str(k).unwrap_or(Json::Null),
            })
            .collect();
        let layout = Layout {
            admin_port: 0,
            upstream: up.addr(),
            backend: backend.addr(),
            refused: Some(refused.addr()),
            sites: sites.clone(),
            access_log: None,
        };
        let (yaml, env) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((shape.envoy_yaml(&layout)?, shape.envoy_env()?))
        })
        .await??;
        let envoy = Envoy::start_with_env(&yaml, &[], &env).await?;
        let mut by_key = HashMap::new();
        for (k, s) in keys.iter().zip(&sites) {
            let addr = envoy
                .listener(&s.name)
                .with_context(|| format!("listener {} not found", s.name))?;
            by_key.insert(k.clone(), addr);
        }
        Ok(Rig {
            shape,
            envoy,
            up,
            backend,
            sites: by_key,
            _refused: refused,
        })
    }

    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self.shape.counters(&self.envoy.stats().await?))
    }

    /// Runs one case; returns the mismatches.
    async fn run(&self, case: &Case, base: &Json) -> Result<Vec<String>> {
        let config = self.shape.plugin_config(&case_config(case, base));
        let addr = *self
            .sites
            .get(&config.to_string())
            .context("no listener for the case's config")?;

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
        let before = self.counters().await?;

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
        let resp = raw::send(addr, &raw_req, T).await?;

        // Records: wait for the expected one; otherwise give a wrong one a moment to show up.
        if case.expect.extract.is_some() {
            let deadline = Instant::now() + RECORD_DEADLINE;
            while self.backend.received_on("/v1/traces").await?.is_empty()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // And for the plugin to count the backend's answer.
            let settled = |c: &BTreeMap<String, u64>| {
                let n = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
                n(c, "records_sent") + n(c, "record_failures")
                    > n(&before, "records_sent") + n(&before, "record_failures")
            };
            let deadline = Instant::now() + Duration::from_secs(2);
            while !settled(&self.counters().await?) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            tokio::time::sleep(NO_RECORD_GRACE).await;
        }
        let after = self.counters().await?;

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

/// Replays every golden case through Envoy in `shape`; panics with every mismatch. Returns
/// Envoy's log.
pub async fn replay_all(shape: Shape) -> String {
    let started = Instant::now();
    let base = base_config();
    let cases = golden::load_dir(&golden_dir().join("cases")).expect("load golden cases");
    assert!(!cases.is_empty(), "no golden cases found");
    let configs: Vec<Json> = cases
        .iter()
        .map(|c| shape.plugin_config(&case_config(c, &base)))
        .collect();
    let rig = Rig::start(shape, &configs)
        .await
        .unwrap_or_else(|e| panic!("{}: could not start the rig: {e:#}", shape.name()));
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        match rig.run(case, &base).await {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => failures.push(format!(
                "{} [{}]:\n    {}",
                case.name,
                rig.shape.name(),
                errors.join("\n    ")
            )),
            Err(e) => failures.push(format!("{} [{}]: {e:#}", case.name, rig.shape.name())),
        }
        eprintln!(
            "{} {}: {} ms",
            rig.shape.name(),
            case.name,
            t.elapsed().as_millis()
        );
    }
    eprintln!(
        "{}: {} cases in {:.1} s",
        shape.name(),
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        panic!(
            "{} of {} golden cases failed through Envoy ({}):\n{}\n\n--- envoy log tail ---\n{}",
            failures.len(),
            cases.len(),
            shape.name(),
            failures.join("\n"),
            rig.envoy.log_tail(60)
        );
    }
    rig.envoy.log()
}
