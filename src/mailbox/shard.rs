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
//! meanwhile wait in that mailbox's slot, in order. A mailbox idle for `MESH_DM_MAILBOX_IDLE_S`
//! with no write in flight and no parked replica leaves memory: its state is all in the store.

use super::rules::{Decision, MailboxLimits, MailboxState, NonceRefusal, PollView};
use super::{ChangeSink, Origin};
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, MailboxKey, PollRequest, now_unix};
use crate::store::{Recovered, StoreHandle, StoreOp, WriterError};
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
}

impl From<WriterError> for ShardError {
    fn from(err: WriterError) -> Self {
        match err {
            WriterError::Overloaded => ShardError::Overloaded,
            other => ShardError::Unavailable(other.to_string()),
        }
    }
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

/// Read a mailbox (SPEC §6.2); the request's signature and freshness are already checked.
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
}

/// Work waiting for a mailbox to load: `Ok` once it is in memory, or why it cannot be.
type Waiting =
    Box<dyn FnOnce(&mut MailboxShard, &mut Context<MailboxShard>, Result<(), ShardError>)>;

/// Mailbox loads running at once per shard (each holds a blocking-pool thread).
const MAX_CONCURRENT_LOADS: usize = 8;
/// Requests waiting for their mailbox to load, per shard; past that they get 503, so waiting
/// work stays bounded like the shard's own queue.
const MAX_WAITING_REQUESTS: usize = SHARD_QUEUE_CAPACITY;

enum Slot {
    Loaded(Box<Loaded>),
    Loading(Vec<Waiting>),
}

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
    for envelope in snapshot.envelopes {
        // The store holds only what the rules accepted; a tombstone written later wins.
        if state.decide(&envelope, &MailboxLimits::UNLIMITED) == Decision::Accept {
            state.insert(envelope, true);
        }
    }
    for envelope in snapshot.parked {
        state.park(envelope, &MailboxLimits::UNLIMITED);
    }
    state.expire(now);
    state
}

pub struct MailboxShard {
    mailboxes: HashMap<MailboxKey, Slot>,
    /// Loads running now, and mailboxes waiting for a load to start.
    loads_running: usize,
    loads_queued: std::collections::VecDeque<MailboxKey>,
    /// Requests parked in `Slot::Loading` across all mailboxes.
    waiting_requests: usize,
    limits: MailboxLimits,
    max_ttl_s: u64,
    idle: Duration,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    sink: Arc<dyn ChangeSink>,
}

impl MailboxShard {
    pub fn new(
        limits: MailboxLimits,
        max_ttl_s: u64,
        idle: Duration,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        sink: Arc<dyn ChangeSink>,
    ) -> Self {
        Self {
            mailboxes: HashMap::new(),
            loads_running: 0,
            loads_queued: std::collections::VecDeque::new(),
            waiting_requests: 0,
            limits,
            max_ttl_s,
            idle,
            store,
            metrics,
            sink,
        }
    }

    /// Runs `work` once `mailbox` is in memory: at once if it is, after loading it otherwise.
    fn with_mailbox(
        &mut self,
        mailbox: MailboxKey,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), ShardError>) + 'static,
    ) {
        if let Some(Slot::Loaded(_)) = self.mailboxes.get(&mailbox) {
            return work(self, ctx, Ok(()));
        }
        if self.waiting_requests >= MAX_WAITING_REQUESTS {
            self.metrics.overload_total.inc();
            return work(self, ctx, Err(ShardError::Overloaded));
        }
        self.waiting_requests += 1;
        match self.mailboxes.get_mut(&mailbox) {
            Some(Slot::Loading(waiting)) => waiting.push(Box::new(work)),
            _ => {
                self.mailboxes
                    .insert(mailbox, Slot::Loading(vec![Box::new(work)]));
                if self.loads_running < MAX_CONCURRENT_LOADS {
                    self.start_load(mailbox, ctx);
                } else {
                    self.loads_queued.push_back(mailbox);
                }
            }
        }
    }

    /// Reads `mailbox` from the store on a blocking-pool thread, then installs it.
    fn start_load(&mut self, mailbox: MailboxKey, ctx: &mut Context<Self>) {
        self.loads_running += 1;
        let store = Arc::clone(self.store.store());
        let load = actix_rt::task::spawn_blocking(move || store.load_mailbox(&mailbox, now_unix()));
        ctx.spawn(load.into_actor(self).map(move |result, shard, ctx| {
            shard.loads_running -= 1;
            if let Some(next) = shard.loads_queued.pop_front() {
                shard.start_load(next, ctx);
            }
            let result = match result {
                Ok(Ok(snapshot)) => Ok(snapshot),
                Ok(Err(err)) => Err(err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            shard.install(mailbox, result, ctx);
        }));
    }

    /// A load finished: put the state in place and run what waited for it, in order.
    fn install(
        &mut self,
        mailbox: MailboxKey,
        result: Result<Recovered, String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(Slot::Loading(waiting)) = self.mailboxes.remove(&mailbox) else {
            return;
        };
        self.waiting_requests = self.waiting_requests.saturating_sub(waiting.len());
        let outcome = match result {
            Ok(snapshot) => {
                let loaded = Loaded {
                    state: state_from(snapshot, now_unix()),
                    last_used: Instant::now(),
                    in_flight: 0,
                };
                self.mailboxes
                    .insert(mailbox, Slot::Loaded(Box::new(loaded)));
                self.metrics.mailboxes_loaded.inc();
                Ok(())
            }
            Err(err) => {
                tracing::error!(%mailbox, %err, "mailbox could not be loaded");
                Err(not_loaded())
            }
        };
        for work in waiting {
            work(self, ctx, outcome.clone());
        }
    }

    /// The loaded mailbox, with what expired dropped and its use recorded.
    fn loaded(&mut self, mailbox: &MailboxKey) -> Option<&mut Loaded> {
        match self.mailboxes.get_mut(mailbox) {
            Some(Slot::Loaded(entry)) => {
                entry.state.expire(now_unix());
                entry.last_used = Instant::now();
                Some(entry)
            }
            _ => None,
        }
    }

    /// A store write for `mailbox` finished.
    fn write_done(&mut self, mailbox: &MailboxKey) {
        if let Some(Slot::Loaded(entry)) = self.mailboxes.get_mut(mailbox) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    /// Commits `ops` for `mailbox`, keeping the mailbox in memory until the answer, then runs
    /// `done` on the shard.
    fn write(
        &mut self,
        mailbox: MailboxKey,
        ops: Vec<StoreOp>,
        ctx: &mut Context<Self>,
        done: impl FnOnce(&mut Self, Result<Vec<Option<u64>>, WriterError>) + 'static,
    ) {
        if let Some(Slot::Loaded(entry)) = self.mailboxes.get_mut(&mailbox) {
            entry.in_flight += 1;
        }
        let commit = self.store.commit(ops);
        ctx.spawn(commit.into_actor(self).map(move |result, shard, _| {
            shard.write_done(&mailbox);
            done(shard, result);
        }));
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = now_unix();
        let idle = self.idle;
        let mut with_parked = Vec::new();
        let mut evicted = 0i64;
        self.mailboxes.retain(|mailbox, slot| {
            let Slot::Loaded(entry) = slot else {
                return true;
            };
            entry.state.expire(now);
            if entry.state.parked_len() > 0 {
                with_parked.push(*mailbox);
                return true;
            }
            let keep = entry.in_flight > 0
                || (!entry.state.is_empty() && entry.last_used.elapsed() < idle);
            if !keep {
                evicted += 1;
            }
            keep
        });
        self.metrics.mailboxes_loaded.sub(evicted);
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
                // Still parked in memory; only a restart before room frees would lose it, and
                // the origin's feed still offers it to a resync.
                tracing::warn!(%err, "parked replica not stored");
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
        let mut ops: Vec<StoreOp> = unparked
            .dropped
            .iter()
            .map(|envelope| StoreOp::Unpark {
                mailbox,
                msg_id: envelope.msg_id.clone(),
            })
            .collect();
        ops.extend(
            unparked
                .accepted
                .iter()
                .map(|envelope| StoreOp::PutEnvelope(Arc::clone(envelope))),
        );
        if ops.is_empty() {
            return;
        }
        let accepted = unparked.accepted;
        self.write(mailbox, ops, ctx, move |shard, result| {
            let Some(Slot::Loaded(entry)) = shard.mailboxes.get_mut(&mailbox) else {
                return;
            };
            for envelope in accepted {
                if result.is_ok() {
                    entry.state.mark_committed(&envelope.msg_id);
                    shard.metrics.replica_accepted_total.inc();
                } else if entry.state.remove_uncommitted(&envelope) {
                    entry.state.park(envelope, &limits);
                }
            }
        });
    }

    fn count_decision(&self, decision: Decision, origin: &Origin) {
        let m = &self.metrics;
        match origin {
            Origin::Client => {
                let status = match decision {
                    Decision::Accept => "accepted",
                    Decision::Duplicate => "duplicate",
                    Decision::Acked => "acked",
                    Decision::Conflict => "conflict",
                    Decision::MailboxFull { .. } => "mailbox_full",
                    Decision::CapViolation { .. } => {
                        m.drop_per_sender_cap_total.inc();
                        "cap_violation"
                    }
                };
                m.deposit_total.with_label_values(&[status]).inc();
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
        let decision = entry.state.decide(&envelope, &limits);
        if decision == Decision::Duplicate && !entry.state.is_committed(&envelope.msg_id) {
            // The first copy's write is still in flight: "duplicate" must not answer before it is
            // durable. The writer is FIFO, so once an (empty) commit queued now completes, the
            // first one has completed too, and its outcome is in the state.
            self.write(mailbox, Vec::new(), ctx, move |shard, result| {
                let durable = result.is_ok()
                    && matches!(shard.mailboxes.get(&mailbox),
                        Some(Slot::Loaded(entry)) if entry.state.is_committed(&envelope.msg_id));
                let outcome = if durable {
                    shard.count_decision(Decision::Duplicate, &origin);
                    Ok(Decision::Duplicate)
                } else {
                    Err(ShardError::Unavailable(
                        "the first copy was not stored".into(),
                    ))
                };
                let _ = reply.send(outcome);
            });
            return;
        }
        if decision != Decision::Accept {
            self.count_decision(decision, &origin);
            let no_room = matches!(
                decision,
                Decision::CapViolation { .. } | Decision::MailboxFull { .. }
            );
            if no_room && origin != Origin::Client {
                self.park(Arc::clone(&envelope), ctx);
            }
            let _ = reply.send(Ok(decision));
            return;
        }
        // Reserve the slot now, so that the next deposit already sees it.
        entry.state.insert(Arc::clone(&envelope), false);
        let op = StoreOp::PutEnvelope(Arc::clone(&envelope));
        self.write(mailbox, vec![op], ctx, move |shard, result| {
            let Some(Slot::Loaded(entry)) = shard.mailboxes.get_mut(&mailbox) else {
                let _ = reply.send(Err(not_loaded()));
                return;
            };
            let outcome = match result {
                Ok(_) => {
                    entry.state.mark_committed(&envelope.msg_id);
                    shard.count_decision(Decision::Accept, &origin);
                    if origin == Origin::Client {
                        shard.sink.envelope_stored(&envelope);
                    }
                    Ok(Decision::Accept)
                }
                Err(err) => {
                    entry.state.remove_uncommitted(&envelope);
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
        let view = entry.state.poll(limit, now);
        // The nonce is spent in memory at once; the reply waits until it is spent on disk too,
        // so that a restart cannot make a captured poll replayable.
        let op = StoreOp::PutNonce {
            mailbox,
            nonce: request.nonce.into_boxed_str(),
            until,
        };
        self.write(mailbox, vec![op], ctx, move |_, result| {
            let _ = reply.send(result.map(|_| Ok(view)).map_err(ShardError::from));
        });
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
        if !effect.changed && origin != Origin::Client {
            // A replica already applied: nothing new to store, and storing it again would echo
            // it around the mesh through the feeds.
            let _ = reply.send(Ok(report));
            return;
        }
        // A client's repeated ack is stored (and pushed) again: its 200 must mean "on disk"
        // even if the first attempt's commit failed after it was applied in memory.
        if effect.changed {
            self.metrics.ack_total.inc();
        }
        let live_until = effect
            .tombstones
            .iter()
            .map(|(_, until)| *until)
            .max()
            .unwrap_or(ack.ts);
        let op = StoreOp::ApplyAck {
            ack: Arc::clone(&ack),
            removed: effect.removed.iter().map(|e| e.msg_id.clone()).collect(),
            tombstones: effect.tombstones,
            live_until,
        };
        self.write(mailbox, vec![op], ctx, move |shard, result| {
            let outcome = match result {
                Ok(_) => {
                    if origin == Origin::Client {
                        shard.sink.ack_applied(&ack);
                    }
                    Ok(report)
                }
                // The ack stays applied in memory (it is idempotent and the client will retry);
                // the retry stores it.
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

impl Handler<Deposit> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Deposit, ctx: &mut Self::Context) {
        self.with_mailbox(
            msg.envelope.mailbox,
            ctx,
            move |shard, ctx, ready| match ready {
                Ok(()) => shard.deposit(msg, ctx),
                Err(err) => {
                    let _ = msg.reply.send(Err(err));
                }
            },
        );
    }
}

impl Handler<Poll> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Poll, ctx: &mut Self::Context) {
        self.with_mailbox(
            msg.request.mailbox,
            ctx,
            move |shard, ctx, ready| match ready {
                Ok(()) => shard.poll(msg, ctx),
                Err(err) => {
                    let _ = msg.reply.send(Err(err));
                }
            },
        );
    }
}

impl Handler<Acknowledge> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Acknowledge, ctx: &mut Self::Context) {
        self.with_mailbox(msg.ack.mailbox, ctx, move |shard, ctx, ready| match ready {
            Ok(()) => shard.acknowledge(msg, ctx),
            Err(err) => {
                let _ = msg.reply.send(Err(err));
            }
        });
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
