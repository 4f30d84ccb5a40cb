//! Peer-plane routes (SPEC §7.1–7.3) and the [`AuthenticatedPeer`] extractor (SPEC §5.2).
//!
//! The extractor runs before any handler sees the request: size limit (413), then `X-Peer-Url`
//! among the configured peers, `|now - X-Peer-Timestamp| <= SKEW`, and a constant-time HMAC over
//! method, path and query, timestamp and body. Any failure is the same 403 `peer_auth`; the
//! reason goes to the log only. Handlers then parse JSON and send every item through the same
//! mailbox shards and rules as the client plane.

use super::AppState;
use super::body::{read_limited, require_body};
use super::error::{ApiError, deposit_outcome};
use crate::mailbox::Origin;
use crate::mailbox::shard::ShardError;
use crate::peer::apply::{Applied, Replica};
use crate::peer::auth::verify_request;
use crate::peer::url::normalize_peer_url;
use crate::protocol::wire::{
    FEED_DEFAULT_LIMIT, FEED_MAX_LIMIT, HEADER_PEER_HMAC, HEADER_PEER_TIMESTAMP, HEADER_PEER_URL,
    MAX_CLIENT_BODY_BYTES, MAX_ITEMS_PER_BATCH, MAX_PEER_BATCH_BYTES,
};
use crate::protocol::wire::{LogPosition, signature_field};
use crate::protocol::{ProtocolError, SKEW_S, now_unix};
use crate::store::{FeedEntry, LogFilter};
use actix_web::dev::Payload;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A request whose peer HMAC verified, with its body.
pub struct AuthenticatedPeer {
    /// The caller's normalized URL.
    pub peer: Arc<str>,
    pub body: Bytes,
}

/// Keys of the configured peers, by their normalized URL (the caller's URL is in the key).
pub type PeerKeys = HashMap<String, [u8; 32]>;

/// Checks the three headers and the HMAC; the reason of a failure is for the log only.
pub fn authenticate(
    req: &HttpRequest,
    body: &[u8],
    keys: &PeerKeys,
    now: u64,
) -> Result<Arc<str>, &'static str> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let url = header(HEADER_PEER_URL).ok_or("missing X-Peer-Url")?;
    let url = normalize_peer_url(url).map_err(|_| "X-Peer-Url is not a URL")?;
    let key = keys
        .get(&url)
        .ok_or("X-Peer-Url is not a configured peer")?;
    let timestamp = header(HEADER_PEER_TIMESTAMP).ok_or("missing X-Peer-Timestamp")?;
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| "X-Peer-Timestamp is not a number")?;
    if ts.abs_diff(now) > SKEW_S {
        return Err("X-Peer-Timestamp outside the 300 s window");
    }
    let hmac = header(HEADER_PEER_HMAC).ok_or("missing X-Peer-HMAC")?;
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    if !verify_request(
        key,
        req.method().as_str(),
        path_and_query,
        timestamp,
        body,
        hmac,
    ) {
        return Err("HMAC mismatch");
    }
    Ok(Arc::from(url))
}

impl FromRequest for AuthenticatedPeer {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(ApiError::unavailable)?;
            let body = read_limited(&req, payload, MAX_PEER_BATCH_BYTES).await?;
            match authenticate(&req, &body, &state.peer_keys, now_unix()) {
                Ok(peer) => Ok(Self { peer, body }),
                Err(reason) => {
                    let claimed = req
                        .headers()
                        .get(HEADER_PEER_URL)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .chars()
                        .take(200)
                        .collect::<String>();
                    tracing::info!(reason, claimed_peer = %claimed, remote = ?req.peer_addr(), path = req.path(), "peer request refused");
                    Err(ApiError::PeerAuth)
                }
            }
        })
    }
}

#[derive(Serialize, Default)]
struct ItemResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown: Option<usize>,
}

impl ItemResult {
    fn rejected(msg_id: Option<String>, err: ApiError) -> Self {
        let (pending, limit) = match &err {
            ApiError::CapViolation { pending, limit } => (Some(*pending), Some(*limit)),
            ApiError::MailboxFull { limit } => (None, Some(*limit)),
            _ => (None, None),
        };
        Self {
            msg_id,
            status: "rejected",
            error: Some(err.code()),
            detail: Some(err.to_string()),
            pending,
            limit,
            ..Self::default()
        }
    }
}

#[derive(Serialize)]
struct ResultsReply {
    ok: bool,
    results: Vec<ItemResult>,
}

fn parse_error(err: ProtocolError) -> ApiError {
    ApiError::from(err)
}

fn body_json(body: &[u8], expected: &str) -> Result<serde_json::Value, ApiError> {
    require_body(body, expected)?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("The request body is not valid JSON: {e}.")))
}

fn service_error(err: ShardError) -> ApiError {
    ApiError::from(err)
}

/// A replicate body's items and, when the sender is a dmrelay node, its log position.
pub struct Batch {
    pub items: Vec<serde_json::Value>,
    pub position: Option<LogPosition>,
}

/// The optional `"feed"` member (a dmrelay extension): ignored when it is not one, since it only
/// spares a later pull some work.
fn log_position(json: &mut serde_json::Value) -> Option<LogPosition> {
    serde_json::from_value(json.get_mut("feed")?.take()).ok()
}

/// The envelopes of a `replicate-envelope` body (SPEC §7.1): `{"envelope": {…}}` (at most
/// 64 KiB) or `{"envelopes": […]}` (at most [`MAX_ITEMS_PER_BATCH`]), each still unparsed.
pub fn envelope_batch_items(body: &[u8]) -> Result<Batch, ApiError> {
    let mut json = body_json(
        body,
        "{\"envelope\": {...}} or {\"envelopes\": [...]} of SPEC §7.1",
    )?;
    let position = log_position(&mut json);
    let items = if let Some(one) = json.get_mut("envelope") {
        if body.len() > MAX_CLIENT_BODY_BYTES {
            return Err(ApiError::body_too_large(MAX_CLIENT_BODY_BYTES));
        }
        vec![one.take()]
    } else if let Some(serde_json::Value::Array(many)) = json.get_mut("envelopes") {
        if many.len() > MAX_ITEMS_PER_BATCH {
            return Err(ApiError::BadRequest(format!(
                "A batch holds at most {MAX_ITEMS_PER_BATCH} envelopes; split it."
            )));
        }
        std::mem::take(many)
    } else {
        return Err(ApiError::BadRequest(
            "Expected {\"envelope\": {...}} or {\"envelopes\": [...]}.".into(),
        ));
    };
    Ok(Batch { items, position })
}

/// The ack objects of a `replicate-ack` body (SPEC §7.2): `{"acks": […]}` (at most
/// [`MAX_ITEMS_PER_BATCH`]), each still unparsed.
pub fn ack_batch_items(body: &[u8]) -> Result<Batch, ApiError> {
    let mut json = body_json(body, "{\"acks\": [...]} of SPEC §7.2")?;
    let position = log_position(&mut json);
    let Some(serde_json::Value::Array(acks)) = json.get_mut("acks") else {
        return Err(ApiError::BadRequest("Expected {\"acks\": [...]}.".into()));
    };
    if acks.len() > MAX_ITEMS_PER_BATCH {
        return Err(ApiError::BadRequest(format!(
            "A batch holds at most {MAX_ITEMS_PER_BATCH} acks; split it."
        )));
    }
    Ok(Batch {
        items: std::mem::take(acks),
        position,
    })
}

/// The reply to a replicate request; the batch's log position is recorded once every item has
/// its answer (so the pull of that peer may skip them).
fn results_reply(
    state: &AppState,
    peer: &AuthenticatedPeer,
    position: Option<LogPosition>,
    results: Vec<ItemResult>,
) -> HttpResponse {
    if let Some(position) = position {
        state.pushed.pushed(&peer.peer, &position);
    }
    HttpResponse::Ok().json(ResultsReply { ok: true, results })
}

/// Applies a pushed batch from `peer` (every item checked, none skipped: the results report
/// each item's own status).
async fn apply_batch(
    state: &AppState,
    peer: &AuthenticatedPeer,
    items: Vec<Replica>,
) -> Result<Vec<Applied>, ApiError> {
    let origin = Origin::Peer(Arc::clone(&peer.peer));
    state
        .applier
        .apply(items, &origin, now_unix())
        .await
        .map_err(service_error)
}

/// `POST /api/mesh/dm/replicate-envelope`
pub async fn replicate_envelope(
    peer: AuthenticatedPeer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Batch { items, position } = envelope_batch_items(&peer.body)?;
    let msg_ids: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            item.get("msg_id")
                .and_then(|v| v.as_str())
                .map(|s| s.chars().take(128).collect::<String>())
        })
        .collect();
    let items = items.into_iter().map(Replica::Envelope).collect();
    let applied = apply_batch(&state, &peer, items).await?;
    let results = applied
        .into_iter()
        .zip(msg_ids)
        .map(|(applied, msg_id)| match applied {
            Applied::Envelope(Ok((envelope, decision))) => {
                match deposit_outcome(decision, &envelope.msg_id) {
                    Ok(status) => ItemResult {
                        msg_id,
                        status,
                        ..ItemResult::default()
                    },
                    Err(refusal) => ItemResult::rejected(msg_id, refusal),
                }
            }
            Applied::Envelope(Err(err)) | Applied::Ack(Err(err)) => {
                ItemResult::rejected(msg_id, parse_error(err))
            }
            // An envelope batch holds no acks.
            Applied::Ack(Ok(_)) => ItemResult {
                msg_id,
                status: "duplicate",
                ..ItemResult::default()
            },
        })
        .collect();
    Ok(results_reply(&state, &peer, position, results))
}

/// `POST /api/mesh/dm/replicate-ack`
pub async fn replicate_ack(
    peer: AuthenticatedPeer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Batch { items, position } = ack_batch_items(&peer.body)?;
    let items = items.into_iter().map(Replica::Ack).collect();
    let applied = apply_batch(&state, &peer, items).await?;
    let results = applied
        .into_iter()
        .map(|applied| match applied {
            Applied::Ack(Ok(report)) => ItemResult {
                status: "applied",
                removed: Some(report.removed),
                unknown: Some(report.unknown),
                ..ItemResult::default()
            },
            Applied::Ack(Err(err)) | Applied::Envelope(Err(err)) => {
                ItemResult::rejected(None, parse_error(err))
            }
            // An ack batch holds no envelopes.
            Applied::Envelope(Ok(_)) => ItemResult {
                status: "applied",
                ..ItemResult::default()
            },
        })
        .collect();
    Ok(results_reply(&state, &peer, position, results))
}

#[derive(Deserialize)]
struct FeedQuery {
    since: Option<u64>,
    limit: Option<u64>,
    /// A dmrelay extension: the caller got this node's own clients' changes up to here by push.
    pushed_through: Option<u64>,
    /// A dmrelay extension: the page ends at this seq.
    until: Option<u64>,
    /// A dmrelay extension: `1` asks for each entry's seq and signature instead of its item.
    digest: Option<u8>,
}

/// `GET /api/mesh/dm/changes?since=<seq>&limit=<n>`
pub async fn changes(
    req: HttpRequest,
    _peer: AuthenticatedPeer,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query: FeedQuery = serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        ApiError::BadRequest(format!(
            "Query must be since=<seq>&limit=<1..={FEED_MAX_LIMIT}> (and optionally pushed_through=<seq>, until=<seq>, digest=1): {e}."
        ))
    })?;
    let since = query.since.unwrap_or(0);
    let limit = query.limit.unwrap_or(FEED_DEFAULT_LIMIT);
    if !(1..=FEED_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {FEED_MAX_LIMIT}."
        )));
    }
    let filter = match query.pushed_through {
        Some(through) if through > since => LogFilter::SkipClientsThrough(through),
        _ => LogFilter::All,
    };
    let store = Arc::clone(state.store.store());
    let until = query.until.unwrap_or(u64::MAX);
    let page =
        web::block(move || store.read_log_until(since, until, limit as usize, now_unix(), filter))
            .await
            .map_err(|_| ApiError::unavailable())?
            .map_err(|err| {
                tracing::error!(%err, "change feed read failed");
                ApiError::unavailable()
            })?;
    // The last seq looked at: past expired entries and skipped ones too.
    let next = page.through.max(since);
    let mut body = String::with_capacity(
        128 + page
            .changes
            .iter()
            .map(|(_, e)| match e {
                FeedEntry::Envelope(j) | FeedEntry::Ack(j) => j.len() + 40,
            })
            .sum::<usize>(),
    );
    body.push_str(&format!(
        "{{\"ok\":true,\"epoch\":\"{}\",\"next\":{next},\"more\":{},\"changes\":[",
        state.store.store().epoch(),
        page.more
    ));
    let digest = query.digest == Some(1);
    for (i, (seq, entry)) in page.changes.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Stored JSON was produced by serde_json from validated values: safe to splice.
        let (kind, json) = match entry {
            FeedEntry::Envelope(json) => ("envelope", json),
            FeedEntry::Ack(json) => ("ack", json),
        };
        // A stored item always has its hex signature; were it ever missing, the item goes whole.
        match signature_field(json).filter(|_| digest) {
            Some(sig) => body.push_str(&format!("{{\"seq\":{seq},\"sig\":\"{sig}\"}}")),
            None => body.push_str(&format!("{{\"seq\":{seq},\"{kind}\":{json}}}")),
        }
    }
    body.push_str("]}");
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::auth::{derive_peer_key, sign_request};
    use actix_web::test::TestRequest;

    const PEER: &str = "http://127.0.0.1:9";
    const NOW: u64 = 1_800_000_000;

    fn keys() -> PeerKeys {
        PeerKeys::from([(PEER.to_string(), derive_peer_key(b"secret", PEER))])
    }

    fn request_at(ts: u64, url: &str) -> HttpRequest {
        let key = derive_peer_key(b"secret", PEER);
        let path = "/api/mesh/dm/changes?since=0";
        TestRequest::get()
            .uri(path)
            .insert_header((HEADER_PEER_URL, url))
            .insert_header((HEADER_PEER_TIMESTAMP, ts.to_string()))
            .insert_header((HEADER_PEER_HMAC, sign_request(&key, "GET", path, ts, b"")))
            .to_http_request()
    }

    #[test]
    fn the_timestamp_window_is_300_seconds_each_way() {
        for ts in [NOW - 300, NOW, NOW + 300] {
            assert!(
                authenticate(&request_at(ts, PEER), b"", &keys(), NOW).is_ok(),
                "{ts}"
            );
        }
        for ts in [NOW - 301, NOW + 301, 0, u64::MAX] {
            assert!(
                authenticate(&request_at(ts, PEER), b"", &keys(), NOW).is_err(),
                "{ts}"
            );
        }
    }

    #[test]
    fn the_caller_url_is_normalized_before_the_lookup() {
        let messy = "HTTP://127.0.0.1:9/";
        assert_eq!(
            authenticate(&request_at(NOW, messy), b"", &keys(), NOW).as_deref(),
            Ok(PEER)
        );
        assert!(authenticate(&request_at(NOW, "http://127.0.0.1:10"), b"", &keys(), NOW).is_err());
    }
}
