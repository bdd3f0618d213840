//! What the benches write: the machine they ran on, tables between marker comments in
//! `bench/README.md`, and criterion's estimates read back for those tables.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `bench/README.md`.
pub fn readme() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

/// Replaces what lies between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->` in
/// `file` with `body` (appending both markers at the end when they are missing).
pub fn write_section(file: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    let out = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(file, out).with_context(|| format!("write {}", file.display()))
}

fn first_line_with(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The machine, as a Markdown list: `nproc`, CPU model, memory, kernel, Envoy version.
pub fn machine() -> String {
    // The machine's CPUs, not this process's affinity (`make bench-load` pins the driver).
    let nproc = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get()));
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let mem = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|m| m.trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |s| s.trim().to_string());
    let envoy = envoy_version().unwrap_or_else(|e| format!("unknown ({e})"));
    format!(
        "- nproc: {nproc} (shared with other work while the benches ran)\n- CPU: {cpu}\n- memory: {mem}\n- kernel: Linux {kernel}\n- Envoy: {envoy}, `--concurrency 1`\n- rustc: {}\n",
        option_env!("BENCH_RUSTC_VERSION").unwrap_or("see rust-toolchain.toml")
    )
}

fn envoy_version() -> Result<String> {
    let bin = testbed::envoy::binary()?;
    let out = std::process::Command::new(bin).arg("--version").output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    // "<path>/envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": the first a.b.c segment.
    let is_version = |p: &&str| {
        let parts: Vec<&str> = p.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
    };
    Ok(s.split(['/', ' ', '\n'])
        .find(is_version)
        .map_or_else(|| s.trim().to_string(), str::to_string))
}

/// The mean of a criterion benchmark in nanoseconds, read from
/// `<criterion dir>/<group>/<function>/<parameter>/new/estimates.json`.
pub fn criterion_mean_ns(dir: &Path, group: &str, function: &str, parameter: &str) -> Option<f64> {
    let path = dir
        .join(group)
        .join(function)
        .join(parameter)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.get("mean")?.get("point_estimate")?.as_f64()
}

/// Where criterion writes: `<target>/criterion`, or `<target>/criterion-smoke` for a smoke run
/// (which must never stand in for a full run's estimates).
pub fn criterion_dir() -> Result<PathBuf> {
    let name = if crate::smoke() {
        "criterion-smoke"
    } else {
        "criterion"
    };
    Ok(crate::target_dir()?.join(name))
}

/// `12.3 µs`, `4.56 ms`, ...
pub fn time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// `850 MiB/s`, `1.2 GiB/s`.
pub fn rate(bytes_per_s: f64) -> String {
    let mib = bytes_per_s / 1048576.0;
    if mib >= 1024.0 {
        format!("{:.2} GiB/s", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB/s")
    }
}

/// `1.23×`.
pub fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".into()
    }
}

/// Today in UTC (`YYYY-MM-DD`), from the system clock.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
