//! `PeerSync`: one per peer; pulls the peer's change feed (SPEC §7.3) from a durable cursor and
//! applies every entry exactly as if it had been pushed (SPEC §7.4 "Pull").
//!
//! The cursor is `(epoch, seq)`, stored in the node's store under `cursor/{peer url}`. A page is
//! applied in feed order (entries are sent to the mailbox shards eagerly, so per-mailbox order
//! holds), and the cursor moves past the page only when every entry got an answer; an overloaded
//! shard leaves it where it was, and the page is simply applied again (every operation is
//! idempotent). A feed from another epoch restarts from 0.

use super::client::{PeerCallError, PeerClient, PeerLink};
use super::policy::CallVerdict;
use crate::mailbox::shard::ShardError;
use crate::mailbox::{MailboxRouter, Origin};
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, EnvelopeLimits, now_unix};
use crate::store::{StoreHandle, StoreOp};
use actix::prelude::*;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries asked for per feed request.
pub const FEED_PAGE_LIMIT: usize = 256;
/// Most pages pulled in one round, so one busy peer cannot hog the node.
const MAX_PAGES_PER_ROUND: usize = 64;

/// Where this node is in a peer's feed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub epoch: Option<String>,
    pub seq: u64,
}

impl Cursor {
    fn meta_key(peer_url: &str) -> String {
        format!("cursor/{peer_url}")
    }

    fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.epoch.as_deref().unwrap_or("-"), self.seq).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (epoch, seq) = text.split_once(' ')?;
        Some(Self {
            epoch: (epoch != "-").then(|| epoch.to_string()),
            seq: seq.parse().ok()?,
        })
    }

    /// Reads the saved cursor for `peer_url` (a fresh one if none or unreadable).
    pub fn load(store: &StoreHandle, peer_url: &str) -> Self {
        match store.store().get_meta(&Self::meta_key(peer_url)) {
            Ok(Some(bytes)) => Self::decode(&bytes).unwrap_or_default(),
            Ok(None) => Self::default(),
            Err(err) => {
                tracing::warn!(peer = peer_url, %err, "cannot read sync cursor; starting from 0");
                Self::default()
            }
        }
    }
}

/// A page of a peer's change feed (SPEC §7.3), as the puller reads it; entries still unparsed.
#[derive(Debug, Deserialize)]
pub struct FeedReply {
    pub epoch: String,
    pub next: u64,
    #[serde(default)]
    pub more: bool,
    pub changes: Vec<serde_json::Value>,
}

impl FeedReply {
    /// Reads a feed page from the peer's reply body.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// One feed entry, checked exactly like a pushed replica.
#[derive(Debug)]
pub enum FeedItem {
    Envelope(Envelope),
    Ack(AckObject),
    /// An envelope or ack that fails parsing, its signature or its time window.
    Refused(crate::protocol::ProtocolError),
    /// Neither `envelope` nor `ack`.
    Unknown,
}

impl FeedItem {
    /// Takes the entry's `envelope` or `ack` out of `change` and validates it at `now`.
    pub fn from_change(mut change: serde_json::Value, limits: &EnvelopeLimits, now: u64) -> Self {
        if let Some(value) = change.get_mut("envelope").map(serde_json::Value::take) {
            Envelope::replica(value, limits, now).map_or_else(Self::Refused, Self::Envelope)
        } else if let Some(value) = change.get_mut("ack").map(serde_json::Value::take) {
            AckObject::replica(value, now, limits.max_ttl_s).map_or_else(Self::Refused, Self::Ack)
        } else {
            Self::Unknown
        }
    }
}

/// Everything one pull round needs; cloned into the round's future.
#[derive(Clone)]
struct Puller {
    peer_url: Arc<str>,
    client: PeerClient,
    store: StoreHandle,
    mailboxes: MailboxRouter,
    limits: EnvelopeLimits,
    metrics: Arc<Metrics>,
}

/// A shard's answer to one applied feed entry; only failure matters here.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ShardError>>>>;

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Call(#[from] PeerCallError),
    #[error("bad feed reply: {0}")]
    BadFeed(String),
    #[error("local: {0}")]
    Local(String),
}

impl Puller {
    /// Pulls pages until the feed has no more (or the round's page budget is spent).
    async fn round(self, mut cursor: Cursor) -> (Cursor, Result<(), SyncError>) {
        for _ in 0..MAX_PAGES_PER_ROUND {
            match self.page(&cursor).await {
                Ok((next, more)) => {
                    cursor = next;
                    if !more {
                        return (cursor, Ok(()));
                    }
                }
                Err(err) => return (cursor, Err(err)),
            }
        }
        (cursor, Ok(()))
    }

    async fn page(&self, cursor: &Cursor) -> Result<(Cursor, bool), SyncError> {
        let path = format!(
            "/api/mesh/dm/changes?since={}&limit={FEED_PAGE_LIMIT}",
            cursor.seq
        );
        let bytes = self.client.get(&path).await?;
        let feed = FeedReply::parse(&bytes).map_err(|e| SyncError::BadFeed(e.to_string()))?;
        if cursor.epoch.as_deref().is_some_and(|e| e != feed.epoch) {
            tracing::info!(peer = %self.peer_url, epoch = %feed.epoch, "peer store has a new epoch; reading its feed from 0");
            return Ok((
                Cursor {
                    epoch: Some(feed.epoch),
                    seq: 0,
                },
                true,
            ));
        }
        self.apply(feed.changes).await?;
        let next = Cursor {
            epoch: Some(feed.epoch),
            seq: feed.next.max(cursor.seq),
        };
        if next != *cursor {
            self.store
                .commit(vec![StoreOp::PutMeta {
                    key: Cursor::meta_key(&self.peer_url),
                    value: next.encode(),
                }])
                .await
                .map_err(|e| SyncError::Local(e.to_string()))?;
        }
        Ok((next, feed.more))
    }

    /// Applies feed entries in order, as if pushed.
    async fn apply(&self, changes: Vec<serde_json::Value>) -> Result<(), SyncError> {
        let now = now_unix();
        let origin = Origin::Peer(Arc::clone(&self.peer_url));
        let mut answers = Vec::with_capacity(changes.len());
        let mut invalid = 0usize;
        for change in changes {
            match FeedItem::from_change(change, &self.limits, now) {
                FeedItem::Envelope(envelope) => {
                    let answer = self.mailboxes.deposit(Arc::new(envelope), origin.clone());
                    answers.push(Box::pin(async move { answer.await.map(drop) }) as Answer);
                }
                FeedItem::Ack(ack) => {
                    let answer = self.mailboxes.acknowledge(Arc::new(ack), origin.clone());
                    answers.push(Box::pin(async move { answer.await.map(drop) }) as Answer);
                }
                FeedItem::Refused(err) => {
                    invalid += 1;
                    tracing::debug!(peer = %self.peer_url, %err, "feed entry refused");
                }
                FeedItem::Unknown => invalid += 1,
            }
        }
        let applied = answers.len();
        for answer in answers {
            answer.await.map_err(|e| SyncError::Local(e.to_string()))?;
        }
        if invalid > 0 {
            tracing::warn!(peer = %self.peer_url, invalid, "feed entries refused (bad shape, signature or time)");
        }
        self.metrics
            .sync_applied_total
            .with_label_values(&[&self.peer_url])
            .inc_by(applied as u64);
        Ok(())
    }
}

pub struct PeerSync {
    link: PeerLink,
    interval: Duration,
    store: StoreHandle,
    mailboxes: MailboxRouter,
    limits: EnvelopeLimits,
    metrics: Arc<Metrics>,
    cursor: Cursor,
    puller: Option<Puller>,
    in_flight: bool,
    last_success: Instant,
    failures: u32,
    /// No pull before this: the peer's `Retry-After` on its last refusal (429 or 5xx).
    not_before: Option<Instant>,
}

impl PeerSync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        link: PeerLink,
        interval: Duration,
        store: StoreHandle,
        mailboxes: MailboxRouter,
        limits: EnvelopeLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cursor = Cursor::load(&store, link.url());
        metrics
            .sync_applied_total
            .with_label_values(&[link.url()])
            .inc_by(0);
        Self {
            link,
            interval,
            store,
            mailboxes,
            limits,
            metrics,
            cursor,
            puller: None,
            in_flight: false,
            last_success: Instant::now(),
            failures: 0,
            not_before: None,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.metrics
            .peer_sync_lag_seconds
            .with_label_values(&[&self.link.peer.url])
            .set(self.last_success.elapsed().as_secs() as i64);
        if self.in_flight || self.not_before.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(puller) = self.puller.clone() else {
            return;
        };
        self.in_flight = true;
        let round = puller.round(self.cursor.clone());
        ctx.spawn(round.into_actor(self).map(|(cursor, result), sync, _| {
            sync.in_flight = false;
            sync.cursor = cursor;
            match result {
                Ok(()) => {
                    sync.failures = 0;
                    sync.not_before = None;
                    sync.last_success = Instant::now();
                    sync.metrics.status.update_peer(sync.link.url(), |peer| {
                        peer.last_complete_pull = Some(crate::status::Event::now("ok"));
                        peer.last_pull_error = None;
                    });
                }
                Err(err) => {
                    sync.failures += 1;
                    sync.metrics.status.update_peer(sync.link.url(), |peer| {
                        peer.last_pull_error = Some(crate::status::Event::now(err.to_string()));
                    });
                    let verdict = match &err {
                        SyncError::Call(call) => Some(call.verdict()),
                        _ => None,
                    };
                    if let Some(CallVerdict::Retry {
                        retry_after: Some(wait),
                    }) = verdict
                    {
                        sync.not_before = Some(Instant::now() + wait);
                    }
                    match (&err, verdict) {
                        (SyncError::Call(call), Some(CallVerdict::AuthRefused)) => {
                            sync.link.log_auth_refused("feed pull", call, sync.failures);
                        }
                        // The first failure and then every 20th, not every interval.
                        _ if sync.failures == 1 || sync.failures.is_multiple_of(20) => {
                            tracing::warn!(peer = %sync.link.peer.url, %err, failures = sync.failures, "feed pull failed");
                        }
                        _ => {}
                    }
                }
            }
        }));
    }
}

impl Actor for PeerSync {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.puller = Some(Puller {
            peer_url: Arc::from(self.link.peer.url.as_str()),
            client: self.link.client(),
            store: self.store.clone(),
            mailboxes: self.mailboxes.clone(),
            limits: self.limits,
            metrics: Arc::clone(&self.metrics),
        });
        self.tick(ctx);
        ctx.run_interval(self.interval, |sync, ctx| sync.tick(ctx));
    }
}
