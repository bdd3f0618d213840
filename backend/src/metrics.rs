//! Request counters and their Prometheus text form.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Stats;

/// Counters kept by the HTTP handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Extract spans stored.
    pub recorded: AtomicU64,
    /// Non-extract spans received and ignored.
    pub ignored_spans: AtomicU64,
    /// Lookups answered with a recording.
    pub hits: AtomicU64,
    /// Lookups answered 404.
    pub misses: AtomicU64,
    /// Requests answered with a 4xx (malformed, too large, unsupported encoding).
    pub bad_requests: AtomicU64,
    /// Recordings evicted to stay under the store cap.
    pub evicted: AtomicU64,
    /// Recordings replaced by a newer one with the same key (`retention.keep_per_key`).
    pub replaced: AtomicU64,
    /// Recordings deleted after their TTL (`retention.ttl_seconds`).
    pub expired: AtomicU64,
    /// Requests that failed inside the backend (5xx).
    pub errors: AtomicU64,
    /// Requests refused for a missing or wrong admin token or ingest key (401).
    pub unauthorized: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

impl Metrics {
    /// The Prometheus text exposition of the counters and the store's stats.
    pub fn render(&self, stats: &Stats) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        metric(
            &mut out,
            "backend_recordings",
            "gauge",
            "Recordings in the store.",
            stats.recordings,
        );
        metric(
            &mut out,
            "backend_store_bytes",
            "gauge",
            "Bytes of stored recordings.",
            stats.bytes,
        );
        metric(
            &mut out,
            "backend_store_file_bytes",
            "gauge",
            "Size of the database file.",
            stats.file_bytes,
        );
        metric(
            &mut out,
            "backend_commits_total",
            "counter",
            "Durable commits of recordings (each holds every recording that arrived meanwhile).",
            stats.commits,
        );
        metric(
            &mut out,
            "backend_recorded_total",
            "counter",
            "Extract spans stored.",
            get(&self.recorded),
        );
        metric(
            &mut out,
            "backend_ignored_spans_total",
            "counter",
            "Non-extract spans received and ignored.",
            get(&self.ignored_spans),
        );
        metric(
            &mut out,
            "backend_hits_total",
            "counter",
            "Lookups answered with a recording.",
            get(&self.hits),
        );
        metric(
            &mut out,
            "backend_misses_total",
            "counter",
            "Lookups answered 404.",
            get(&self.misses),
        );
        metric(
            &mut out,
            "backend_bad_requests_total",
            "counter",
            "Requests answered with a 4xx.",
            get(&self.bad_requests),
        );
        metric(
            &mut out,
            "backend_evicted_total",
            "counter",
            "Recordings evicted by the size cap.",
            get(&self.evicted),
        );
        metric(
            &mut out,
            "backend_replaced_total",
            "counter",
            "Recordings replaced by a newer one with the same match key.",
            get(&self.replaced),
        );
        metric(
            &mut out,
            "backend_expired_total",
            "counter",
            "Recordings deleted after their time-to-live.",
            get(&self.expired),
        );
        metric(
            &mut out,
            "backend_errors_total",
            "counter",
            "Requests that failed inside the backend.",
            get(&self.errors),
        );
        metric(
            &mut out,
            "backend_unauthorized_total",
            "counter",
            "Requests refused for a missing or wrong admin token or ingest key.",
            get(&self.unauthorized),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_stats() {
        let m = Metrics::default();
        add(&m.hits, 2);
        let text = m.render(&Stats {
            recordings: 3,
            bytes: 10,
            file_bytes: 0,
            commits: 4,
        });
        assert!(text.contains("\nbackend_hits_total 2\n"));
        assert!(text.contains("\nbackend_recordings 3\n"));
        assert!(text.contains("\nbackend_commits_total 4\n"));
        assert!(text.contains("# TYPE backend_store_bytes gauge\n"));
    }
}
