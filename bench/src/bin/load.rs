//! `make bench-load`: requests per second, p50/p99 latency, Envoy CPU seconds per 1000 requests and
//! peak RSS at fixed concurrency for every host the testbed runs, each as a ratio to Envoy without
//! the filter from the same run (every run repeated, medians reported); then record on versus
//! record off, and an Envoy's memory after the first requests versus after many with 1 MiB bodies.
//! Writes the tables into `bench/README.md` (unless `--smoke`).

use anyhow::{bail, Context as _, Result};
use bench::hosts::{check, filter_config, request, start, start_at, Host};
use bench::load::{connections_to, cpu_seconds, drive, median, status_kib, Run, Until};
use bench::report;
use bench::servers::Servers;
use bench::{size_name, Path};
use clap::Parser;
use serde_json::Value as Json;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testbed::raw::RawConnection;
use testbed::shape::BACKEND_CLUSTER;
use testbed::RealBackend;

/// The load table's connections unless `--concurrency` says otherwise.
const DEFAULT_CONCURRENCY: usize = 8;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load through real Envoy: no filter versus each host of the filter")]
struct Args {
    /// Connections sending requests back to back.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Warm-up seconds before each measured run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Runs per setup; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "0,1024,65536,1048576")]
    sizes: Vec<usize>,
    /// Paths: miss, hit.
    #[arg(long, value_delimiter = ',', default_value = "miss,hit")]
    paths: Vec<String>,
    /// Body sizes of the record-on versus record-off comparison.
    #[arg(long, value_delimiter = ',', default_value = "1024,65536")]
    record_sizes: Vec<usize>,
    /// Memory: requests before the first reading.
    #[arg(long, default_value_t = 1000)]
    mem_first: u64,
    /// Memory: requests in all before the second reading.
    #[arg(long, default_value_t = 100_000)]
    mem_total: u64,
    /// Memory: body size.
    #[arg(long, default_value_t = 1 << 20)]
    mem_size: usize,
    /// Filter mode of the load table (`record_and_inject`, `record_only`, `inject_only`, or
    /// `no_session`: `record_and_inject` with `require_session`, the requests carrying none;
    /// `no_session_skip`: the same with Envoy skipping the filter for them).
    #[arg(long, default_value = "record_and_inject")]
    mode: String,
    /// Parts to skip: load, record, memory, real.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Seconds-long run with tiny counts that writes nothing (CI). Also set by BENCH_SMOKE=1.
    #[arg(long)]
    smoke: bool,
}

/// One measured run of one host.
#[derive(Debug, Clone, Copy)]
struct Sample {
    run: Run,
    cpu_per_1k: f64,
    envoy_hwm_kib: f64,
    /// NaN unless the host has a sidecar process.
    sidecar_cpu_per_1k: f64,
    sidecar_hwm_kib: f64,
}

struct Ctx {
    args: Args,
    servers: Servers,
}

impl Ctx {
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.args.warmup)
    }

    /// One run; `Ok(None)` (with the reason logged) when the first request does not take `path`.
    async fn sample(
        &self,
        host: Host,
        config: &Json,
        path: Path,
        size: usize,
    ) -> Result<Option<Sample>> {
        self.servers.set(path, size);
        let mut running = start(host, &self.servers, config)
            .await
            .with_context(|| format!("start Envoy for {}", host.key()))?;
        let pid = running.envoy_pid();
        let sidecar = running.sidecar_pid();
        let req = request(size);
        let mut conn = RawConnection::connect(running.addr()).await?;
        let first = conn.round_trip(&req).await?;
        if let Err(e) = check(host, path, size, &first) {
            eprintln!("skipped {} {} {size}: {e:#}", host.key(), path.name());
            return Ok(None);
        }
        drop(conn);
        let addr = running.addr();
        let c = self.args.concurrency;
        drive(
            addr,
            &req,
            size,
            c,
            Duration::ZERO,
            Until::Time(self.warmup()),
        )
        .await?;
        let cpu0 = cpu_seconds(pid)?;
        let sc0 = sidecar.map(cpu_seconds).transpose()?;
        let run = drive(
            addr,
            &req,
            size,
            c,
            Duration::ZERO,
            Until::Time(Duration::from_secs_f64(self.args.seconds)),
        )
        .await?;
        let cpu1 = cpu_seconds(pid)?;
        let sc1 = sidecar.map(cpu_seconds).transpose()?;
        let hwm = status_kib(pid, "VmHWM")? as f64;
        let sc_hwm = sidecar.map(|p| status_kib(p, "VmHWM")).transpose()?;
        drop(running);
        let per_1k = |cpu: f64| cpu / run.requests as f64 * 1000.0;
        Ok(Some(Sample {
            run,
            cpu_per_1k: per_1k(cpu1 - cpu0),
            envoy_hwm_kib: hwm,
            sidecar_cpu_per_1k: match (sc0, sc1) {
                (Some(a), Some(b)) => per_1k(b - a),
                _ => f64::NAN,
            },
            sidecar_hwm_kib: sc_hwm.map_or(f64::NAN, |k| k as f64),
        }))
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// How Envoy was placed, for the tables' notes (`make bench-load` sets `TESTBED_ENVOY_CPUS`).
fn pinned() -> String {
    match std::env::var("TESTBED_ENVOY_CPUS") {
        Ok(c) if !c.trim().is_empty() => format!(
            " pinned to CPU {} (`taskset`), the driver, upstream, backend and sidecar on the others",
            c.trim()
        ),
        _ => String::new(),
    }
}

fn us(v: f64) -> String {
    report::time(v * 1000.0)
}

async fn load_table(ctx: &Ctx, hosts: &[Host]) -> Result<String> {
    let a = &ctx.args;
    let mut t = String::from(
        "| path | body | host | req/s | p50 | p99 | Envoy CPU s / 1000 req | Envoy peak RSS | sidecar CPU s / 1000 req | sidecar peak RSS | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let config = filter_config(&a.mode);
    for p in &a.paths {
        let path = match p.as_str() {
            "miss" => Path::Miss,
            "hit" => Path::Hit,
            other => bail!("unknown path {other:?}"),
        };
        for &size in &a.sizes {
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); hosts.len()];
            for r in 0..a.repeat {
                // Hosts interleaved inside each repetition, so drift hits them all alike.
                for (i, &h) in hosts.iter().enumerate() {
                    let Some(s) = ctx.sample(h, &config, path, size).await? else {
                        continue;
                    };
                    eprintln!(
                        "load {} {} {} #{}: {:.0} req/s p50 {:.0} µs p99 {:.0} µs cpu/1k {:.3} s hwm {:.0} KiB sidecar cpu/1k {:.3} s hwm {:.0} KiB errors {}",
                        path.name(), size_name(size), h.key(), r + 1, s.run.rps, s.run.p50_us,
                        s.run.p99_us, s.cpu_per_1k, s.envoy_hwm_kib, s.sidecar_cpu_per_1k,
                        s.sidecar_hwm_kib, s.run.errors
                    );
                    samples[i].push(s);
                }
            }
            let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
            let metrics: [fn(&Sample) -> f64; 7] = [
                |s| s.run.rps,
                |s| s.run.p50_us,
                |s| s.run.p99_us,
                |s| s.cpu_per_1k,
                |s| s.envoy_hwm_kib,
                |s| s.sidecar_cpu_per_1k,
                |s| s.sidecar_hwm_kib,
            ];
            let base: Vec<f64> = metrics.iter().map(|f| med(0, *f)).collect();
            for (i, h) in hosts.iter().enumerate() {
                if samples[i].is_empty() {
                    let _ = writeln!(
                        t,
                        "| {} | {} | {} | not measured: the first request did not take this path | | | | | | | |",
                        path.name(),
                        size_name(size),
                        h.key()
                    );
                    continue;
                }
                let m: Vec<f64> = metrics.iter().map(|f| med(i, *f)).collect();
                let cell = |k: usize, text: String| {
                    if i == 0 {
                        text
                    } else {
                        format!("{text} ({})", report::ratio(m[k] / base[k]))
                    }
                };
                let errors: u64 = samples[i].iter().map(|s| s.run.errors).sum();
                let or_dash =
                    |v: f64, text: String| if v.is_nan() { "–".to_string() } else { text };
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    path.name(),
                    size_name(size),
                    h.key(),
                    cell(0, format!("{:.0}", m[0])),
                    cell(1, us(m[1])),
                    cell(2, us(m[2])),
                    cell(3, format!("{:.3}", m[3])),
                    cell(4, mib(m[4])),
                    or_dash(m[5], format!("{:.3}", m[5])),
                    or_dash(m[6], mib(m[6])),
                    errors,
                );
            }
        }
    }
    let missing: Vec<&str> = Host::missing().iter().map(|h| h.key()).collect();
    let _ = write!(
        t,
        "\n`mode: {}`, {} connections, {} s measured after {} s of warm-up, each run on a fresh Envoy{}; median of {} runs, hosts interleaved; in parentheses the ratio to no-filter from the same run. Measured {}.",
        a.mode, a.concurrency, a.seconds, a.warmup, pinned(), a.repeat, report::today()
    );
    if !missing.is_empty() {
        let _ = write!(
            t,
            " Not measured (no testbed shape yet): {}.",
            missing.join(", ")
        );
    }
    t.push('\n');
    Ok(t)
}

async fn record_table(ctx: &Ctx, hosts: &[Host]) -> Result<String> {
    let a = &ctx.args;
    let mut t = String::from(
        "| host | body | p50 record on | p50 record off | on ÷ off | p99 record on | p99 record off | on ÷ off | records sent (on / off) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for &h in hosts.iter().filter(|h| **h != Host::NoFilter) {
        for &size in &a.record_sizes {
            let mut on = Vec::new();
            let mut off = Vec::new();
            let (mut rec_on, mut rec_off) = (0, 0);
            for _ in 0..a.repeat {
                for (mode, out, rec) in [
                    ("record_and_inject", &mut on, &mut rec_on),
                    ("inject_only", &mut off, &mut rec_off),
                ] {
                    let before = ctx.servers.seen().records;
                    let Some(s) = ctx
                        .sample(h, &filter_config(mode), Path::Miss, size)
                        .await?
                    else {
                        bail!("{} {mode}: the miss path is not taken", h.key());
                    };
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    *rec += ctx.servers.seen().records - before;
                    eprintln!(
                        "record {} {} {mode}: p50 {:.0} µs p99 {:.0} µs",
                        h.key(),
                        size_name(size),
                        s.run.p50_us,
                        s.run.p99_us
                    );
                    out.push(s);
                }
            }
            if rec_on == 0 || rec_off != 0 {
                bail!(
                    "{}: record on sent {rec_on} records, record off {rec_off}",
                    h.key()
                );
            }
            let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let (p50on, p50off) = (m(&on, |s| s.run.p50_us), m(&off, |s| s.run.p50_us));
            let (p99on, p99off) = (m(&on, |s| s.run.p99_us), m(&off, |s| s.run.p99_us));
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {rec_on} / {rec_off} |",
                h.key(),
                size_name(size),
                us(p50on),
                us(p50off),
                report::ratio(p50on / p50off),
                us(p99on),
                us(p99off),
                report::ratio(p99on / p99off),
            );
        }
    }
    let _ = write!(
        t,
        "\nMiss path (lookup 404, upstream 200), {} connections; record on is `mode: record_and_inject`, record off `inject_only`; median of {} runs each. Measured {}.\n",
        a.concurrency,
        a.repeat,
        report::today()
    );
    Ok(t)
}

/// Records into the real `backend`: every request a miss (`record_only`, 1 KiB), then how many
/// records the filter sent, dropped and lost, how many the backend stored, and how many
/// connections were opened to it.
async fn real_table(ctx: &Ctx, hosts: &[Host]) -> Result<String> {
    let a = &ctx.args;
    let size = 1024;
    ctx.servers.set(Path::Miss, size);
    let mut t = String::from(
        "| host | req/s | requests | records sent | dropped | failed | stored by the backend | lost | record callouts (records each) | connections to the backend | Envoy pending overflows |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &h in hosts.iter().filter(|h| **h != Host::NoFilter) {
        let Some(shape) = h.shape() else { continue };
        let backend = RealBackend::start_with(&["--log-level", "warn"])
            .await
            .context("start the real backend")?;
        let running = start_at(
            h,
            ctx.servers.upstream,
            backend.addr(),
            &filter_config("record_only"),
        )
        .await?;
        let port = backend.addr().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.extend(connections_to(port));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                seen.extend(connections_to(port));
                seen.len()
            })
        };
        let run = drive(
            running.addr(),
            &request(size),
            size,
            a.concurrency,
            Duration::ZERO,
            Until::Time(Duration::from_secs_f64(a.seconds + a.warmup)),
        )
        .await?;
        // Every record ends as sent, dropped or failed; wait for the last ones.
        let ended = |c: &std::collections::BTreeMap<String, u64>| -> u64 {
            ["records_sent", "records_dropped", "record_failures"]
                .iter()
                .map(|k| c.get(*k).copied().unwrap_or(0))
                .sum()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut c = running.counters(shape).await?;
        while ended(&c) < run.requests && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c = running.counters(shape).await?;
        }
        stop.store(true, Ordering::Relaxed);
        let connections = sampler.await?;
        let stats = running.envoy.stats().await?;
        let overflow = format!("cluster.{BACKEND_CLUSTER}.upstream_rq_pending_overflow");
        let overflows = match running.sidecar {
            Some(_) => "–".to_string(),
            None => stats.get(&overflow).copied().unwrap_or(0).to_string(),
        };
        let metrics = backend_metrics(&backend).await?;
        let stored = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("backend_recorded_total")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64);
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        let lost = run.requests.saturating_sub(stored);
        eprintln!(
            "real {}: {} requests, {} sent, {} stored, {connections} connections",
            h.key(),
            run.requests,
            get("records_sent"),
            stored
        );
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {stored} | {lost} ({:.2}%) | {} ({:.1}) | {connections} | {overflows} |",
            h.key(),
            run.rps,
            run.requests,
            get("records_sent"),
            get("records_dropped"),
            get("record_failures"),
            100.0 * lost as f64 / run.requests.max(1) as f64,
            get("record_batches"),
            get("records_sent") as f64 / get("record_batches").max(1) as f64,
        );
    }
    let _ = write!(
        t,
        "\nThe real `backend` (release build, group commit) as the record peer, `mode: record_only`, every request a miss recorded, 1 KiB request and response bodies, {} connections for {} s, one run per host. *Lost* is requests minus recordings stored; *record callouts* is `record_batches` (one `POST /v1/traces` each, records batched as one OTLP `TracesData`); *connections* counts the distinct connections to the backend seen during the run (Envoy's, or the sidecar's own). Measured {}.\n",
        a.concurrency,
        a.seconds + a.warmup,
        report::today()
    );
    Ok(t)
}

async fn backend_metrics(backend: &RealBackend) -> Result<String> {
    let r = testbed::raw::send(
        backend.addr(),
        &testbed::raw::RawRequest::new("GET", "/metrics"),
        Duration::from_secs(10),
    )
    .await?;
    Ok(r.body_str())
}

async fn memory_table(ctx: &Ctx, hosts: &[Host]) -> Result<String> {
    let a = &ctx.args;
    let mut t = String::from(
        "| host | body | RSS after first | RSS after all | growth | peak RSS after first | peak RSS after all |\n|---|---|---|---|---|---|---|\n",
    );
    for &h in hosts {
        // The question is a wasm VM's memory over many large requests.
        if h != Host::WasmHold {
            continue;
        }
        let size = a.mem_size;
        ctx.servers.set(Path::Miss, size);
        let mut running = start(h, &ctx.servers, &filter_config("record_and_inject")).await?;
        let pid = running.envoy_pid();
        let req = request(size);
        let addr = running.addr();
        let c = a.concurrency;
        let r1 = drive(
            addr,
            &req,
            size,
            c,
            Duration::ZERO,
            Until::Requests(a.mem_first),
        )
        .await?;
        let (rss1, hwm1) = (status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?);
        let rest = a.mem_total.saturating_sub(a.mem_first);
        let r2 = drive(addr, &req, size, c, Duration::ZERO, Until::Requests(rest)).await?;
        let (rss2, hwm2) = (status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?);
        drop(running);
        eprintln!(
            "memory {}: {} + {} requests ({} + {} errors): RSS {rss1} -> {rss2} KiB",
            h.key(),
            r1.requests,
            r2.requests,
            r1.errors,
            r2.errors
        );
        let _ = writeln!(
            t,
            "| {} | {} | {} ({} req) | {} ({} req) | {:+.1} MiB | {} | {} |",
            h.key(),
            size_name(size),
            mib(rss1 as f64),
            r1.requests,
            mib(rss2 as f64),
            r1.requests + r2.requests,
            (rss2 as f64 - rss1 as f64) / 1024.0,
            mib(hwm1 as f64),
            mib(hwm2 as f64),
        );
    }
    let _ = write!(
        t,
        "\nOne Envoy per host, miss path (the request and the response are both buffered and recorded), {} connections. Measured {}.\n",
        a.concurrency,
        report::today()
    );
    Ok(t)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Before the runtime starts a thread: it sets environment variables.
    bench::hosts::prepare_optimized_hosts()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(mut args: Args) -> Result<()> {
    args.smoke |= bench::smoke();
    if args.smoke {
        args.seconds = 0.3;
        args.warmup = 0.1;
        args.repeat = 1;
        args.sizes = vec![1024];
        args.paths = vec!["miss".into(), "hit".into()];
        args.record_sizes = vec![1024];
        args.mem_first = 20;
        args.mem_total = 50;
        args.mem_size = 64 * 1024;
        args.concurrency = args.concurrency.min(4);
    }
    let ctx = Ctx {
        servers: Servers::start()?,
        args,
    };
    let hosts = Host::selected();
    let skip = |part: &str| ctx.args.skip.iter().any(|s| s == part);
    let readme = report::readme();
    let write = |name: &str, body: &str| -> Result<()> {
        if ctx.args.smoke {
            println!("{body}");
            Ok(())
        } else {
            report::write_section(&readme, name, body)
        }
    };
    if !skip("load") {
        let t = load_table(&ctx, &hosts).await?;
        // The default mode's table at the default concurrency is `load`; another mode's goes to
        // `load-<mode>`, another concurrency's to `load-c<n>` (`load-<mode>-c<n>`).
        let mut section = match ctx.args.mode.as_str() {
            "record_and_inject" => "load".to_string(),
            mode => format!("load-{mode}"),
        };
        if ctx.args.concurrency != DEFAULT_CONCURRENCY {
            section = format!("{section}-c{}", ctx.args.concurrency);
        }
        write(&section, &t)?;
    }
    if !skip("record") {
        let t = record_table(&ctx, &hosts).await?;
        write("record", &t)?;
    }
    if !skip("memory") {
        let t = memory_table(&ctx, &hosts).await?;
        write("memory", &t)?;
    }
    if !skip("real") {
        let t = real_table(&ctx, &hosts).await?;
        write("real", &t)?;
    }
    if !ctx.args.smoke {
        report::write_section(&readme, "machine", &report::machine())?;
    }
    Ok(())
}
