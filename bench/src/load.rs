//! A fixed-concurrency load driver: `concurrency` keep-alive connections, each sending the next
//! request as soon as the last answer is read, latencies in an HDR histogram, and Envoy's (and a
//! sidecar's) CPU time and peak memory read from `/proc`.

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::raw::{RawConnection, RawRequest};

/// When a load run stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long (timing starts after the warm-up).
    Time(Duration),
    /// After this many requests in all.
    Requests(u64),
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Drives `req` at `addr` with `concurrency` connections; every answer must be 200 with
/// `expect_len` body bytes (anything else counts as an error).
pub async fn drive(
    addr: SocketAddr,
    req: &RawRequest,
    expect_len: usize,
    concurrency: usize,
    warmup: Duration,
    until: Until,
) -> Result<Run> {
    if !warmup.is_zero() {
        run_clients(addr, req, expect_len, concurrency, Until::Time(warmup)).await?;
    }
    run_clients(addr, req, expect_len, concurrency, until).await
}

async fn run_clients(
    addr: SocketAddr,
    req: &RawRequest,
    expect_len: usize,
    concurrency: usize,
    until: Until,
) -> Result<Run> {
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match until {
        Until::Time(d) => Some(start + d),
        Until::Requests(_) => None,
    };
    let budget = match until {
        Until::Requests(n) => n,
        Until::Time(_) => u64::MAX,
    };
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let req = req.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            let mut conn: Option<RawConnection> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if sent.fetch_add(1, Ordering::Relaxed) >= budget {
                    break;
                }
                let t = Instant::now();
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(RawConnection::connect(addr).await?),
                };
                match c.round_trip(&req).await {
                    Ok(r) if r.status == 200 && r.body.len() == expect_len => {
                        hist.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h)?;
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    if hist.is_empty() {
        bail!("no request succeeded ({errors} errors)");
    }
    Ok(Run {
        requests: hist.len(),
        errors,
        seconds,
        rps: hist.len() as f64 / seconds,
        p50_us: hist.value_at_quantile(0.5) as f64,
        p99_us: hist.value_at_quantile(0.99) as f64,
    })
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), which ends at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = clock_ticks();
    Ok((ticks(14) + ticks(15)) as f64 / hz)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`: peak resident set; `VmRSS`: current).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|l| l.strip_prefix(':')) {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// Local ports of the established TCP connections (IPv4 and IPv6) whose remote port is `port`,
/// from `/proc/net/tcp*`: sampled often during a run, the distinct ports count the connections
/// opened to a server (say the backend) whoever opened them (Envoy or a sidecar).
pub fn connections_to(port: u16) -> std::collections::HashSet<u16> {
    let mut out = std::collections::HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let port_of = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            // 01: ESTABLISHED.
            if *state == "01" && port_of(remote) == Some(port) {
                if let Some(p) = port_of(local) {
                    out.insert(p);
                }
            }
        }
    }
    out
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_ok());
        assert!(status_kib(pid, "VmHWM").unwrap() > 0);
    }
}
