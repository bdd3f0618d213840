//! Group commit: every `/v1/traces` request hands its recordings to one writer thread, which
//! stores everything that arrived while the previous commit was being made (and what comes within
//! `max_wait` after the first) in **one** durable redb transaction, then answers each request.
//! A commit is an fsync, so one per request caps ingest at the disk's sync rate; one per batch
//! lets the backend absorb many thousands of records per second, each still durable before its
//! 200.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::recording::Recording;
use crate::store::{Inserted, Store, StoreError};

struct Job {
    recordings: Vec<Recording>,
    done: tokio::sync::oneshot::Sender<Result<Inserted, StoreError>>,
}

/// The writer's handle (cheap to clone); the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// How many recordings one commit takes at most.
pub const MAX_BATCH: usize = 4096;

impl Writer {
    /// Starts the writer thread for `store`; a batch waits at most `max_wait` for company.
    pub fn start(store: Arc<Store>, max_wait: Duration) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(&store, &rx, max_wait))?;
        Ok(Writer { tx })
    }

    /// Stores `recordings` durably (in a commit shared with whatever else is waiting).
    pub async fn insert(&self, recordings: Vec<Recording>) -> Result<Inserted, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { recordings, done })
            .map_err(|_| StoreError::Commit("the writer has stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Commit("the writer has stopped".into())))
    }
}

fn run(store: &Store, rx: &mpsc::Receiver<Job>, max_wait: Duration) {
    while let Ok(first) = rx.recv() {
        let mut n = first.recordings.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while n < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            n += next.recordings.len();
            jobs.push(next);
        }
        let (groups, answers): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.recordings, j.done)).unzip();
        match store.insert_groups(groups) {
            Ok(results) => {
                for (done, result) in answers.into_iter().zip(results) {
                    let _ = done.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for done in answers {
                    let _ = done.send(Err(StoreError::Commit(message.clone())));
                }
            }
        }
    }
}
