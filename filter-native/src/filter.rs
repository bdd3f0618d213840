//! The transparent-cache filter over the safe API: feeds Envoy's events to a
//! [`filter_core::Stream`] and carries out its [`Decision`]s.
//!
//! - request: held (headers per `request_mode`, body in Envoy's buffer) while it is buffered and
//!   looked up; a hit is answered with `send_response`, a miss or an error resumes with
//!   `continue_decoding`;
//! - response: copied chunk by chunk as it passes, never delayed;
//! - records: queued on the config and sent from the main thread by a config-level callout (woken
//!   by the config scheduler), so they survive the end of their stream.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use filter_core::{
    Callout, Config, Counter, Decision, Engine, LookupFailure, LookupResult, Metrics, Node,
    RecordResult, Response, Services, Stream,
};

use crate::sdk::{
    BodyStatus, CalloutResult, CounterId, CounterSink, EnvoyHttpFilter, EnvoyHttpFilterConfig,
    HeaderRef, HeadersStatus, HttpFilter, HttpFilterConfig, LogLevel, Scheduler, TrailersStatus,
};

/// Records waiting for the main thread; past this, new ones are dropped (and counted).
pub const MAX_QUEUED_RECORDS: usize = 1024;

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

/// What the config shares with its streams.
struct Shared {
    engine: Arc<Engine>,
    records: Mutex<VecDeque<Callout>>,
    scheduler: Option<Box<dyn Scheduler>>,
}

impl Shared {
    /// Queues a record for the main thread; it outlives the stream that made it.
    fn record(&self, callout: Callout) {
        let Some(scheduler) = &self.scheduler else {
            self.engine.on_record_result(RecordResult::Dropped);
            return;
        };
        let queued = match self.records.lock() {
            Ok(mut q) if q.len() < MAX_QUEUED_RECORDS => {
                q.push_back(callout);
                true
            }
            _ => false,
        };
        if queued {
            scheduler.commit(0);
        } else {
            self.engine.on_record_result(RecordResult::Dropped);
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
            records: Mutex::new(VecDeque::new()),
            scheduler,
        }),
    })
}

impl CacheConfig {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// Records waiting for the main thread.
    pub fn queued_records(&self) -> usize {
        self.shared.records.lock().map_or(0, |q| q.len())
    }
}

fn status_of(headers: &[HeaderRef<'_>]) -> Option<u16> {
    headers
        .iter()
        .find(|(n, _)| *n == b":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

impl<EC: EnvoyHttpFilterConfig, EHF: EnvoyHttpFilter + 'static> HttpFilterConfig<EC, EHF>
    for CacheConfig
{
    fn new_http_filter(&self, _envoy: &mut EHF) -> Box<dyn HttpFilter<EHF>> {
        Box::new(CacheFilter {
            stream: Stream::new(self.shared.engine.clone()),
            shared: self.shared.clone(),
            lookup: None,
            holding: false,
        })
    }

    /// Main thread: sends every queued record as a config-level callout.
    fn on_scheduled(&self, envoy: &mut EC, _event_id: u64) {
        let batch: Vec<Callout> = match self.shared.records.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => return,
        };
        for c in batch {
            let headers: Vec<(&str, &str)> = c
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            if envoy
                .http_callout(&c.cluster, &headers, &c.body, c.timeout_ms)
                .is_err()
            {
                self.shared.engine.on_record_result(RecordResult::Failed);
            }
        }
    }

    /// Main thread: a record callout ended.
    fn on_http_callout_done(
        &self,
        _envoy: &mut EC,
        _callout_id: u64,
        result: CalloutResult,
        headers: &[HeaderRef<'_>],
        _body: &[&[u8]],
    ) {
        let outcome = match (result, status_of(headers)) {
            (CalloutResult::Success, Some(s)) => RecordResult::Status(s),
            _ => RecordResult::Failed,
        };
        self.shared.engine.on_record_result(outcome);
    }
}

/// The lookup in flight.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    id: u64,
    started: Instant,
    timeout_ms: u64,
}

/// One stream.
pub struct CacheFilter {
    stream: Stream,
    shared: Arc<Shared>,
    lookup: Option<Lookup>,
    /// The request is stopped in Envoy (headers and/or body held).
    holding: bool,
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

/// Classifies a lookup answer. Envoy's async client turns a timeout into a local `504` and a
/// failed connection into a local `503` ("upstream connect error ..." / "no healthy upstream"),
/// both delivered as answers: those are reported as the failures they are.
fn lookup_result<'a>(
    result: CalloutResult,
    headers: &'a [HeaderRef<'a>],
    body: &'a [u8],
    elapsed_ms: u64,
    timeout_ms: u64,
) -> LookupResult<'a> {
    if result != CalloutResult::Success {
        return LookupResult::Failed(LookupFailure::Transport);
    }
    let Some(status) = status_of(headers) else {
        return LookupResult::Failed(LookupFailure::Transport);
    };
    if status == 504 && elapsed_ms.saturating_add(50) >= timeout_ms {
        return LookupResult::Failed(LookupFailure::Timeout);
    }
    if status == 503
        && (body.starts_with(b"upstream connect error") || body == b"no healthy upstream")
    {
        return LookupResult::Failed(LookupFailure::Transport);
    }
    let content_type = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
        .map(|(_, v)| *v);
    LookupResult::Answer {
        status,
        content_type,
        body,
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
    /// Carries out a decision made inside a request event; returns whether Envoy must keep the
    /// request (true) or let it go on (false).
    fn act<EHF: EnvoyHttpFilter>(&mut self, envoy: &mut EHF, mut d: Decision) -> bool {
        loop {
            match d {
                Decision::Continue => return self.holding,
                Decision::Hold => return true,
                Decision::Lookup(c) => {
                    let headers: Vec<(&str, &str)> = c
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    match envoy.http_callout(&c.cluster, &headers, &c.body, c.timeout_ms) {
                        Ok(id) => {
                            self.lookup = Some(Lookup {
                                id,
                                started: Instant::now(),
                                timeout_ms: c.timeout_ms,
                            });
                            return true;
                        }
                        Err(_) => {
                            d = self
                                .stream
                                .on_lookup_result(LookupResult::Failed(LookupFailure::Transport));
                        }
                    }
                }
                Decision::Serve(r) => {
                    send(envoy, &r);
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
        hold
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
        let status = {
            let refs: Vec<HeaderRef<'_>> = headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            status_of(&refs).unwrap_or(0)
        };
        if let Decision::Record(c) = self
            .stream
            .on_response_headers(status, headers, end_of_stream)
        {
            self.shared.record(c);
        }
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
        BodyStatus::Continue
    }

    fn on_response_trailers(&mut self, _envoy: &mut EHF) -> TrailersStatus {
        if let Decision::Record(c) = self.stream.on_response_trailers() {
            self.shared.record(c);
        }
        TrailersStatus::Continue
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
        let elapsed = u64::try_from(lookup.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let r = lookup_result(result, headers, answer, elapsed, lookup.timeout_ms);
        let d = self.stream.on_lookup_result(r);
        match d {
            Decision::Serve(r) => {
                self.holding = false;
                send(envoy, &r);
            }
            Decision::Resume | Decision::PassThrough(_) => {
                self.holding = false;
                envoy.continue_decoding();
            }
            Decision::Record(c) => self.shared.record(c),
            Decision::Continue | Decision::Hold | Decision::Lookup(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
