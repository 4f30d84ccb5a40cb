//! `MailboxShard`: the actor that owns a share of the mailboxes and takes every decision for them.
//!
//! A deposit, poll or ack for mailbox `M` always goes to the same shard (see
//! [`super::MailboxRouter`]), which runs the rules of [`super::rules`] on `M`'s state and, when the
//! state changes, hands the change to the store writer. The decision is taken (and the slot
//! reserved) at once, so racing deposits cannot both pass the cap; the reply waits for the
//! commit without blocking the shard, which goes on serving other messages meanwhile.
//!
//! Only mailboxes in use are in memory. The first request for a mailbox loads its state from
//! the store on a blocking-pool thread (never on the shard's arbiter); requests that arrive
//! meanwhile wait in that mailbox's slot, in order ([`super::cache`] keeps that bookkeeping; the
//! shard only starts the loads and hands their results back). A mailbox idle for
//! `MESH_DM_MAILBOX_IDLE_S` with no write in flight and no parked replica leaves memory: its state
//! is all in the store.
//!
//! A long poll that finds nothing deliverable waits in its mailbox's [`WaitingPolls`] (see
//! [`super::waiting`]) and is answered from the commit callback that makes an envelope of that
//! mailbox durable, from its timer, or at shutdown ([`ReleaseWaitingPolls`]).
//!
//! A write that failed in the store (an outage, see `store::status`) may leave the state in
//! memory ahead of the disk (an ack applied, a nonce spent): such a mailbox is marked stale and
//! leaves memory as soon as none of its writes is in flight, so the next request reads it back
//! from the store — memory never holds as done what the disk does not.

use super::Origin;
use super::bodies::EnvelopeBodies;
use super::cache::{Admit, MailboxCache};
use super::rules::{
    Decision, DepositPlan, MailboxLimits, MailboxState, NonceRefusal, PollView, sig_digest,
};
use super::waiting::{PollReply, WaitBudget, WaitingPoll, WaitingPolls};
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId, PollRequest, now_unix};
use crate::store::{Committed, Recovered, StoreHandle, StoreOp, WriterError};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Messages that may wait in one shard's queue; past that, requests get 503.
pub const SHARD_QUEUE_CAPACITY: usize = 4096;
/// How often a shard drops what expired and evicts idle mailboxes.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why a shard could not finish a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("the mailbox service is overloaded")]
    Overloaded,
    #[error("the mailbox service is unavailable: {0}")]
    Unavailable(String),
    /// The store refuses writes until it is reopened (see `store::status`).
    #[error("the store is unavailable: {reason}")]
    StoreDown { reason: String, retry_after_s: u64 },
    /// The node's storage budget is used up (see `store::budget`).
    #[error("the storage budget is used up ({used} of {budget} bytes)")]
    OverBudget { used: u64, budget: u64 },
}

impl From<WriterError> for ShardError {
    fn from(err: WriterError) -> Self {
        match err {
            WriterError::Overloaded => ShardError::Overloaded,
            WriterError::Degraded {
                reason,
                retry_after_s,
            } => ShardError::StoreDown {
                reason,
                retry_after_s,
            },
            WriterError::OverBudget { used, budget } => ShardError::OverBudget { used, budget },
            other => ShardError::Unavailable(other.to_string()),
        }
    }
}

/// Whether a failed write may have left a mailbox's memory ahead of its disk state. A write
/// refused before it reached the store (full queue, budget) changed nothing on disk, and every
/// caller undoes its own memory change then.
fn leaves_memory_stale(err: &WriterError) -> bool {
    !matches!(
        err,
        WriterError::Overloaded | WriterError::OverBudget { .. }
    )
}

fn not_loaded() -> ShardError {
    ShardError::Unavailable("the mailbox could not be read from the store".into())
}

/// Store an envelope in its mailbox (SPEC §4), from a client or a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deposit {
    pub envelope: Arc<Envelope>,
    pub origin: Origin,
    pub reply: oneshot::Sender<Result<Decision, ShardError>>,
}

/// Read a mailbox (SPEC §6.2); the request's signature and freshness are already checked. With
/// `wait_s` and nothing deliverable, the answer waits for mail (see [`super::waiting`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poll {
    pub request: PollRequest,
    pub reply: oneshot::Sender<Result<Result<PollView, NonceRefusal>, ShardError>>,
}

/// What an applied ack reports (SPEC §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckReport {
    pub removed: usize,
    pub unknown: usize,
}

/// Apply an ack object (SPEC §4 and §6.3); its signature is already checked.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acknowledge {
    pub ack: Arc<AckObject>,
    pub origin: Origin,
    pub reply: oneshot::Sender<Result<AckReport, ShardError>>,
}

/// Answer every waiting long poll now with its normal reply, and from now on answer new ones at
/// once (the node is shutting down, SPEC §6.2).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseWaitingPolls;

/// Load these mailboxes now (at start-up: those holding parked replicas, so that room freed by
/// expiry reaches them).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Preload(pub Vec<MailboxKey>);

/// A mailbox in memory.
struct Loaded {
    state: MailboxState,
    last_used: Instant,
    /// Store writes not yet answered; the mailbox stays in memory until they are.
    in_flight: u32,
    /// Long polls waiting for mail. A mailbox with waiting polls stays in memory (they live
    /// here, and eviction must not drop them); that cannot keep it loaded for long, since each
    /// leaves within `MAX_POLL_WAIT_S` or at the next sweep once its client is gone.
    waiting: WaitingPolls,
    /// A write failed: memory may be ahead of the store, so the mailbox is read again from the
    /// store once no write is in flight.
    stale: bool,
    /// Copies of an envelope whose first copy's write is still in flight: they are answered
    /// `duplicate` by that write's callback once it is durable (or 503 if it failed), never
    /// before.
    first_copy_waiters: HashMap<MsgId, Vec<(Origin, DepositReply)>>,
}

/// Where a deposit's outcome goes.
type DepositReply = oneshot::Sender<Result<Decision, ShardError>>;

/// Work waiting for a mailbox to load: `Ok` once it is in memory, or why it cannot be.
type Waiting =
    Box<dyn FnOnce(&mut MailboxShard, &mut Context<MailboxShard>, Result<(), ShardError>)>;

/// Mailbox loads running at once per shard (each holds a blocking-pool thread).
const MAX_CONCURRENT_LOADS: usize = 8;
/// Requests waiting for their mailbox to load, per shard; past that they get 503, so waiting
/// work stays bounded like the shard's own queue.
const MAX_WAITING_REQUESTS: usize = SHARD_QUEUE_CAPACITY;

/// A mailbox's state from what the store holds for it (public for the model-based test, which
/// restarts a mailbox through this very path).
pub fn state_from(snapshot: Recovered, now: u64) -> MailboxState {
    let mut state = MailboxState::default();
    for (_, msg_id, until) in snapshot.tombstones {
        state.restore_tombstone(msg_id, until);
    }
    let mut nonces = snapshot.nonces;
    nonces.sort_by_key(|(_, _, until)| *until);
    for (_, nonce, until) in nonces {
        state.restore_nonce(nonce, until);
    }
    for (seq, envelope) in snapshot.envelopes {
        // The store holds only what the rules accepted; a tombstone written later wins.
        if state.decide(&envelope, &MailboxLimits::UNLIMITED) == Decision::Accept {
            state.insert(envelope, Some(seq));
        }
    }
    for envelope in snapshot.parked {
        state.park(envelope, &MailboxLimits::UNLIMITED);
    }
    state.expire(now);
    state
}

pub struct MailboxShard {
    /// The mailboxes in memory, those being loaded and the requests waiting for them.
    cache: MailboxCache<Loaded, Waiting>,
    limits: MailboxLimits,
    max_ttl_s: u64,
    idle: Duration,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    /// The node-wide bound on waiting long polls.
    wait_budget: Arc<WaitBudget>,
    /// Id of the next parked poll (its timer finds it by id).
    next_wait_id: u64,
    /// Set at shutdown: long polls are answered at once instead of parked.
    releasing: bool,
    /// Where a durable envelope's JSON goes for the polls that soon want it.
    bodies: Arc<EnvelopeBodies>,
}

impl MailboxShard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        limits: MailboxLimits,
        max_ttl_s: u64,
        idle: Duration,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        wait_budget: Arc<WaitBudget>,
        bodies: Arc<EnvelopeBodies>,
    ) -> Self {
        Self {
            cache: MailboxCache::new(MAX_CONCURRENT_LOADS, MAX_WAITING_REQUESTS),
            limits,
            max_ttl_s,
            idle,
            store,
            metrics,
            wait_budget,
            next_wait_id: 0,
            releasing: false,
            bodies,
        }
    }

    /// Runs `work` once `mailbox` is in memory: at once if it is, after loading it otherwise.
    fn with_mailbox(
        &mut self,
        mailbox: MailboxKey,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), ShardError>) + 'static,
    ) {
        match self.cache.admit(mailbox, Box::new(work)) {
            Admit::Ready(work) => work(self, ctx, Ok(())),
            Admit::Overloaded(work) => {
                self.metrics.overload_total.inc();
                work(self, ctx, Err(ShardError::Overloaded));
            }
            Admit::Waiting { start } => {
                if let Some(load) = start {
                    self.start_load(load, ctx);
                }
            }
        }
    }

    /// Reads `mailbox` from the store on a blocking-pool thread, then installs it.
    fn start_load(&mut self, mailbox: MailboxKey, ctx: &mut Context<Self>) {
        let store = Arc::clone(self.store.store());
        let load = actix_rt::task::spawn_blocking(move || store.load_mailbox(&mailbox, now_unix()));
        ctx.spawn(load.into_actor(self).map(move |result, shard, ctx| {
            let result = match result {
                Ok(Ok(snapshot)) => Ok(snapshot),
                Ok(Err(err)) => Err(err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            shard.install(mailbox, result, ctx);
        }));
    }

    /// A load finished: put the state in place, start the next queued load, and run what
    /// waited for this one, in order.
    fn install(
        &mut self,
        mailbox: MailboxKey,
        result: Result<Recovered, String>,
        ctx: &mut Context<Self>,
    ) {
        let (entry, outcome) = match result {
            Ok(snapshot) => {
                let entry = Loaded {
                    state: state_from(snapshot, now_unix()),
                    last_used: Instant::now(),
                    in_flight: 0,
                    waiting: WaitingPolls::default(),
                    stale: false,
                    first_copy_waiters: HashMap::new(),
                };
                (Some(entry), Ok(()))
            }
            Err(err) => {
                tracing::error!(%mailbox, %err, "mailbox could not be loaded");
                // In a store outage, say so (with the time of the next reopen attempt).
                let refusal = match self.store.status().outage() {
                    Some(outage) => ShardError::StoreDown {
                        retry_after_s: outage.retry_after_s(),
                        reason: outage.reason,
                    },
                    None => not_loaded(),
                };
                (None, Err(refusal))
            }
        };
        if entry.is_some() {
            self.metrics.mailboxes_loaded.inc();
        }
        let (waiting, next) = self.cache.load_done(mailbox, entry);
        if let Some(next) = next {
            self.start_load(next, ctx);
        }
        for work in waiting {
            work(self, ctx, outcome.clone());
        }
    }

    /// The loaded mailbox, with what expired dropped and its use recorded.
    fn loaded(&mut self, mailbox: &MailboxKey) -> Option<&mut Loaded> {
        let entry = self.cache.get_mut(mailbox)?;
        entry.state.expire(now_unix());
        entry.last_used = Instant::now();
        Some(entry)
    }

    /// A store write for `mailbox` finished (`failed`: and may have left memory stale).
    fn write_done(&mut self, mailbox: &MailboxKey, failed: bool) {
        if let Some(entry) = self.cache.get_mut(mailbox) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.stale |= failed;
        }
    }

    /// Drops a stale mailbox from memory once none of its writes is in flight; the next request
    /// loads what the store holds.
    fn drop_if_stale(&mut self, mailbox: &MailboxKey, ctx: &mut Context<Self>) {
        let stale = matches!(self.cache.get_mut(mailbox),
            Some(entry) if entry.stale && entry.in_flight == 0);
        if !stale {
            return;
        }
        if let Some(mut entry) = self.cache.remove(mailbox) {
            // Its waiting polls get their normal reply now.
            for timer in entry.waiting.answer_all(&entry.state, now_unix()) {
                ctx.cancel_future(timer);
            }
        }
        self.metrics.mailboxes_loaded.dec();
        tracing::info!(%mailbox, "mailbox dropped from memory after a failed write; it will be read again from the store");
    }

    /// Commits `ops` for `mailbox`, keeping the mailbox in memory until the answer, then runs
    /// `done` on the shard.
    fn write(
        &mut self,
        mailbox: MailboxKey,
        ops: Vec<StoreOp>,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Self, Result<Committed, WriterError>) + 'static,
    ) {
        self.write_then(mailbox, ops, ctx, move |shard, _, result| {
            done(shard, result)
        });
    }

    /// [`Self::write`] whose `done` also gets the shard's context (to wake or park long polls).
    fn write_then(
        &mut self,
        mailbox: MailboxKey,
        ops: Vec<StoreOp>,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Self, &mut Context<Self>, Result<Committed, WriterError>) + 'static,
    ) {
        if let Some(entry) = self.cache.get_mut(&mailbox) {
            entry.in_flight += 1;
        }
        let commit = self.store.commit(ops);
        ctx.spawn(commit.into_actor(self).map(move |result, shard, ctx| {
            let failed = matches!(&result, Err(err) if leaves_memory_stale(err));
            shard.write_done(&mailbox, failed);
            done(shard, ctx, result);
            shard.drop_if_stale(&mailbox, ctx);
        }));
    }

    /// A poll found nothing deliverable and its nonce is on disk: park it until mail arrives or
    /// `wait_s` runs out; answer at once when mail came meanwhile, the node is shutting down,
    /// or the node already holds its most waiting polls (an empty 200, never an error).
    fn wait_for_mail(
        &mut self,
        mailbox: MailboxKey,
        limit: usize,
        wait_s: u64,
        reply: PollReply,
        ctx: &mut Context<Self>,
    ) {
        let now = now_unix();
        let releasing = self.releasing;
        let Some(entry) = self.loaded(&mailbox) else {
            let _ = reply.send(Err(not_loaded()));
            return;
        };
        let view = entry.state.poll(limit, now);
        if view.pending > 0 || releasing || reply.is_closed() {
            let _ = reply.send(Ok(Ok(view)));
            return;
        }
        let Some(place) = self.wait_budget.try_take() else {
            let _ = reply.send(Ok(Ok(view)));
            return;
        };
        let id = self.next_wait_id;
        self.next_wait_id += 1;
        let timer = ctx.run_later(Duration::from_secs(wait_s), move |shard, _| {
            shard.wait_over(&mailbox, id);
        });
        if let Some(entry) = self.cache.get_mut(&mailbox) {
            entry.waiting.push(WaitingPoll {
                id,
                limit,
                reply,
                timer: Some(timer),
                place,
            });
        }
    }

    /// The wait of poll `id` ran out: answer it with the (normally empty) view.
    fn wait_over(&mut self, mailbox: &MailboxKey, id: u64) {
        let now = now_unix();
        if let Some(entry) = self.cache.get_mut(mailbox)
            && let Some(poll) = entry.waiting.take(id)
        {
            entry.state.expire(now);
            poll.answer(&entry.state, now);
        }
    }

    /// Something of `mailbox` became durable and deliverable: answer every poll waiting on it.
    fn wake_waiting(&mut self, mailbox: &MailboxKey, ctx: &mut Context<Self>) {
        let now = now_unix();
        let Some(entry) = self.cache.get_mut(mailbox) else {
            return;
        };
        for timer in entry.waiting.answer_all(&entry.state, now) {
            ctx.cancel_future(timer);
        }
    }

    /// Shutdown: answer every waiting poll now and park no new one.
    fn release_waiting_polls(&mut self, ctx: &mut Context<Self>) {
        self.releasing = true;
        let now = now_unix();
        for (_, entry) in self.cache.loaded_mut() {
            for timer in entry.waiting.answer_all(&entry.state, now) {
                ctx.cancel_future(timer);
            }
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = now_unix();
        let idle = self.idle;
        let mut with_parked = Vec::new();
        let evicted = self.cache.retain_loaded(|mailbox, entry| {
            entry.state.expire(now);
            for timer in entry.waiting.drop_abandoned() {
                ctx.cancel_future(timer);
            }
            if entry.state.parked_len() > 0 {
                with_parked.push(*mailbox);
                return true;
            }
            entry.in_flight > 0
                || !entry.waiting.is_empty()
                || (!entry.state.is_empty() && entry.last_used.elapsed() < idle)
        });
        self.metrics
            .mailboxes_loaded
            .sub(i64::try_from(evicted).unwrap_or(i64::MAX));
        self.metrics.mailbox_sweeps_total.inc();
        // Expiry may have freed room for parked replicas.
        for mailbox in with_parked {
            self.retry_parked(mailbox, ctx);
        }
    }

    /// Keeps a replica refused for want of room, on disk too, until room frees up.
    fn park(&mut self, envelope: Arc<Envelope>, ctx: &mut Context<Self>) {
        let limits = self.limits;
        let Some(entry) = self.loaded(&envelope.mailbox) else {
            return;
        };
        if !entry.state.park(Arc::clone(&envelope), &limits) {
            return;
        }
        let mailbox = envelope.mailbox;
        self.write(mailbox, vec![StoreOp::Park(envelope)], ctx, |_, result| {
            if let Err(err) = result {
                // Refused by the budget: still parked in memory; only a restart before room
                // frees would lose it. A storage outage makes the mailbox stale, and the reload
                // forgets it too; the origin's feed still offers it to a resync.
                match err {
                    WriterError::OverBudget { .. } => {
                        tracing::debug!(%err, "parked replica not stored");
                    }
                    _ => tracing::warn!(%err, "parked replica not stored"),
                }
            }
        });
    }

    /// Runs the rules again on the parked replicas of `mailbox` and stores those now accepted.
    fn retry_parked(&mut self, mailbox: MailboxKey, ctx: &mut Context<Self>) {
        let limits = self.limits;
        let Some(entry) = self.loaded(&mailbox) else {
            return;
        };
        if entry.state.parked_len() == 0 {
            return;
        }
        let unparked = entry.state.retry_parked(&limits);
        let ops = unparked.store_ops(mailbox);
        if ops.is_empty() {
            return;
        }
        let accepted = unparked.accepted;
        self.write_then(mailbox, ops, ctx, move |shard, ctx, result| {
            let Some(entry) = shard.cache.get_mut(&mailbox) else {
                return;
            };
            let woken = result.is_ok() && !accepted.is_empty();
            // `store_ops` puts the accepted ones last, in order: they take consecutive seqs.
            for (nth, envelope) in (0u64..).zip(accepted) {
                if let Ok(committed) = &result {
                    entry
                        .state
                        .mark_committed(&envelope.msg_id, committed.first_seq + nth);
                    shard.metrics.replica_accepted_total.inc();
                } else if entry.state.remove_uncommitted(&envelope) {
                    entry.state.park(envelope, &limits);
                }
            }
            if woken {
                shard.wake_waiting(&mailbox, ctx);
            }
        });
    }

    fn count_decision(&self, decision: Decision, origin: &Origin) {
        let m = &self.metrics;
        match origin {
            Origin::Client => {
                if let Decision::CapViolation { .. } = decision {
                    m.drop_per_sender_cap_total.inc();
                }
                m.deposit_total.with_label_values(&[decision.label()]).inc();
            }
            Origin::Peer(_) => match decision {
                Decision::Accept => m.replica_accepted_total.inc(),
                Decision::Duplicate => m.replica_duplicate_total.inc(),
                Decision::MailboxFull { .. } => m.replica_drop_full_total.inc(),
                Decision::CapViolation { .. } => m.replica_drop_per_sender_cap_total.inc(),
                Decision::Acked | Decision::Conflict => {}
            },
        }
    }

    fn deposit(&mut self, msg: Deposit, ctx: &mut Context<Self>) {
        let Deposit {
            envelope,
            origin,
            reply,
        } = msg;
        let limits = self.limits;
        let mailbox = envelope.mailbox;
        let Some(entry) = self.loaded(&mailbox) else {
            let _ = reply.send(Err(not_loaded()));
            return;
        };
        match entry
            .state
            .plan_deposit(&envelope, &limits, origin == Origin::Client)
        {
            DepositPlan::Store(op) => self.store_deposit(envelope, origin, reply, op, ctx),
            // Its write's callback answers this copy too.
            DepositPlan::AfterFirstCopy => entry
                .first_copy_waiters
                .entry(envelope.msg_id.clone())
                .or_default()
                .push((origin, reply)),
            DepositPlan::Answer { decision, park } => {
                self.count_decision(decision, &origin);
                if park {
                    self.park(envelope, ctx);
                }
                let _ = reply.send(Ok(decision));
            }
        }
    }

    /// Stores an accepted deposit; answers it (and the copies that came meanwhile) once durable.
    fn store_deposit(
        &mut self,
        envelope: Arc<Envelope>,
        origin: Origin,
        reply: DepositReply,
        op: StoreOp,
        ctx: &mut Context<Self>,
    ) {
        let mailbox = envelope.mailbox;
        let json = match &op {
            StoreOp::PutEnvelope { json, .. } => Some(Arc::clone(json)),
            _ => None,
        };
        self.write_then(mailbox, vec![op], ctx, move |shard, ctx, result| {
            let Some(entry) = shard.cache.get_mut(&mailbox) else {
                let _ = reply.send(Err(not_loaded()));
                return;
            };
            let copies = entry
                .first_copy_waiters
                .remove(&envelope.msg_id)
                .unwrap_or_default();
            let outcome = match result {
                Ok(committed) => {
                    entry
                        .state
                        .mark_committed(&envelope.msg_id, committed.first_seq);
                    if let Some(json) = json {
                        shard.bodies.insert(&sig_digest(&envelope.sig), json);
                    }
                    shard.count_decision(Decision::Accept, &origin);
                    for (copy_origin, copy_reply) in copies {
                        shard.count_decision(Decision::Duplicate, &copy_origin);
                        let _ = copy_reply.send(Ok(Decision::Duplicate));
                    }
                    // Durable now: polls waiting on this mailbox may deliver it.
                    shard.wake_waiting(&mailbox, ctx);
                    Ok(Decision::Accept)
                }
                Err(err) => {
                    entry.state.remove_uncommitted(&envelope);
                    for (_, copy_reply) in copies {
                        let _ = copy_reply.send(Err(ShardError::Unavailable(
                            "the first copy of this envelope could not be stored".into(),
                        )));
                    }
                    shard
                        .metrics
                        .deposit_total
                        .with_label_values(&["unavailable"])
                        .inc();
                    Err(ShardError::from(err))
                }
            };
            let _ = reply.send(outcome);
        });
    }

    fn poll(&mut self, msg: Poll, ctx: &mut Context<Self>) {
        let now = now_unix();
        let limits = self.limits;
        let Poll { request, reply } = msg;
        let mailbox = request.mailbox;
        let Some(entry) = self.loaded(&mailbox) else {
            let _ = reply.send(Err(not_loaded()));
            return;
        };
        let until = match entry.state.use_nonce(&request.nonce, now, &limits) {
            Ok(until) => until,
            Err(refusal) => {
                let _ = reply.send(Ok(Err(refusal)));
                return;
            }
        };
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let wait_s = request.wait_s;
        let view = entry.state.poll(limit, now);
        // The nonce is spent in memory at once; the reply waits until it is spent on disk too,
        // so that a restart cannot make a captured poll replayable.
        let op = StoreOp::PutNonce {
            mailbox,
            nonce: request.nonce.into_boxed_str(),
            until,
        };
        self.write_then(
            mailbox,
            vec![op],
            ctx,
            move |shard, ctx, result| match result {
                // Parked only once the nonce is on disk: the nonce is spent when the poll arrives.
                Ok(_) if view.pending == 0 && wait_s > 0 => {
                    shard.wait_for_mail(mailbox, limit, wait_s, reply, ctx);
                }
                result => {
                    let _ = reply.send(result.map(|_| Ok(view)).map_err(ShardError::from));
                }
            },
        );
    }

    fn acknowledge(&mut self, msg: Acknowledge, ctx: &mut Context<Self>) {
        let Acknowledge { ack, origin, reply } = msg;
        let max_ttl_s = self.max_ttl_s;
        let mailbox = ack.mailbox;
        let Some(entry) = self.loaded(&mailbox) else {
            let _ = reply.send(Err(not_loaded()));
            return;
        };
        let effect = entry.state.acknowledge(&ack, max_ttl_s);
        let report = AckReport {
            removed: effect.removed.len(),
            unknown: effect.unknown,
        };
        if !effect.removed.is_empty() {
            self.retry_parked(mailbox, ctx);
        }
        if effect.changed {
            self.metrics.ack_total.inc();
        }
        let Some(op) = effect.store_op(&ack, origin == Origin::Client) else {
            // A replica already applied: nothing new to store.
            let _ = reply.send(Ok(report));
            return;
        };
        self.write(mailbox, vec![op], ctx, move |_, result| {
            let outcome = match result {
                Ok(_) => Ok(report),
                // The ack was applied in memory only: the mailbox is now stale and is read again
                // from the store (`drop_if_stale`); the client's retry applies it again.
                Err(err) => Err(ShardError::from(err)),
            };
            let _ = reply.send(outcome);
        });
    }
}

impl Actor for MailboxShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(SHARD_QUEUE_CAPACITY);
        ctx.run_interval(SWEEP_INTERVAL, |shard, ctx| shard.sweep(ctx));
    }
}

/// A request handler: load the mailbox the message names (`$mailbox`), then run `$run`; a
/// mailbox that cannot be loaded answers the request's `reply` with the error.
macro_rules! handle_once_loaded {
    ($message:ty, |$msg:ident| $mailbox:expr, $run:ident) => {
        impl Handler<$message> for MailboxShard {
            type Result = ();

            fn handle(&mut self, $msg: $message, ctx: &mut Self::Context) {
                let mailbox = $mailbox;
                self.with_mailbox(mailbox, ctx, move |shard, ctx, ready| match ready {
                    Ok(()) => shard.$run($msg, ctx),
                    Err(err) => {
                        let _ = $msg.reply.send(Err(err));
                    }
                });
            }
        }
    };
}

handle_once_loaded!(Deposit, |msg| msg.envelope.mailbox, deposit);
handle_once_loaded!(Poll, |msg| msg.request.mailbox, poll);
handle_once_loaded!(Acknowledge, |msg| msg.ack.mailbox, acknowledge);

impl Handler<ReleaseWaitingPolls> for MailboxShard {
    type Result = ();

    fn handle(&mut self, _: ReleaseWaitingPolls, ctx: &mut Self::Context) {
        self.release_waiting_polls(ctx);
    }
}

impl Handler<Preload> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Preload, ctx: &mut Self::Context) {
        for mailbox in msg.0 {
            self.with_mailbox(mailbox, ctx, |_, _, _| {});
        }
    }
}

/// The shard as an actor on the test's own runtime. The store is redb's in-memory backend behind
/// the real writer thread; timers run on tokio's clock, which the first test pauses once the poll
/// is parked (pausing earlier would let the clock jump ahead while a commit runs on the writer's
/// real thread).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use ed25519_dalek::SigningKey;

    struct Harness {
        shard: Addr<MailboxShard>,
        metrics: Arc<Metrics>,
        _writer: crate::store::writer::WriterThread,
    }

    fn harness() -> Harness {
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let (store, writer) = StoreHandle::start(store, Arc::clone(&metrics), u64::MAX).unwrap();
        let shard = MailboxShard::new(
            MailboxLimits::default(),
            604_800,
            Duration::from_secs(300),
            store,
            Arc::clone(&metrics),
            WaitBudget::new(16, Arc::clone(&metrics)),
            Arc::new(EnvelopeBodies::new(1 << 20)),
        )
        .start();
        Harness {
            shard,
            metrics,
            _writer: writer,
        }
    }

    type PollAnswer = oneshot::Receiver<Result<Result<PollView, NonceRefusal>, ShardError>>;

    /// Sends a long poll for `owner`'s mailbox and waits (in real time) until it is parked.
    async fn parked_poll(harness: &Harness, owner: &SigningKey, nonce: &str) -> PollAnswer {
        let mut request = PollRequest::sign(owner, now_unix(), nonce.repeat(32), 10);
        request.wait_s = 25;
        let (reply, answer) = oneshot::channel();
        let parked_before = harness.metrics.waiting_polls.get();
        harness.shard.do_send(Poll { request, reply });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while harness.metrics.waiting_polls.get() == parked_before {
            assert!(
                std::time::Instant::now() < deadline,
                "the poll was never parked"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answer
    }

    #[actix_rt::test]
    async fn a_long_poll_is_answered_empty_exactly_when_its_wait_runs_out() {
        let harness = harness();
        let bob = SigningKey::from_bytes(&[2; 32]);
        let mut answer = parked_poll(&harness, &bob, "a").await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(answer.try_recv().is_err(), "answered before its 25 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        let view = answer.await.unwrap().unwrap().unwrap();
        assert_eq!((view.pending, view.messages.len()), (0, 0));
        assert_eq!(
            harness.metrics.waiting_polls.get(),
            0,
            "its place is given back"
        );
    }

    #[actix_rt::test]
    async fn a_deposit_wakes_the_waiting_poll() {
        let harness = harness();
        let (alice, bob) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let answer = parked_poll(&harness, &bob, "b").await;
        let started = std::time::Instant::now();
        let envelope = Arc::new(Envelope::sign(
            &alice,
            MailboxKey::of(&bob),
            crate::protocol::MsgId::parse("m", "m1").unwrap(),
            now_unix(),
            now_unix() + 3600,
            b"hi",
        ));
        let (deposited, decision) = oneshot::channel();
        harness.shard.do_send(Deposit {
            envelope,
            origin: Origin::Client,
            reply: deposited,
        });
        assert_eq!(decision.await.unwrap().unwrap(), Decision::Accept);
        let view = answer.await.unwrap().unwrap().unwrap();
        assert_eq!(view.messages.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        assert_eq!(harness.metrics.waiting_polls.get(), 0);
    }

    #[actix_rt::test]
    async fn release_answers_every_waiting_poll_at_once_and_parks_no_new_one() {
        let harness = harness();
        let bob = SigningKey::from_bytes(&[2; 32]);
        let first = parked_poll(&harness, &bob, "c").await;
        let second = parked_poll(&harness, &bob, "d").await;
        let started = std::time::Instant::now();
        harness.shard.send(ReleaseWaitingPolls).await.unwrap();
        for answer in [first, second] {
            assert_eq!(answer.await.unwrap().unwrap().unwrap().pending, 0);
        }
        // A long poll after the release is answered at once too, without parking.
        let mut request = PollRequest::sign(&bob, now_unix(), "e".repeat(32), 10);
        request.wait_s = 25;
        let (reply, answer) = oneshot::channel();
        harness.shard.do_send(Poll { request, reply });
        answer.await.unwrap().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(harness.metrics.waiting_polls.get(), 0);
    }
}
