//! The wire protocol of SPEC §1–3 and §6.2–6.3, with no actix and no I/O.
//!
//! Requests arrive as JSON bytes; [`envelope::Envelope::parse`], [`poll::PollRequest::parse`] and
//! [`ack::AckObject::parse`] check the shape (field formats, sizes, `v`), then `verify` checks
//! time windows and the Ed25519 signature over the canonical string. What comes out is a
//! validated value the mailbox rules can trust. Every failure is a [`ProtocolError`] whose
//! variant decides the HTTP status and whose text is the sentence the client reads.
//!
//! The time checks (`check_time`, …) and the signature ([`Signed`]) can also be taken apart, so
//! that the signatures of many requests are verified in one batch
//! ([`signature::verify_batch`], under the rule of [`signature`]).
//!
//! The signing side (`sign_*`) exists for the CLI helpers, the benchmarks and the tests.

pub mod ack;
pub mod envelope;
pub mod fields;
pub mod peer_url;
pub mod poll;
pub mod signature;
pub mod wire;

pub use ack::AckObject;
pub use envelope::Envelope;
pub use fields::{MailboxKey, MsgId};
pub use poll::PollRequest;
pub use signature::SignatureCheck;

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

/// Verifies an Ed25519 signature under the rule of [`signature`] (RFC 8032, cofactored, with
/// no small-order points and no non-canonical encodings).
pub(crate) fn verify_signature(
    public_key: &MailboxKey,
    message: &[u8],
    signature: &[u8; 64],
    whose: &str,
) -> Result<(), ProtocolError> {
    let check = SignatureCheck::new(*public_key.as_bytes(), message.to_vec(), *signature);
    signature_outcome(signature::verify_one(&check), public_key, whose)
}

/// `Ok` for a signature that verified, otherwise the refusal's sentence: the key itself is
/// unusable, or the signature does not verify with it.
fn signature_outcome(
    verified: bool,
    public_key: &MailboxKey,
    whose: &str,
) -> Result<(), ProtocolError> {
    if verified {
        Ok(())
    } else if signature::key_is_usable(public_key.as_bytes()) {
        Err(ProtocolError::BadSignature(format!(
            "The signature does not verify with the {whose} key over the canonical string; sign exactly the fields you send."
        )))
    } else {
        Err(ProtocolError::BadSignature(format!(
            "The {whose} key is not a valid Ed25519 public key, so the signature cannot verify."
        )))
    }
}

/// A signed request or replica. Its signature can be checked on its own
/// ([`Signed::verify_signature`]) or taken out as a [`SignatureCheck`] to be verified in a batch,
/// whose answer [`Signed::signature_outcome`] turns into the same result.
pub trait Signed {
    /// The key that must have signed, and whose it is in the refusal's sentence ("sender",
    /// "mailbox").
    fn signer(&self) -> (&MailboxKey, &'static str);
    /// The canonical string that was signed.
    fn signed_string(&self) -> String;
    fn signature(&self) -> &[u8; 64];

    fn signature_check(&self) -> SignatureCheck {
        SignatureCheck::new(
            *self.signer().0.as_bytes(),
            self.signed_string().into_bytes(),
            *self.signature(),
        )
    }

    /// The result of a verification of [`Signed::signature_check`] that answered `verified`.
    fn signature_outcome(&self, verified: bool) -> Result<(), ProtocolError> {
        let (key, whose) = self.signer();
        signature_outcome(verified, key, whose)
    }

    fn verify_signature(&self) -> Result<(), ProtocolError> {
        self.signature_outcome(signature::verify_one(&self.signature_check()))
    }
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
