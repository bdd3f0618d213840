//! Every golden case of `golden/cases/` through real Envoy with `envoy.filters.http.ext_proc` and
//! the `filter-sidecar` process, checked with `golden::verify` (the verifier the
//! plugins use); plus the fail-open path: the sidecar killed mid-run (traffic flows upstream
//! unchanged) and restarted (hits and records work again), and the drain on SIGTERM.
//!
//! One Envoy, one listener and one sidecar per distinct plugin configuration; the cases run one
//! after the other (they share the demo upstream and the fake backend; counters come from each
//! sidecar's `/metrics`).

#[path = "support/golden.rs"]
mod support;

use anyhow::{bail, Context, Result};
use golden::{self, Backend};
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{base_config, Rig, RECORD_DEADLINE, T};
use testbed::fake_backend::model::Behaviour;
use testbed::raw::{self, Body, RawRequest};
use testbed::{Envoy, FakeBackend, HeaderField, Shape};

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
    on_big_stack(async {
        support::replay_all(Shape::Sidecar).await;
    });
}

/// The counters of the sidecar serving `config`.
async fn sidecar_counters(
    rig: &Rig,
    config: &Json,
) -> Result<std::collections::BTreeMap<String, u64>> {
    rig.site(config)?
        .sidecar
        .as_ref()
        .context("sidecar")?
        .counters()
        .await
}

/// One Envoy + one sidecar with the base config, for the fail-open tests.
async fn single() -> Result<(Rig, Json)> {
    let config = base_config();
    let rig = Box::pin(Rig::start(Shape::Sidecar, std::slice::from_ref(&config))).await?;
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
        let got = backend.records().await?;
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
    site.sidecar.as_mut().context("sidecar")?.kill();
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
    site.sidecar.as_mut().context("sidecar")?.restart().await?;
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
        let c = sidecar_counters(&rig, &config).await?;
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
fn a_stalled_body_goes_upstream_at_the_hold_deadline() -> Result<()> {
    on_big_stack(stalled_body())
}

/// ext_proc holds a buffered request in Envoy, where the sidecar cannot release it piecemeal: at
/// the engine's hold deadline the sidecar ends the ext_proc stream, and Envoy sends what it holds
/// on at once, without waiting for the client (the golden case `watchdog_stalled_body_released`
/// checks the rest of the exchange).
async fn stalled_body() -> Result<()> {
    let (rig, config) = Box::pin(single()).await?;
    let addr = rig.site(&config)?.listener;
    rig.backend.set_inject(&Behaviour::Miss).await?;
    let hold_limit = config["backend"]["lookup_timeout_ms"]
        .as_u64()
        .context("lookup_timeout_ms")?
        + filter_core::engine::HOLD_MARGIN_MS;
    // Headers and the first chunk, then silence: the client never sends the rest.
    let mut conn = raw::RawConnection::connect(addr).await?;
    conn.write_raw(
        b"POST /stalled HTTP/1.1\r\nhost: api.example.com\r\ntransfer-encoding: chunked\r\n\r\n\
          6\r\nfirst \r\n",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(hold_limit + 700)).await;
    // Gone while the body is still open: the upstream records what it got.
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(2);
    let seen = loop {
        let seen = rig.up.requests().await?;
        if !seen.is_empty() || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let [req] = seen.as_slice() else {
        bail!(
            "the upstream saw {} requests (expected the released one)",
            seen.len()
        );
    };
    assert_eq!(req.path, "/stalled");
    assert!(!req.complete);
    assert_eq!(req.body_base64, b"first ", "the held chunk went upstream");
    assert!(rig.backend.received_on("/v1/inject").await?.is_empty());
    let c = sidecar_counters(&rig, &config).await?;
    assert_eq!(c["lookup_errors_timeout"], 1, "{c:?}");
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
    let status = site
        .sidecar
        .as_mut()
        .context("sidecar")?
        .terminate(Duration::from_secs(10))
        .await?;
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        rig.backend.records().await?,
        3,
        "every queued record was flushed"
    );
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
    let skip = Box::pin(Rig::start(Shape::Sidecar, std::slice::from_ref(&config))).await?;
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
