//! The envelope of SPEC §3: parsing, canonical string, verification, signing.
//!
//! `Envelope::parse` checks shape and sizes; `Envelope::verify` checks the time window
//! ([`Envelope::check_time`]) and the sender's signature ([`Signed`], which can also be verified
//! in a batch). Both run on the HTTP worker, before the mailbox actor sees the envelope.

use super::fields::{MailboxKey, MsgId, decode_base64, parse_signature};
use super::{EnvelopeLimits, ProtocolError, SKEW_S, Signed, json_error};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The only envelope version this node speaks.
pub const ENVELOPE_VERSION: u64 = 1;

/// A well-formed envelope. Stored, replicated and delivered unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub msg_id: MsgId,
    pub mailbox: MailboxKey,
    pub sender: MailboxKey,
    pub created_at: u64,
    pub expires_at: u64,
    /// Standard base64, exactly as the sender wrote it.
    pub ciphertext: Box<str>,
    pub sig: [u8; 64],
    /// `hex(sha256(decoded ciphertext))`, the last line of the canonical string.
    ciphertext_sha256_hex: Box<str>,
}

/// The JSON shape, before any field is trusted. Unknown fields are ignored by serde.
#[derive(Deserialize)]
pub(crate) struct RawEnvelope {
    v: u64,
    msg_id: String,
    mailbox: String,
    sender: String,
    created_at: u64,
    expires_at: u64,
    ciphertext: String,
    sig: String,
}

/// The JSON shape on the way out, in the SPEC's field order.
#[derive(Serialize)]
struct WireEnvelope<'a> {
    v: u64,
    msg_id: &'a str,
    mailbox: String,
    sender: String,
    created_at: u64,
    expires_at: u64,
    ciphertext: &'a str,
    sig: String,
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireEnvelope {
            v: ENVELOPE_VERSION,
            msg_id: self.msg_id.as_str(),
            mailbox: self.mailbox.to_hex(),
            sender: self.sender.to_hex(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            ciphertext: &self.ciphertext,
            sig: hex::encode(self.sig),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    /// For trusted input only (the node's own store): shape is checked, sizes are not.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawEnvelope::deserialize(deserializer)?;
        Envelope::from_raw(raw, usize::MAX).map_err(serde::de::Error::custom)
    }
}

/// The string the sender signs (SPEC §3).
pub fn canonical_string(
    msg_id: &str,
    mailbox: &str,
    sender: &str,
    created_at: u64,
    expires_at: u64,
    ciphertext_sha256_hex: &str,
) -> String {
    format!(
        "sbdm-envelope-v1\n{msg_id}\n{mailbox}\n{sender}\n{created_at}\n{expires_at}\n{ciphertext_sha256_hex}"
    )
}

impl Envelope {
    /// Parses a JSON envelope and checks every field's format and the ciphertext size.
    pub fn parse(json: &[u8], limits: &EnvelopeLimits) -> Result<Self, ProtocolError> {
        let raw: RawEnvelope =
            serde_json::from_slice(json).map_err(|e| json_error("envelope", &e))?;
        Self::from_raw(raw, limits.max_msg_bytes)
    }

    /// Parses an envelope already decoded as a JSON value (one item of a peer batch).
    pub fn from_value(
        value: serde_json::Value,
        limits: &EnvelopeLimits,
    ) -> Result<Self, ProtocolError> {
        let raw: RawEnvelope =
            serde_json::from_value(value).map_err(|e| json_error("envelope", &e))?;
        Self::from_raw(raw, limits.max_msg_bytes)
    }

    /// A replica from a peer (one item of a push batch or of a feed): parsed and verified
    /// exactly like a client's deposit.
    pub fn replica(
        value: serde_json::Value,
        limits: &EnvelopeLimits,
        now: u64,
    ) -> Result<Self, ProtocolError> {
        let envelope = Self::unverified_replica(value, limits, now)?;
        envelope.verify_signature()?;
        Ok(envelope)
    }

    /// [`Self::replica`] but for the signature, which the caller still has to verify (a peer
    /// batch verifies all its signatures at once).
    pub fn unverified_replica(
        value: serde_json::Value,
        limits: &EnvelopeLimits,
        now: u64,
    ) -> Result<Self, ProtocolError> {
        let envelope = Self::from_value(value, limits)?;
        envelope.check_time(now, limits)?;
        Ok(envelope)
    }

    pub(crate) fn from_raw(raw: RawEnvelope, max_msg_bytes: usize) -> Result<Self, ProtocolError> {
        if raw.v != ENVELOPE_VERSION {
            return Err(ProtocolError::BadRequest(format!(
                "Unknown envelope version v={}; this node speaks v=1.",
                raw.v
            )));
        }
        let msg_id = MsgId::parse("msg_id", &raw.msg_id)?;
        let mailbox = MailboxKey::parse("mailbox", &raw.mailbox)?;
        let sender = MailboxKey::parse("sender", &raw.sender)?;
        let sig = parse_signature("sig", &raw.sig)?;
        // Refuse an oversized ciphertext before spending time decoding it.
        if raw.ciphertext.len() / 4 * 3 > max_msg_bytes.saturating_add(3) {
            return Err(too_large(max_msg_bytes));
        }
        let bytes = decode_base64("ciphertext", &raw.ciphertext)?;
        if bytes.is_empty() {
            return Err(ProtocolError::BadRequest(
                "Field `ciphertext` must decode to at least one byte.".into(),
            ));
        }
        if bytes.len() > max_msg_bytes {
            return Err(too_large(max_msg_bytes));
        }
        let ciphertext_sha256_hex = hex::encode(Sha256::digest(&bytes)).into_boxed_str();
        Ok(Self {
            msg_id,
            mailbox,
            sender,
            created_at: raw.created_at,
            expires_at: raw.expires_at,
            ciphertext: raw.ciphertext.into_boxed_str(),
            sig,
            ciphertext_sha256_hex,
        })
    }

    /// The canonical string of SPEC §3 for this envelope.
    pub fn canonical(&self) -> String {
        canonical_string(
            self.msg_id.as_str(),
            &self.mailbox.to_hex(),
            &self.sender.to_hex(),
            self.created_at,
            self.expires_at,
            &self.ciphertext_sha256_hex,
        )
    }

    /// Checks the time rules of SPEC §3 at `now`, then the sender's signature.
    pub fn verify(&self, now: u64, limits: &EnvelopeLimits) -> Result<(), ProtocolError> {
        self.check_time(now, limits)?;
        self.verify_signature()
    }

    /// The time rules of SPEC §3 at `now` (the order of their errors is the order of the checks).
    pub fn check_time(&self, now: u64, limits: &EnvelopeLimits) -> Result<(), ProtocolError> {
        if self.created_at > now.saturating_add(SKEW_S) {
            return Err(ProtocolError::Stale(format!(
                "created_at is more than {SKEW_S} s ahead of this node's clock ({now}); check the sender's clock."
            )));
        }
        if self.expires_at <= self.created_at {
            return Err(ProtocolError::BadRequest(
                "expires_at must be later than created_at.".into(),
            ));
        }
        if now >= self.expires_at {
            return Err(ProtocolError::Expired(format!(
                "The envelope expired at {} (this node's clock is {now}); send a new one with a later expires_at.",
                self.expires_at
            )));
        }
        if self.expires_at - self.created_at > limits.max_ttl_s {
            return Err(ProtocolError::BadRequest(format!(
                "expires_at may be at most {} s after created_at on this node.",
                limits.max_ttl_s
            )));
        }
        Ok(())
    }

    /// Builds and signs an envelope (CLI, benchmarks, tests).
    pub fn sign(
        sender: &ed25519_dalek::SigningKey,
        mailbox: MailboxKey,
        msg_id: MsgId,
        created_at: u64,
        expires_at: u64,
        plaintext_or_ciphertext: &[u8],
    ) -> Self {
        use base64::Engine as _;
        use ed25519_dalek::Signer as _;
        let ciphertext = base64::engine::general_purpose::STANDARD.encode(plaintext_or_ciphertext);
        let sender_key = MailboxKey::of(sender);
        let ciphertext_sha256_hex =
            hex::encode(Sha256::digest(plaintext_or_ciphertext)).into_boxed_str();
        let mut envelope = Self {
            msg_id,
            mailbox,
            sender: sender_key,
            created_at,
            expires_at,
            ciphertext: ciphertext.into_boxed_str(),
            sig: [0; 64],
            ciphertext_sha256_hex,
        };
        envelope.sig = sender.sign(envelope.canonical().as_bytes()).to_bytes();
        envelope
    }
}

impl Signed for Envelope {
    fn signer(&self) -> (&MailboxKey, &'static str) {
        (&self.sender, "sender")
    }

    fn signed_string(&self) -> String {
        self.canonical()
    }

    fn signature(&self) -> &[u8; 64] {
        &self.sig
    }
}

fn too_large(max_msg_bytes: usize) -> ProtocolError {
    ProtocolError::TooLarge(format!(
        "The ciphertext is larger than this node's limit of {max_msg_bytes} bytes; split the message."
    ))
}
