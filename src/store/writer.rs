//! The group-commit writer: one thread owns every write to the [`Store`].
//!
//! Requests come through a bounded channel (a full channel is an immediate
//! [`WriterError::Overloaded`], which the HTTP layer answers with 503). The thread blocks for one
//! request, then takes every request already queued (up to [`MAX_REQUESTS_PER_COMMIT`]), commits
//! them in one transaction — one fsync — and answers each with where its changes went
//! ([`Committed`]: a mailbox keeps its envelopes' seqs, and polls read their bodies there).
//! Because this thread is the only writer and assigns seqs inside the transaction, seqs become
//! visible in commit order (SPEC §7.3). Each commit's duration goes to
//! `dm_store_commit_seconds`.
//! Between requests it collects expired records every [`GC_INTERVAL`].
//!
//! Storage faults: when a commit (or a garbage collection) fails with a storage error, the
//! engine refuses every later write until the database is reopened. The writer then records an
//! [`Outage`] in the shared [`StoreStatus`], answers every request at once with
//! [`WriterError::Degraded`] (503 with the time to its next attempt), and tries to reopen the
//! store on its own with backoff ([`reopen_delay`]) — first checking that the data dir's
//! filesystem has [`RECOVERY_MIN_FREE_BYTES`] free again, so that a full disk is not "recovered"
//! only to fail at the next write. The first successful reopen ends the outage.
//!
//! The storage budget: a request that would store envelopes while the stored bytes are at or
//! past the budget is refused with [`WriterError::OverBudget`] (see [`super::budget`]).

use super::budget::{free_bytes, request_cost};
use super::recent::RecentClientChanges;
use super::status::{Outage, StoreStatus, reopen_delay};
use super::{Store, StoreError, StoreOp};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Most requests folded into one transaction.
pub const MAX_REQUESTS_PER_COMMIT: usize = 1024;
/// Requests that may wait for the writer before new ones are refused.
pub const WRITER_QUEUE_CAPACITY: usize = 8192;
/// How often expired changes and tombstones are dropped from the store.
pub const GC_INTERVAL: Duration = Duration::from_secs(1);
/// Free bytes the data dir's filesystem must have before the store is reopened after a
/// failure (a full disk must really have room again).
pub const RECOVERY_MIN_FREE_BYTES: u64 = 1 << 20;

/// Why a write was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    #[error("the store's write queue is full")]
    Overloaded,
    #[error("the store is shut down")]
    Closed,
    #[error("{0}")]
    Store(String),
    /// The store is in an outage: nothing is written until it is reopened.
    #[error("the store is unavailable ({reason}); next attempt to reopen it in {retry_after_s} s")]
    Degraded { reason: String, retry_after_s: u64 },
    /// Storing this would take the node past its storage budget.
    #[error("the storage budget is used up ({used} of {budget} bytes)")]
    OverBudget { used: u64, budget: u64 },
}

/// What a durable commit tells each request: where its changes are in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The seq of the request's first [`StoreOp::PutEnvelope`] or [`StoreOp::ApplyAck`]; the
    /// next ones of the same request follow without a gap (a request's ops are committed
    /// together, in order). Meaningless for a request without such ops.
    pub first_seq: u64,
}

type CommitResult = Result<Committed, WriterError>;

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
    status: Arc<StoreStatus>,
    /// The highest seq on disk, published after every commit that gave one.
    last_seq: watch::Receiver<u64>,
    /// The newest client changes, filled before `last_seq` announces them.
    recent: Arc<RecentClientChanges>,
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
    /// Starts the writer thread for `store`, which keeps at most `budget` stored bytes.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        budget: u64,
    ) -> std::io::Result<(Self, WriterThread)> {
        let (requests, queue) = std::sync::mpsc::sync_channel(WRITER_QUEUE_CAPACITY);
        metrics.storage_budget_bytes.set(to_gauge(budget));
        update_gauges(store.as_ref(), &metrics);
        metrics.store_degraded.set(0);
        let status = Arc::new(StoreStatus::default());
        let head = store.last_seq().unwrap_or(0);
        let (seq_sender, last_seq) = watch::channel(head);
        let recent = Arc::new(RecentClientChanges::new(head));
        let mut writer = Writer {
            last_seq: seq_sender,
            recent: Arc::clone(&recent),
            store: Arc::clone(&store),
            metrics,
            status: Arc::clone(&status),
            budget,
            budget_full: false,
            outage: None,
            failures: 0,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(&queue))?;
        Ok((
            Self {
                requests,
                store,
                status,
                last_seq,
                recent,
            },
            WriterThread(thread),
        ))
    }

    /// The store, for reads (they run concurrently with the writer).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the store takes writes now (`/health`, `Retry-After`).
    pub fn status(&self) -> &StoreStatus {
        &self.status
    }

    /// The highest seq on disk, changed after each commit that stores a change: the pushers
    /// wait on it instead of polling the log.
    pub fn last_seq(&self) -> watch::Receiver<u64> {
        self.last_seq.clone()
    }

    /// The newest client changes, complete up to the seq [`Self::last_seq`] announces.
    pub fn recent(&self) -> &RecentClientChanges {
        &self.recent
    }

    /// Queues `ops` for the next commit; resolves once they are durable.
    pub fn commit(
        &self,
        ops: Vec<StoreOp>,
    ) -> impl std::future::Future<Output = CommitResult> + use<> {
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

fn to_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn update_gauges(store: &dyn Store, metrics: &Metrics) {
    metrics
        .pending_envelopes
        .set(to_gauge(store.pending_count()));
    metrics.store_bytes.set(to_gauge(store.stored_bytes()));
}

type Batch = Vec<(Vec<StoreOp>, oneshot::Sender<CommitResult>)>;

/// The writer thread's state.
struct Writer {
    store: Arc<dyn Store>,
    last_seq: watch::Sender<u64>,
    recent: Arc<RecentClientChanges>,
    metrics: Arc<Metrics>,
    status: Arc<StoreStatus>,
    budget: u64,
    /// The budget refused a write and no envelope has been stored since: logged once when it
    /// begins and once when it ends, not per refusal.
    budget_full: bool,
    /// The current outage (the writer's own copy; [`Self::set_outage`] publishes it).
    outage: Option<Outage>,
    /// Failed commits and reopen attempts since the store last took writes.
    failures: u32,
}

impl Writer {
    fn run(&mut self, queue: &Receiver<Request>) {
        let mut last_gc = Instant::now();
        let mut batch: Batch = Vec::new();
        loop {
            let mut stop = false;
            // In an outage, wake up for the next reopen attempt even without requests.
            let wait = match &self.outage {
                Some(outage) => outage
                    .next_attempt
                    .saturating_duration_since(Instant::now())
                    .min(GC_INTERVAL),
                None => GC_INTERVAL,
            };
            match queue.recv_timeout(wait) {
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
            self.try_recovery();
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if stop {
                // Whatever was queued behind the shutdown request still gets committed.
                while let Ok(Request::Commit { ops, reply }) = queue.try_recv() {
                    batch.push((ops, reply));
                }
                if !batch.is_empty() {
                    self.commit_batch(&mut batch);
                }
                match self.store.close() {
                    Ok(()) => tracing::info!(
                        "store writer stopped; every queued write is committed and the store is closed"
                    ),
                    Err(err) => tracing::warn!(%err, "closing the store at shutdown failed"),
                }
                return;
            }
            if self.outage.is_none() && last_gc.elapsed() >= GC_INTERVAL {
                last_gc = Instant::now();
                self.recent.forget_old();
                let collected = self.store.collect_garbage(crate::protocol::now_unix());
                update_gauges(self.store.as_ref(), &self.metrics);
                match collected {
                    Ok(0) => {}
                    Ok(dropped) => tracing::debug!(dropped, "expired records collected"),
                    Err(err) => {
                        tracing::warn!(%err, "garbage collection failed");
                        self.failed(&err);
                    }
                }
            }
        }
    }

    /// A storage error: starts (or prolongs) the outage. A corrupt record fails only the
    /// requests of its commit: the database itself still takes writes.
    fn failed(&mut self, err: &StoreError) {
        if !matches!(err, StoreError::Backend(_)) {
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = reopen_delay(self.failures);
        let was_healthy = self.outage.is_none();
        let reason = self.describe(err);
        if was_healthy {
            tracing::error!(%reason, "the store failed; writes are refused until it is reopened");
        } else {
            tracing::warn!(%reason, retry_in = ?delay, "the store is still unavailable");
        }
        self.set_outage(Some(Outage {
            reason,
            next_attempt: Instant::now() + delay,
        }));
    }

    /// Records the outage (or its end) here, for `/health` and 503s, and in the gauge.
    fn set_outage(&mut self, outage: Option<Outage>) {
        self.metrics.store_degraded.set(i64::from(outage.is_some()));
        self.status.set(outage.clone());
        self.outage = outage;
    }

    /// The reason shown in `/health`: a full disk says so, whatever the engine's words for it.
    fn describe(&self, err: &StoreError) -> String {
        let no_space = err.to_string().contains("No space left on device");
        match self.store.data_dir() {
            Some(dir) => match free_bytes(dir) {
                Some(free) if no_space || free < RECOVERY_MIN_FREE_BYTES => format!(
                    "the disk holding {} is full ({} KiB free): {err}",
                    dir.display(),
                    free / 1024
                ),
                _ => err.to_string(),
            },
            None => err.to_string(),
        }
    }

    /// In an outage whose next attempt is due: reopen the store, or schedule the next attempt.
    fn try_recovery(&mut self) {
        let Some(outage) = self.outage.clone() else {
            return;
        };
        if Instant::now() < outage.next_attempt {
            return;
        }
        if let Some(dir) = self.store.data_dir()
            && let Some(free) = free_bytes(dir)
            && free < RECOVERY_MIN_FREE_BYTES
        {
            let err = StoreError::Backend(format!(
                "waiting for free space ({} KiB free, {} KiB needed)",
                free / 1024,
                RECOVERY_MIN_FREE_BYTES / 1024
            ));
            self.failed(&err);
            return;
        }
        match self.store.reopen() {
            Ok(()) => {
                tracing::info!(after = %outage.reason, "the store was reopened and takes writes again");
                self.failures = 0;
                self.set_outage(None);
                self.metrics.store_recoveries_total.inc();
                update_gauges(self.store.as_ref(), &self.metrics);
            }
            Err(err) => {
                let err = match err {
                    StoreError::Backend(_) => err,
                    // A reopen that fails for any reason leaves no database: keep trying.
                    StoreError::Corrupt(problem) => StoreError::Backend(problem),
                };
                self.failed(&err);
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Batch) {
        if let Some(outage) = &self.outage {
            let refusal = WriterError::Degraded {
                retry_after_s: outage.retry_after_s(),
                reason: outage.reason.clone(),
            };
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(refusal.clone()));
            }
            return;
        }
        let mut all_ops = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut used = self.store.stored_bytes();
        for (ops, reply) in batch.drain(..) {
            let cost = request_cost(&ops);
            if cost > 0 && used.saturating_add(cost) > self.budget {
                self.metrics.budget_refusals_total.inc();
                if !self.budget_full {
                    self.budget_full = true;
                    tracing::warn!(
                        used,
                        budget = self.budget,
                        "the storage budget is used up: new deposits and replicas are refused until recipients read their mail"
                    );
                }
                let _ = reply.send(Err(WriterError::OverBudget {
                    used,
                    budget: self.budget,
                }));
                continue;
            }
            if cost > 0 && self.budget_full {
                self.budget_full = false;
                tracing::info!(
                    used,
                    budget = self.budget,
                    "the storage budget has room again"
                );
            }
            used = used.saturating_add(cost);
            replies.push((reply, ops.iter().filter(|op| op.takes_seq()).count() as u64));
            all_ops.extend(ops);
        }
        if replies.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = self.store.commit(&all_ops);
        self.metrics
            .store_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        update_gauges(self.store.as_ref(), &self.metrics);
        match result {
            Ok(last_seq) => {
                self.metrics.store_commits_total.inc();
                self.metrics.store_ops_total.inc_by(all_ops.len() as u64);
                // Each request's first seq: the batch's, plus the seqs its predecessors took.
                let mut first_seq = StoreOp::first_seq(&all_ops, last_seq);
                for (reply, numbered) in replies {
                    let _ = reply.send(Ok(Committed { first_seq }));
                    first_seq += numbered;
                }
                // After the replies: a pusher sends nothing before the client's 200 is on its
                // way. The window first, so that what `last_seq` announces is in it.
                self.recent.committed(&all_ops, last_seq);
                self.last_seq.send_if_modified(|seen| {
                    let newer = last_seq > *seen;
                    *seen = last_seq.max(*seen);
                    newer
                });
            }
            Err(err) => {
                self.metrics.store_errors_total.inc();
                tracing::error!(%err, requests = replies.len(), "store commit failed");
                self.failed(&err);
                let refusal = match &self.outage {
                    Some(outage) => WriterError::Degraded {
                        retry_after_s: outage.retry_after_s(),
                        reason: outage.reason.clone(),
                    },
                    None => WriterError::Store(err.to_string()),
                };
                for (reply, _) in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Envelope;
    use crate::store::RedbStore;
    /// Far in the future: the writer's garbage collection runs on the real clock.
    fn envelope(id: &str) -> Arc<Envelope> {
        crate::test_envelopes::envelope(id, 4_000_000_000)
    }

    /// Every request learns where its own changes went, however the writer batched them.
    #[actix_rt::test]
    async fn each_request_learns_the_seq_of_its_first_change() {
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().unwrap());
        let (handle, writer) =
            StoreHandle::start(Arc::clone(&store), Arc::new(Metrics::new()), u64::MAX).unwrap();
        let (a, b, c) = (envelope("a"), envelope("b"), envelope("c"));
        let nonce = StoreOp::PutNonce {
            mailbox: a.mailbox,
            nonce: "n".into(),
            until: 4_000_000_000,
        };
        // Queued together: the writer takes them as one batch when it is fast enough, or as
        // several; the answers must be right either way.
        let first = handle.commit(vec![
            StoreOp::put_envelope(Arc::clone(&a), true),
            StoreOp::put_envelope(Arc::clone(&b), false),
        ]);
        let second = handle.commit(vec![nonce]);
        let third = handle.commit(vec![StoreOp::put_envelope(Arc::clone(&c), true)]);
        let (first, _, third) = (
            first.await.unwrap(),
            second.await.unwrap(),
            third.await.unwrap(),
        );
        let json = |e: &Envelope| Some(serde_json::to_vec(e).unwrap());
        assert_eq!(
            store
                .change_json(&[first.first_seq, first.first_seq + 1, third.first_seq])
                .unwrap(),
            vec![json(&a), json(&b), json(&c)]
        );
        assert_eq!(third.first_seq, store.last_seq().unwrap());
        handle.shutdown();
        writer.join();
    }
}
