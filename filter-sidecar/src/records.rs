//! Records leave the stream's path through a bounded in-memory queue: a push never waits (a full
//! queue drops the record and counts it), a worker sends them with a few calls in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use filter_core::{Callout, Engine, RecordResult};
use tokio::sync::mpsc;

use crate::backend::{CallOutcome, Caller};

/// The sending side (cheap to clone; one per stream is fine).
#[derive(Clone)]
pub struct RecordQueue {
    tx: Arc<Mutex<Option<mpsc::Sender<Callout>>>>,
    engine: Arc<Engine>,
    stats: Arc<QueueStats>,
}

/// Gauges of the queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Records waiting in the queue.
    pub queued: AtomicU64,
    /// Records being sent.
    pub in_flight: AtomicU64,
    pub capacity: AtomicU64,
}

/// The worker; [`RecordWorker::run`] ends once the queue is closed and empty.
pub struct RecordWorker<C> {
    rx: mpsc::Receiver<Callout>,
    caller: Arc<C>,
    engine: Arc<Engine>,
    stats: Arc<QueueStats>,
    concurrency: usize,
}

/// A queue of `capacity` records and its worker sending up to `concurrency` at once.
pub fn queue<C: Caller>(
    capacity: usize,
    concurrency: usize,
    caller: Arc<C>,
    engine: Arc<Engine>,
) -> (RecordQueue, RecordWorker<C>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(QueueStats::default());
    stats
        .capacity
        .store(capacity.max(1) as u64, Ordering::Relaxed);
    (
        RecordQueue {
            tx: Arc::new(Mutex::new(Some(tx))),
            engine: engine.clone(),
            stats: stats.clone(),
        },
        RecordWorker {
            rx,
            caller,
            engine,
            stats,
            concurrency: concurrency.max(1),
        },
    )
}

impl RecordQueue {
    /// Queues a record without waiting; a full or closed queue drops it (counted).
    pub fn push(&self, callout: Callout) {
        let sent = {
            let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(tx) => tx.try_send(callout).is_ok(),
                None => false,
            }
        };
        if sent {
            self.stats.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!("record queue full or closed: record dropped");
            self.engine.on_record_result(RecordResult::Dropped);
        }
    }

    /// Stops accepting records; the worker finishes what is queued.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Records queued or being sent.
    pub fn depth(&self) -> u64 {
        self.stats.queued.load(Ordering::Relaxed) + self.stats.in_flight.load(Ordering::Relaxed)
    }
}

impl<C: Caller> RecordWorker<C> {
    /// Sends records until the queue is closed and drained.
    pub async fn run(mut self) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.len() >= self.concurrency {
                let _ = tasks.join_next().await;
            }
            let Some(callout) = self.rx.recv().await else {
                break;
            };
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let caller = self.caller.clone();
            let engine = self.engine.clone();
            let stats = self.stats.clone();
            tasks.spawn(async move {
                let result = match caller.call(callout).await {
                    CallOutcome::Answer { status, .. } => RecordResult::Status(status),
                    CallOutcome::Failed(f) => {
                        tracing::debug!(failure = ?f, "record failed");
                        RecordResult::Failed
                    }
                };
                if !matches!(result, RecordResult::Status(200..=299)) {
                    tracing::warn!(?result, "the backend did not accept a record");
                }
                engine.on_record_result(result);
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Runs until drained; once `closed` resolves (with the time left to drain), for at most
    /// that long.
    pub async fn run_until(self, closed: impl std::future::Future<Output = Duration>) {
        let stats = self.stats.clone();
        let run = self.run();
        tokio::pin!(run);
        let deadline = tokio::select! {
            () = &mut run => return,
            d = closed => d,
        };
        if tokio::time::timeout(deadline, run).await.is_err() {
            let left =
                stats.queued.load(Ordering::Relaxed) + stats.in_flight.load(Ordering::Relaxed);
            tracing::warn!(left, "drain deadline passed with records unsent");
        }
    }
}
