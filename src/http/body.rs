//! Reading a request body under a size limit: 413 before reading when `Content-Length` is too
//! large, and as soon as a streamed body crosses the limit otherwise.

use super::error::ApiError;
use actix_web::HttpRequest;
use actix_web::error::PayloadError;
use actix_web::web::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};

/// Largest client-plane body and largest single-envelope body (SPEC §6.5).
pub const MAX_CLIENT_BODY_BYTES: usize = 64 * 1024;
/// Largest peer batch body (SPEC §6.5).
pub const MAX_PEER_BATCH_BYTES: usize = 1024 * 1024;

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
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    if declared_length(req).is_some_and(|len| len > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("The request body could not be read: {e}."))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
