//! `MailboxShard`: the actor that owns a share of the mailboxes and takes every decision for them.
//!
//! A deposit, poll or ack for mailbox `M` always goes to the same shard (see
//! [`super::MailboxRouter`]), which runs the rules of [`super::rules`] on `M`'s state and, when the
//! state changes, hands the change to the store writer. The decision is taken (and the slot
//! reserved) at once, so racing deposits cannot both pass the cap; the reply waits for the
//! commit without blocking the shard, which goes on serving other messages meanwhile.

use super::rules::{Decision, MailboxLimits, MailboxState, NonceRefusal, PollView};
use super::{ChangeSink, Origin};
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId, PollRequest, now_unix};
use crate::store::{StoreHandle, StoreOp, WriterError};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Messages that may wait in one shard's queue; past that, requests get 503.
pub const SHARD_QUEUE_CAPACITY: usize = 4096;
/// How often a shard drops expired envelopes, tombstones and nonces of idle mailboxes.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

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

/// Load state read back from the store at start-up (before any request is served).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    pub envelopes: Vec<Arc<Envelope>>,
    pub parked: Vec<Arc<Envelope>>,
    pub tombstones: Vec<(MailboxKey, MsgId, u64)>,
    pub nonces: Vec<(MailboxKey, Box<str>, u64)>,
}

pub struct MailboxShard {
    mailboxes: HashMap<MailboxKey, MailboxState>,
    limits: MailboxLimits,
    max_ttl_s: u64,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    sink: Arc<dyn ChangeSink>,
}

impl MailboxShard {
    pub fn new(
        limits: MailboxLimits,
        max_ttl_s: u64,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        sink: Arc<dyn ChangeSink>,
    ) -> Self {
        Self {
            mailboxes: HashMap::new(),
            limits,
            max_ttl_s,
            store,
            metrics,
            sink,
        }
    }

    /// The state of `mailbox`, with everything whose time has come already dropped.
    fn mailbox(&mut self, mailbox: MailboxKey, now: u64) -> &mut MailboxState {
        let state = self.mailboxes.entry(mailbox).or_default();
        let expired = state.expire(now);
        self.metrics.pending_envelopes.sub(expired.len() as i64);
        state
    }

    /// Forgets a mailbox that holds nothing any more.
    fn release_if_empty(&mut self, mailbox: &MailboxKey) {
        if self
            .mailboxes
            .get(mailbox)
            .is_some_and(MailboxState::is_empty)
        {
            self.mailboxes.remove(mailbox);
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = now_unix();
        let mut expired = 0usize;
        let mut with_parked = Vec::new();
        self.mailboxes.retain(|mailbox, state| {
            expired += state.expire(now).len();
            if state.parked_len() > 0 {
                with_parked.push(*mailbox);
            }
            !state.is_empty()
        });
        self.metrics.pending_envelopes.sub(expired as i64);
        // Expiry may have freed room for parked replicas.
        for mailbox in with_parked {
            self.retry_parked(mailbox, ctx);
        }
    }

    /// Keeps a replica refused for want of room, on disk too, until room frees up.
    fn park(&mut self, envelope: Arc<Envelope>, ctx: &mut Context<Self>) {
        let limits = self.limits;
        let Some(state) = self.mailboxes.get_mut(&envelope.mailbox) else {
            return;
        };
        if !state.park(Arc::clone(&envelope), &limits) {
            return;
        }
        let commit = self.store.commit(vec![StoreOp::Park(envelope)]);
        ctx.spawn(commit.into_actor(self).map(|result, _, _| {
            if let Err(err) = result {
                // Still parked in memory; only a restart before room frees would lose it, and
                // the origin's feed still offers it to a resync.
                tracing::warn!(%err, "parked replica not stored");
            }
        }));
    }

    /// Runs the rules again on the parked replicas of `mailbox` and stores those now accepted.
    fn retry_parked(&mut self, mailbox: MailboxKey, ctx: &mut Context<Self>) {
        let limits = self.limits;
        let Some(state) = self.mailboxes.get_mut(&mailbox) else {
            return;
        };
        if state.parked_len() == 0 {
            return;
        }
        let unparked = state.retry_parked(&limits);
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
        self.metrics
            .pending_envelopes
            .add(unparked.accepted.len() as i64);
        let accepted = unparked.accepted;
        let commit = self.store.commit(ops);
        ctx.spawn(commit.into_actor(self).map(move |result, shard, _| {
            let Some(state) = shard.mailboxes.get_mut(&mailbox) else {
                return;
            };
            for envelope in accepted {
                if result.is_ok() {
                    state.mark_committed(&envelope.msg_id);
                    shard.metrics.replica_accepted_total.inc();
                } else if state.remove_uncommitted(&envelope) {
                    shard.metrics.pending_envelopes.dec();
                    state.park(envelope, &limits);
                }
            }
        }));
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
        let Deposit {
            envelope,
            origin,
            reply,
        } = msg;
        let limits = self.limits;
        let state = self.mailbox(envelope.mailbox, now_unix());
        let decision = state.decide(&envelope, &limits);
        if decision == Decision::Duplicate && !state.is_committed(&envelope.msg_id) {
            // The first copy's write is still in flight: "duplicate" must not answer before it is
            // durable. The writer is FIFO, so once an (empty) commit queued now completes, the
            // first one has completed too, and its outcome is in the state.
            let barrier = self.store.commit(Vec::new());
            ctx.spawn(barrier.into_actor(self).map(move |result, shard, _| {
                let durable = result.is_ok()
                    && shard
                        .mailboxes
                        .get(&envelope.mailbox)
                        .is_some_and(|state| state.is_committed(&envelope.msg_id));
                let outcome = if durable {
                    shard.count_decision(Decision::Duplicate, &origin);
                    Ok(Decision::Duplicate)
                } else {
                    Err(ShardError::Unavailable(
                        "the first copy was not stored".into(),
                    ))
                };
                let _ = reply.send(outcome);
            }));
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
            self.release_if_empty(&envelope.mailbox);
            let _ = reply.send(Ok(decision));
            return;
        }
        // Reserve the slot now, so that the next deposit already sees it.
        state.insert(Arc::clone(&envelope), false);
        self.metrics.pending_envelopes.inc();
        let commit = self
            .store
            .commit(vec![StoreOp::PutEnvelope(Arc::clone(&envelope))]);
        ctx.spawn(commit.into_actor(self).map(move |result, shard, _| {
            let outcome = match result {
                Ok(_) => {
                    if let Some(state) = shard.mailboxes.get_mut(&envelope.mailbox) {
                        state.mark_committed(&envelope.msg_id);
                    }
                    shard.count_decision(Decision::Accept, &origin);
                    if origin == Origin::Client {
                        shard.sink.envelope_stored(&envelope);
                    }
                    Ok(Decision::Accept)
                }
                Err(err) => {
                    if let Some(state) = shard.mailboxes.get_mut(&envelope.mailbox)
                        && state.remove_uncommitted(&envelope)
                    {
                        shard.metrics.pending_envelopes.dec();
                    }
                    shard.release_if_empty(&envelope.mailbox);
                    shard
                        .metrics
                        .deposit_total
                        .with_label_values(&["unavailable"])
                        .inc();
                    Err(ShardError::from(err))
                }
            };
            let _ = reply.send(outcome);
        }));
    }
}

impl Handler<Poll> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Poll, ctx: &mut Self::Context) {
        let now = now_unix();
        let limits = self.limits;
        let Poll { request, reply } = msg;
        let mailbox = request.mailbox;
        let state = self.mailbox(mailbox, now);
        let until = match state.use_nonce(&request.nonce, now, &limits) {
            Ok(until) => until,
            Err(refusal) => {
                self.release_if_empty(&mailbox);
                let _ = reply.send(Ok(Err(refusal)));
                return;
            }
        };
        let view = state.poll(usize::try_from(request.limit).unwrap_or(usize::MAX), now);
        // The nonce is spent in memory at once; the reply waits until it is spent on disk too,
        // so that a restart cannot make a captured poll replayable.
        let commit = self.store.commit(vec![StoreOp::PutNonce {
            mailbox,
            nonce: request.nonce.into_boxed_str(),
            until,
        }]);
        ctx.spawn(commit.into_actor(self).map(move |result, _, _| {
            let _ = reply.send(result.map(|_| Ok(view)).map_err(ShardError::from));
        }));
    }
}

impl Handler<Acknowledge> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Acknowledge, ctx: &mut Self::Context) {
        let Acknowledge { ack, origin, reply } = msg;
        let max_ttl_s = self.max_ttl_s;
        let state = self.mailbox(ack.mailbox, now_unix());
        let effect = state.acknowledge(&ack, max_ttl_s);
        let report = AckReport {
            removed: effect.removed.len(),
            unknown: effect.unknown,
        };
        self.metrics
            .pending_envelopes
            .sub(effect.removed.len() as i64);
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
        let commit = self.store.commit(vec![op]);
        ctx.spawn(commit.into_actor(self).map(move |result, shard, _| {
            let outcome = match result {
                Ok(_) => {
                    if origin == Origin::Client {
                        shard.sink.ack_applied(&ack);
                    }
                    Ok(report)
                }
                // The ack stays applied in memory (it is idempotent and the client will retry);
                // the store catches up with the retry.
                Err(err) => Err(ShardError::from(err)),
            };
            let _ = reply.send(outcome);
        }));
    }
}

impl Handler<Restore> for MailboxShard {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Self::Context) {
        let limits = self.limits;
        let now = now_unix();
        for (mailbox, msg_id, until) in msg.tombstones {
            self.mailbox(mailbox, now).restore_tombstone(msg_id, until);
        }
        for envelope in msg.envelopes {
            let state = self.mailbox(envelope.mailbox, now);
            // The store holds only what the rules accepted, but a tombstone written after the
            // envelope wins, exactly as it did before the restart.
            if state.decide(&envelope, &MailboxLimits::UNLIMITED) == Decision::Accept {
                state.insert(envelope, true);
                self.metrics.pending_envelopes.inc();
            }
        }
        let mut nonces = msg.nonces;
        nonces.sort_by_key(|(_, _, until)| *until);
        for (mailbox, nonce, until) in nonces {
            self.mailbox(mailbox, now).restore_nonce(nonce, until);
        }
        for envelope in msg.parked {
            let state = self.mailbox(envelope.mailbox, now);
            state.park(envelope, &limits);
        }
    }
}
