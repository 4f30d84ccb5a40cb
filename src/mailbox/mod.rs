//! Mailboxes: the rules of SPEC §4 ([`rules`], pure: decisions and the store operations they
//! need), the actors that own them ([`shard`]),
//! each shard's cache of mailboxes in memory ([`cache`]: loading, waiting work, eviction), and
//! the bodies a poll delivers ([`bodies`]: mailboxes hold metadata only; the JSON comes from a
//! bounded cache or the store).
//!
//! Mailboxes are spread over one [`shard::MailboxShard`] per core, each on its own arbiter, by a
//! keyed hash of the mailbox key ([`MailboxRouter`]). Every request for a mailbox — a client's
//! deposit, poll or ack, a peer's replica or ack — goes to the one shard that owns it, through
//! a bounded queue (`try_send`; full means 503). There is no lock around cap state: a shard
//! processes one message at a time. A change is stored with its origin (a client of this node or
//! a peer); the peer pushers read the client changes from the store's log, so the shards know
//! nothing of peers. Long polls wait in their mailbox's shard until mail is durable there
//! ([`waiting`]).

pub mod bodies;
pub mod cache;
pub mod rules;
pub mod shard;
pub mod waiting;

use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, MailboxKey, PollRequest};
use crate::store::StoreHandle;
use actix::prelude::*;
use bodies::{EnvelopeBodies, PolledMail};
use rules::{Decision, MailboxLimits, NonceRefusal};
use shard::{AckReport, MailboxShard, Preload, ReleaseWaitingPolls, ShardError};
use std::hash::BuildHasher;
use std::sync::Arc;

/// Where a deposit or ack came from: decides the metrics it counts in and whether it is pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node: stored as a client change, which the pushers send to every peer.
    Client,
    /// A peer relay (by its normalized URL), pushed or pulled: never pushed on (the feeds carry
    /// it further).
    Peer(Arc<str>),
}

/// Finds the shard that owns a mailbox.
#[derive(Clone)]
pub struct MailboxRouter {
    shards: Arc<[Addr<MailboxShard>]>,
    /// Keyed per process, so that nobody can choose keys that all land on one shard.
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
    bodies: Arc<EnvelopeBodies>,
    store: Arc<dyn crate::store::Store>,
}

impl MailboxRouter {
    /// Starts `count` shards, each on its own arbiter (thread), and has them load the mailboxes
    /// in `preload` (those holding parked replicas). At most `max_waiting_polls` long polls wait
    /// at once, over all shards; polls find recent envelopes' JSON in a cache of
    /// `body_cache_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        count: usize,
        limits: MailboxLimits,
        max_ttl_s: u64,
        idle: std::time::Duration,
        store: StoreHandle,
        metrics: Arc<Metrics>,
        preload: Vec<MailboxKey>,
        max_waiting_polls: usize,
        body_cache_bytes: usize,
    ) -> Result<Self, MailboxError> {
        let count = count.max(1);
        let bodies = Arc::new(EnvelopeBodies::new(body_cache_bytes));
        let store_for_reads = Arc::clone(store.store());
        let wait_budget = waiting::WaitBudget::new(max_waiting_polls, Arc::clone(&metrics));
        let shards: Vec<Addr<MailboxShard>> = (0..count)
            .map(|_| {
                let arbiter = Arbiter::new();
                let (store, metrics, wait_budget, bodies) = (
                    store.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&wait_budget),
                    Arc::clone(&bodies),
                );
                MailboxShard::start_in_arbiter(&arbiter.handle(), move |_| {
                    MailboxShard::new(limits, max_ttl_s, idle, store, metrics, wait_budget, bodies)
                })
            })
            .collect();
        let router = Self {
            shards: shards.into(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
            bodies,
            store: store_for_reads,
        };
        let mut per_shard: Vec<Vec<MailboxKey>> = vec![Vec::new(); count];
        for mailbox in preload {
            per_shard[router.index_of(&mailbox)].push(mailbox);
        }
        for (shard, mailboxes) in router.shards.iter().zip(per_shard) {
            shard.send(Preload(mailboxes)).await?;
        }
        Ok(router)
    }

    fn index_of(&self, mailbox: &MailboxKey) -> usize {
        (self.hasher.hash_one(mailbox) % self.shards.len() as u64) as usize
    }

    /// Shutdown: every shard answers its waiting long polls now (SPEC §6.2: "released with its
    /// normal reply") and parks no new one. Returns once every shard has done so.
    pub async fn release_waiting_polls(&self) {
        let released =
            futures_util::future::join_all(self.shards.iter().map(|s| s.send(ReleaseWaitingPolls)));
        for result in released.await {
            if let Err(err) = result {
                tracing::warn!(%err, "a mailbox shard could not release its waiting polls");
            }
        }
    }

    /// The shard that owns `mailbox`.
    pub fn shard(&self, mailbox: &MailboxKey) -> &Addr<MailboxShard> {
        &self.shards[self.index_of(mailbox)]
    }
}

/// The shards could not be reached (start-up failure).
#[derive(Debug, thiserror::Error)]
#[error("mailbox shard unreachable: {0}")]
pub struct MailboxError(#[from] actix::MailboxError);

impl MailboxRouter {
    /// Sends `message` to the shard of `mailbox` at once, without waiting for queue space (a
    /// full queue is [`ShardError::Overloaded`]); the returned future waits for the answer.
    /// Sending eagerly keeps the order of calls, which batch appliers rely on.
    fn ask<M, T, F>(
        &self,
        mailbox: MailboxKey,
        make: F,
    ) -> impl Future<Output = Result<T, ShardError>> + 'static + use<M, T, F>
    where
        F: FnOnce(tokio::sync::oneshot::Sender<T>) -> M,
        M: Message<Result = ()> + Send + 'static,
        MailboxShard: Handler<M>,
        T: 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .shard(&mailbox)
            .try_send(make(reply))
            .map_err(|err| match err {
                SendError::Full(_) => {
                    self.metrics.overload_total.inc();
                    ShardError::Overloaded
                }
                SendError::Closed(_) => ShardError::Unavailable("mailbox shard stopped".into()),
            });
        async move {
            sent?;
            answer
                .await
                .map_err(|_| ShardError::Unavailable("mailbox shard dropped the request".into()))
        }
    }

    /// SPEC §4 for one envelope (already parsed and verified).
    pub fn deposit(
        &self,
        envelope: Arc<Envelope>,
        origin: Origin,
    ) -> impl Future<Output = Result<Decision, ShardError>> + 'static + use<> {
        let mailbox = envelope.mailbox;
        let answer = self.ask(mailbox, |reply| shard::Deposit {
            envelope,
            origin,
            reply,
        });
        async move { answer.await? }
    }

    /// SPEC §6.2 for a verified poll request: the shard picks the envelopes (and may hold a
    /// long poll), then their JSON comes from the body cache or the store.
    pub fn poll(
        &self,
        request: PollRequest,
    ) -> impl Future<Output = Result<Result<PolledMail, NonceRefusal>, ShardError>> + 'static + use<>
    {
        let mailbox = request.mailbox;
        let answer = self.ask(mailbox, |reply| shard::Poll { request, reply });
        let (bodies, store) = (Arc::clone(&self.bodies), Arc::clone(&self.store));
        async move {
            let view = match answer.await?? {
                Ok(view) => view,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let messages = bodies
                .fetch(store.as_ref(), mailbox, view.messages)
                .map_err(|err| ShardError::Unavailable(err.to_string()))?;
            Ok(Ok(PolledMail {
                messages,
                pending: view.pending,
                has_more: view.has_more,
            }))
        }
    }

    /// SPEC §6.3 for a verified ack object.
    pub fn acknowledge(
        &self,
        ack: Arc<AckObject>,
        origin: Origin,
    ) -> impl Future<Output = Result<AckReport, ShardError>> + 'static + use<> {
        let mailbox = ack.mailbox;
        let answer = self.ask(mailbox, |reply| shard::Acknowledge { ack, origin, reply });
        async move { answer.await? }
    }
}
