//! One record-queue policy for every host. Records (`POST /v1/traces` callouts) leave a stream's
//! path through this queue and are sent from a context that outlives the stream (wasm: the root
//! context; the dynamic module: the main thread; the sidecar: its sender task).
//!
//! - **Bounded by count and by bytes** (config `records.max_queued`, `records.max_queued_bytes`):
//!   a record that does not fit is dropped when it is offered, never later, so memory is bounded
//!   the moment a stream finishes. The records already queued are kept (they are older and
//!   complete); the new one is counted in `records_dropped`.
//! - **Bounded in flight** (`records.max_in_flight`): at most that many record callouts at once,
//!   so a host opens at most that many connections to the backend for records and never fills
//!   Envoy's pending-request queue.
//! - **Batched**: a callout carries up to `records.batch_max_records` records (at most
//!   `records.batch_max_bytes` of them, a larger record goes alone) as one OTLP `TracesData`: the
//!   records' encoded `TracesData` bodies concatenated, which protobuf reads as one message whose
//!   `resource_spans` are all of theirs. When no record callout is in flight the queue hands out
//!   what it holds at once, so a quiet proxy records without delay; while one is in flight, records
//!   wait for a full batch, for a callout to end, or until the oldest has waited
//!   `records.linger_ms` (checked whenever the host asks for work). Under load a batch therefore
//!   holds what arrived during one backend round trip, and a record waits at most one record
//!   timeout.
//! - Every record ends counted once: `records_sent` (2xx), `record_failures` (any other answer,
//!   or none) or `records_dropped`; every callout is counted in `record_batches`.
//! - A circuit breaker ([`crate::breaker`]): after `breaker.consecutive_failures` failed records
//!   in a row, new records are dropped (`records_dropped`) until a probe record gets through.
//!
//! The queue is shared by every stream of one engine and is safe to use from any thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::breaker::{Admission, Breaker};
use crate::engine::{Callout, Clock, RecordResult};
use crate::metrics::{Counter, Metrics};

/// The queue's limits (config `records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Records waiting to be sent.
    pub max_queued: usize,
    /// Bytes of the records waiting to be sent (their bodies).
    pub max_queued_bytes: usize,
    /// Record callouts at once.
    pub max_in_flight: usize,
    /// Records in one callout.
    pub batch_max_records: usize,
    /// Bytes of the records in one callout (a larger record goes alone).
    pub batch_max_bytes: usize,
    /// How long a record waits for a fuller batch while another is in flight, in ms.
    pub linger_ms: u64,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            max_queued: 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            max_in_flight: 8,
            batch_max_records: 64,
            batch_max_bytes: 1024 * 1024,
            linger_ms: 5,
        }
    }
}

/// A batch of records handed to the host to send as one callout; report how it ended with
/// [`RecordQueue::finish`].
#[derive(Debug)]
pub struct Outgoing {
    pub ticket: u64,
    pub callout: Callout,
    /// Records the callout carries.
    pub records: usize,
}

#[derive(Debug)]
struct Queued {
    callout: Callout,
    /// When it was queued, in ms.
    at_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Queued>,
    bytes: usize,
    /// Tickets of the callouts in flight and how many records each carries.
    in_flight: Vec<(u64, usize)>,
    next_ticket: u64,
}

impl Inner {
    /// Whether what is queued makes a batch worth sending now.
    fn batch_due(&self, limits: &RecordLimits, now_ms: u64) -> bool {
        let Some(oldest) = self.queue.front() else {
            return false;
        };
        self.in_flight.is_empty()
            || self.queue.len() >= limits.batch_max_records
            || self.bytes >= limits.batch_max_bytes
            || now_ms.saturating_sub(oldest.at_ms) >= limits.linger_ms
    }

    /// Takes the next batch off the queue: at least one record, then more while they fit.
    fn take_batch(&mut self, limits: &RecordLimits) -> Option<(Callout, usize)> {
        let mut batch = self.queue.pop_front()?.callout;
        let mut records = 1;
        while records < limits.batch_max_records {
            let used = batch.body.len();
            let fits = |q: &mut Queued| {
                used.saturating_add(q.callout.body.len()) <= limits.batch_max_bytes
            };
            let Some(next) = self.queue.pop_front_if(fits) else {
                break;
            };
            batch.body.extend_from_slice(&next.callout.body);
            batch.timeout_ms = batch.timeout_ms.max(next.callout.timeout_ms);
            records += 1;
        }
        self.bytes = self.bytes.saturating_sub(batch.body.len());
        Some((batch, records))
    }
}

/// The record queue of one engine.
pub struct RecordQueue {
    limits: RecordLimits,
    breaker: Breaker,
    metrics: Arc<dyn Metrics>,
    clock: Clock,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for RecordQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordQueue")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RecordQueue {
    pub(crate) fn new(
        limits: RecordLimits,
        breaker: Breaker,
        metrics: Arc<dyn Metrics>,
        clock: Clock,
    ) -> RecordQueue {
        RecordQueue {
            limits,
            breaker,
            metrics,
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        (self.clock)() / 1_000_000
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the queue consistent (every change is one push,
        // pop or retain): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> RecordLimits {
        self.limits
    }

    /// Offers a record; false when it was dropped (counted) because the queue is full or the
    /// breaker is open.
    pub fn push(&self, callout: Callout) -> bool {
        if self.breaker.admit(self.now_ms()) == Admission::Reject {
            self.metrics.add(Counter::RecordsDropped, 1);
            return false;
        }
        let size = callout.body.len();
        let mut q = self.lock();
        if q.queue.len() >= self.limits.max_queued
            || q.bytes.saturating_add(size) > self.limits.max_queued_bytes
        {
            drop(q);
            self.metrics.add(Counter::RecordsDropped, 1);
            return false;
        }
        q.bytes += size;
        let at_ms = self.now_ms();
        q.queue.push_back(Queued { callout, at_ms });
        true
    }

    /// The next batch to send: when records are waiting, fewer than `max_in_flight` callouts are
    /// out and a batch is due (see the module's doc). Hosts call it whenever a record was queued,
    /// a callout ended or a timer ticked, until it answers `None`.
    pub fn next(&self) -> Option<Outgoing> {
        let now_ms = self.now_ms();
        let mut q = self.lock();
        if q.in_flight.len() >= self.limits.max_in_flight || !q.batch_due(&self.limits, now_ms) {
            return None;
        }
        let (callout, records) = q.take_batch(&self.limits)?;
        q.next_ticket = q.next_ticket.wrapping_add(1);
        let ticket = q.next_ticket;
        q.in_flight.push((ticket, records));
        drop(q);
        self.metrics.add(Counter::RecordBatches, 1);
        Some(Outgoing {
            ticket,
            callout,
            records,
        })
    }

    /// How a batch handed out by [`RecordQueue::next`] ended (a ticket counts once; its records
    /// are counted by how it ended).
    pub fn finish(&self, ticket: u64, result: RecordResult) {
        let records = {
            let mut q = self.lock();
            let at = q.in_flight.iter().position(|(t, _)| *t == ticket);
            at.map(|i| q.in_flight.swap_remove(i).1)
        };
        let Some(records) = records else {
            return;
        };
        let counter = match result {
            RecordResult::Status(s) if (200..300).contains(&s) => {
                self.breaker.success();
                Counter::RecordsSent
            }
            RecordResult::Dropped => Counter::RecordsDropped,
            _ => {
                if self.breaker.failure(self.now_ms()) {
                    self.metrics.add(Counter::RecordBreakerOpened, 1);
                }
                Counter::RecordFailures
            }
        };
        self.metrics.add(counter, records as u64);
    }

    /// Records waiting.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Bytes of the records waiting.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Records being sent.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AtomicCounters;

    fn record(n: usize) -> Callout {
        Callout {
            cluster: "c".into(),
            headers: Vec::new(),
            body: vec![0; n],
            timeout_ms: 1,
        }
    }

    fn queue(
        max_queued: usize,
        max_queued_bytes: usize,
        max_in_flight: usize,
    ) -> (RecordQueue, Arc<AtomicCounters>) {
        let counters = Arc::new(AtomicCounters::default());
        let limits = RecordLimits {
            max_queued,
            max_queued_bytes,
            max_in_flight,
            batch_max_records: 1,
            ..RecordLimits::default()
        };
        let breaker = Breaker::new(crate::breaker::BreakerConfig {
            consecutive_failures: 0,
            ..Default::default()
        });
        let clock: Clock = Arc::new(|| 0);
        (
            RecordQueue::new(limits, breaker, counters.clone(), clock),
            counters,
        )
    }

    #[test]
    fn full_by_count_or_bytes_drops_the_new_record() {
        let (q, counters) = queue(2, 100, 8);
        assert!(q.push(record(10)));
        assert!(q.push(record(10)));
        assert!(!q.push(record(1)), "count");
        let (q2, counters2) = queue(10, 100, 8);
        assert!(q2.push(record(60)));
        assert!(!q2.push(record(41)), "bytes");
        assert!(q2.push(record(40)));
        assert_eq!(q2.queued_bytes(), 100);
        assert_eq!(counters.get(Counter::RecordsDropped), 1);
        assert_eq!(counters2.get(Counter::RecordsDropped), 1);
        assert!(
            !queue(10, 5, 8).0.push(record(6)),
            "larger than the whole queue"
        );
    }

    #[test]
    fn in_flight_is_bounded_and_each_ticket_counts_once() {
        let (q, counters) = queue(10, 1000, 2);
        for _ in 0..3 {
            q.push(record(1));
        }
        let a = q.next().unwrap();
        let b = q.next().unwrap();
        assert!(q.next().is_none(), "two in flight");
        q.finish(a.ticket, RecordResult::Status(200));
        q.finish(a.ticket, RecordResult::Status(200));
        assert_eq!(counters.get(Counter::RecordsSent), 1);
        let c = q.next().unwrap();
        q.finish(b.ticket, RecordResult::Status(500));
        q.finish(c.ticket, RecordResult::Failed);
        assert_eq!(counters.get(Counter::RecordFailures), 2);
        assert_eq!((q.queued(), q.in_flight(), q.queued_bytes()), (0, 0, 0));
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::codec::{decode_traces, Format};
    use crate::metrics::AtomicCounters;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Rig {
        q: RecordQueue,
        counters: Arc<AtomicCounters>,
        now_ms: Arc<AtomicU64>,
    }

    fn rig(limits: RecordLimits) -> Rig {
        let counters = Arc::new(AtomicCounters::default());
        let now_ms = Arc::new(AtomicU64::new(1_000));
        let t = now_ms.clone();
        let clock: Clock = Arc::new(move || t.load(Ordering::Relaxed) * 1_000_000);
        let breaker = Breaker::new(crate::breaker::BreakerConfig::default());
        Rig {
            q: RecordQueue::new(limits, breaker, counters.clone(), clock),
            counters,
            now_ms,
        }
    }

    /// A one-span `TracesData` as the engine encodes a record, its span named `name`.
    fn record(name: &str) -> Callout {
        let body = crate::wire::encode(&crate::wire::TracesOut {
            service_name: "svc",
            scope_name: "test",
            scope_version: "0",
            span: crate::wire::SpanOut {
                name,
                ..Default::default()
            },
        });
        Callout {
            cluster: "c".into(),
            headers: vec![(":path".into(), "/v1/traces".into())],
            body,
            timeout_ms: 100,
        }
    }

    fn names(callout: &Callout) -> Vec<String> {
        decode_traces(&callout.body, Format::Protobuf)
            .unwrap()
            .spans()
            .map(|(_, s)| s.name.clone())
            .collect()
    }

    #[test]
    fn an_idle_queue_sends_at_once_and_a_busy_one_batches_what_arrives_meanwhile() {
        let r = rig(RecordLimits::default());
        assert!(r.q.push(record("a")));
        let first = r.q.next().expect("nothing in flight: sent at once");
        assert_eq!(
            (first.records, names(&first.callout)),
            (1, vec!["a".into()])
        );
        for n in ["b", "c", "d"] {
            assert!(r.q.push(record(n)));
        }
        assert!(
            r.q.next().is_none(),
            "one in flight: waits for a fuller batch"
        );
        r.q.finish(first.ticket, RecordResult::Status(200));
        let second = r.q.next().expect("the callout ended: what waited goes");
        assert_eq!(second.records, 3);
        assert_eq!(
            names(&second.callout),
            ["b", "c", "d"],
            "one TracesData, in order"
        );
        assert_eq!(second.callout.headers, record("x").headers);
        r.q.finish(second.ticket, RecordResult::Status(200));
        assert_eq!(r.counters.get(Counter::RecordsSent), 4);
        assert_eq!(r.counters.get(Counter::RecordBatches), 2);
    }

    #[test]
    fn a_full_batch_or_the_linger_sends_while_another_is_in_flight() {
        let r = rig(RecordLimits {
            batch_max_records: 2,
            linger_ms: 5,
            ..RecordLimits::default()
        });
        r.q.push(record("a"));
        let a = r.q.next().unwrap();
        r.q.push(record("b"));
        assert!(r.q.next().is_none());
        r.q.push(record("c"));
        let bc = r.q.next().expect("a full batch goes");
        assert_eq!(names(&bc.callout), ["b", "c"]);
        r.q.push(record("d"));
        r.now_ms.fetch_add(4, Ordering::Relaxed);
        assert!(r.q.next().is_none(), "younger than the linger");
        r.now_ms.fetch_add(1, Ordering::Relaxed);
        let d = r.q.next().expect("lingered long enough");
        assert_eq!(d.records, 1);
        assert_eq!(r.q.in_flight(), 4, "records in flight");
        r.q.finish(a.ticket, RecordResult::Failed);
        r.q.finish(bc.ticket, RecordResult::Status(500));
        r.q.finish(d.ticket, RecordResult::Dropped);
        assert_eq!(r.counters.get(Counter::RecordFailures), 3);
        assert_eq!(r.counters.get(Counter::RecordsDropped), 1);
    }

    #[test]
    fn a_batch_stays_within_its_byte_bound_and_a_larger_record_goes_alone() {
        let one = record("x").body.len();
        let r = rig(RecordLimits {
            batch_max_bytes: 2 * one,
            ..RecordLimits::default()
        });
        let big = Callout {
            body: [record("x").body.as_slice(); 3].concat(),
            ..record("x")
        };
        r.q.push(big);
        for _ in 0..3 {
            r.q.push(record("x"));
        }
        let sizes = |r: &Rig| -> Vec<(usize, usize)> {
            std::iter::from_fn(|| r.q.next())
                .map(|o| (o.records, o.callout.body.len()))
                .collect()
        };
        assert_eq!(sizes(&r), [(1, 3 * one), (2, 2 * one)], "the rest lingers");
        r.now_ms.fetch_add(5, Ordering::Relaxed);
        assert_eq!(sizes(&r), [(1, one)]);
        assert_eq!(r.q.queued_bytes(), 0);
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::metrics::AtomicCounters;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn failed_records_open_the_breaker_and_a_probe_closes_it() {
        let counters = Arc::new(AtomicCounters::default());
        let now = Arc::new(AtomicU64::new(0));
        let t = now.clone();
        let clock: Clock = Arc::new(move || t.load(Ordering::Relaxed) * 1_000_000);
        let breaker = Breaker::new(BreakerConfig {
            consecutive_failures: 2,
            backoff_ms: 100,
            max_backoff_ms: 1000,
        });
        let q = RecordQueue::new(RecordLimits::default(), breaker, counters.clone(), clock);
        let record = || Callout {
            cluster: "c".into(),
            headers: Vec::new(),
            body: vec![1],
            timeout_ms: 1,
        };
        for _ in 0..2 {
            assert!(q.push(record()));
            let out = q.next().unwrap();
            q.finish(out.ticket, RecordResult::Failed);
        }
        assert_eq!(counters.get(Counter::RecordBreakerOpened), 1);
        assert!(!q.push(record()), "open: dropped at once");
        assert_eq!(counters.get(Counter::RecordsDropped), 1);
        now.store(100, Ordering::Relaxed);
        assert!(q.push(record()), "the probe");
        assert!(!q.push(record()), "one probe at a time");
        let out = q.next().unwrap();
        q.finish(out.ticket, RecordResult::Status(200));
        assert!(q.push(record()), "closed again");
    }
}
