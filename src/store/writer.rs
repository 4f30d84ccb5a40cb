//! The group-commit writer: one thread owns every write to the [`Store`].
//!
//! Requests come through a bounded channel (a full channel is an immediate
//! [`WriterError::Overloaded`], which the HTTP layer answers with 503). The thread blocks for one
//! request, then takes every request already queued (up to [`MAX_REQUESTS_PER_COMMIT`]), commits
//! them in one transaction — one fsync — and answers each. Because this thread is the only writer
//! and assigns seqs inside the transaction, seqs become visible in commit order (SPEC §7.3).
//! Between requests it collects expired records every [`GC_INTERVAL`].

use super::{Store, StoreOp};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most requests folded into one transaction.
pub const MAX_REQUESTS_PER_COMMIT: usize = 1024;
/// Requests that may wait for the writer before new ones are refused.
pub const WRITER_QUEUE_CAPACITY: usize = 8192;
/// How often expired changes and tombstones are dropped from the store.
pub const GC_INTERVAL: Duration = Duration::from_secs(1);

/// Why a write was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    #[error("the store's write queue is full")]
    Overloaded,
    #[error("the store is shut down")]
    Closed,
    #[error("{0}")]
    Store(String),
}

type CommitResult = Result<Vec<Option<u64>>, WriterError>;

enum Request {
    Commit {
        ops: Vec<StoreOp>,
        reply: oneshot::Sender<CommitResult>,
    },
    Shutdown,
}

/// A cloneable handle to the writer thread and read access to the store.
#[derive(Clone)]
pub struct StoreHandle {
    requests: SyncSender<Request>,
    store: Arc<dyn Store>,
}

/// Joins the writer thread once it has committed everything queued before the shutdown.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl StoreHandle {
    /// Starts the writer thread for `store`.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, WriterThread)> {
        let (requests, queue) = std::sync::mpsc::sync_channel(WRITER_QUEUE_CAPACITY);
        metrics
            .pending_envelopes
            .set(i64::try_from(store.pending_count()).unwrap_or(i64::MAX));
        let writer_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(writer_store.as_ref(), &queue, &metrics))?;
        Ok((Self { requests, store }, WriterThread(thread)))
    }

    /// The store, for reads (they run concurrently with the writer).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Queues `ops` for the next commit; resolves once they are durable.
    pub fn commit(
        &self,
        ops: Vec<StoreOp>,
    ) -> impl std::future::Future<Output = CommitResult> + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = match self.requests.try_send(Request::Commit { ops, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(WriterError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(WriterError::Closed),
        };
        async move {
            match queued {
                Ok(answer) => answer.await.unwrap_or(Err(WriterError::Closed)),
                Err(err) => Err(err),
            }
        }
    }

    /// Asks the writer to stop after committing everything queued so far.
    pub fn shutdown(&self) {
        // A blocking send: shutdown must not be lost to a momentarily full queue.
        let _ = self.requests.send(Request::Shutdown);
    }
}

fn run_writer(store: &dyn Store, queue: &Receiver<Request>, metrics: &Metrics) {
    let mut last_gc = Instant::now();
    let mut batch: Vec<(Vec<StoreOp>, oneshot::Sender<CommitResult>)> = Vec::new();
    loop {
        let mut stop = false;
        match queue.recv_timeout(GC_INTERVAL) {
            Ok(Request::Commit { ops, reply }) => batch.push((ops, reply)),
            Ok(Request::Shutdown) | Err(RecvTimeoutError::Disconnected) => stop = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        while !stop && batch.len() < MAX_REQUESTS_PER_COMMIT {
            match queue.try_recv() {
                Ok(Request::Commit { ops, reply }) => batch.push((ops, reply)),
                Ok(Request::Shutdown) => stop = true,
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(store, &mut batch, metrics);
        }
        if stop {
            // Whatever was queued behind the shutdown request still gets committed.
            while let Ok(Request::Commit { ops, reply }) = queue.try_recv() {
                batch.push((ops, reply));
            }
            if !batch.is_empty() {
                commit_batch(store, &mut batch, metrics);
            }
            tracing::info!("store writer stopped; every queued write is committed");
            return;
        }
        if last_gc.elapsed() >= GC_INTERVAL {
            last_gc = Instant::now();
            let collected = store.collect_garbage(crate::protocol::now_unix());
            metrics
                .pending_envelopes
                .set(i64::try_from(store.pending_count()).unwrap_or(i64::MAX));
            match collected {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(dropped, "expired records collected"),
                Err(err) => tracing::warn!(%err, "garbage collection failed; will retry"),
            }
        }
    }
}

fn commit_batch(
    store: &dyn Store,
    batch: &mut Vec<(Vec<StoreOp>, oneshot::Sender<CommitResult>)>,
    metrics: &Metrics,
) {
    let mut all_ops = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for (ops, reply) in batch.drain(..) {
        replies.push((ops.len(), reply));
        all_ops.extend(ops);
    }
    let result = store.commit(&all_ops);
    metrics
        .pending_envelopes
        .set(i64::try_from(store.pending_count()).unwrap_or(i64::MAX));
    metrics.store_commits_total.inc();
    metrics.store_ops_total.inc_by(all_ops.len() as u64);
    match result {
        Ok(seqs) => {
            let mut seqs = seqs.into_iter();
            for (len, reply) in replies {
                let mine: Vec<Option<u64>> = seqs.by_ref().take(len).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(err) => {
            metrics.store_errors_total.inc();
            tracing::error!(%err, requests = replies.len(), "store commit failed");
            let message = err.to_string();
            for (_, reply) in replies {
                let _ = reply.send(Err(WriterError::Store(message.clone())));
            }
        }
    }
}
