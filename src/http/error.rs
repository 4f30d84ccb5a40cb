//! [`ApiError`]: the one table *error code → HTTP status → JSON body* of SPEC §6.5.

use crate::mailbox::shard::ShardError;
use crate::protocol::ProtocolError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Every error a client or peer can receive.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    Replay(String),
    #[error("{0}")]
    Expired(String),
    #[error("Invalid or missing peer HMAC")]
    PeerAuth,
    #[error("{0}")]
    Conflict(String),
    #[error(
        "Recipient already has {pending} unread messages from you. Wait for them to read your messages before sending more."
    )]
    CapViolation { pending: u32, limit: u32 },
    #[error(
        "Recipient's mailbox is full ({limit} unread messages). Try again after they read their messages."
    )]
    MailboxFull { limit: u32 },
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_s: u64 },
    /// 503 `unavailable`, with the seconds after which a retry makes sense (`Retry-After`): the
    /// writer's next reopen attempt when the store is failing, a minute when the storage budget
    /// is used up, 1 for an overload or a shutdown.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after_s: u64 },
    #[error("No such endpoint. The client API is POST /api/mesh/dm/send, /poll and /ack.")]
    NotFound,
    #[error("This endpoint does not accept that method; see the protocol spec for the right one.")]
    MethodNotAllowed,
}

impl ApiError {
    /// The SPEC's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "too_large",
            Self::BadSignature(_) => "bad_signature",
            Self::Stale(_) => "stale",
            Self::Replay(_) => "replay",
            Self::Expired(_) => "expired",
            Self::PeerAuth => "peer_auth",
            Self::Conflict(_) => "conflict",
            Self::CapViolation { .. } => "cap_violation",
            Self::MailboxFull { .. } => "mailbox_full",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// A body larger than the endpoint's limit.
    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::TooLarge(format!(
            "The request body is larger than this endpoint's limit of {limit_bytes} bytes."
        ))
    }

    /// The node is shutting down or its store failed.
    pub fn unavailable() -> Self {
        Self::Unavailable {
            detail: "The relay cannot take this request right now (overloaded, storage trouble or shutting down); retry in a few seconds."
                .into(),
            retry_after_s: 1,
        }
    }
}

/// SPEC §4's outcome for an envelope: the `status` of a taken one, or the refusal as an error.
/// The client plane (§6.1) and the peer plane (§7.1) both answer with it.
pub fn deposit_outcome(
    decision: crate::mailbox::rules::Decision,
    msg_id: &crate::protocol::MsgId,
) -> Result<&'static str, ApiError> {
    use crate::mailbox::rules::Decision;
    match decision {
        Decision::Accept | Decision::Duplicate | Decision::Acked => Ok(decision.label()),
        Decision::Conflict => Err(ApiError::Conflict(format!(
            "Another message with msg_id {msg_id} is already pending in this mailbox; choose a new msg_id."
        ))),
        Decision::MailboxFull { limit } => Err(ApiError::MailboxFull { limit }),
        Decision::CapViolation { pending, limit } => Err(ApiError::CapViolation { pending, limit }),
    }
}

impl From<ProtocolError> for ApiError {
    fn from(err: ProtocolError) -> Self {
        match err {
            ProtocolError::BadRequest(d) => Self::BadRequest(d),
            ProtocolError::TooLarge(d) => Self::TooLarge(d),
            ProtocolError::BadSignature(d) => Self::BadSignature(d),
            ProtocolError::Stale(d) => Self::Stale(d),
            ProtocolError::Expired(d) => Self::Expired(d),
        }
    }
}

/// How long a client is told to wait when the storage budget is used up: room comes back as
/// recipients read and acknowledge, which nothing here can predict.
pub const BUDGET_RETRY_AFTER_S: u64 = 60;

impl ApiError {
    /// The store refuses writes until it is reopened; `retry_after_s` is the time to the
    /// writer's next attempt.
    pub fn store_down(reason: &str, retry_after_s: u64) -> Self {
        Self::Unavailable {
            detail: format!(
                "This relay's storage is failing ({reason}); it recovers on its own. Retry in {retry_after_s} s."
            ),
            retry_after_s,
        }
    }
}

impl From<ShardError> for ApiError {
    fn from(err: ShardError) -> Self {
        match &err {
            // Lasting node-wide states, logged once where they begin (the writer) and counted
            // in /metrics: a line per refused request would flood the log for hours.
            ShardError::StoreDown { .. } | ShardError::OverBudget { .. } => {
                tracing::debug!(%err, "request refused with 503");
            }
            _ => tracing::warn!(%err, "request refused with 503"),
        }
        match err {
            ShardError::StoreDown {
                reason,
                retry_after_s,
            } => Self::store_down(&reason, retry_after_s),
            // 503, not a 429: the 429 codes of SPEC §6.5 speak of one mailbox or one caller,
            // while this is the whole node's storage; and peers retry a 503 later (SPEC §7.4)
            // where a per-item `rejected` would be final and break the convergence promise.
            ShardError::OverBudget { used, budget } => Self::Unavailable {
                detail: format!(
                    "This node's storage budget is used up ({} of {} KiB stored); it takes new messages again as recipients read theirs. Retry later or use another relay.",
                    used / 1024,
                    budget / 1024
                ),
                retry_after_s: BUDGET_RETRY_AFTER_S,
            },
            ShardError::Overloaded | ShardError::Unavailable(_) => Self::unavailable(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    ok: bool,
    error: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadSignature(_) | Self::Stale(_) | Self::Replay(_) | Self::Expired(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::PeerAuth => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::CapViolation { .. } | Self::MailboxFull { .. } | Self::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (pending, limit) = match self {
            Self::CapViolation { pending, limit } => (Some(*pending), Some(*limit)),
            Self::MailboxFull { limit } => (None, Some(*limit)),
            _ => (None, None),
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::RateLimited { retry_after_s, .. } | Self::Unavailable { retry_after_s, .. } => {
                response.insert_header(("Retry-After", retry_after_s.to_string()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            ok: false,
            error: self.code(),
            detail: self.to_string(),
            pending,
            limit,
        })
    }
}
