//! Engine level: one request's full engine work, natively, as wasm under wasmtime, and beside them
//! the floor (copying and base64-encoding the same bytes). `cargo bench -p bench --bench engine`.
//!
//! - miss: request headers and body chunks in, inject span encoded, 404 in, response headers and
//!   body chunks in, extract span encoded (request and response bodies of the same size);
//! - hit: request headers and body chunks in, inject span encoded, a 200 answer carrying a recorded
//!   response of the same size decoded into the response to serve.
//!
//! Bodies are binary, so every body in a span is base64. Floor: each body copied in once and
//! base64-encoded once: miss = 2 copies + 2 encodings (the request's encoding serves both spans);
//! hit = 2 copies (request in, served body out) + 1 encoding.
//! malloc is set to keep freed memory as Envoy's tcmalloc does ([`bench::keep_freed_memory`]).

use base64::Engine as _;
use bench::guest::WasmSession;
use bench::report::{self, criterion_mean_ns};
use bench::{body, hit_answer, size_name, Path, SIZES};
use bench_guest::Session;
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn floor(path: Path, req: &[u8], resp: &[u8]) -> usize {
    match path {
        Path::Miss => {
            let r = req.to_vec();
            let inject = b64(&r);
            let s = resp.to_vec();
            // The request's encoding is shared by both spans.
            let extract = inject.len() + b64(&s).len();
            inject.len() + extract
        }
        Path::Hit => {
            let r = req.to_vec();
            let inject = b64(&r);
            let served = resp.to_vec();
            inject.len() + served.len()
        }
    }
}

fn native(s: &mut Session, path: Path, req: &[u8], answer: &[u8], resp: &[u8]) -> usize {
    let inject = s.request(req);
    match path {
        Path::Miss => {
            s.answer(404, &[]);
            inject.len() + s.response(resp).len()
        }
        Path::Hit => inject.len() + s.answer(200, answer).len(),
    }
}

fn wasm(s: &mut WasmSession, path: Path, req: &[u8], answer: &[u8], resp: &[u8]) -> usize {
    let mut run = || -> anyhow::Result<usize> {
        let inject = s.request(req)?;
        Ok(match path {
            Path::Miss => {
                s.answer(404, &[])?;
                inject.len() + s.response(resp)?.len()
            }
            Path::Hit => inject.len() + s.answer(200, answer)?.len(),
        })
    };
    match run() {
        Ok(n) => n,
        Err(e) => panic!("wasm guest: {e:#}"),
    }
}

const FUNCTIONS: [&str; 3] = ["native", "wasm", "floor"];

fn main() -> anyhow::Result<()> {
    bench::keep_freed_memory();
    let smoke = bench::smoke();
    let mut c = Criterion::default()
        .output_directory(&report::criterion_dir()?)
        .configure_from_args();
    if smoke {
        c = c
            .warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(200))
            .sample_size(10);
    }
    let module = bench::guest::build()?;
    let mut guest = WasmSession::load(&module)?;
    let mut session = Session::new();
    // A smoke run skips the largest size (a debug build takes seconds per megabyte).
    let sizes = if smoke { &SIZES[..3] } else { &SIZES[..] };
    for path in [Path::Miss, Path::Hit] {
        let mut g = c.benchmark_group(format!("engine-{}", path.name()));
        for &size in sizes {
            let data = body(size);
            let answer = hit_answer(&data);
            // The same work both ways, checked before it is timed.
            let n = native(&mut session, path, &data, &answer, &data);
            let w = wasm(&mut guest, path, &data, &answer, &data);
            assert_eq!(n, w, "native and wasm disagree ({} {size})", path.name());
            assert!(n > size, "the engine did not produce its spans");
            if size > 0 {
                g.throughput(Throughput::Bytes(size as u64));
            }
            g.bench_with_input(BenchmarkId::new("native", size), &size, |b, _| {
                b.iter(|| native(&mut session, path, black_box(&data), &answer, &data))
            });
            g.bench_with_input(BenchmarkId::new("wasm", size), &size, |b, _| {
                b.iter(|| wasm(&mut guest, path, black_box(&data), &answer, &data))
            });
            g.bench_with_input(BenchmarkId::new("floor", size), &size, |b, _| {
                b.iter(|| floor(path, black_box(&data), &data))
            });
        }
        g.finish();
    }
    c.final_summary();
    eprintln!(
        "wasm guest linear memory after the run: {} KiB",
        guest.memory_bytes() / 1024
    );
    if !smoke && std::env::args().all(|a| a != "--list") {
        write_table()?;
    }
    Ok(())
}

fn write_table() -> anyhow::Result<()> {
    let dir = report::criterion_dir()?;
    let mut t = String::from(
        "| path | body | native | wasm (wasmtime) | floor (copy + base64) | wasm ÷ native | native ÷ floor | native throughput | wasm throughput |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for path in [Path::Miss, Path::Hit] {
        for &size in &SIZES {
            let get = |f: &str| {
                criterion_mean_ns(
                    &dir,
                    &format!("engine-{}", path.name()),
                    f,
                    &size.to_string(),
                )
            };
            let [Some(n), Some(w), Some(f)] = FUNCTIONS.map(get) else {
                continue;
            };
            let thr = |ns: f64| {
                if size == 0 {
                    "–".to_string()
                } else {
                    report::rate(size as f64 / (ns / 1e9))
                }
            };
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                path.name(),
                size_name(size),
                report::time(n),
                report::time(w),
                report::time(f),
                report::ratio(w / n),
                report::ratio(n / f),
                thr(n),
                thr(w),
            ));
        }
    }
    t.push_str(&format!(
        "\nMeasured {} (criterion means; throughput is body bytes per second).\n",
        report::today()
    ));
    report::write_section(&report::readme(), "engine", &t)?;
    report::write_section(&report::readme(), "machine", &report::machine())
}
