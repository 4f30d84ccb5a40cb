//! The node's view of itself for `GET /status` and `dmrelay status`: uptime, and per peer the
//! circuit breaker, push queue, last push and last complete pull.
//!
//! Each peer's pusher and puller write their latest state into the one [`NodeStatus`] (held by
//! [`crate::metrics::Metrics`], which every actor already shares); the HTTP handler
//! (`crate::http::status`) reads a snapshot and adds the store gauges. Nothing secret is kept
//! here: peer URLs and outcomes only, as `/metrics` already shows.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Something that happened, and when (unix seconds).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub at: u64,
    pub outcome: String,
}

impl Event {
    pub fn now(outcome: impl Into<String>) -> Self {
        Self {
            at: crate::protocol::now_unix(),
            outcome: outcome.into(),
        }
    }
}

/// What this node knows about one peer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// `closed` (pushing) or `open` (skipping the peer until the cooldown ends).
    pub breaker: &'static str,
    /// Failed pushes in a row.
    pub consecutive_failures: u32,
    /// Items waiting to be pushed.
    pub queue_depth: usize,
    /// The last push reply (or failure).
    pub last_push: Option<Event>,
    /// When a pull of the peer's feed last read it to its end.
    pub last_complete_pull: Option<Event>,
    /// The last failed pull, if it failed after the last complete one.
    pub last_pull_error: Option<Event>,
}

impl Default for PeerStatus {
    fn default() -> Self {
        Self {
            breaker: "closed",
            consecutive_failures: 0,
            queue_depth: 0,
            last_push: None,
            last_complete_pull: None,
            last_pull_error: None,
        }
    }
}

/// Shared by the peer actors (writers) and `GET /status` (reader).
pub struct NodeStatus {
    started: Instant,
    peers: Mutex<BTreeMap<String, PeerStatus>>,
}

impl Default for NodeStatus {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

impl NodeStatus {
    /// Changes the entry of `peer_url` (created on first use).
    pub fn update_peer(&self, peer_url: &str, change: impl FnOnce(&mut PeerStatus)) {
        // A panic while holding the lock cannot leave a PeerStatus half-written in a way that
        // matters (every field is independent), so a poisoned lock is used as it is.
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // The pushers call this on every enqueue: allocate the key only for a new peer.
        match peers.get_mut(peer_url) {
            Some(peer) => change(peer),
            None => change(peers.entry(peer_url.to_string()).or_default()),
        }
    }

    /// Every peer's status, by URL.
    pub fn peers(&self) -> Vec<(String, PeerStatus)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Seconds since the node started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
