//! Through Envoy: sequential request latency through a real Envoy (one worker) for every host the
//! testbed can run, against Envoy without the filter measured in the same run, on the miss path
//! (lookup 404, upstream 200, record sent) and the hit path, for each body size.
//! `cargo bench -p bench --bench envoy`; `BENCH_HOSTS=wasm-hold` narrows the hosts.

use anyhow::{bail, Context as _, Result};
use bench::hosts::{check, filter_config, request, start, Host};
use bench::plot::{self, Panel, Series};
use bench::report::{self, criterion_mean_ns};
use bench::servers::Servers;
use bench::{size_name, Path, SIZES};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use testbed::raw::RawConnection;

fn main() -> Result<()> {
    let smoke = bench::smoke();
    let mut c = Criterion::default()
        .output_directory(&report::criterion_dir()?)
        .configure_from_args();
    let sizes: Vec<usize> = if smoke { vec![1024] } else { SIZES.to_vec() };
    if smoke {
        c = c
            .warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(200))
            .sample_size(10);
    }
    let listing = std::env::args().any(|a| a == "--list");
    if !listing {
        bench::hosts::prepare_optimized_hosts()?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let servers = Servers::start()?;
    let hosts = Host::selected();
    let mut skipped: Vec<(Host, Path, usize, String)> = Vec::new();
    for &host in &hosts {
        if listing {
            break;
        }
        let running = rt
            .block_on(start(host, &servers, &filter_config("record_and_inject")))
            .with_context(|| format!("start Envoy for {}", host.key()))?;
        let addr = running.addr();
        for path in [Path::Miss, Path::Hit] {
            let mut g = c.benchmark_group(format!("envoy-{}", path.name()));
            for &size in &sizes {
                servers.set(path, size);
                let req = request(size);
                let mut conn = rt.block_on(RawConnection::connect(addr))?;
                let before = servers.seen();
                let first = rt.block_on(conn.round_trip(&req))?;
                if let Err(e) = check(host, path, size, &first) {
                    // Not this path for this host and size (e.g. a body at Envoy's buffer limit):
                    // no number rather than a number for something else.
                    eprintln!("skipped {} {} {size}: {e:#}", host.key(), path.name());
                    skipped.push((host, path, size, format!("{e:#}")));
                    continue;
                }
                if size > 0 {
                    g.throughput(Throughput::Bytes(size as u64));
                }
                g.bench_with_input(BenchmarkId::new(host.key(), size), &size, |b, _| {
                    b.iter(|| match rt.block_on(conn.round_trip(&req)) {
                        Ok(r) if r.status == 200 && r.body.len() == size => r.body.len(),
                        Ok(r) => panic!(
                            "{}: status {} with {} bytes",
                            host.key(),
                            r.status,
                            r.body.len()
                        ),
                        Err(e) => panic!("{}: {e:#}", host.key()),
                    })
                });
                // Let the last records land, then check the path really was the one measured.
                std::thread::sleep(Duration::from_millis(200));
                let seen = servers.seen();
                let filtered = host != Host::NoFilter;
                if filtered && seen.lookups == before.lookups {
                    bail!("{}: no lookup reached the backend", host.key());
                }
                if filtered && path == Path::Miss && seen.records == before.records {
                    bail!("{}: the miss path sent no record", host.key());
                }
                if filtered && path == Path::Hit && seen.upstream_served != before.upstream_served {
                    bail!("{}: the hit path reached the upstream", host.key());
                }
            }
            g.finish();
        }
        drop(running);
    }
    c.final_summary();
    if !smoke && !listing {
        write_results(&hosts, &skipped)?;
    }
    Ok(())
}

fn write_results(hosts: &[Host], skipped: &[(Host, Path, usize, String)]) -> Result<()> {
    let dir = report::criterion_dir()?;
    let mean = |path: Path, host: Host, size: usize| {
        if skipped
            .iter()
            .any(|s| s.0 == host && s.1 == path && s.2 == size)
        {
            return None;
        }
        criterion_mean_ns(
            &dir,
            &format!("envoy-{}", path.name()),
            host.key(),
            &size.to_string(),
        )
    };
    let mut t = String::from("| path | body |");
    for h in hosts {
        t.push_str(&format!(" {} |", h.key()));
    }
    t.push_str("\n|---|---|");
    for _ in hosts {
        t.push_str("---|");
    }
    t.push('\n');
    let mut panels = Vec::new();
    for path in [Path::Miss, Path::Hit] {
        let mut series: Vec<Series> = hosts
            .iter()
            .map(|&h| Series {
                name: h.key().to_string(),
                color: plot::color(h),
                points: Vec::new(),
            })
            .collect();
        for (i, &size) in SIZES.iter().enumerate() {
            let Some(base) = mean(path, Host::NoFilter, size) else {
                continue;
            };
            t.push_str(&format!("| {} | {} |", path.name(), size_name(size)));
            for (h, s) in hosts.iter().zip(series.iter_mut()) {
                match mean(path, *h, size) {
                    Some(ns) if *h == Host::NoFilter => {
                        t.push_str(&format!(" {} |", report::time(ns)));
                        s.points.push((i, 1.0));
                    }
                    Some(ns) => {
                        t.push_str(&format!(
                            " {} ({}) |",
                            report::time(ns),
                            report::ratio(ns / base)
                        ));
                        s.points.push((i, ns / base));
                    }
                    None => t.push_str(" – |"),
                }
            }
            t.push('\n');
        }
        panels.push(Panel {
            title: format!("{} path", path.name()),
            series,
        });
    }
    let missing: Vec<&str> = Host::missing().iter().map(|h| h.key()).collect();
    t.push_str(&format!(
        "\nMean latency of one request, sequential on one keep-alive connection (criterion means), and in parentheses the ratio to no-filter from the same run. Measured {}.",
        report::today()
    ));
    if !missing.is_empty() {
        t.push_str(&format!(
            " Not measured (no testbed shape yet): {}.",
            missing.join(", ")
        ));
    }
    t.push('\n');
    for (h, p, size, why) in skipped {
        t.push_str(&format!(
            "\n- {} {} {}: not measured, the first request did not take that path: {}",
            h.key(),
            p.name(),
            size_name(*size),
            why.lines().next().unwrap_or_default()
        ));
    }
    if !skipped.is_empty() {
        t.push('\n');
    }
    report::write_section(&report::readme(), "envoy", &t)?;
    let labels: Vec<String> = SIZES.iter().map(|&s| size_name(s)).collect();
    plot::draw(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ratio-by-body-size.png"),
        "Latency through Envoy, ratio to no filter",
        &labels,
        &panels,
    )?;
    report::write_section(&report::readme(), "machine", &report::machine())
}
