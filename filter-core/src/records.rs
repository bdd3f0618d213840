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
//! - Every record ends counted once: `records_sent` (2xx), `record_failures` (any other answer,
//!   or none) or `records_dropped`.
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
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            max_queued: 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            max_in_flight: 8,
        }
    }
}

/// A record handed to the host to send; report how it ended with [`RecordQueue::finish`].
#[derive(Debug)]
pub struct Outgoing {
    pub ticket: u64,
    pub callout: Callout,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Callout>,
    bytes: usize,
    in_flight: Vec<u64>,
    next_ticket: u64,
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
        q.queue.push_back(callout);
        true
    }

    /// The next record to send, when one is waiting and fewer than `max_in_flight` are out.
    pub fn next(&self) -> Option<Outgoing> {
        let mut q = self.lock();
        if q.in_flight.len() >= self.limits.max_in_flight {
            return None;
        }
        let callout = q.queue.pop_front()?;
        q.bytes = q.bytes.saturating_sub(callout.body.len());
        q.next_ticket = q.next_ticket.wrapping_add(1);
        let ticket = q.next_ticket;
        q.in_flight.push(ticket);
        Some(Outgoing { ticket, callout })
    }

    /// How a record handed out by [`RecordQueue::next`] ended (a ticket counts once).
    pub fn finish(&self, ticket: u64, result: RecordResult) {
        let known = {
            let mut q = self.lock();
            let before = q.in_flight.len();
            q.in_flight.retain(|t| *t != ticket);
            q.in_flight.len() != before
        };
        if !known {
            return;
        }
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
        self.metrics.add(counter, 1);
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
        self.lock().in_flight.len()
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
