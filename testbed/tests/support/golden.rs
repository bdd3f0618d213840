//! The golden-case replay through real Envoy, shared by every shape (wasm, native, sidecar): one
//! Envoy per shape with one listener per distinct plugin configuration (and, for
//! [`Shape::Sidecar`], one `filter-sidecar` process per listener); the cases run one after the
//! other against it (they share the demo upstream, the fake backend and the counters, which come
//! from Envoy's stats or from the site's sidecar), checked with `golden::verify`.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use golden::{self, Backend, Case, Observed, RecordAnswer, UpstreamSaw};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testbed::demo_upstream::model::Script;
use testbed::fake_backend::model::Behaviour;
use testbed::h2c::{self, H2Request};
use testbed::raw::{self, Body, RawRequest};
use testbed::shape::REFUSED_CLUSTER;
use testbed::sidecar::Sidecar;
use testbed::{closed_port, DemoUpstream, Envoy, FakeBackend, HeaderField, Layout, Shape, Site};

pub const T: Duration = Duration::from_secs(15);
/// How long to wait for a record that must not come.
const NO_RECORD_GRACE: Duration = Duration::from_millis(150);
/// How long a record may take to reach the backend.
pub const RECORD_DEADLINE: Duration = Duration::from_secs(5);

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden")
}

pub fn base_config() -> Json {
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

/// One listener of the rig.
pub struct RigSite {
    pub listener: SocketAddr,
    /// The site's own `filter-sidecar` ([`Shape::Sidecar`] only).
    pub sidecar: Option<Sidecar>,
}

pub struct Rig {
    pub shape: Shape,
    pub envoy: Envoy,
    pub up: DemoUpstream,
    pub backend: FakeBackend,
    /// Plugin configuration (as JSON text) → its listener (and sidecar).
    pub sites: HashMap<String, RigSite>,
    _refused: testbed::ClosedPort,
}

impl Rig {
    pub async fn start(shape: Shape, configs: &[Json]) -> Result<Rig> {
        let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
        let refused = closed_port()?;
        let mut keys: Vec<String> = configs.iter().map(Json::to_string).collect();
        keys.sort();
        keys.dedup();
        let mut sidecars = Vec::new();
        let mut sites = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let mut plugin_config: Json = serde_json::from_str(k).unwrap_or(Json::Null);
            if shape == Shape::Sidecar {
                let sidecar = Box::pin(start_sidecar(&plugin_config, &backend, &refused)).await?;
                golden::merge(
                    &mut plugin_config,
                    &serde_json::json!({"sidecar": {"listen": sidecar.grpc_addr().to_string()}}),
                );
                sidecars.push(Some(sidecar));
            } else {
                sidecars.push(None);
            }
            sites.push(Site {
                name: format!("case_config_{i}"),
                port: 0,
                plugin_config,
                skip_without_session: false,
            });
        }
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
        let envoy = Box::pin(Envoy::start_with_env(&yaml, &[], &env)).await?;
        let mut by_key = HashMap::new();
        for ((k, s), sidecar) in keys.iter().zip(&sites).zip(sidecars) {
            let listener = envoy
                .listener(&s.name)
                .with_context(|| format!("listener {} not found", s.name))?;
            by_key.insert(k.clone(), RigSite { listener, sidecar });
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

    /// The site of a plugin configuration (as the shape runs it).
    pub fn site(&self, config: &Json) -> Result<&RigSite> {
        self.sites
            .get(&config.to_string())
            .context("no listener for the case's config")
    }

    /// The filter's counters at `site`: its sidecar's, else Envoy's stats.
    async fn counters(&self, site: &RigSite) -> Result<BTreeMap<String, u64>> {
        match &site.sidecar {
            Some(sidecar) => sidecar.counters().await,
            None => Ok(self.shape.counters(&self.envoy.stats().await?)),
        }
    }

    /// The counters whose sum grows once the filter has the backend's answer to a record.
    fn record_counters(&self) -> &'static [&'static str] {
        if self.shape == Shape::Sidecar {
            &["records_sent", "record_failures", "records_dropped"]
        } else {
            &["records_sent", "record_failures"]
        }
    }

    /// Sends the request, waits until the backend has its lookup, then hangs up; the response
    /// is empty (status 0). Gives the filter a moment to see the reset.
    async fn send_and_reset_during_lookup(
        &self,
        addr: SocketAddr,
        req: &RawRequest,
    ) -> Result<raw::RawResponse> {
        let mut conn = raw::RawConnection::connect(addr).await?;
        conn.send_request(req).await?;
        let deadline = Instant::now() + T;
        while self.backend.received_on("/v1/inject").await?.is_empty() {
            if Instant::now() > deadline {
                bail!("the lookup never reached the backend");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(raw::RawResponse {
            status: 0,
            reason: Vec::new(),
            headers: Vec::new(),
            raw_head: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            informational: Vec::new(),
            extra: Vec::new(),
        })
    }

    /// Runs one case; returns the mismatches.
    async fn run(&self, case: &Case, base: &Json) -> Result<Vec<String>> {
        let site = self.site(&self.shape.plugin_config(&case_config(case, base)))?;

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
                trailers: u
                    .trailers
                    .iter()
                    .map(|(n, v)| HeaderField::new(n, v.to_vec()))
                    .collect(),
            })
            .await?;
        let behaviour = match &case.backend {
            Backend::Timeout => Behaviour::Timeout,
            Backend::Refused => Behaviour::Miss,
            late @ Backend::Late { .. } => {
                let (_, content_type, body) =
                    golden::backend_answer(late).context("no answer for a late hit")?;
                let config = golden::case_config(case, base);
                let timeout = config["backend"]["lookup_timeout_ms"]
                    .as_u64()
                    .unwrap_or(500);
                Behaviour::slow(
                    timeout + 200,
                    Behaviour::Hit {
                        content_type,
                        body_base64: body,
                    },
                )
            }
            b => match golden::backend_answer(b) {
                Some((200, content_type, body)) => Behaviour::Hit {
                    content_type,
                    body_base64: body,
                },
                Some((status, _, body)) if body.is_empty() => Behaviour::status(status),
                Some((status, content_type, body)) => Behaviour::Answer {
                    status,
                    content_type,
                    body_base64: body,
                },
                None => bail!("no answer for backend {b:?}"),
            },
        };
        self.backend.set_inject(&behaviour).await?;
        self.backend
            .set_traces(&match case.record {
                RecordAnswer::Ok => Behaviour::status(200),
                RecordAnswer::Status { status } => Behaviour::status(status),
                RecordAnswer::Timeout => Behaviour::Timeout,
            })
            .await?;
        self.up.clear_requests().await?;
        self.backend.clear_received().await?;
        let before = self.counters(site).await?;

        // The request, as the case's client sends it.
        let req = &case.request;
        let mut raw_req =
            RawRequest::new(&req.method, &String::from_utf8_lossy(&req.path.to_vec()));
        raw_req.headers = vec![HeaderField::new("host", &req.authority)];
        for (n, v) in &req.headers {
            raw_req.headers.push(HeaderField::new(n, v.to_vec()));
        }
        let chunks: Vec<Vec<u8>> = req.body.iter().map(|b| b.to_vec()).collect();
        raw_req.body = match (chunks.len(), req.trailers.is_empty()) {
            (0, _) => Body::None,
            (1, true) => Body::ContentLength(chunks),
            _ => Body::Chunked(chunks),
        };
        raw_req.trailers = req
            .trailers
            .iter()
            .map(|(n, v)| HeaderField::new(n, v.to_vec()))
            .collect();
        raw_req.chunk_delay = Duration::from_millis(req.pause_ms.max(5));
        let resp = if req.reset_during_lookup {
            self.send_and_reset_during_lookup(site.listener, &raw_req)
                .await?
        } else if req.http2 {
            let h2 = H2Request {
                method: req.method.clone(),
                path: req.path.to_vec(),
                authority: req.authority.clone(),
                headers: raw_req.headers.iter().skip(1).cloned().collect(),
                body: req.body.iter().map(|b| b.to_vec()).collect(),
            };
            h2c::send(site.listener, &h2, T).await?
        } else {
            raw::send(site.listener, &raw_req, T).await?
        };

        // Records: wait for the expected one (and for the filter to count the backend's answer);
        // otherwise give a wrong one a moment to show up.
        if case.expect.extract.is_some() {
            let deadline = Instant::now() + RECORD_DEADLINE;
            while self.backend.received_on("/v1/traces").await?.is_empty()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let settled = |c: &BTreeMap<String, u64>| {
                let sum = |m: &BTreeMap<String, u64>| -> u64 {
                    self.record_counters()
                        .iter()
                        .map(|k| m.get(*k).copied().unwrap_or(0))
                        .sum()
                };
                sum(c) > sum(&before)
            };
            // A sidecar has the same deadline for both; Envoy's stats get 2 s more.
            let deadline = match site.sidecar {
                Some(_) => deadline,
                None => Instant::now() + Duration::from_secs(2),
            };
            while !settled(&self.counters(site).await?) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            tokio::time::sleep(NO_RECORD_GRACE).await;
        }
        let after = self.counters(site).await?;

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
        let backend_headers = received
            .iter()
            .filter(|r| r.path == "/v1/inject" || r.path == "/v1/traces")
            .map(|r| {
                r.headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect()
            })
            .collect();
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
            client_trailers: resp
                .trailers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            upstream: complete.first().map(|r| UpstreamSaw {
                method: r.method.clone(),
                path: r.path_bytes.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
                body: r.body_base64.clone(),
                trailers: r
                    .trailers
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }),
            inject: bodies("/v1/inject"),
            extract: bodies("/v1/traces"),
            counters: Some(counters),
            backend_headers,
        };
        // A refused connection never reaches the backend, so the lookup it carried cannot be
        // seen there: check everything else (the counters still show the transport error).
        let mut case = case.clone();
        if matches!(case.backend, Backend::Refused) {
            case.expect.inject = None;
            case.expect.extract = None;
        }
        errors.extend(golden::verify(&case, &observed));
        Ok(errors)
    }
}

/// Starts the sidecar for a site's plugin configuration: it calls the backend itself, so the
/// configurations naming [`REFUSED_CLUSTER`] point it at the closed port.
async fn start_sidecar(
    config: &Json,
    backend: &FakeBackend,
    refused: &testbed::ClosedPort,
) -> Result<Sidecar> {
    let target = if config["backend"]["cluster"] == REFUSED_CLUSTER {
        refused.addr()
    } else {
        backend.addr()
    };
    Box::pin(Sidecar::start(config, &format!("http://{target}"))).await
}

/// Replays every golden case through Envoy in `shape`; panics with every mismatch. Returns
/// Envoy's log.
pub async fn replay_all(shape: Shape) -> String {
    let started = Instant::now();
    let base = base_config();
    let mut cases = golden::load_dir(&golden_dir().join("cases")).expect("load golden cases");
    // `GOLDEN_CASE=<part of a name>` replays only the matching cases (while working on one).
    if let Ok(only) = std::env::var("GOLDEN_CASE") {
        cases.retain(|c| c.name.contains(&only));
    }
    assert!(!cases.is_empty(), "no golden cases found");
    let configs: Vec<Json> = cases
        .iter()
        .map(|c| shape.plugin_config(&case_config(c, &base)))
        .collect();
    let rig = Box::pin(Rig::start(shape, &configs))
        .await
        .unwrap_or_else(|e| panic!("{}: could not start the rig: {e:#}", shape.name()));
    let sidecars = rig.sites.values().filter(|s| s.sidecar.is_some()).count();
    if sidecars > 0 {
        eprintln!(
            "{}: rig ({sidecars} sidecars + envoy) up in {} ms",
            shape.name(),
            started.elapsed().as_millis()
        );
    }
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        match Box::pin(rig.run(case, &base)).await {
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
        let tails: Vec<String> = rig
            .sites
            .values()
            .filter_map(|s| s.sidecar.as_ref().map(|s| s.log_tail(20)))
            .collect();
        let sidecar_logs = if tails.is_empty() {
            String::new()
        } else {
            format!("\n--- sidecar logs ---\n{}", tails.join("\n"))
        };
        panic!(
            "{} of {} golden cases failed through Envoy ({}):\n{}\n\n--- envoy log tail ---\n{}{sidecar_logs}",
            failures.len(),
            cases.len(),
            shape.name(),
            failures.join("\n"),
            rig.envoy.log_tail(60)
        );
    }
    rig.envoy.log()
}
