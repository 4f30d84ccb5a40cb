//! The wire protocol of SPEC §1–3 and §6.2–6.3, with no actix and no I/O.
//!
//! Requests arrive as JSON bytes; [`envelope::Envelope::parse`], [`poll::PollRequest::parse`] and
//! [`ack::AckObject::parse`] check the shape (field formats, sizes, `v`), then `verify` checks
//! time windows and the Ed25519 signature over the canonical string. What comes out is a
//! validated value the mailbox rules can trust. Every failure is a [`ProtocolError`] whose
//! variant decides the HTTP status and whose text is the sentence the client reads.
//!
//! The signing side (`sign_*`) exists for the CLI helpers, the benchmarks and the tests.

pub mod ack;
pub mod envelope;
pub mod fields;
pub mod peer_url;
pub mod poll;
pub mod wire;

pub use ack::AckObject;
pub use envelope::Envelope;
pub use fields::{MailboxKey, MsgId};
pub use poll::PollRequest;

/// How far a timestamp may lie ahead of `now`, and how old a signed client request may be (SPEC §1).
pub const SKEW_S: u64 = 300;

/// Why a request was refused before it reached the mailbox rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Malformed JSON, missing or ill-formed field, unknown `v` (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// Ciphertext longer than `max_msg_bytes` (413 `too_large`).
    #[error("{0}")]
    TooLarge(String),
    /// Signature does not verify (401 `bad_signature`).
    #[error("{0}")]
    BadSignature(String),
    /// Timestamp outside the allowed window (401 `stale`).
    #[error("{0}")]
    Stale(String),
    /// Envelope already past `expires_at` (401 `expired`).
    #[error("{0}")]
    Expired(String),
}

/// The limits of SPEC §3 that a node is configured with.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeLimits {
    /// Largest decoded ciphertext accepted, in bytes.
    pub max_msg_bytes: usize,
    /// Largest `expires_at - created_at`, in seconds.
    pub max_ttl_s: u64,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        Self {
            max_msg_bytes: 8192,
            max_ttl_s: 604_800,
        }
    }
}

/// Seconds since the Unix epoch on this node's clock.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Turns a `serde_json` error into the sentence a client reads.
pub(crate) fn json_error(what: &str, err: &serde_json::Error) -> ProtocolError {
    ProtocolError::BadRequest(format!(
        "The request body is not a valid {what}: {err}. Send a JSON object as described in the protocol spec."
    ))
}

/// Verifies an Ed25519 signature (RFC 8032, strict: no small-order keys or malleable encodings).
pub(crate) fn verify_signature(
    public_key: &MailboxKey,
    message: &[u8],
    signature: &[u8; 64],
    whose: &str,
) -> Result<(), ProtocolError> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public_key.as_bytes()).map_err(|_| {
        ProtocolError::BadSignature(format!(
            "The {whose} key is not a valid Ed25519 public key, so the signature cannot verify."
        ))
    })?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &sig).map_err(|_| {
        ProtocolError::BadSignature(format!(
            "The signature does not verify with the {whose} key over the canonical string; sign exactly the fields you send."
        ))
    })
}

/// Reads a 32-byte Ed25519 seed written as 64 hex characters (the `dmrelay keygen` file format).
pub fn signing_key_from_hex(seed_hex: &str) -> Option<ed25519_dalek::SigningKey> {
    let bytes = hex::decode(seed_hex.trim()).ok()?;
    let seed: [u8; 32] = bytes.try_into().ok()?;
    Some(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A fresh signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<ed25519_dalek::SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Random lowercase hex of `bytes` bytes (message ids, poll nonces).
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}
