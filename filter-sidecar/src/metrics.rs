//! `/metrics` in the Prometheus text format: the engine's counters (`filter_core::AtomicCounters`,
//! named `transparent_cache_<counter>_total`), the record queue and the sidecar's own counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use filter_core::{AtomicCounters, Counter};

use crate::records::RecordQueue;
use crate::service::SidecarStats;

/// Everything `/metrics` shows.
#[derive(Clone)]
pub struct Exported {
    pub counters: Arc<AtomicCounters>,
    pub queue: RecordQueue,
    pub sidecar: Arc<SidecarStats>,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

impl Exported {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (c, v) in self.counters.snapshot() {
            let name = format!("transparent_cache_{}_total", c.name());
            metric(&mut out, &name, "counter", c.help(), v);
        }
        let q = &self.queue;
        metric(
            &mut out,
            "transparent_cache_record_queue_depth",
            "gauge",
            "Records waiting in the queue or being sent.",
            q.depth(),
        );
        metric(
            &mut out,
            "transparent_cache_record_queue_capacity",
            "gauge",
            "Records the queue holds before it drops.",
            q.capacity(),
        );
        let s = &self.sidecar;
        metric(
            &mut out,
            "transparent_cache_sidecar_streams_total",
            "counter",
            "ext_proc streams opened by Envoy.",
            s.streams.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "transparent_cache_sidecar_streams_active",
            "gauge",
            "ext_proc streams open now.",
            s.streams_active.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "transparent_cache_sidecar_request_body_incomplete_total",
            "counter",
            "Requests passed through because their body reached the sidecar incomplete (Envoy buffer limit or trailers).",
            s.request_body_incomplete.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "transparent_cache_sidecar_streams_abandoned_total",
            "counter",
            "ext_proc streams Envoy ended before the exchange was over (client gone, timeout).",
            s.streams_abandoned.load(Ordering::Relaxed),
        );
        out
    }
}

/// Parses `/metrics` text back into the engine's counter names (for tests and tools).
pub fn parse_engine_counters(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(short) = name
            .strip_prefix("transparent_cache_")
            .and_then(|n| n.strip_suffix("_total"))
        else {
            continue;
        };
        if Counter::ALL.iter().any(|c| c.name() == short) {
            if let Ok(v) = value.parse() {
                out.insert(short.to_string(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::Metrics as _;

    #[test]
    fn renders_every_engine_counter_and_the_queue_and_parses_back() {
        let counters = Arc::new(AtomicCounters::default());
        counters.add(Counter::Hits, 3);
        let e = Exported {
            counters,
            queue: crate::records::RecordQueue::new(Arc::new(filter_core::Engine::new(
                filter_core::Config::default(),
                &filter_core::Node::default(),
                filter_core::Services {
                    metrics: Arc::new(AtomicCounters::default()),
                    clock: Box::new(|| 0),
                    seed: 1,
                },
            ))),
            sidecar: Arc::new(SidecarStats::default()),
        };
        let text = e.render();
        assert!(text.contains(
            "# TYPE transparent_cache_hits_total counter\ntransparent_cache_hits_total 3\n"
        ));
        assert!(text.contains("transparent_cache_record_queue_depth 0\n"));
        let parsed = parse_engine_counters(&text);
        assert_eq!(parsed.len(), Counter::ALL.len());
        assert_eq!(parsed["hits"], 3);
    }
}
