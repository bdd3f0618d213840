//! The transparent-cache filter over the safe API: feeds Envoy's events to a
//! [`filter_core::Stream`] and carries out its [`Decision`]s.
//!
//! - request: held (headers per `request_mode`, body in Envoy's buffer) while it is buffered and
//!   looked up; a hit is answered with `send_response`, a miss or an error resumes with
//!   `continue_decoding`;
//! - response: copied chunk by chunk as it passes, never delayed;
//! - records: queued on the config and sent from the main thread by a config-level callout (woken
//!   by the config scheduler), so they survive the end of their stream.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use filter_core::{
    Config, Counter, Decision, Engine, Flow, LookupReply, Metrics, Node, RecordResult, Response,
    Services, Stream,
};

use crate::sdk::{
    BodyStatus, CalloutResult, CounterId, CounterSink, EnvoyHttpFilter, EnvoyHttpFilterConfig,
    HeaderRef, HeadersStatus, HttpFilter, HttpFilterConfig, LogLevel, Scheduler, TrailersStatus,
};

/// The dynamic metadata the verdict ([`Stream::verdict`]) is written to: namespace and key
/// (`%DYNAMIC_METADATA(transparent_cache:verdict)%`; a tracer's `metadata` custom tag with kind
/// `request`, key `transparent_cache`, path `verdict`).
pub const VERDICT_METADATA_NAMESPACE: &str = "transparent_cache";
/// See [`VERDICT_METADATA_NAMESPACE`].
pub const VERDICT_METADATA_KEY: &str = "verdict";

/// The event id the watchdog commits to a stream's scheduler.
const HOLD_EXPIRED_EVENT: u64 = 1;

/// Streams holding their request, and when each must have made progress. A helper thread (started
/// when the first stream is watched, gone when none is left) wakes each stream whose deadline
/// passed through that stream's own scheduler, so the stream is released on its worker.
#[derive(Default)]
struct Watchdog {
    state: Mutex<WatchState>,
    wake: Condvar,
}

#[derive(Default)]
struct WatchState {
    /// Watched streams by id. An entry never outlives its filter (the filter removes it when
    /// dropped), so its scheduler clone is never the last one and Envoy's scheduler is always
    /// released on the stream's worker.
    entries: BTreeMap<u64, Watched>,
    /// Whether the helper thread is running.
    running: bool,
}

struct Watched {
    deadline: Instant,
    scheduler: Arc<dyn Scheduler>,
}

impl Watchdog {
    /// Watches (or moves the deadline of) stream `id`.
    fn watch(self: &Arc<Self>, id: u64, deadline: Instant, scheduler: Arc<dyn Scheduler>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.entries.insert(
            id,
            Watched {
                deadline,
                scheduler,
            },
        );
        if !st.running {
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("tc-hold-watchdog".into())
                .spawn(move || me.run());
            match started {
                Ok(_) => st.running = true,
                Err(e) => crate::abi::log(
                    LogLevel::Error,
                    &format!("transparent-cache: no hold watchdog thread: {e}"),
                ),
            }
        }
        self.wake.notify_one();
    }

    fn unwatch(&self, id: u64) {
        if let Ok(mut st) = self.state.lock() {
            if st.entries.remove(&id).is_some() && st.entries.is_empty() {
                self.wake.notify_one();
            }
        }
    }

    /// The helper thread: commits the scheduler of every stream past its deadline (dropping its
    /// entry: the stream re-arms it if it is still held), sleeps until the next deadline, and ends
    /// when nothing is watched.
    fn run(self: Arc<Self>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        loop {
            let now = Instant::now();
            st.entries.retain(|_, w| {
                if w.deadline <= now {
                    w.scheduler.commit(HOLD_EXPIRED_EVENT);
                    false
                } else {
                    true
                }
            });
            let Some(next) = st.entries.values().map(|w| w.deadline).min() else {
                st.running = false;
                return;
            };
            let wait = next.saturating_duration_since(now);
            st = match self.wake.wait_timeout(st, wait) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
    }
}

/// The engine's counters as Envoy counters (defined once per config, in [`Counter::ALL`] order).
struct EnvoyCounters {
    sink: Arc<dyn CounterSink>,
    ids: Vec<Option<CounterId>>,
}

impl Metrics for EnvoyCounters {
    fn add(&self, counter: Counter, n: u64) {
        if let Some(Some(id)) = self.ids.get(counter as usize) {
            self.sink.increment(*id, n);
        }
    }
}

/// What the config shares with its streams. Records go through the engine's queue
/// ([`filter_core::RecordQueue`]) and are sent from the main thread.
struct Shared {
    engine: Arc<Engine>,
    /// Record callouts in flight: Envoy's callout id → the queue's ticket (main thread only).
    in_flight: Mutex<BTreeMap<u64, u64>>,
    scheduler: Option<Box<dyn Scheduler>>,
    watchdog: Arc<Watchdog>,
    /// Ids of the streams (for the watchdog).
    next_stream: AtomicU64,
}

impl Shared {
    /// A stream queued a record in the engine's queue: wake the main thread to send it (it
    /// outlives the stream that made it). Without a scheduler nothing can send it: dropped.
    fn wake_sender(&self) {
        match &self.scheduler {
            Some(scheduler) => scheduler.commit(0),
            None => {
                while let Some(out) = self.engine.records().next() {
                    self.engine
                        .records()
                        .finish(out.ticket, RecordResult::Dropped);
                }
            }
        }
    }

    /// Main thread: sends what the queue hands out (it bounds how many are in flight).
    fn send_records<EC: EnvoyHttpFilterConfig>(&self, envoy: &mut EC) {
        let records = self.engine.records();
        while let Some(out) = records.next() {
            let c = &out.callout;
            match envoy.http_callout(&c.cluster, &c.header_pairs(), &c.body, c.timeout_ms) {
                Ok(id) => {
                    if let Ok(mut m) = self.in_flight.lock() {
                        m.insert(id, out.ticket);
                    }
                }
                Err(_) => records.finish(out.ticket, RecordResult::Failed),
            }
        }
    }
}

/// One `envoy.filters.http.dynamic_modules` filter config running the engine.
pub struct CacheConfig {
    shared: Arc<Shared>,
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Validates `config` (the filter's JSON) and builds the engine: what the config-new hook runs.
/// The error is the engine's message, for Envoy's log.
pub fn new_config<EC: EnvoyHttpFilterConfig>(
    envoy: &mut EC,
    config: &[u8],
) -> Result<CacheConfig, String> {
    let config = Config::from_json(config).map_err(|e| e.to_string())?;
    let ids = Counter::ALL
        .iter()
        .map(|c| envoy.define_counter(c.name()).ok())
        .collect();
    let metrics = Arc::new(EnvoyCounters {
        sink: envoy.counter_sink(),
        ids,
    });
    let engine = Arc::new(Engine::new(
        config,
        &Node::default(),
        Services {
            metrics,
            clock: Box::new(unix_nanos),
            seed: seed(),
        },
    ));
    let scheduler = envoy.new_scheduler();
    if scheduler.is_none() {
        envoy.log(
            LogLevel::Warn,
            "transparent-cache: no config scheduler; records will be dropped",
        );
    }
    Ok(CacheConfig {
        shared: Arc::new(Shared {
            engine,
            in_flight: Mutex::new(BTreeMap::new()),
            scheduler,
            watchdog: Arc::new(Watchdog::default()),
            next_stream: AtomicU64::new(1),
        }),
    })
}

impl CacheConfig {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// Records waiting for the main thread.
    pub fn queued_records(&self) -> usize {
        self.shared.engine.records().queued()
    }

    /// Streams the hold watchdog is watching.
    pub fn watched_streams(&self) -> usize {
        self.shared
            .watchdog
            .state
            .lock()
            .map_or(0, |s| s.entries.len())
    }
}

fn status_of(headers: &[HeaderRef<'_>]) -> Option<u16> {
    filter_core::http::parse_status(filter_core::http::header(headers, ":status")?)
}

impl<EC: EnvoyHttpFilterConfig, EHF: EnvoyHttpFilter + 'static> HttpFilterConfig<EC, EHF>
    for CacheConfig
{
    fn new_http_filter(&self, _envoy: &mut EHF) -> Box<dyn HttpFilter<EHF>> {
        Box::new(CacheFilter {
            stream: Stream::new(self.shared.engine.clone()),
            id: self.shared.next_stream.fetch_add(1, Ordering::Relaxed),
            shared: self.shared.clone(),
            lookup: None,
            deadline: None,
            scheduler: None,
        })
    }

    /// Main thread: sends the queued records as config-level callouts.
    fn on_scheduled(&self, envoy: &mut EC, _event_id: u64) {
        self.shared.send_records(envoy);
    }

    /// Main thread: a record callout ended.
    fn on_http_callout_done(
        &self,
        envoy: &mut EC,
        callout_id: u64,
        result: CalloutResult,
        headers: &[HeaderRef<'_>],
        _body: &[&[u8]],
    ) {
        let outcome = match (result, status_of(headers)) {
            (CalloutResult::Success, Some(s)) => RecordResult::Status(s),
            _ => RecordResult::Failed,
        };
        let ticket = self
            .shared
            .in_flight
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&callout_id));
        if let Some(ticket) = ticket {
            self.shared.engine.records().finish(ticket, outcome);
        }
        // Room for the next ones.
        self.shared.send_records(envoy);
    }
}

/// The lookup in flight.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    id: u64,
}

/// One stream.
pub struct CacheFilter {
    stream: Stream,
    /// This stream's id for the watchdog.
    id: u64,
    shared: Arc<Shared>,
    lookup: Option<Lookup>,
    /// The timer the engine asked for ([`filter_core::Effects::hold_deadline_ms`]), if any.
    deadline: Option<u64>,
    /// This stream's scheduler (made the first time a timer is needed), for the watchdog.
    scheduler: Option<Arc<dyn Scheduler>>,
}

impl Drop for CacheFilter {
    fn drop(&mut self) {
        self.shared.watchdog.unwatch(self.id);
    }
}

/// Serves a hit. Envoy's local reply drops the `content-type` of a reply without a body (e.g. a
/// hit served to HEAD), so such a response is sent as headers only, exactly as recorded.
fn send<EHF: EnvoyHttpFilter>(envoy: &mut EHF, r: &Response, details: &str) {
    let headers: Vec<HeaderRef<'_>> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    if r.body.is_empty()
        && headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
    {
        let status = r.status.to_string();
        let mut all: Vec<HeaderRef<'_>> = vec![(b":status", status.as_bytes())];
        all.extend(headers);
        envoy.send_response_headers(&all);
    } else {
        envoy.send_response(r.status, &headers, &r.body, details);
    }
}

impl CacheFilter {
    /// Arms (or moves) the watchdog for the engine's deadline, or stops watching.
    fn watch<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, deadline: Option<u64>) {
        self.deadline = deadline;
        let Some(at) = deadline else {
            self.shared.watchdog.unwatch(self.id);
            return;
        };
        if self.scheduler.is_none() {
            self.scheduler = envoy.new_scheduler().map(Arc::from);
        }
        if let Some(s) = &self.scheduler {
            let wait = Duration::from_millis(at.saturating_sub(unix_nanos() / 1_000_000));
            self.shared
                .watchdog
                .watch(self.id, Instant::now() + wait, s.clone());
        }
    }

    /// Carries out a decision's effects, in order; returns its flow (after a lookup that could
    /// not be made, the flow of the engine's answer to that).
    fn carry_out<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, mut d: Decision) -> Flow {
        loop {
            let e = d.effects;
            for (name, value) in &e.set_request_headers {
                if !envoy.set_request_header(name, value) {
                    crate::abi::log(
                        LogLevel::Warn,
                        &format!(
                            "transparent-cache: could not set the {} request header",
                            String::from_utf8_lossy(name)
                        ),
                    );
                }
            }
            if let Some(verdict) = &e.verdict {
                envoy.set_dynamic_metadata_string(
                    VERDICT_METADATA_NAMESPACE,
                    VERDICT_METADATA_KEY,
                    verdict,
                );
            }
            if e.hold_deadline_ms != self.deadline {
                self.watch(envoy, e.hold_deadline_ms);
            }
            if let Some(reply) = &e.reply {
                send(envoy, &reply.response, reply.details);
            }
            if e.record_queued {
                self.shared.wake_sender();
            }
            let Some(c) = &e.lookup else {
                return d.flow;
            };
            match envoy.http_callout(&c.cluster, &c.header_pairs(), &c.body, c.timeout_ms) {
                Ok(id) => {
                    self.lookup = Some(Lookup { id });
                    return d.flow;
                }
                Err(_) => d = self.stream.on_lookup_reply(None),
            }
        }
    }

    /// Carries out a decision made outside the request events (lookup answer, watchdog).
    fn carry_out_async<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, d: Decision) {
        if self.carry_out(envoy, d) == Flow::Release {
            self.lookup = None;
            envoy.continue_decoding();
        }
    }

    /// Whether Envoy keeps the request (`true`) after a request event's decision.
    fn request_event<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, d: Decision) -> bool {
        matches!(self.carry_out(envoy, d), Flow::Hold | Flow::Stop)
    }
}

impl<EHF: EnvoyHttpFilter> HttpFilter<EHF> for CacheFilter {
    fn on_request_headers(&mut self, envoy: &mut EHF, end_of_stream: bool) -> HeadersStatus {
        let headers = envoy.request_headers();
        let d = self.stream.on_request_headers(headers, end_of_stream);
        if self.request_event(envoy, d) {
            HeadersStatus::StopIteration
        } else {
            HeadersStatus::Continue
        }
    }

    fn on_request_body(&mut self, envoy: &mut EHF, end_of_stream: bool) -> BodyStatus {
        if self.stream.is_finished() && self.deadline.is_none() {
            return BodyStatus::Continue;
        }
        // One engine event per slice of the frame; the last one's flow decides.
        let chunks: Vec<Vec<u8>> = envoy
            .received_request_body()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        let mut hold = false;
        if chunks.is_empty() {
            let d = self.stream.on_request_body(&[], end_of_stream);
            hold = self.request_event(envoy, d);
        }
        let n = chunks.len();
        for (i, chunk) in chunks.iter().enumerate() {
            let d = self
                .stream
                .on_request_body(chunk, end_of_stream && i + 1 == n);
            hold = self.request_event(envoy, d);
        }
        if hold {
            BodyStatus::StopIterationAndBuffer
        } else {
            BodyStatus::Continue
        }
    }

    fn on_request_trailers(&mut self, envoy: &mut EHF) -> TrailersStatus {
        let d = self.stream.on_request_trailers();
        if self.request_event(envoy, d) {
            TrailersStatus::StopIteration
        } else {
            TrailersStatus::Continue
        }
    }

    fn on_response_headers(&mut self, envoy: &mut EHF, end_of_stream: bool) -> HeadersStatus {
        if self.stream.is_finished() {
            return HeadersStatus::Continue;
        }
        let headers = envoy.response_headers();
        let status = filter_core::http::status(&headers).unwrap_or(0);
        let d = self
            .stream
            .on_response_headers(status, headers, end_of_stream);
        self.carry_out(envoy, d);
        HeadersStatus::Continue
    }

    fn on_response_body(&mut self, envoy: &mut EHF, end_of_stream: bool) -> BodyStatus {
        if self.stream.is_finished() {
            return BodyStatus::Continue;
        }
        let decisions: Vec<Decision> = {
            let chunks = envoy.received_response_body();
            let n = chunks.len();
            if n == 0 {
                vec![self.stream.on_response_body(&[], end_of_stream)]
            } else {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| self.stream.on_response_body(c, end_of_stream && i + 1 == n))
                    .collect()
            }
        };
        for d in decisions {
            self.carry_out(envoy, d);
        }
        BodyStatus::Continue
    }

    fn on_response_trailers(&mut self, envoy: &mut EHF) -> TrailersStatus {
        let d = self.stream.on_response_trailers();
        self.carry_out(envoy, d);
        TrailersStatus::Continue
    }

    /// The watchdog fired at the engine's deadline: the engine decides (a request held past it
    /// without progress is released like a lookup timeout, or answered 502 in strict mode).
    fn on_scheduled(&mut self, envoy: &mut EHF, event_id: u64) {
        if event_id != HOLD_EXPIRED_EVENT || self.deadline.is_none() {
            return;
        }
        let d = self.stream.on_timer();
        if d.flow != Flow::Hold {
            let limit = self.stream.hold_limit_ms();
            crate::abi::log(
                LogLevel::Warn,
                &format!(
                    "transparent-cache: request held over {limit} ms without progress; released"
                ),
            );
        }
        self.carry_out_async(envoy, d);
    }

    fn on_http_callout_done(
        &mut self,
        envoy: &mut EHF,
        callout_id: u64,
        result: CalloutResult,
        headers: &[HeaderRef<'_>],
        body: &[&[u8]],
    ) {
        if self.lookup.take_if(|l| l.id == callout_id).is_none() {
            return;
        }
        // The codec needs the answer contiguous: borrow Envoy's slice when there is one, copy
        // only when the answer came in several.
        let joined;
        let answer: &[u8] = match body {
            [] => &[],
            [one] => one,
            many => {
                joined = many.concat();
                &joined
            }
        };
        let reply = (result == CalloutResult::Success).then(|| LookupReply {
            status: filter_core::http::header(headers, ":status"),
            content_type: filter_core::http::header(headers, "content-type"),
            body: answer,
        });
        let d = self.stream.on_lookup_reply(reply);
        self.carry_out_async(envoy, d);
    }

    fn on_stream_complete(&mut self, envoy: &mut EHF) {
        // The stream is over: an unfinished exchange (a reset) is dropped, unrecorded.
        let d = self.stream.on_reset();
        self.carry_out(envoy, d);
    }
}

#[cfg(test)]
mod tests;
