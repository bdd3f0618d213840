//! `make bench-soak`: a long run through the wasm plugin (hold_headers) with the real `backend`
//! (release build), mixed request and response sizes up to 1 MiB, a mix of misses (recorded,
//! the store evicting under its cap) and hits; Envoy's and the backend's resident memory sampled
//! as it goes. Not part of CI. Writes the table into `bench/README.md` (unless `--smoke`).

use anyhow::{bail, Context as _, Result};
use bench::report;
use clap::Parser;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testbed::http1::server::{serve, Handler, Request, Response};
use testbed::raw::{Body, RawConnection, RawRequest};
use testbed::{Envoy, HeaderField, Layout, RealBackend, Shape, Site};

#[derive(Parser, Debug, Clone)]
#[command(about = "Soak: many requests through the wasm plugin with the real backend")]
struct Args {
    /// Requests in all.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Connections sending requests back to back.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// One request in this many has a key never seen before (a miss, then a record); the others
    /// repeat one of `--keys` keys (hits once recorded).
    #[arg(long, default_value_t = 20)]
    unique_every: u64,
    /// Repeated keys.
    #[arg(long, default_value_t = 500)]
    keys: u64,
    /// The backend's store cap (`--max-store-bytes`), so eviction runs during the soak.
    #[arg(long, default_value_t = 256 << 20)]
    store_bytes: u64,
    /// Readings in all (one every requests/readings requests).
    #[arg(long, default_value_t = 10)]
    readings: u64,
    /// Tiny counts, nothing written (CI). Also set by BENCH_SMOKE=1.
    #[arg(long)]
    smoke: bool,
}

/// Body sizes of the mix, with their weight in a hundred.
const MIX: [(usize, u64); 5] = [
    (1 << 10, 70),
    (16 << 10, 15),
    (64 << 10, 10),
    (256 << 10, 4),
    (1 << 20, 1),
];

/// The size of the `n`th body of the mix (a fixed, spread-out order).
fn size_of(n: u64) -> usize {
    let slot = n.wrapping_mul(2_654_435_761) % 100;
    let mut acc = 0;
    for (size, weight) in MIX {
        acc += weight;
        if slot < acc {
            return size;
        }
    }
    1 << 10
}

/// The request number `i` sends: its path (the key), request body size and response body size.
fn shape_of(i: u64, args: &Args) -> (String, usize, usize) {
    if i.is_multiple_of(args.unique_every.max(1)) {
        (format!("/soak/unique/{i}"), size_of(i), size_of(i / 7 + 3))
    } else {
        let k = i % args.keys.max(1);
        (format!("/soak/key/{k}"), size_of(k), size_of(k + 11))
    }
}

fn request(path: &str, size: usize, response_size: usize) -> RawRequest {
    RawRequest::new("POST", path)
        .header("content-type", "application/octet-stream")
        .header("x-soak-response-size", response_size.to_string())
        .body(Body::ContentLength(vec![bench::body(size)]))
}

/// The upstream: answers 200 with as many bytes as `x-soak-response-size` asks for.
struct Upstream;

impl Handler for Upstream {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        let size = req
            .head
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(b"x-soak-response-size"))
            .and_then(|h| std::str::from_utf8(&h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        async move {
            Response {
                status: 200,
                headers: vec![HeaderField::new("content-type", "application/octet-stream")],
                body: bench::body(size),
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    requests: u64,
    seconds: f64,
    envoy_rss_kib: u64,
    backend_rss_kib: u64,
    hits: u64,
    errors: u64,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    hits: AtomicU64,
    errors: AtomicU64,
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

async fn client(
    addr: std::net::SocketAddr,
    args: Args,
    next: Arc<AtomicU64>,
    counts: Arc<Counts>,
) -> Result<()> {
    let mut conn: Option<RawConnection> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= args.requests {
            return Ok(());
        }
        let (path, size, response_size) = shape_of(i, &args);
        let req = request(&path, size, response_size);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(RawConnection::connect(addr).await?),
        };
        match c.round_trip(&req).await {
            Ok(r) if r.status == 200 && r.body.len() == response_size => {
                if r.header("x-softprobe-cache").as_deref() == Some("hit") {
                    counts.hits.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        counts.done.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    let smoke = args.smoke || bench::smoke();
    if smoke {
        args.requests = args.requests.min(2_000);
        args.readings = args.readings.min(4);
    }
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let up_addr = up.local_addr()?;
    tokio::spawn(serve(up, Arc::new(Upstream)));
    let store = args.store_bytes.to_string();
    let backend = RealBackend::start_with(&["--max-store-bytes", &store, "--log-level", "warn"])
        .await
        .context("start the backend")?;
    let shape = Shape::Wasm { hold_headers: true };
    let config = shape.plugin_config(&bench::hosts::filter_config("record_and_inject"));
    let layout = Layout {
        admin_port: 0,
        upstream: up_addr,
        backend: backend.addr(),
        refused: None,
        sites: vec![Site {
            name: "soak".into(),
            port: 0,
            plugin_config: config,
            skip_without_session: false,
        }],
        access_log: None,
    };
    let mut envoy =
        Envoy::start_with_env(&shape.envoy_yaml(&layout)?, &[], &shape.envoy_env()?).await?;
    let envoy_pid = envoy.proc().pid();
    let backend_pid = backend.pid();
    let addr = envoy.listener_addr();

    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        tasks.push(tokio::spawn(client(
            addr,
            args.clone(),
            next.clone(),
            counts.clone(),
        )));
    }
    let readings = Arc::new(Mutex::new(Vec::<Reading>::new()));
    let step = (args.requests / args.readings.max(1)).max(1);
    let mut next_reading = step;
    let read = |counts: &Counts| -> Result<Reading> {
        Ok(Reading {
            requests: counts.done.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            envoy_rss_kib: bench::load::status_kib(envoy_pid, "VmRSS")?,
            backend_rss_kib: bench::load::status_kib(backend_pid, "VmRSS")?,
            hits: counts.hits.load(Ordering::Relaxed),
            errors: counts.errors.load(Ordering::Relaxed),
        })
    };
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let done = counts.done.load(Ordering::Relaxed);
        if done >= next_reading {
            let r = read(&counts)?;
            eprintln!(
                "soak: {} requests in {:.0} s, Envoy {}, backend {}, {} hits, {} errors",
                r.requests,
                r.seconds,
                mib(r.envoy_rss_kib),
                mib(r.backend_rss_kib),
                r.hits,
                r.errors
            );
            readings.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            next_reading = next_reading.saturating_add(step);
        }
    }
    for t in tasks {
        t.await??;
    }
    // Let the last records land before reading the counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = read(&counts)?;
    let stats = shape.counters(&envoy.stats().await?);
    let metrics = testbed::raw::send(
        backend.addr(),
        &RawRequest::new("GET", "/metrics"),
        Duration::from_secs(10),
    )
    .await?
    .body_str();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let envoy_peak = bench::load::status_kib(envoy_pid, "VmHWM")?;
    let backend_peak = bench::load::status_kib(backend_pid, "VmHWM")?;
    drop(envoy);

    let mut readings = readings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if readings.last().map(|r| r.requests) != Some(last.requests) {
        readings.push(last);
    }
    let Some(warm) = readings.first().copied() else {
        bail!("no reading taken");
    };
    let mut table = String::from(
        "| requests | seconds | req/s (since the last reading) | Envoy RSS | backend RSS | hits | errors |\n|---|---|---|---|---|---|---|\n",
    );
    let mut before = (0u64, 0.0f64);
    for r in &readings {
        let rate = (r.requests - before.0) as f64 / (r.seconds - before.1).max(1e-9);
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            r.requests,
            r.seconds,
            rate,
            mib(r.envoy_rss_kib),
            mib(r.backend_rss_kib),
            r.hits,
            r.errors
        );
        before = (r.requests, r.seconds);
    }
    let growth = |a: u64, b: u64| format!("{:+.1} MiB", (b as f64 - a as f64) / 1024.0);
    let max_after = |f: fn(&Reading) -> u64| readings.iter().map(f).max().unwrap_or(0);
    let _ = writeln!(
        table,
        "\nAfter the first reading (warm-up) to the end: Envoy {} → {} ({}; highest reading {}, \
         peak {}), backend {} → {} ({}; highest reading {}, peak {}). Records: {} sent, {} dropped, \
         {} failed by the filter; {} stored by the backend, {} evicted by its {} cap, {} in the \
         store at the end. {} requests in {:.0} s, {} hits, {} errors. wasm plugin \
         (`hold_headers`, defaults), real `backend` (release), 8 connections, request and \
         response bodies of 1 KiB (70%), 16 KiB (15%), 64 KiB (10%), 256 KiB (4%) and 1 MiB \
         (1%), one request in {} with a key never seen (a miss, recorded), the others on {} \
         repeated keys. Measured {}.",
        mib(warm.envoy_rss_kib),
        mib(last.envoy_rss_kib),
        growth(warm.envoy_rss_kib, last.envoy_rss_kib),
        mib(max_after(|r| r.envoy_rss_kib)),
        mib(envoy_peak),
        mib(warm.backend_rss_kib),
        mib(last.backend_rss_kib),
        growth(warm.backend_rss_kib, last.backend_rss_kib),
        mib(max_after(|r| r.backend_rss_kib)),
        mib(backend_peak),
        stats.get("records_sent").copied().unwrap_or(0),
        stats.get("records_dropped").copied().unwrap_or(0),
        stats.get("record_failures").copied().unwrap_or(0),
        metric("backend_recorded_total"),
        metric("backend_evicted_total"),
        bench::size_name(usize::try_from(args.store_bytes).unwrap_or(usize::MAX)),
        metric("backend_recordings"),
        last.requests,
        last.seconds,
        last.hits,
        last.errors,
        args.unique_every,
        args.keys,
        report::today(),
    );
    println!("{table}");
    if last.errors > 0 {
        bail!("{} requests failed", last.errors);
    }
    if !smoke {
        report::write_section(&report::readme(), "soak", &table)?;
    }
    Ok(())
}
