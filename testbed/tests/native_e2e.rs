//! The native module (`filter-native`) through real Envoy beyond the golden cases: the verdict
//! reaches the dynamic metadata (an access log and the span tag of
//! `istio/tracing/envoyfilter-metadata-tags.yaml`), and a request whose body never completes is
//! released by the hold watchdog after the lookup timeout plus the margin.

#[path = "support/spans.rs"]
mod spans;

use anyhow::Result;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testbed::raw::{self, RawRequest};
use testbed::shape::{self, AccessLog};
use testbed::{DemoUpstream, Envoy, FakeBackend, Layout, Shape, Site};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(15);
/// `filter_native::filter::HOLD_MARGIN_MS` (the module is a cdylib, not a dependency here).
const HOLD_MARGIN_MS: u64 = 1000;
const LOOKUP_TIMEOUT_MS: u64 = 300;

fn base() -> Json {
    json!({
        "backend": {
            "cluster": shape::BACKEND_CLUSTER,
            "authority": "backend.local",
            "lookup_timeout_ms": LOOKUP_TIMEOUT_MS,
        },
        "service_name": "native-e2e"
    })
}

struct Rig {
    envoy: Envoy,
    up: DemoUpstream,
    backend: FakeBackend,
    _dir: tempfile::TempDir,
    access_log: PathBuf,
}

impl Rig {
    async fn start(
        shape: Shape,
        configs: &[Json],
        edit: impl FnOnce(String) -> String + Send + 'static,
    ) -> Result<Rig> {
        let (up, backend) = tokio::try_join!(DemoUpstream::start(), FakeBackend::start())?;
        let dir = tempfile::tempdir()?;
        let access_log = dir.path().join("access.log");
        let layout = Layout {
            admin_port: 0,
            upstream: up.addr(),
            backend: backend.addr(),
            refused: None,
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
                format: shape.verdict_log_format().to_string(),
            }),
        };
        let (yaml, env) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((edit(shape.envoy_yaml(&layout)?), shape.envoy_env()?))
        })
        .await??;
        let envoy = Envoy::start_with_env(&yaml, &[], &env).await?;
        Ok(Rig {
            envoy,
            up,
            backend,
            _dir: dir,
            access_log,
        })
    }

    fn site(&self, i: usize) -> SocketAddr {
        self.envoy
            .listener(&format!("site_{i}"))
            .expect("listener exists")
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

    async fn counter(&self, name: &str) -> u64 {
        let stats = self.envoy.stats().await.unwrap();
        testbed::native::counters(&stats)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// The custom tag of `istio/tracing/envoyfilter-metadata-tags.yaml`.
fn manifest_metadata_tag() -> Json {
    let manifest = include_str!("../../istio/tracing/envoyfilter-metadata-tags.yaml");
    // The manifest's tag, field by field (the testbed has no YAML parser; istio-check parses it).
    for needle in [
        "- tag: softprobe.cache.verdict.metadata\n",
        "request: {}\n",
        "key: transparent_cache\n",
        "- key: verdict\n",
        "default_value: unknown\n",
    ] {
        assert!(manifest.contains(needle), "manifest lacks {needle:?}");
    }
    testbed::tracing::metadata_tag(
        "softprobe.cache.verdict.metadata",
        "transparent_cache",
        "verdict",
        "unknown",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_reaches_the_dynamic_metadata_and_the_span_tag() {
    for shape in Shape::native() {
        let ctx = shape.name();
        let collector = FakeBackend::start().await.unwrap();
        let tags = [manifest_metadata_tag()];
        let collector_addr = collector.addr();
        let rig = Rig::start(
            shape,
            &[base(), {
                let mut c = base();
                c["rules"] = json!({"methods": ["POST"]});
                c
            }],
            move |y| testbed::tracing::with_otel_tracing(&y, collector_addr, &tags),
        )
        .await
        .unwrap();
        let send = |site: usize, path: &str| {
            let req = RawRequest::new("GET", path);
            let addr = rig.site(site);
            async move { raw::send(addr, &req, T).await.unwrap() }
        };
        assert_eq!(send(0, "/miss").await.status, 200);
        assert_eq!(send(1, "/bypass").await.status, 200);
        rig.backend
            .set_inject(&spans::hit(b"cached"))
            .await
            .unwrap();
        let hit = send(0, "/hit").await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, b"cached", "{ctx}");
        let lines = rig.access_log_lines(3).await;
        for (want, path) in [
            ("miss", "/miss"),
            ("bypass:method", "/bypass"),
            ("hit", "/hit"),
        ] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{want} GET {path} 200 "))),
                "{ctx}: {path}: {lines:?}"
            );
            let span = spans::span_for(&collector, path, Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{ctx}: no span for {path}; {}", rig.envoy.log_tail(30)));
            assert_eq!(
                span.attr_str("softprobe.cache.verdict.metadata"),
                Some(want),
                "{ctx}: {path}: {span:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_completes_is_released_by_the_watchdog() {
    let limit = Duration::from_millis(LOOKUP_TIMEOUT_MS + HOLD_MARGIN_MS);
    for shape in Shape::native() {
        let ctx = shape.name();
        let mut rig = Rig::start(shape, &[base()], |y| y).await.unwrap();
        // Headers promising 100 bytes, 10 of them, then nothing.
        let mut client = tokio::net::TcpStream::connect(rig.site(0)).await.unwrap();
        client
            .write_all(
                b"POST /stuck HTTP/1.1\r\nhost: api.example.com\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\"",
            )
            .await
            .unwrap();
        let started = Instant::now();
        tokio::time::sleep(limit - Duration::from_millis(400)).await;
        assert_eq!(
            rig.counter("lookup_errors_timeout").await,
            0,
            "{ctx}: released too early"
        );
        let released = loop {
            if rig.counter("lookup_errors_timeout").await == 1 {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < limit + Duration::from_secs(3),
                "{ctx}: never released; {}",
                rig.envoy.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            released >= limit && released < limit + Duration::from_millis(1500),
            "{ctx}: released after {released:?}"
        );
        // Envoy flushes its log on its own schedule.
        let logged = rig
            .envoy
            .wait_for_log("request held over 1300 ms without progress", T)
            .await;
        assert!(logged.is_ok(), "{ctx}: {}", rig.envoy.log_tail(30));
        // What was held went upstream: the client hangs up, and the upstream saw the headers and
        // the 10 bytes (held in Envoy's buffer until the watchdog let them go).
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = loop {
            let seen = rig.up.requests().await.unwrap();
            if !seen.is_empty() || Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(seen.len(), 1, "{ctx}: {seen:?}");
        assert!(!seen[0].complete, "{ctx}");
        assert_eq!(seen[0].body_base64, b"{\"partial\"", "{ctx}");
        let lines = rig.access_log_lines(1).await;
        assert!(
            lines[0].starts_with("error:timeout POST /stuck "),
            "{ctx}: {lines:?}"
        );
    }
}
