//! `GET /status`: the node's view of itself as JSON, for `dmrelay status` and operators.
//!
//! Read-only and secret-free: version, self URL, uptime, the store gauges (pending envelopes,
//! mailboxes in memory) and, per peer, what its pusher and puller last recorded in
//! [`crate::status::NodeStatus`]. Served with `/health` and `/metrics` on every plane.

use super::AppState;
use crate::status::PeerStatus;
use actix_web::{HttpResponse, web};
use serde::Serialize;

/// The body of `GET /status`.
#[derive(Serialize)]
struct StatusReply {
    ok: bool,
    node: String,
    version: &'static str,
    uptime_s: u64,
    pending: i64,
    mailboxes_loaded: i64,
    peers: Vec<PeerEntry>,
}

#[derive(Serialize)]
struct PeerEntry {
    url: String,
    #[serde(flatten)]
    status: PeerStatus,
}

/// `GET /status`
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.metrics;
    HttpResponse::Ok().json(StatusReply {
        ok: true,
        node: state.self_peer_url.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: metrics.status.uptime_s(),
        pending: metrics.pending_envelopes.get(),
        mailboxes_loaded: metrics.mailboxes_loaded.get(),
        peers: metrics
            .status
            .peers()
            .into_iter()
            .map(|(url, status)| PeerEntry { url, status })
            .collect(),
    })
}
