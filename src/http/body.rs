//! Reading a request body under a size limit: 413 before reading when `Content-Length` is too
//! large, and as soon as a streamed body crosses the limit otherwise.
//!
//! A refused body is not read any further, and its connection is closed after the 413: the
//! refused payload is parked in the request's extensions ([`UnreadBody`]) and
//! [`close_after_refused_body`] moves it into the 413's body, so it stays alive until the 413 is
//! written. Actix closes a connection whose request payload is still alive and unfinished when the
//! response ends; had the payload been dropped instead, actix would read and discard a chunked
//! body to its end, which an attacker never sends (issue 7: 34 GB on one connection).

use super::error::ApiError;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage as _, HttpRequest};
use futures_util::{Stream, StreamExt as _};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The declared `Content-Length`, if any and well formed.
pub fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_limited<S>(
    req: &HttpRequest,
    mut payload: S,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin + 'static,
{
    if declared_length(req).is_some_and(|len| len > limit as u64) {
        return Err(refuse_unread(req, payload, limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("The request body could not be read: {e}."))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(refuse_unread(req, payload, limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The rest of a refused request body, kept unread until the 413 is written (see the module doc).
pub struct UnreadBody(#[allow(dead_code)] Box<dyn std::any::Any>);

impl UnreadBody {
    /// Keeps `payload` (any request payload type) unread and alive.
    pub fn new(payload: Box<dyn std::any::Any>) -> Self {
        Self(payload)
    }
}

/// Parks the unread `payload` on the request and returns the 413.
fn refuse_unread<S: 'static>(req: &HttpRequest, payload: S, limit: usize) -> ApiError {
    req.extensions_mut()
        .insert(UnreadBody::new(Box::new(payload)));
    ApiError::body_too_large(limit)
}

/// A response body that holds a refused request payload until it has been written.
struct HoldingUnread {
    body: BoxBody,
    _unread: UnreadBody,
}

impl MessageBody for HoldingUnread {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// Middleware for both planes: a response to a request whose body was refused says
/// `Connection: close` and keeps the unread payload alive until it is written, so that the
/// connection is closed instead of the rest of the body being read.
pub async fn close_after_refused_body(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut response = next.call(req).await?;
    let unread = response.request().extensions_mut().remove::<UnreadBody>();
    let Some(unread) = unread else {
        return Ok(response);
    };
    response
        .response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(response.map_body(|_, body| {
        BoxBody::new(HoldingUnread {
            body,
            _unread: unread,
        })
    }))
}

/// Refuses an empty body with a sentence before a JSON parser sees it (the parser would only
/// say "EOF while parsing"). An empty body usually means the command piped into
/// `curl -d @-` failed and printed nothing.
pub fn require_body(body: &[u8], expected: &str) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(format!(
            "The request body is empty: send the JSON {expected}. (Piping into curl -d @-? The command before the pipe probably failed.)"
        )));
    }
    Ok(())
}
