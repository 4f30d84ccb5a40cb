//! The peer plane (SPEC §5, §7).
//!
//! - [`url`]: peer URL normalization; [`auth`]: key derivation and request HMACs (pure).
//! - [`policy`]: backoff, token bucket, circuit breaker (pure, clock passed in).
//! - [`client`]: signed HTTP calls to one peer; [`socks`]: its TCP connector through a SOCKS5
//!   proxy (Tor) when the peer's settings name one.
//! - [`pusher`]: one `PeerPusher` actor per peer, fed by [`PushFanout`] when a client's deposit
//!   or ack is durable.
//! - [`sync`]: one `PeerSync` actor per peer, pulling its change feed from a durable cursor.
//!
//! The inbound side (HMAC extractor, replicate and changes routes) is in `crate::http::peer`;
//! everything it receives goes through the same mailbox shards and rules as a client's request.

pub mod auth;
pub mod client;
pub mod policy;
pub mod pusher;
pub mod socks;
pub mod sync;
pub mod url;

use crate::config::{PeerSettings, Settings};
use crate::mailbox::{ChangeSink, MailboxRouter};
use crate::metrics::Metrics;
use crate::protocol::{AckObject, Envelope, EnvelopeLimits};
use crate::store::StoreHandle;
use actix::prelude::*;
use client::PeerLink;
use pusher::{Enqueue, OutItem, PeerPusher};
use std::sync::Arc;
use sync::PeerSync;

/// How to reach `peer` from this node.
fn link(settings: &Settings, peer: &PeerSettings) -> PeerLink {
    PeerLink {
        peer: peer.clone(),
        self_url: settings.self_peer_url.clone(),
        timeout: settings.push_timeout,
        connect_timeout: settings
            .connect_timeout
            .unwrap_or(if peer.socks_proxy.is_some() {
                socks::DEFAULT_PROXIED_CONNECT_TIMEOUT
            } else {
                socks::DEFAULT_DIRECT_CONNECT_TIMEOUT
            }),
        tls: Arc::clone(&settings.peer_tls),
    }
}

/// Hands every durable client change to each peer's pusher, never waiting: a pusher whose
/// mailbox is full loses the item (counted) and the peer's pull repairs it.
pub struct PushFanout {
    pushers: Vec<(String, Addr<PeerPusher>)>,
    metrics: Arc<Metrics>,
}

impl PushFanout {
    /// Starts one pusher per configured peer (on the current arbiter).
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        let pushers = settings
            .peers
            .iter()
            .map(|peer| {
                let pusher = PeerPusher::new(
                    link(settings, peer),
                    settings.max_failures,
                    settings.failure_cooldown,
                    settings.push_rate_per_s,
                    Arc::clone(&metrics),
                );
                (peer.url.clone(), pusher.start())
            })
            .collect();
        Self { pushers, metrics }
    }

    fn fan_out(&self, item: &OutItem) {
        for (url, pusher) in &self.pushers {
            if pusher.try_send(Enqueue(item.clone())).is_err() {
                self.metrics
                    .push_queue_overflow_total
                    .with_label_values(&[url])
                    .inc();
            }
        }
    }
}

impl ChangeSink for PushFanout {
    fn envelope_stored(&self, envelope: &Arc<Envelope>) {
        self.fan_out(&OutItem::Envelope(Arc::clone(envelope)));
    }

    fn ack_applied(&self, ack: &Arc<AckObject>) {
        self.fan_out(&OutItem::Ack(Arc::clone(ack)));
    }
}

/// Starts one feed puller per configured peer (on the current arbiter).
pub fn start_sync(
    settings: &Settings,
    store: &StoreHandle,
    mailboxes: &MailboxRouter,
    limits: EnvelopeLimits,
    metrics: &Arc<Metrics>,
) -> Vec<Addr<PeerSync>> {
    settings
        .peers
        .iter()
        .map(|peer| {
            PeerSync::new(
                link(settings, peer),
                settings.sync_interval,
                store.clone(),
                mailboxes.clone(),
                limits,
                Arc::clone(metrics),
            )
            .start()
        })
        .collect()
}
