//! `PeerPusher`: one per peer; sends what this node's clients deposited and acknowledged to
//! that peer, in log order, in batches (SPEC §7.4 "Push").
//!
//! The source is the store's change log, not a queue: the pusher reads the client changes after
//! its own durable cursor (`push/{peer url}` in the store's metadata), so nothing is lost to a
//! restart, a kill -9 or a burst. The writer announces each commit on a watch channel
//! ([`StoreHandle::last_seq`]); a pusher that has caught up waits on it, so a push starts the
//! moment a commit is durable. What was committed a moment ago it takes from the writer's
//! in-memory window of newest client changes ([`crate::store::recent`]); only a pusher whose
//! cursor lies before that window (a slow or dead peer, a restart) scans the log in the store.
//! A new peer starts at the head of the log (its pull of our feed repairs the history).
//!
//! What was read waits in a small look-ahead (at most [`READ_AHEAD_MAX`] changes). Its head goes
//! out as one batch of same-kind items, limited by the token bucket, and carrying its place in
//! the log ([`LogPosition`]) so that the peer's pull can skip what the push delivered. Each reply
//! is classified by [`CallVerdict`]: a failure (transport, 5xx, 429, and 403, which is also
//! counted and logged as an auth problem) keeps the batch and retries it after `retry_delay`
//! (exponential, jittered, growing to its maximum, never before the peer's `Retry-After`);
//! enough failures in a row open the circuit breaker for the cooldown. Breaker and backoff are
//! the link's ([`LinkHealth`]), shared with the peer's puller, whose next success ends them.
//! `rejected` results, any other 4xx and replies that are not the protocol's are final (counted
//! as rejected; the peer's pull of our feed repairs them). The cursor moves past a batch once it is final; it is saved
//! at most once per [`CURSOR_SAVE_INTERVAL`] and when the pusher stops, so a kill -9 sends at
//! most that much again (replicas are idempotent). Nothing here touches another peer's pusher.

use super::client::{PeerCallError, PeerClient, PeerLink};
use super::health::LinkHealth;
use super::policy::{CallVerdict, TokenBucket};
use crate::metrics::Metrics;
use crate::protocol::now_unix;
use crate::protocol::wire::{
    LogPosition, MAX_ITEMS_PER_BATCH, MAX_PEER_BATCH_BYTES, PATH_REPLICATE_ACK,
    PATH_REPLICATE_ENVELOPE,
};
use crate::store::{FeedEntry, LogFilter, StoreHandle, StoreOp};
use actix::prelude::*;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most client changes read from the log and not yet sent (the look-ahead).
pub const READ_AHEAD_MAX: usize = 1024;
/// How often, at most, the cursor is written to the store while pushing.
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// At shutdown, how long a pusher waits for the answer to the batch it has in flight before it
/// saves its cursor: a batch the peer took but whose answer came too late is sent again at the
/// next start (replicas are idempotent, so that costs a duplicate, not a loss).
const STOP_WAIT_FOR_BATCH: Duration = Duration::from_secs(2);
/// Wait before reading the log again after a failed read (the store is in an outage).
const READ_RETRY: Duration = Duration::from_secs(1);

/// One client change read from the log.
#[derive(Debug)]
struct LogItem {
    seq: u64,
    envelope: bool,
    json: Arc<str>,
}

impl LogItem {
    fn is_envelope(&self) -> bool {
        self.envelope
    }

    fn json(&self) -> &str {
        &self.json
    }
}

impl From<(u64, FeedEntry)> for LogItem {
    fn from((seq, entry): (u64, FeedEntry)) -> Self {
        let (envelope, json) = match entry {
            FeedEntry::Envelope(json) => (true, json),
            FeedEntry::Ack(json) => (false, json),
        };
        Self {
            seq,
            envelope,
            json: json.into(),
        }
    }
}

/// Saves the cursor and stops the pusher (node shutdown, before the store is flushed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPushing;

#[derive(Deserialize)]
struct BatchReply {
    results: Vec<ItemResult>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// A batch on its way: how many items of the look-ahead, and the log position it completes.
struct InFlight {
    count: usize,
    through: u64,
}

pub struct PeerPusher {
    link: PeerLink,
    client: Option<PeerClient>,
    store: StoreHandle,
    /// The writer's highest committed seq.
    last_seq: watch::Receiver<u64>,
    /// Every client change with a seq up to this one is final for this peer.
    cursor: u64,
    /// The cursor as last written to the store (`None`: never, for a new peer).
    saved: Option<PushRecord>,
    last_save: Instant,
    saving: bool,
    /// Client changes read from the log after `cursor`, not yet final.
    ahead: VecDeque<LogItem>,
    /// `ahead` holds every client change up to this seq.
    read_through: u64,
    reading: bool,
    waiting_for_commit: bool,
    in_flight: Option<InFlight>,
    wake_scheduled: bool,
    /// Breaker and backoff, shared with the peer's puller.
    health: Arc<LinkHealth>,
    waiting_for_recovery: bool,
    bucket: TokenBucket,
    metrics: Arc<Metrics>,
    /// Failed log reads in a row (logged on the first and every 20th).
    read_failures: u32,
    /// Shutting down: no new batch goes out.
    stopping: bool,
    /// Set at shutdown while a batch is in flight: told when its answer has been handled.
    batch_landed: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The store key of the push record for `peer_url`.
fn cursor_key(peer_url: &str) -> String {
    format!("push/{peer_url}")
}

/// What a pusher keeps in the store (`push/<peer>`): its cursor, and the link's failures in a
/// row and breaker (so that a restart neither forgets its place nor hammers a dead peer).
/// Encoded as `seq(8, BE) ‖ failures(4, BE) ‖ open_until_unix(8, BE)`; an 8-byte record (the
/// first format) is a cursor alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PushRecord {
    seq: u64,
    failures: u32,
    open_until_unix: u64,
}

impl PushRecord {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(20);
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.failures.to_be_bytes());
        bytes.extend_from_slice(&self.open_until_unix.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        if bytes.len() == 8 {
            return Some(Self {
                seq,
                failures: 0,
                open_until_unix: 0,
            });
        }
        if bytes.len() != 20 {
            return None;
        }
        Some(Self {
            seq,
            failures: u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?),
            open_until_unix: u64::from_be_bytes(bytes.get(12..20)?.try_into().ok()?),
        })
    }
}

impl PeerPusher {
    pub fn new(
        link: PeerLink,
        store: StoreHandle,
        health: Arc<LinkHealth>,
        rate_per_s: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let burst = rate_per_s.max(MAX_ITEMS_PER_BATCH as f64);
        metrics
            .peer_queue_depth
            .with_label_values(&[link.url()])
            .set(0);
        // Every per-peer counter exists from the start, so "none yet" reads as 0, not as absent.
        for counter in [
            &metrics.push_ok_total,
            &metrics.push_rejected_total,
            &metrics.push_error_total,
            &metrics.push_auth_refused_total,
        ] {
            counter.with_label_values(&[link.url()]).inc_by(0);
        }
        metrics.status.update_peer(link.url(), |_| {});
        let saved = Self::load_record(&store, link.url());
        if let Some(record) = saved {
            health.restore(record.failures, record.open_until_unix, now_unix());
        }
        let saved_cursor = saved.map(|record| record.seq);
        // A new peer starts at the head of the log: its pull of our feed repairs the history.
        let cursor = saved_cursor.unwrap_or_else(|| *store.last_seq().borrow());
        Self {
            last_seq: store.last_seq(),
            client: None,
            store,
            cursor,
            saved,
            last_save: Instant::now(),
            saving: false,
            ahead: VecDeque::new(),
            read_through: cursor,
            reading: false,
            waiting_for_commit: false,
            in_flight: None,
            wake_scheduled: false,
            health,
            waiting_for_recovery: false,
            bucket: TokenBucket::new(rate_per_s, burst, Instant::now()),
            metrics,
            link,
            read_failures: 0,
            stopping: false,
            batch_landed: None,
        }
    }

    fn load_record(store: &StoreHandle, peer_url: &str) -> Option<PushRecord> {
        match store.store().get_meta(&cursor_key(peer_url)) {
            Ok(Some(bytes)) => match PushRecord::decode(&bytes) {
                Some(record) => Some(record),
                None => {
                    tracing::warn!(
                        peer = peer_url,
                        "unreadable push cursor; starting at the head of the log"
                    );
                    None
                }
            },
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(peer = peer_url, %err, "cannot read the push cursor; starting at the head of the log");
                None
            }
        }
    }

    fn label(&self) -> [&str; 1] {
        [self.link.peer.url.as_str()]
    }

    fn update_gauges(&self) {
        let depth = self.ahead.len();
        self.metrics
            .peer_queue_depth
            .with_label_values(&self.label())
            .set(depth as i64);
        self.metrics.status.update_peer(self.link.url(), |peer| {
            peer.queue_depth = depth;
        });
        self.health.refresh();
    }

    fn record_push(&self, outcome: String) {
        self.metrics.status.update_peer(self.link.url(), |peer| {
            peer.last_push = Some(crate::status::Event::now(outcome));
        });
    }

    fn wake_after(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if self.wake_scheduled {
            return;
        }
        self.wake_scheduled = true;
        ctx.run_later(delay, |pusher, ctx| {
            pusher.wake_scheduled = false;
            pusher.pump(ctx);
        });
    }

    /// Reads more client changes from the log into the look-ahead, or waits for the next
    /// commit when there are none.
    fn read_more(&mut self, ctx: &mut Context<Self>) {
        if self.reading || self.ahead.len() >= READ_AHEAD_MAX {
            return;
        }
        let head = *self.last_seq.borrow_and_update();
        if self.read_through >= head {
            self.wait_for_commit(ctx);
            return;
        }
        let (after, limit) = (self.read_through, READ_AHEAD_MAX - self.ahead.len());
        // What was committed a moment ago is in the writer's window: no store scan for it.
        if let Some(page) = self.store.recent().read_after(after, limit, now_unix()) {
            self.metrics
                .push_log_reads_total
                .with_label_values(&["memory"])
                .inc();
            self.ahead
                .extend(page.changes.into_iter().map(|change| LogItem {
                    seq: change.seq,
                    envelope: change.envelope,
                    json: change.json,
                }));
            self.read_through = page.through;
            if self.read_through >= head {
                self.wait_for_commit(ctx);
            }
            return;
        }
        self.metrics
            .push_log_reads_total
            .with_label_values(&["store"])
            .inc();
        self.reading = true;
        let store = Arc::clone(self.store.store());
        let read = actix_web::rt::task::spawn_blocking(move || {
            store.read_log(after, limit, now_unix(), LogFilter::FromClients)
        });
        ctx.spawn(read.into_actor(self).map(move |result, pusher, ctx| {
            pusher.reading = false;
            match result {
                Ok(Ok(page)) => {
                    pusher.read_failures = 0;
                    pusher
                        .ahead
                        .extend(page.changes.into_iter().map(LogItem::from));
                    // A read that reached the end saw every commit up to `head`.
                    pusher.read_through = if page.more {
                        page.through
                    } else {
                        page.through.max(head)
                    };
                    pusher.pump(ctx);
                }
                Ok(Err(err)) => pusher.read_failed(&err, ctx),
                Err(err) => pusher.read_failed(&err, ctx),
            }
        }));
    }

    fn read_failed(&mut self, err: &dyn std::fmt::Display, ctx: &mut Context<Self>) {
        self.read_failures += 1;
        if self.read_failures == 1 || self.read_failures.is_multiple_of(20) {
            tracing::warn!(peer = %self.link.peer.url, %err, failures = self.read_failures, "cannot read the change log to push; retrying");
        }
        self.wake_after(READ_RETRY, ctx);
    }

    /// Pumps again once the writer commits a newer seq.
    fn wait_for_commit(&mut self, ctx: &mut Context<Self>) {
        if self.waiting_for_commit {
            return;
        }
        self.waiting_for_commit = true;
        let mut commits = self.last_seq.clone();
        let changed = async move { commits.changed().await.is_ok() };
        ctx.spawn(changed.into_actor(self).map(|open, pusher, ctx| {
            pusher.waiting_for_commit = false;
            // A closed channel: the writer has stopped, nothing more will be committed.
            if open {
                pusher.pump(ctx);
            }
        }));
    }

    fn wait_for_recovery(&mut self, ctx: &mut Context<Self>) {
        if self.waiting_for_recovery {
            return;
        }
        self.waiting_for_recovery = true;
        let recovered = Arc::clone(&self.health).recovered();
        ctx.spawn(recovered.into_actor(self).map(|(), pusher, ctx| {
            pusher.waiting_for_recovery = false;
            pusher.pump(ctx);
        }));
    }

    /// Sends the next batch if nothing stops it (in flight, breaker, backoff, rate limit).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_none() && self.ahead.is_empty() {
            // Only replicas (or nothing) since the cursor: nothing to send up to here.
            self.advance_cursor(self.read_through, ctx);
        }
        self.read_more(ctx);
        self.update_gauges();
        if self.in_flight.is_some() || self.ahead.is_empty() || self.stopping {
            return;
        }
        let now = Instant::now();
        if let Err(remaining) = self.health.push_allowed(now) {
            // Whichever comes first: the wait runs out, or a call (the next pull) succeeds.
            self.wake_after(remaining, ctx);
            self.wait_for_recovery(ctx);
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let envelopes = self.ahead.front().is_some_and(LogItem::is_envelope);
        let (count, body_len) = self.batch_extent(envelopes);
        // A batch goes whole: under the rate limit, items gather into full batches instead of
        // trickling out one per token.
        if !self.bucket.try_take(count, now) {
            let wait = self.bucket.wait_for(count, now);
            self.wake_after(wait, ctx);
            return;
        }
        // The batch completes the log up to its last item, or up to what was read when it
        // takes the whole look-ahead.
        let through = if count == self.ahead.len() {
            self.read_through
        } else {
            self.ahead[count - 1].seq
        };
        let position = LogPosition {
            epoch: self.store.store().epoch().to_string(),
            after: self.cursor,
            through,
        };
        let body = self.batch_body(count, body_len, envelopes, &position);
        let path = if envelopes {
            PATH_REPLICATE_ENVELOPE
        } else {
            PATH_REPLICATE_ACK
        };
        self.in_flight = Some(InFlight { count, through });
        let sent = Instant::now();
        let call = async move { client.post(path, body).await };
        ctx.spawn(call.into_actor(self).map(move |result, pusher, ctx| {
            pusher
                .metrics
                .push_seconds
                .with_label_values(&[pusher.link.url()])
                .observe(sent.elapsed().as_secs_f64());
            if let Some(batch) = pusher.in_flight.take() {
                pusher.on_reply(result, batch, ctx);
            }
            if let Some(landed) = pusher.batch_landed.take() {
                let _ = landed.send(());
            }
            pusher.pump(ctx);
        }));
    }

    /// How many items from the head of the look-ahead go in the next batch (same kind, at most
    /// [`MAX_ITEMS_PER_BATCH`], the body under [`MAX_PEER_BATCH_BYTES`]; the first item always
    /// goes, it fits in 64 KiB), and the bytes of their JSON.
    fn batch_extent(&self, envelopes: bool) -> (usize, usize) {
        // Room for the wrapper and the position, with margin.
        let mut len = 256;
        let mut count = 0;
        for item in self.ahead.iter().take(MAX_ITEMS_PER_BATCH) {
            if item.is_envelope() != envelopes {
                break;
            }
            let json = item.json().len() + 1;
            if count > 0 && len + json > MAX_PEER_BATCH_BYTES {
                break;
            }
            len += json;
            count += 1;
        }
        (count, len)
    }

    /// The JSON body of the first `count` items (stored JSON, spliced as it is: it was written
    /// by serde_json from validated values), with their log position.
    fn batch_body(
        &self,
        count: usize,
        len: usize,
        envelopes: bool,
        position: &LogPosition,
    ) -> Vec<u8> {
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(if envelopes {
            b"{\"envelopes\":["
        } else {
            b"{\"acks\":["
        });
        for (i, item) in self.ahead.iter().take(count).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item.json().as_bytes());
        }
        body.extend_from_slice(b"],\"feed\":");
        // A struct of a string and two numbers: serializing it cannot fail.
        if serde_json::to_writer(&mut body, position).is_err() {
            body.extend_from_slice(b"null");
        }
        body.push(b'}');
        body
    }

    /// The batch is final: drop it from the look-ahead and move the cursor past it.
    fn batch_done(&mut self, batch: &InFlight, ctx: &mut Context<Self>) {
        self.ahead.drain(..batch.count.min(self.ahead.len()));
        self.advance_cursor(batch.through, ctx);
    }

    fn advance_cursor(&mut self, to: u64, ctx: &mut Context<Self>) {
        if to > self.cursor {
            self.cursor = to;
        }
        if self.last_save.elapsed() >= CURSOR_SAVE_INTERVAL || self.saved.is_none() {
            self.save_cursor(ctx);
        }
    }

    /// The record to keep: the cursor and the link's failure state now.
    fn record(&self) -> PushRecord {
        let (failures, open_until_unix) = self.health.persisted(Instant::now(), now_unix());
        PushRecord {
            seq: self.cursor,
            failures,
            open_until_unix,
        }
    }

    /// Writes the record to the store unless it is saved already or a save is under way.
    fn save_cursor(&mut self, ctx: &mut Context<Self>) {
        let record = self.record();
        if self.saving || self.saved == Some(record) {
            return;
        }
        self.saving = true;
        self.last_save = Instant::now();
        let commit = self.store.commit(vec![StoreOp::PutMeta {
            key: cursor_key(self.link.url()),
            value: record.encode(),
        }]);
        ctx.spawn(commit.into_actor(self).map(move |result, pusher, _| {
            pusher.saving = false;
            match result {
                Ok(_) => pusher.saved = Some(record),
                Err(err) => {
                    tracing::debug!(peer = %pusher.link.peer.url, %err, "push cursor not saved; will retry")
                }
            }
        }));
    }

    fn on_reply(
        &mut self,
        result: Result<actix_web::web::Bytes, PeerCallError>,
        batch: InFlight,
        ctx: &mut Context<Self>,
    ) {
        let count = batch.count;
        let label = self.label();
        let parsed = result.and_then(|bytes| {
            let reply: BatchReply = serde_json::from_slice(&bytes)
                .map_err(|e| PeerCallError::BadReply(e.to_string()))?;
            if reply.results.len() != count {
                return Err(PeerCallError::BadReply(format!(
                    "{} results for {count} items",
                    reply.results.len()
                )));
            }
            Ok(reply)
        });
        match parsed {
            Ok(reply) => {
                let rejected = reply
                    .results
                    .iter()
                    .filter(|r| r.status == "rejected")
                    .count();
                self.health.on_success();
                self.record_push(format!(
                    "ok: {} taken, {rejected} rejected",
                    count - rejected.min(count)
                ));
                for result in &reply.results {
                    if result.status == "rejected" {
                        self.metrics
                            .push_rejected_total
                            .with_label_values(&label)
                            .inc();
                        tracing::debug!(peer = %self.link.peer.url, error = ?result.error, "peer rejected an item");
                    } else {
                        self.metrics.push_ok_total.with_label_values(&label).inc();
                    }
                }
                self.batch_done(&batch, ctx);
            }
            Err(err) => match err.verdict() {
                CallVerdict::Retry { retry_after } => {
                    self.record_push(format!("failed, will retry: {err}"));
                    self.on_failure(&err, retry_after, false)
                }
                CallVerdict::AuthRefused => {
                    self.record_push(format!("refused our signature, will retry: {err}"));
                    self.on_failure(&err, None, true)
                }
                CallVerdict::Advance => {
                    // The peer refuses the request itself: retrying the same bytes cannot help.
                    self.record_push(format!("refused, {count} items dropped: {err}"));
                    tracing::error!(peer = %self.link.peer.url, %err, count, "peer refused a push batch; items dropped (its feed pull will repair)");
                    self.metrics
                        .push_rejected_total
                        .with_label_values(&label)
                        .inc_by(count as u64);
                    // The peer answered: the link works, whatever it thought of the batch.
                    self.health.on_success();
                    self.batch_done(&batch, ctx);
                }
            },
        }
        self.update_gauges();
    }

    /// A failed push that keeps its batch: count it, and feed the link's breaker and backoff
    /// (the retry waits for them, never less than the peer's `Retry-After`).
    fn on_failure(&mut self, err: &PeerCallError, retry_after: Option<Duration>, auth: bool) {
        let label = self.label();
        self.metrics
            .push_error_total
            .with_label_values(&label)
            .inc();
        let failure = self.health.push_failed(Instant::now(), retry_after);
        if auth {
            self.metrics
                .push_auth_refused_total
                .with_label_values(&label)
                .inc();
            self.link.log_auth_refused("push", err, failure.failures);
        } else if failure.opened {
            tracing::warn!(peer = %self.link.peer.url, %err, failures = failure.failures, "peer unreachable; circuit breaker open");
        } else {
            tracing::debug!(peer = %self.link.peer.url, %err, "push failed; will retry");
        }
    }
}

impl Actor for PeerPusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.client = Some(self.link.client());
        self.store.recent().add_reader();
        // A new peer's starting point is saved at once; later moves at most once per interval.
        self.save_cursor(ctx);
        ctx.run_interval(CURSOR_SAVE_INTERVAL, |pusher, ctx| pusher.save_cursor(ctx));
        self.pump(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.store.recent().remove_reader();
    }
}

impl Handler<StopPushing> for PeerPusher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopPushing, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        // The answer to a batch in flight moves the cursor: wait for it (a while), or the batch
        // the peer already took would be sent again after the restart.
        let landed = self.in_flight.is_some().then(|| {
            let (tell, landed) = tokio::sync::oneshot::channel();
            self.batch_landed = Some(tell);
            landed
        });
        Box::pin(
            async move {
                if let Some(landed) = landed {
                    let _ = actix_rt::time::timeout(STOP_WAIT_FOR_BATCH, landed).await;
                }
            }
            .into_actor(self)
            .then(|(), pusher, _| {
                let record = pusher.record();
                let commit = (pusher.saved != Some(record)).then(|| {
                    pusher.store.commit(vec![StoreOp::PutMeta {
                        key: cursor_key(pusher.link.url()),
                        value: record.encode(),
                    }])
                });
                async move {
                    if let Some(commit) = commit
                        && let Err(err) = commit.await
                    {
                        tracing::warn!(%err, "push cursor not saved at shutdown; the next start sends some changes again");
                    }
                }
                .into_actor(pusher)
            })
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_record_round_trips_and_reads_a_bare_cursor() {
        let record = PushRecord {
            seq: 42,
            failures: 7,
            open_until_unix: 1_800_000_120,
        };
        assert_eq!(PushRecord::decode(&record.encode()), Some(record));
        let bare = PushRecord::decode(&42u64.to_be_bytes()).unwrap();
        assert_eq!((bare.seq, bare.failures, bare.open_until_unix), (42, 0, 0));
        for bad in [&[][..], &[1, 2, 3], &[0; 12], &[0; 21]] {
            assert_eq!(PushRecord::decode(bad), None, "{bad:?}");
        }
    }
}
