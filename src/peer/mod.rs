//! The peer plane (SPEC §5, §7).
//!
//! - [`url`]: peer URL normalization; [`auth`]: key derivation and request HMACs (pure).
//! - [`policy`]: backoff, token bucket, circuit breaker (pure, clock passed in).
//! - [`health`]: the one breaker-and-backoff record of a peer link, fed by its pusher and its
//!   puller alike.
//! - [`client`]: signed HTTP calls to one peer; [`socks`]: its TCP connector through a SOCKS5
//!   proxy (Tor) when the peer's settings name one.
//! - [`pusher`]: one `PeerPusher` actor per peer, sending this node's clients' changes from the
//!   store's log, from a durable cursor.
//! - [`sync`]: one `PeerSync` actor per peer, pulling its change feed from a durable cursor.
//! - [`apply`]: the one replica applier behind the push route and the puller.
//! - [`pushed`]: how far each peer's pushes reached, so its pull skips them.
//!
//! The inbound side (HMAC extractor, replicate and changes routes) is in `crate::http::peer`;
//! everything it receives goes through the same mailbox shards and rules as a client's request.

pub mod apply;
pub mod auth;
pub mod client;
pub mod health;
pub mod policy;
pub mod pushed;
pub mod pusher;
pub mod socks;
pub mod sync;
pub mod url;

use crate::config::{PeerSettings, Settings};
use crate::mailbox::MailboxRouter;
use crate::metrics::Metrics;
use crate::store::StoreHandle;
use actix::prelude::*;
use apply::ReplicaApplier;
use client::PeerLink;
use health::LinkHealth;
use pushed::PushedThrough;
use pusher::{PeerPusher, StopPushing};
use std::sync::Arc;
use sync::{PeerSync, StopPulling};

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

/// The running peer plane: one pusher and one puller per configured peer.
pub struct PeerPlane {
    pushers: Vec<Addr<PeerPusher>>,
    pullers: Vec<Addr<PeerSync>>,
}

impl PeerPlane {
    /// Starts every peer's pusher and puller (on the current arbiter).
    pub fn start(
        settings: &Settings,
        store: &StoreHandle,
        applier: &ReplicaApplier,
        pushed: &Arc<PushedThrough>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let mut plane = Self {
            pushers: Vec::new(),
            pullers: Vec::new(),
        };
        for peer in &settings.peers {
            let link = link(settings, peer);
            let health = Arc::new(LinkHealth::new(
                link.url(),
                settings.max_failures,
                settings.failure_cooldown,
                Arc::clone(metrics),
            ));
            plane.pushers.push(
                PeerPusher::new(
                    link.clone(),
                    store.clone(),
                    Arc::clone(&health),
                    settings.push_rate_per_s,
                    Arc::clone(metrics),
                )
                .start(),
            );
            plane.pullers.push(
                PeerSync::new(
                    link,
                    settings.sync_interval,
                    store.clone(),
                    applier.clone(),
                    Arc::clone(pushed),
                    health,
                    Arc::clone(metrics),
                )
                .start(),
            );
        }
        plane
    }

    /// Stops pulling and pushing; each pusher saves its cursor first. Call before the store is
    /// flushed.
    pub async fn stop(self) {
        for puller in &self.pullers {
            let _ = puller.send(StopPulling).await;
        }
        for pusher in &self.pushers {
            let _ = pusher.send(StopPushing).await;
        }
    }
}

/// The applier shared by the push route and the pullers.
pub fn replica_applier(
    mailboxes: &MailboxRouter,
    limits: crate::protocol::EnvelopeLimits,
) -> ReplicaApplier {
    ReplicaApplier::new(mailboxes.clone(), limits)
}
