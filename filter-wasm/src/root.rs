//! The root context: configuration, counters, sending the engine's records, and the timers the
//! engine asks for (a request held past its deadline).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use filter_core::{Config, Engine, Node, RecordResult, Services};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::abi;
use crate::host::{dispatch, log_warn, Envoy};
use crate::http::{Flow, Http};
use crate::metrics::EnvoyCounters;

/// What the root context shares with the streams it creates. (Records go through the engine's
/// queue, [`filter_core::RecordQueue`], and are sent from the root context so they outlive the
/// stream.)
#[derive(Default)]
pub struct Shared {
    /// Streams with a timer (the engine's hold deadline), by context id (checked every tick).
    pub held: RefCell<BTreeMap<u32, Weak<RefCell<Flow>>>>,
}

/// One per plugin configuration (and worker thread).
pub struct Root {
    context_id: u32,
    engine: Option<Arc<Engine>>,
    shared: Rc<Shared>,
    /// Record callouts in flight: callout token → the queue's ticket.
    in_flight: BTreeMap<u32, u64>,
}

impl Root {
    pub fn new(context_id: u32) -> Root {
        Root {
            context_id,
            engine: None,
            shared: Rc::new(Shared::default()),
            in_flight: BTreeMap::new(),
        }
    }

    /// Sends what the engine's record queue hands out (it bounds how many are in flight).
    fn send_records(&mut self) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        while let Some(out) = engine.records().next() {
            match dispatch(&out.callout) {
                Ok(token) => {
                    self.in_flight.insert(token, out.ticket);
                }
                Err(why) => {
                    log_warn(&format!(
                        "record to cluster {:?} not sent: {why}",
                        out.callout.cluster
                    ));
                    engine.records().finish(out.ticket, RecordResult::Failed);
                }
            }
        }
    }

    /// Fires the timer of every request whose engine-given deadline has passed.
    fn fire_timers(&mut self) {
        let now = crate::now_ms();
        let mut due = Vec::new();
        self.shared.held.borrow_mut().retain(|id, weak| {
            let Some(flow) = weak.upgrade() else {
                return false;
            };
            let Ok(flow) = flow.try_borrow() else {
                return true;
            };
            match flow.deadline() {
                None => false,
                Some(at) => {
                    if now >= at {
                        due.push(*id);
                    }
                    true
                }
            }
        });
        for id in due {
            let flow = self.shared.held.borrow().get(&id).and_then(Weak::upgrade);
            if let Some(flow) = flow {
                if abi::set_effective_context(id).is_ok() {
                    if let Ok(mut flow) = flow.try_borrow_mut() {
                        flow.on_timer(&mut Envoy);
                        if flow.deadline().is_none() {
                            self.shared.held.borrow_mut().remove(&id);
                        }
                    }
                }
            }
        }
        let _ = abi::set_effective_context(self.context_id);
    }
}

fn property(path: &[&str]) -> Option<String> {
    abi::property(path)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .filter(|s| !s.is_empty())
}

fn seed() -> u64 {
    match crate::abi::random_u64() {
        Ok(seed) => seed,
        Err(why) => {
            // Never expected on Envoy (it always provides random_get); ids then still differ
            // between streams but are predictable.
            log_warn(&format!(
                "transparent-cache: no random source ({why}); span ids are derived from the clock"
            ));
            crate::now_nanos() ^ 0x5851_f42d_4c95_7f2d
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(ticket) = self.in_flight.remove(&token_id) else {
            return;
        };
        let status = abi::header_value(abi::CALL_RESPONSE_HEADERS, ":status")
            .ok()
            .flatten()
            .and_then(|s| filter_core::http::parse_status(&s));
        if let Some(engine) = &self.engine {
            let result = status.map_or(RecordResult::Failed, RecordResult::Status);
            engine.records().finish(ticket, result);
        }
        // Room for more: do not wait for the next tick.
        self.send_records();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let raw = abi::buffer(abi::PLUGIN_CONFIGURATION, 0, plugin_configuration_size)
            .unwrap_or_default();
        let raw = if raw.iter().all(u8::is_ascii_whitespace) {
            b"{}".to_vec()
        } else {
            raw
        };
        let config = match Config::from_json(&raw) {
            Ok(c) => c,
            Err(e) => {
                abi::log(
                    abi::LOG_ERROR,
                    &format!("transparent-cache: rejected plugin configuration: {e}"),
                );
                return false;
            }
        };
        let node = Node {
            workload_name: property(&["node", "metadata", "WORKLOAD_NAME"]),
            namespace: property(&["node", "metadata", "NAMESPACE"]),
            name: property(&["node", "metadata", "NAME"]),
        };
        let engine = Engine::new(
            config,
            &node,
            Services {
                metrics: Arc::new(EnvoyCounters::define()),
                clock: Box::new(crate::now_nanos),
                seed: seed(),
            },
        );
        self.engine = Some(Arc::new(engine));
        if let Err(e) = abi::set_tick_period(crate::TICK_MS as u32) {
            log_warn(&format!(
                "transparent-cache: no tick ({e}): records and timers will not run"
            ));
        }
        true
    }

    fn on_tick(&mut self) {
        self.send_records();
        self.fire_timers();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(
            context_id,
            self.engine.clone(),
            self.shared.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
