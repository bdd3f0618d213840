//! The gRPC `ExternalProcessor` service: one task per ext_proc stream, answering each message in
//! order; lookups are awaited on the stream's task, records go to the queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use filter_core::{Engine, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Caller;
use crate::phases::{Expired, Phases, Step};
use crate::records::RecordQueue;

/// Counters of the sidecar itself (the engine keeps its own).
#[derive(Debug, Default)]
pub struct SidecarStats {
    /// ext_proc streams opened by Envoy.
    pub streams: AtomicU64,
    /// ext_proc streams open now.
    pub streams_active: AtomicU64,
    /// Requests whose body arrived incomplete (over Envoy's buffer limit, or with trailers).
    pub request_body_incomplete: AtomicU64,
    /// ext_proc streams Envoy ended while the engine still expected events (the client went
    /// away, or Envoy gave up waiting). Envoy ending a finished stream is normal, not counted.
    pub streams_abandoned: AtomicU64,
}

/// The ext_proc server.
pub struct Sidecar<C> {
    engine: Arc<Engine>,
    caller: Arc<C>,
    records: RecordQueue,
    stats: Arc<SidecarStats>,
    /// [`crate::config::SidecarSettings::keep_content_length_max_bytes`].
    keep_length_max: u64,
}

impl<C: Caller> Sidecar<C> {
    pub fn new(
        engine: Arc<Engine>,
        caller: Arc<C>,
        records: RecordQueue,
        stats: Arc<SidecarStats>,
        keep_length_max: u64,
    ) -> Self {
        Sidecar {
            keep_length_max,
            engine,
            caller,
            records,
            stats,
        }
    }
}

/// Runs one ext_proc stream to its end.
pub async fn run_stream<C: Caller>(
    mut phases: Phases,
    mut inbound: impl tokio_stream::Stream<Item = Result<ProcessingRequest, Status>> + Unpin,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    caller: Arc<C>,
    records: RecordQueue,
    stats: Arc<SidecarStats>,
) {
    use tokio_stream::StreamExt as _;
    loop {
        let next = match phases.hold_deadline_ms() {
            // The engine holds the request: Envoy may send nothing for a while (a client stalled
            // mid-body), so the engine's deadline is kept here.
            Some(at) => {
                let now_ms = crate::server::now_nanos() / 1_000_000;
                let wait = Duration::from_millis(at.saturating_sub(now_ms).max(1));
                match tokio::time::timeout(wait, inbound.next()).await {
                    Ok(next) => next,
                    Err(_) => match phases.on_timer() {
                        Expired::Nothing => continue,
                        Expired::Release => break,
                        Expired::Reply(reply) => {
                            let _ = tx.send(Ok(*reply)).await;
                            break;
                        }
                    },
                }
            }
            None => inbound.next().await,
        };
        let msg = match next {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(status)) => {
                // Envoy resets the gRPC stream when the HTTP stream ends; only a reset before the
                // engine is done means something went away early.
                if !phases.stream().is_finished() {
                    tracing::debug!(%status, "ext_proc stream reset before the exchange ended");
                    stats.streams_abandoned.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        };
        let response = match phases.handle(msg) {
            Step::Nothing => continue,
            Step::Respond {
                response,
                record_queued,
            } => {
                if record_queued {
                    records.wake();
                }
                *response
            }
            Step::Lookup(callout) => {
                let outcome = caller.call(callout).await;
                phases.after_lookup(outcome.as_lookup_result())
            }
        };
        if phases.notes.request_body_incomplete {
            phases.notes.request_body_incomplete = false;
            stats
                .request_body_incomplete
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "request body incomplete (Envoy buffer limit or trailers): passed through"
            );
        }
        if tx.send(Ok(response)).await.is_err() {
            break;
        }
    }
    tracing::trace!(
        finished = phases.stream().is_finished(),
        "ext_proc stream closed"
    );
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<C: Caller> ExternalProcessor for Sidecar<C> {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let phases = Phases::new(Stream::new(self.engine.clone()), self.keep_length_max);
        let caller = self.caller.clone();
        let records = self.records.clone();
        let stats = self.stats.clone();
        stats.streams.fetch_add(1, Ordering::Relaxed);
        stats.streams_active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            run_stream(phases, inbound, tx, caller, records, stats.clone()).await;
            stats.streams_active.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
