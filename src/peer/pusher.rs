//! `PeerPusher`: one per peer; sends what this node's clients deposited and acknowledged to
//! that peer, in order, in batches (SPEC §7.4 "Push").
//!
//! Items wait in a bounded queue (overflow is dropped and counted: the peer's pull of our feed
//! repairs it). The head of the queue goes out as one batch of same-kind items, limited by the
//! token bucket. Each reply is classified by [`CallVerdict`]: a failure (transport, 5xx, 429,
//! and 403, which is also counted and logged as an auth problem) leaves the batch at the head and
//! retries it after [`retry_delay`] (exponential, jittered, growing to its maximum, never before
//! the peer's `Retry-After`); enough failures in a row open the circuit breaker for the cooldown.
//! `rejected` results, any other 4xx and replies that are not the protocol's are final (counted as
//! rejected; the peer's pull of our feed repairs them). Nothing here touches another peer's queue.

use super::client::{PeerCallError, PeerClient, PeerLink};
use super::policy::{
    BACKOFF_BASE, BACKOFF_MAX, CallVerdict, CircuitBreaker, TokenBucket, retry_delay,
};
use crate::http::body::MAX_PEER_BATCH_BYTES;
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope};
use actix::prelude::*;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most items in one push request (SPEC §7.1–7.2).
pub const MAX_ITEMS_PER_BATCH: usize = 50;
/// Most items waiting for one peer; more are dropped and counted.
pub const MAX_QUEUE_ITEMS: usize = 20_000;
/// Messages that may wait in the pusher's actor mailbox.
const PUSHER_MAILBOX_CAPACITY: usize = 4096;

/// Something to send to a peer.
#[derive(Debug, Clone)]
pub enum OutItem {
    Envelope(Arc<Envelope>),
    Ack(Arc<AckObject>),
}

impl OutItem {
    fn is_envelope(&self) -> bool {
        matches!(self, Self::Envelope(_))
    }

    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::Envelope(envelope) => serde_json::to_vec(envelope.as_ref()),
            Self::Ack(ack) => serde_json::to_vec(ack.as_ref()),
        }
    }
}

/// Queue an item for this peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub OutItem);

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

pub struct PeerPusher {
    link: PeerLink,
    client: Option<PeerClient>,
    queue: VecDeque<OutItem>,
    in_flight: bool,
    wake_scheduled: bool,
    retry_at: Option<Instant>,
    breaker: CircuitBreaker,
    /// Longest backoff: [`BACKOFF_MAX`], or the breaker's cooldown when that is shorter (a
    /// backoff past the cooldown would leave a peer alone longer than the operator asked).
    backoff_max: Duration,
    bucket: TokenBucket,
    metrics: Arc<Metrics>,
}

impl PeerPusher {
    pub fn new(
        link: PeerLink,
        max_failures: u32,
        cooldown: Duration,
        rate_per_s: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let burst = rate_per_s.max(MAX_ITEMS_PER_BATCH as f64);
        metrics
            .peer_queue_depth
            .with_label_values(&[link.url()])
            .set(0);
        metrics
            .peer_circuit_open
            .with_label_values(&[link.url()])
            .set(0);
        // Every per-peer counter exists from the start, so "none yet" reads as 0, not as absent.
        for counter in [
            &metrics.push_ok_total,
            &metrics.push_rejected_total,
            &metrics.push_error_total,
            &metrics.push_auth_refused_total,
            &metrics.push_queue_overflow_total,
        ] {
            counter.with_label_values(&[link.url()]).inc_by(0);
        }
        metrics.status.update_peer(link.url(), |_| {});
        Self {
            link,
            client: None,
            queue: VecDeque::new(),
            in_flight: false,
            wake_scheduled: false,
            retry_at: None,
            breaker: CircuitBreaker::new(max_failures, cooldown),
            backoff_max: BACKOFF_MAX.min(cooldown).max(BACKOFF_BASE),
            bucket: TokenBucket::new(rate_per_s, burst, Instant::now()),
            metrics,
        }
    }

    fn label(&self) -> [&str; 1] {
        [self.link.peer.url.as_str()]
    }

    fn update_gauges(&self) {
        let label = self.label();
        let (depth, open, failures) = (
            self.queue.len(),
            self.breaker.is_open(Instant::now()),
            self.breaker.failures(),
        );
        self.metrics
            .peer_queue_depth
            .with_label_values(&label)
            .set(depth as i64);
        self.metrics
            .peer_circuit_open
            .with_label_values(&label)
            .set(i64::from(open));
        self.metrics.status.update_peer(self.link.url(), |peer| {
            peer.queue_depth = depth;
            peer.breaker = if open { "open" } else { "closed" };
            peer.consecutive_failures = failures;
        });
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

    /// Sends the next batch if nothing stops it (in flight, breaker, backoff, rate limit).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        self.update_gauges();
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        if let Err(remaining) = self.breaker.check(now) {
            self.wake_after(remaining, ctx);
            return;
        }
        if let Some(at) = self.retry_at
            && at > now
        {
            self.wake_after(at - now, ctx);
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let envelopes = self.queue.front().is_some_and(OutItem::is_envelope);
        let same_kind = self
            .queue
            .iter()
            .take(MAX_ITEMS_PER_BATCH)
            .take_while(|item| item.is_envelope() == envelopes)
            .count();
        // A batch goes whole: under the rate limit, items gather into full batches instead of
        // trickling out one per token.
        let granted = same_kind;
        if !self.bucket.try_take(granted, now) {
            let wait = self.bucket.wait_for(granted, now);
            self.wake_after(wait, ctx);
            return;
        }
        let (count, body) = match self.batch_body(granted, envelopes) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(peer = %self.link.peer.url, %err, "cannot encode push batch; dropping it");
                self.queue.pop_front();
                self.wake_after(Duration::ZERO, ctx);
                return;
            }
        };
        let path = if envelopes {
            "/api/mesh/dm/replicate-envelope"
        } else {
            "/api/mesh/dm/replicate-ack"
        };
        self.in_flight = true;
        let call = async move { client.post(path, body).await };
        ctx.spawn(call.into_actor(self).map(move |result, pusher, ctx| {
            pusher.in_flight = false;
            pusher.on_reply(result, count, ctx);
            pusher.pump(ctx);
        }));
    }

    /// The JSON body of the first `wanted` items, kept under the peer batch limit.
    fn batch_body(
        &self,
        wanted: usize,
        envelopes: bool,
    ) -> Result<(usize, Vec<u8>), serde_json::Error> {
        let mut body = Vec::from(if envelopes {
            &b"{\"envelopes\":["[..]
        } else {
            &b"{\"acks\":["[..]
        });
        let mut count = 0;
        for item in self.queue.iter().take(wanted) {
            let json = item.to_json()?;
            // Leave room for the closing bytes; the first item always goes (it fits in 64 KiB).
            if count > 0 && body.len() + json.len() + 4 > MAX_PEER_BATCH_BYTES {
                break;
            }
            if count > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&json);
            count += 1;
        }
        body.extend_from_slice(b"]}");
        Ok((count, body))
    }

    fn on_reply(
        &mut self,
        result: Result<actix_web::web::Bytes, PeerCallError>,
        count: usize,
        _: &mut Context<Self>,
    ) {
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
                self.queue.drain(..count.min(self.queue.len()));
                self.breaker.on_success();
                self.retry_at = None;
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
                    self.queue.drain(..count.min(self.queue.len()));
                    self.breaker.on_success();
                    self.retry_at = None;
                }
            },
        }
        self.update_gauges();
    }
}

impl PeerPusher {
    /// A failed push that keeps its batch: count it, feed the breaker, and schedule the retry
    /// after the backoff (never before the peer's `Retry-After`).
    fn on_failure(&mut self, err: &PeerCallError, retry_after: Option<Duration>, auth: bool) {
        let peer = self.link.peer.url.clone();
        let label = [peer.as_str()];
        self.metrics
            .push_error_total
            .with_label_values(&label)
            .inc();
        let now = Instant::now();
        let opened = self.breaker.on_failure(now);
        let failures = self.breaker.failures();
        if auth {
            self.metrics
                .push_auth_refused_total
                .with_label_values(&label)
                .inc();
            self.link.log_auth_refused("push", err, failures);
        } else if opened {
            tracing::warn!(peer = %self.link.peer.url, %err, failures, "peer unreachable; circuit breaker open");
        } else {
            tracing::debug!(peer = %self.link.peer.url, %err, "push failed; will retry");
        }
        let unit = f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX);
        let delay = retry_delay(
            failures.max(1),
            retry_after,
            BACKOFF_BASE,
            self.backoff_max,
            unit,
        );
        self.retry_at = Some(now + delay);
    }
}

impl Actor for PeerPusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(PUSHER_MAILBOX_CAPACITY);
        self.client = Some(self.link.client());
    }
}

impl Handler<Enqueue> for PeerPusher {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) {
        if self.queue.len() >= MAX_QUEUE_ITEMS {
            self.metrics
                .push_queue_overflow_total
                .with_label_values(&self.label())
                .inc();
            return;
        }
        self.queue.push_back(msg.0);
        self.pump(ctx);
    }
}
