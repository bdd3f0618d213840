//! The engine's counters as Envoy counters (`proxy_define_metric` / `proxy_increment_metric`).

use filter_core::{Counter, Metrics};

use crate::abi;

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
                    abi::define_counter(&name).ok()
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
            let _ = abi::increment(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
