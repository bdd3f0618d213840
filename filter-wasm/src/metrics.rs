//! The engine's counters as Envoy counters (`define_metric` / `increment_metric`).

use filter_core::{Counter, Metrics};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Envoy metric ids, indexed by `Counter as usize`; `None` where the host refused to define one.
#[derive(Debug, Default)]
pub struct EnvoyCounters {
    ids: Vec<Option<u32>>,
}

impl EnvoyCounters {
    /// Defines `transparent_cache.<name>` for every [`Counter`] (Envoy prefixes `wasmcustom.`).
    /// Defining a name twice returns the same Envoy counter, so every plugin instance in the
    /// process adds to the same stats.
    pub fn define() -> EnvoyCounters {
        EnvoyCounters {
            ids: Counter::ALL
                .iter()
                .map(|c| {
                    let name = format!("{}.{}", crate::STAT_PREFIX, c.name());
                    hostcalls::define_metric(MetricType::Counter, &name).ok()
                })
                .collect(),
        }
    }
}

impl Metrics for EnvoyCounters {
    fn add(&self, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(Some(id)) = self.ids.get(counter as usize) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
