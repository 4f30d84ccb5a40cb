//! HTTP: the routes of each plane, the error table, and the shared state handlers read.
//!
//! [`client_routes`] and [`peer_routes`] each register one plane; [`service_routes`] adds
//! `/health`, `/metrics` and `/status`. With one listen address a node serves all of them there; with
//! `MESH_DM_PEER_LISTEN` the node runs two servers and each plane exists only on its own address
//! (anything else is 404). Unknown paths and wrong methods get the JSON error body too.

pub mod body;
pub mod client;
pub mod error;
pub mod peer;
pub mod rate_limit;
pub mod signature_batch;
pub mod status;

use crate::mailbox::MailboxRouter;
use crate::metrics::Metrics;
use crate::protocol::EnvelopeLimits;
use crate::protocol::wire::{PATH_CHANGES, PATH_REPLICATE_ACK, PATH_REPLICATE_ENVELOPE};
use actix_web::{HttpResponse, web};
use error::ApiError;
use std::sync::Arc;

/// What every handler can read.
pub struct AppState {
    pub mailboxes: MailboxRouter,
    pub envelope_limits: EnvelopeLimits,
    pub metrics: Arc<Metrics>,
    pub self_peer_url: String,
    /// Keys of the configured peers, for authenticating their requests.
    pub peer_keys: peer::PeerKeys,
    /// The store, for reading the change feed.
    pub store: crate::store::StoreHandle,
    /// The client plane's per-address rate limit.
    pub client_rate: Arc<rate_limit::ClientRateLimit>,
    /// Checks and applies what peers push.
    pub applier: crate::peer::apply::ReplicaApplier,
    /// How far each peer's pushes reached (read by its puller).
    pub pushed: Arc<crate::peer::pushed::PushedThrough>,
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// A resource answering `route` and a JSON 405 for any other method.
fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// The client plane (SPEC §6.1–6.3), each route behind the per-address rate limit.
pub fn client_routes(cfg: &mut web::ServiceConfig) {
    let limited = |path, route| {
        resource(path, route).wrap(actix_web::middleware::from_fn(
            rate_limit::limit_client_rate,
        ))
    };
    cfg.service(limited("/api/mesh/dm/send", web::post().to(client::send)))
        .service(limited("/api/mesh/dm/poll", web::post().to(client::poll)))
        .service(limited("/api/mesh/dm/ack", web::post().to(client::ack)));
}

/// The peer plane (SPEC §7.1–7.3); every route authenticates with the peer HMAC.
pub fn peer_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(
        PATH_REPLICATE_ENVELOPE,
        web::post().to(peer::replicate_envelope),
    ))
    .service(resource(
        PATH_REPLICATE_ACK,
        web::post().to(peer::replicate_ack),
    ))
    .service(resource(PATH_CHANGES, web::get().to(peer::changes)));
}

/// `/health` and `/metrics` (SPEC §6.4), and `/status` (the node's view, for operators),
/// served on every plane.
pub fn service_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health", web::get().to(client::health)))
        .service(resource("/metrics", web::get().to(client::metrics)))
        .service(resource("/status", web::get().to(status::status)));
}

/// The JSON 404 for everything else.
pub fn fallback(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(not_found));
}
