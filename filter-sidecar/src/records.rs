//! Records leave the stream's path through the engine's record queue
//! ([`filter_core::RecordQueue`]: bounded by count and bytes, a full queue drops and counts, at
//! most `records.max_in_flight` sent at once); a worker task sends what it hands out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use filter_core::{Engine, RecordResult};
use tokio::sync::Notify;

use crate::backend::{CallOutcome, Caller};

/// The streams' side (cheap to clone; one per stream is fine).
#[derive(Clone)]
pub struct RecordQueue {
    engine: Arc<Engine>,
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
}

/// The worker; [`RecordWorker::run`] ends once the queue is closed and empty.
pub struct RecordWorker<C> {
    queue: RecordQueue,
    caller: Arc<C>,
}

/// The queue of `engine` and its worker sending with `caller`.
pub fn queue<C: Caller>(caller: Arc<C>, engine: Arc<Engine>) -> (RecordQueue, RecordWorker<C>) {
    let queue = RecordQueue::new(engine);
    (queue.clone(), RecordWorker { queue, caller })
}

impl RecordQueue {
    /// The streams' side of `engine`'s queue (no worker: see [`queue`]).
    pub fn new(engine: Arc<Engine>) -> RecordQueue {
        RecordQueue {
            engine,
            wake: Arc::new(Notify::new()),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A stream's engine queued a record: wake the worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The worker finishes what is queued, then ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Records queued or being sent.
    pub fn depth(&self) -> u64 {
        let r = self.engine.records();
        (r.queued() + r.in_flight()) as u64
    }

    /// Records the queue holds before it drops.
    pub fn capacity(&self) -> u64 {
        self.engine.records().limits().max_queued as u64
    }
}

impl<C: Caller> RecordWorker<C> {
    /// Sends records until the queue is closed and drained.
    pub async fn run(self) {
        let records = self.queue.engine.records();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while let Some(out) = records.next() {
                let caller = self.caller.clone();
                let q = self.queue.clone();
                tasks.spawn(async move {
                    let result = match caller.call(out.callout).await {
                        CallOutcome::Answer { status, .. } => RecordResult::Status(status),
                        CallOutcome::Failed(f) => {
                            tracing::debug!(failure = ?f, "record failed");
                            RecordResult::Failed
                        }
                    };
                    if !matches!(result, RecordResult::Status(200..=299)) {
                        tracing::warn!(?result, "the backend did not accept a record");
                    }
                    q.engine.records().finish(out.ticket, result);
                    q.wake.notify_one();
                });
            }
            while tasks.try_join_next().is_some() {}
            if self.queue.closed.load(Ordering::Relaxed) && self.queue.depth() == 0 {
                break;
            }
            self.queue.wake.notified().await;
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Runs until drained; once `closed` resolves (with the time left to drain), for at most
    /// that long.
    pub async fn run_until(self, closed: impl std::future::Future<Output = Duration>) {
        let queue = self.queue.clone();
        let run = self.run();
        tokio::pin!(run);
        let deadline = tokio::select! {
            () = &mut run => return,
            d = closed => d,
        };
        if tokio::time::timeout(deadline, run).await.is_err() {
            tracing::warn!(
                left = queue.depth(),
                "drain deadline passed with records unsent"
            );
        }
    }
}
