//! `PeerSync`: one per peer; pulls the peer's change feed (SPEC §7.3) from a durable cursor and
//! applies every entry exactly as if it had been pushed (SPEC §7.4 "Pull"), through the same
//! [`ReplicaApplier`] as the push route.
//!
//! Pull is the repair path, not a second copy of the traffic: the request names how far the
//! peer's own pushes reached ([`PushedThrough`], the `pushed_through` extension), so a dmrelay
//! peer leaves those out of the page; and each page is asked for as signatures first (`digest=1`),
//! so entries this node holds already (replicas that came from a third node, say) cost no body.
//! Only a page with a new signature is fetched again in full, and its known entries are still
//! skipped by signature before any check. A peer that ignores `digest` sends its items at once.
//!
//! The cursor is `(epoch, seq)`, stored in the node's store under `cursor/{peer url}`. A page is
//! applied in feed order (entries are sent to the mailbox shards eagerly, so per-mailbox order
//! holds), and the cursor moves past the page only when every entry got an answer; an overloaded
//! shard leaves it where it was, and the page is simply applied again (every operation is
//! idempotent). A feed from another epoch restarts from 0.

use super::apply::{Applied, FeedChange, ReplicaApplier};
use super::client::{PeerCallError, PeerClient, PeerLink};
use super::health::LinkHealth;
use super::policy::CallVerdict;
use super::pushed::PushedThrough;
use crate::mailbox::Origin;
use crate::metrics::Metrics;
use crate::protocol::now_unix;
use crate::protocol::wire::{PATH_CHANGES, QUERY_DIGEST, QUERY_PUSHED_THROUGH, QUERY_UNTIL};
use crate::store::{StoreHandle, StoreOp};
use actix::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries asked for per feed request.
pub const FEED_PAGE_LIMIT: usize = 256;
/// Pushes that moved the mark this recently count as flowing (or within twice the pull interval,
/// when that is longer).
const PUSHES_FLOWING_MIN: Duration = Duration::from_secs(1);
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
    /// Each entry still raw: most are recognized by their signature alone.
    pub changes: Vec<Box<RawValue>>,
}

impl FeedReply {
    /// Reads a feed page from the peer's reply body.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Everything one pull round needs; cloned into the round's future.
#[derive(Clone)]
struct Puller {
    peer_url: Arc<str>,
    client: PeerClient,
    store: StoreHandle,
    applier: ReplicaApplier,
    pushed: Arc<PushedThrough>,
    interval: Duration,
    metrics: Arc<Metrics>,
}

/// Stops the puller (node shutdown); a round in flight is dropped, its cursor not moved.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPulling;

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

    /// The feed request for the entries after `since` (up to `until`, leaving out the peer's
    /// own clients' changes through `pushed_through`), as digests or in full.
    fn feed_path(
        since: u64,
        until: Option<u64>,
        pushed_through: Option<u64>,
        digest: bool,
    ) -> String {
        let mut path = format!("{PATH_CHANGES}?since={since}&limit={FEED_PAGE_LIMIT}");
        if let Some(until) = until {
            path.push_str(&format!("&{QUERY_UNTIL}={until}"));
        }
        if let Some(through) = pushed_through {
            path.push_str(&format!("&{QUERY_PUSHED_THROUGH}={through}"));
        }
        if digest {
            path.push_str(&format!("&{QUERY_DIGEST}=1"));
        }
        path
    }

    async fn fetch(&self, path: &str) -> Result<FeedReply, SyncError> {
        let bytes = self.client.get(path).await?;
        FeedReply::parse(&bytes).map_err(|e| SyncError::BadFeed(e.to_string()))
    }

    /// The peer's store is a new one: its feed is read again from 0.
    fn new_epoch(&self, epoch: String) -> (Cursor, bool) {
        tracing::info!(peer = %self.peer_url, epoch = %epoch, "peer store has a new epoch; reading its feed from 0");
        (
            Cursor {
                epoch: Some(epoch),
                seq: 0,
            },
            true,
        )
    }

    async fn page(&self, cursor: &Cursor) -> Result<(Cursor, bool), SyncError> {
        // While the peer's pushes are flowing, read only up to where they reached: the rest is
        // on its way by push, and fetching it too would be a second copy of the traffic.
        let window = (self.interval * 2).max(PUSHES_FLOWING_MIN);
        let until = self.pushed.flowing_until(
            &self.peer_url,
            cursor.epoch.as_deref(),
            window,
            Instant::now(),
        );
        let pushed_through =
            self.pushed
                .skip_for(&self.peer_url, cursor.epoch.as_deref(), cursor.seq);
        // Signatures first: what a third node pushed here already is not fetched again.
        let digest = self
            .fetch(&Self::feed_path(cursor.seq, until, pushed_through, true))
            .await?;
        if cursor.epoch.as_deref().is_some_and(|e| e != digest.epoch) {
            return Ok(self.new_epoch(digest.epoch));
        }
        let label = [&*self.peer_url];
        // One look at each entry: is it a digest, and of something this node does not hold?
        let (mut digests, mut new) = (false, false);
        for change in &digest.changes {
            if let Some(FeedChange::Digest { sig }) = FeedChange::of(change) {
                digests = true;
                new |= !self.applier.knows_signature(sig);
            }
        }
        let (feed, more) = if new {
            // Something new: the same range again, in full (what it holds that is known here
            // is still skipped by signature).
            let range_end = until.map_or(digest.next, |until| until.min(digest.next));
            let full = self
                .fetch(&Self::feed_path(
                    cursor.seq,
                    Some(range_end),
                    pushed_through,
                    false,
                ))
                .await?;
            if full.epoch != digest.epoch {
                return Ok(self.new_epoch(full.epoch));
            }
            self.metrics
                .sync_full_pages_total
                .with_label_values(&label)
                .inc();
            let more = digest.more || full.more;
            (full, more)
        } else {
            let counter = if digests || digest.changes.is_empty() {
                &self.metrics.sync_digest_pages_total
            } else {
                // A peer that ignores `digest` sent its items.
                &self.metrics.sync_full_pages_total
            };
            counter.with_label_values(&label).inc();
            let more = digest.more;
            (digest, more)
        };
        self.apply(feed.changes).await?;
        let next = Cursor {
            epoch: Some(feed.epoch),
            seq: feed.next.max(cursor.seq),
        };
        if let Some(epoch) = &next.epoch {
            self.pushed.pulled(&self.peer_url, epoch, next.seq);
        }
        if next != *cursor {
            self.store
                .commit(vec![StoreOp::PutMeta {
                    key: Cursor::meta_key(&self.peer_url),
                    value: next.encode(),
                }])
                .await
                .map_err(|e| SyncError::Local(e.to_string()))?;
        }
        Ok((next, more))
    }

    /// Applies feed entries in order, as if pushed; those applied here before are recognized by
    /// their signature and skipped before any other parsing or check.
    async fn apply(&self, changes: Vec<Box<RawValue>>) -> Result<(), SyncError> {
        let (mut unknown, mut known) = (0u64, 0u64);
        let mut replicas = Vec::new();
        for change in &changes {
            let item = match FeedChange::of(change) {
                Some(FeedChange::Item(item)) => item,
                // A digest entry in a page asked for in full, or one this node holds.
                Some(FeedChange::Digest { sig }) => {
                    if self.applier.knows_signature(sig) {
                        known += 1;
                    } else {
                        unknown += 1;
                    }
                    continue;
                }
                None => {
                    unknown += 1;
                    continue;
                }
            };
            if self.applier.knows(&item) {
                known += 1;
                continue;
            }
            match item.into_replica() {
                Some(replica) => replicas.push(replica),
                None => unknown += 1,
            }
        }
        let origin = Origin::Peer(Arc::clone(&self.peer_url));
        let applied = self
            .applier
            .apply(replicas, &origin, now_unix())
            .await
            .map_err(|e| SyncError::Local(e.to_string()))?;
        let (mut taken, mut refused) = (0u64, unknown);
        for outcome in &applied {
            match outcome {
                Applied::Envelope(Ok(_)) | Applied::Ack(Ok(_)) => taken += 1,
                Applied::Envelope(Err(err)) | Applied::Ack(Err(err)) => {
                    refused += 1;
                    tracing::debug!(peer = %self.peer_url, %err, "feed entry refused");
                }
            }
        }
        if refused > 0 {
            tracing::warn!(peer = %self.peer_url, refused, "feed entries refused (bad shape, signature or time)");
        }
        let label = [&*self.peer_url];
        self.metrics
            .sync_applied_total
            .with_label_values(&label)
            .inc_by(taken);
        self.metrics
            .sync_known_total
            .with_label_values(&label)
            .inc_by(known);
        Ok(())
    }
}

pub struct PeerSync {
    link: PeerLink,
    interval: Duration,
    store: StoreHandle,
    applier: ReplicaApplier,
    pushed: Arc<PushedThrough>,
    /// Breaker and backoff, shared with the peer's pusher: a pull is a call like any other.
    health: Arc<LinkHealth>,
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
    pub fn new(
        link: PeerLink,
        interval: Duration,
        store: StoreHandle,
        applier: ReplicaApplier,
        pushed: Arc<PushedThrough>,
        health: Arc<LinkHealth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cursor = Cursor::load(&store, link.url());
        if let Some(epoch) = &cursor.epoch {
            pushed.pulled(link.url(), epoch, cursor.seq);
        }
        for counter in [
            &metrics.sync_applied_total,
            &metrics.sync_known_total,
            &metrics.sync_digest_pages_total,
            &metrics.sync_full_pages_total,
            &metrics.sync_rounds_total,
            &metrics.sync_error_total,
        ] {
            counter.with_label_values(&[link.url()]).inc_by(0);
        }
        Self {
            link,
            interval,
            store,
            applier,
            pushed,
            health,
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
                    sync.health.pull_succeeded();
                    sync.metrics
                        .sync_rounds_total
                        .with_label_values(&[sync.link.url()])
                        .inc();
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
                    sync.metrics
                        .sync_error_total
                        .with_label_values(&[sync.link.url()])
                        .inc();
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
                        sync.health.pull_failed(Instant::now(), Some(wait));
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
            applier: self.applier.clone(),
            pushed: Arc::clone(&self.pushed),
            interval: self.interval,
            metrics: Arc::clone(&self.metrics),
        });
        self.tick(ctx);
        ctx.run_interval(self.interval, |sync, ctx| sync.tick(ctx));
    }
}

impl Handler<StopPulling> for PeerSync {
    type Result = ();

    fn handle(&mut self, _: StopPulling, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
