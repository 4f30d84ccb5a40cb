//! Client-plane routes (SPEC §6.1–6.4): deposit, poll, ack, health, metrics.
//!
//! Each handler only translates: read the body under its limit, parse and check the time window
//! (pure, in [`crate::protocol`]), verify the signature in this worker's batch
//! ([`super::signature_batch`]), ask the owning mailbox shard, map the outcome to status and
//! JSON.

use super::AppState;
use super::body::{read_limited, require_body};
use super::error::{ApiError, deposit_outcome};
use super::signature_batch;
use crate::mailbox::Origin;
use crate::mailbox::bodies::PolledMail;
use crate::mailbox::rules::NonceRefusal;
use crate::protocol::wire::MAX_CLIENT_BODY_BYTES;
use crate::protocol::{AckObject, Envelope, PollRequest, ProtocolError, Signed, now_unix};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use std::sync::Arc;

#[derive(Serialize)]
struct DepositReply<'a> {
    ok: bool,
    msg_id: &'a str,
    status: &'static str,
}

/// The poll reply of SPEC §6.2, written around the envelopes' stored JSON (already the
/// envelope's wire form: no second serialization).
fn poll_reply(mail: &PolledMail) -> Vec<u8> {
    let bodies: usize = mail.messages.iter().map(|m| m.len() + 1).sum();
    let mut out = Vec::with_capacity(bodies + 64);
    out.extend_from_slice(b"{\"ok\":true,\"messages\":[");
    for (i, message) in mail.messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(
        format!(
            "],\"pending\":{},\"has_more\":{}}}",
            mail.pending, mail.has_more
        )
        .as_bytes(),
    );
    out
}

#[derive(Serialize)]
struct AckReply {
    ok: bool,
    removed: usize,
    unknown: usize,
}

#[derive(Serialize)]
struct HealthReply<'a> {
    ok: bool,
    node: &'a str,
    version: &'static str,
}

/// `POST /api/mesh/dm/send`
pub async fn send(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let body = read_limited(&req, payload, MAX_CLIENT_BODY_BYTES).await?;
        require_body(&body, "signed envelope (see `dmrelay envelope`)")?;
        let envelope = Envelope::parse(&body, &state.envelope_limits)?;
        envelope.check_time(now_unix(), &state.envelope_limits)?;
        verify_signature(&envelope).await?;
        Ok::<_, ApiError>(Arc::new(envelope))
    }
    .await;
    let envelope = result.inspect_err(|err| {
        state
            .metrics
            .deposit_total
            .with_label_values(&[err.code()])
            .inc();
    })?;
    let decision = state
        .mailboxes
        .deposit(Arc::clone(&envelope), Origin::Client)
        .await?;
    let status = deposit_outcome(decision, &envelope.msg_id)?;
    // Its copies come back in the peers' feeds: recognized there without a second check.
    state.applier.remember(&envelope.sig);
    Ok(HttpResponse::Ok().json(DepositReply {
        ok: true,
        msg_id: envelope.msg_id.as_str(),
        status,
    }))
}

/// `POST /api/mesh/dm/poll`; with `wait_s` the shard may hold the answer until mail arrives.
pub async fn poll(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, MAX_CLIENT_BODY_BYTES).await?;
    require_body(&body, "signed poll request (see `dmrelay poll-request`)")?;
    let request = PollRequest::parse(&body)?;
    request.check_time(now_unix())?;
    verify_signature(&request).await?;
    let view = state.mailboxes.poll(request).await?.map_err(|refusal| match refusal {
        NonceRefusal::Replay => ApiError::Replay(
            "This poll nonce was already used for this mailbox; sign every poll with a fresh random nonce."
                .into(),
        ),
        NonceRefusal::TooMany => ApiError::RateLimited {
            detail: "Too many polls of this mailbox in the last 10 minutes; poll less often."
                .into(),
            retry_after_s: 60,
        },
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(poll_reply(&view)))
}

/// `POST /api/mesh/dm/ack`
pub async fn ack(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, MAX_CLIENT_BODY_BYTES).await?;
    require_body(&body, "signed ack object (see `dmrelay ack-request`)")?;
    let ack = AckObject::parse(&body)?;
    ack.check_fresh(now_unix())?;
    verify_signature(&ack).await?;
    let sig = ack.sig;
    let report = state
        .mailboxes
        .acknowledge(Arc::new(ack), Origin::Client)
        .await?;
    state.applier.remember(&sig);
    Ok(HttpResponse::Ok().json(AckReply {
        ok: true,
        removed: report.removed,
        unknown: report.unknown,
    }))
}

/// The signature of a request whose other checks passed, verified in this worker's batch.
async fn verify_signature(signed: &impl Signed) -> Result<(), ProtocolError> {
    let verified = signature_batch::verify(signed.signature_check()).await;
    signed.signature_outcome(verified)
}

/// `GET /health`: 503 with the reason while the store refuses writes.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    if let Some(outage) = state.store.status().outage() {
        use actix_web::ResponseError as _;
        return ApiError::Unavailable {
            detail: outage.reason.clone(),
            retry_after_s: outage.retry_after_s(),
        }
        .error_response();
    }
    HttpResponse::Ok().json(HealthReply {
        ok: true,
        node: &state.self_peer_url,
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /metrics`
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
