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
    Callout, Config, Counter, Decision, Engine, LookupReply, Metrics, Node, RecordResult, Response,
    Services, Stream,
};

use crate::sdk::{
    BodyStatus, CalloutResult, CounterId, CounterSink, EnvoyHttpFilter, EnvoyHttpFilterConfig,
    HeaderRef, HeadersStatus, HttpFilter, HttpFilterConfig, LogLevel, Scheduler, TrailersStatus,
};

/// How long past the lookup timeout a request may stay held without progress before the
/// watchdog releases it (as the wasm plugin's `HOLD_MARGIN_MS`).
pub const HOLD_MARGIN_MS: u64 = 1000;

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
    /// Offers a record to the engine's queue and wakes the main thread; it outlives the stream
    /// that made it.
    fn record(&self, callout: Callout) {
        let Some(scheduler) = &self.scheduler else {
            self.engine.records().push(callout);
            // Never sent without a scheduler: take it back out, counted as dropped.
            while let Some(out) = self.engine.records().next() {
                self.engine
                    .records()
                    .finish(out.ticket, RecordResult::Dropped);
            }
            return;
        };
        if self.engine.records().push(callout) {
            scheduler.commit(0);
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

fn header_of<'a>(headers: &[HeaderRef<'a>], name: &[u8]) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn status_of(headers: &[HeaderRef<'_>]) -> Option<u16> {
    filter_core::http::parse_status(header_of(headers, b":status")?)
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
            holding: false,
            held_since: None,
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
    /// The request is stopped in Envoy (headers and/or body held).
    holding: bool,
    /// Since when the request is held without progress (reset by every request event).
    held_since: Option<Instant>,
    /// This stream's scheduler (made the first time the request is held), for the watchdog.
    scheduler: Option<Arc<dyn Scheduler>>,
}

impl Drop for CacheFilter {
    fn drop(&mut self) {
        self.shared.watchdog.unwatch(self.id);
    }
}

/// The most telling of two decisions made for slices of one body frame: anything that changes
/// the stream beats `Continue`/`Hold`, and the later of two plain ones wins.
fn merge(a: Decision, b: Decision) -> Decision {
    match (&a, &b) {
        (Decision::Continue | Decision::Hold, _) => b,
        (_, Decision::Continue | Decision::Hold) => a,
        _ => b,
    }
}

/// Serves a hit. Envoy's local reply drops the `content-type` of a reply without a body (e.g. a
/// hit served to HEAD), so such a response is sent as headers only, exactly as recorded.
fn send<EHF: EnvoyHttpFilter>(envoy: &mut EHF, r: &Response) {
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
        envoy.send_response(r.status, &headers, &r.body, "transparent_cache_hit");
    }
}

impl CacheFilter {
    /// How long the request may stay held without progress: the lookup timeout plus
    /// [`HOLD_MARGIN_MS`].
    fn hold_limit(&self) -> Duration {
        let timeout = self.stream.engine().config().backend.lookup_timeout_ms;
        Duration::from_millis(timeout.saturating_add(HOLD_MARGIN_MS))
    }

    /// Writes the verdict to the stream's dynamic metadata when it changed.
    fn publish<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF) {
        if let Some(verdict) = self.stream.verdict_update() {
            envoy.set_dynamic_metadata_string(
                VERDICT_METADATA_NAMESPACE,
                VERDICT_METADATA_KEY,
                &verdict,
            );
        }
    }

    /// Answers locally, the verdict written first.
    fn serve<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, r: &Response) {
        self.publish(envoy);
        send(envoy, r);
    }

    /// After a request event: a held request is watched from now (progress resets its clock);
    /// a released one no longer.
    fn watch<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF) {
        if !self.holding || self.stream.is_finished() {
            self.unwatch();
            return;
        }
        let now = Instant::now();
        self.held_since = Some(now);
        self.arm(envoy, now + self.hold_limit());
    }

    fn arm<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, deadline: Instant) {
        if self.scheduler.is_none() {
            self.scheduler = envoy.new_scheduler().map(Arc::from);
        }
        if let Some(s) = &self.scheduler {
            self.shared.watchdog.watch(self.id, deadline, s.clone());
        }
    }

    fn unwatch(&mut self) {
        if self.held_since.take().is_some() {
            self.shared.watchdog.unwatch(self.id);
        }
    }

    /// Carries out a decision made inside a request event; returns whether Envoy must keep the
    /// request (true) or let it go on (false).
    fn act<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, mut d: Decision) -> bool {
        loop {
            match d {
                Decision::Continue => return self.holding,
                Decision::Hold => return true,
                Decision::Lookup(c) => {
                    match envoy.http_callout(&c.cluster, &c.header_pairs(), &c.body, c.timeout_ms) {
                        Ok(id) => {
                            self.lookup = Some(Lookup { id });
                            return true;
                        }
                        Err(_) => d = self.stream.on_lookup_reply(None),
                    }
                }
                Decision::Serve(r) => {
                    self.serve(envoy, &r);
                    return true;
                }
                Decision::Resume | Decision::PassThrough(_) => return false,
                Decision::Record(c) => {
                    self.shared.record(c);
                    return self.holding;
                }
            }
        }
    }

    fn request_event<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, d: Decision) -> bool {
        let hold = self.act(envoy, d);
        self.holding = hold;
        self.watch(envoy);
        self.publish(envoy);
        hold
    }

    /// Carries out a decision made outside the request events (lookup answer, watchdog): the
    /// request is answered or released, never left held.
    fn act_async<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, d: Decision) {
        match d {
            Decision::Serve(r) => {
                self.holding = false;
                self.unwatch();
                self.serve(envoy, &r);
            }
            Decision::Resume | Decision::PassThrough(_) => {
                self.holding = false;
                self.unwatch();
                self.publish(envoy);
                envoy.continue_decoding();
            }
            Decision::Record(c) => self.shared.record(c),
            Decision::Continue | Decision::Hold | Decision::Lookup(_) => {}
        }
        self.publish(envoy);
    }
}

impl<EHF: EnvoyHttpFilter> HttpFilter<EHF> for CacheFilter {
    fn on_request_headers(&mut self, envoy: &mut EHF, end_of_stream: bool) -> HeadersStatus {
        let headers = envoy.request_headers();
        let d = self.stream.on_request_headers(headers, end_of_stream);
        for (name, value) in self.stream.take_request_header_edits() {
            if !envoy.set_request_header(&name, &value) {
                crate::abi::log(
                    LogLevel::Warn,
                    &format!(
                        "transparent-cache: could not set the {} request header",
                        String::from_utf8_lossy(&name)
                    ),
                );
            }
        }
        if self.request_event(envoy, d) {
            HeadersStatus::StopIteration
        } else {
            HeadersStatus::Continue
        }
    }

    fn on_request_body(&mut self, envoy: &mut EHF, end_of_stream: bool) -> BodyStatus {
        if self.stream.is_finished() && !self.holding {
            return BodyStatus::Continue;
        }
        let d = {
            let chunks = envoy.received_request_body();
            let n = chunks.len();
            if n == 0 {
                self.stream.on_request_body(&[], end_of_stream)
            } else {
                let mut d = Decision::Continue;
                for (i, chunk) in chunks.iter().enumerate() {
                    let eos = end_of_stream && i + 1 == n;
                    d = merge(d, self.stream.on_request_body(chunk, eos));
                }
                d
            }
        };
        if self.request_event(envoy, d) {
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
        if let Decision::Record(c) = self
            .stream
            .on_response_headers(status, headers, end_of_stream)
        {
            self.shared.record(c);
        }
        self.publish(envoy);
        HeadersStatus::Continue
    }

    fn on_response_body(&mut self, envoy: &mut EHF, end_of_stream: bool) -> BodyStatus {
        if self.stream.is_finished() {
            return BodyStatus::Continue;
        }
        let mut record = None;
        {
            let chunks = envoy.received_response_body();
            let n = chunks.len();
            let decisions: Vec<Decision> = if n == 0 {
                vec![self.stream.on_response_body(&[], end_of_stream)]
            } else {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| self.stream.on_response_body(c, end_of_stream && i + 1 == n))
                    .collect()
            };
            for d in decisions {
                if let Decision::Record(c) = d {
                    record = Some(c);
                }
            }
        }
        if let Some(c) = record {
            self.shared.record(c);
        }
        self.publish(envoy);
        BodyStatus::Continue
    }

    fn on_response_trailers(&mut self, envoy: &mut EHF) -> TrailersStatus {
        if let Decision::Record(c) = self.stream.on_response_trailers() {
            self.shared.record(c);
        }
        self.publish(envoy);
        TrailersStatus::Continue
    }

    /// The watchdog: the request has been held past its limit without progress (e.g. the client
    /// never finished the body, or Envoy never delivered it). Handled like a lookup timeout
    /// (`lookup_errors_timeout`, verdict `error:timeout`): released, or the strict-mode 502.
    fn on_scheduled(&mut self, envoy: &mut EHF, event_id: u64) {
        if event_id != HOLD_EXPIRED_EVENT || !self.holding {
            return;
        }
        let Some(since) = self.held_since else {
            return;
        };
        let limit = self.hold_limit();
        if since.elapsed() < limit {
            // Progress since the watchdog looked: watch the new deadline.
            self.arm(envoy, since + limit);
            return;
        }
        crate::abi::log(
            LogLevel::Warn,
            &format!(
                "transparent-cache: request held over {} ms without progress; released",
                limit.as_millis()
            ),
        );
        self.held_since = None;
        self.lookup = None;
        let d = self.stream.on_hold_expired();
        self.act_async(envoy, d);
    }

    fn on_http_callout_done(
        &mut self,
        envoy: &mut EHF,
        callout_id: u64,
        result: CalloutResult,
        headers: &[HeaderRef<'_>],
        body: &[&[u8]],
    ) {
        let Some(lookup) = self.lookup else {
            return;
        };
        if lookup.id != callout_id {
            return;
        }
        self.lookup = None;
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
            status: header_of(headers, b":status"),
            content_type: header_of(headers, b"content-type"),
            body: answer,
        });
        let d = self.stream.on_lookup_reply(reply);
        self.act_async(envoy, d);
    }
}

#[cfg(test)]
mod tests;
