//! The poll request of SPEC §6.2, signed by the mailbox owner.

use super::fields::{MailboxKey, check_nonce, parse_signature};
use super::{ProtocolError, SKEW_S, json_error, verify_signature};
use serde::{Deserialize, Serialize};

/// `limit` when the request has none.
pub const DEFAULT_POLL_LIMIT: u64 = 8;
/// Largest `limit` a poll may ask for.
pub const MAX_POLL_LIMIT: u64 = 100;

/// A well-formed poll request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub mailbox: MailboxKey,
    pub ts: u64,
    pub nonce: String,
    pub limit: u64,
    pub sig: [u8; 64],
}

#[derive(Deserialize, Serialize)]
struct RawPoll {
    mailbox: String,
    ts: u64,
    nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    sig: String,
}

/// The string the mailbox owner signs (SPEC §6.2).
pub fn canonical_string(mailbox: &str, ts: u64, nonce: &str, limit: u64) -> String {
    format!("sbdm-poll-v1\n{mailbox}\n{ts}\n{nonce}\n{limit}")
}

impl PollRequest {
    pub fn parse(json: &[u8]) -> Result<Self, ProtocolError> {
        let raw: RawPoll =
            serde_json::from_slice(json).map_err(|e| json_error("poll request", &e))?;
        let mailbox = MailboxKey::parse("mailbox", &raw.mailbox)?;
        check_nonce(&raw.nonce)?;
        let sig = parse_signature("sig", &raw.sig)?;
        let limit = raw.limit.unwrap_or(DEFAULT_POLL_LIMIT);
        if limit > MAX_POLL_LIMIT {
            return Err(ProtocolError::BadRequest(format!(
                "Field `limit` must be between 0 and {MAX_POLL_LIMIT}."
            )));
        }
        Ok(Self {
            mailbox,
            ts: raw.ts,
            nonce: raw.nonce,
            limit,
            sig,
        })
    }

    pub fn canonical(&self) -> String {
        canonical_string(&self.mailbox.to_hex(), self.ts, &self.nonce, self.limit)
    }

    /// Checks freshness (`|now - ts| <= SKEW`) and the owner's signature. The nonce window is
    /// the mailbox actor's job, since only it sees every poll of the mailbox.
    pub fn verify(&self, now: u64) -> Result<(), ProtocolError> {
        check_fresh(self.ts, now)?;
        verify_signature(
            &self.mailbox,
            self.canonical().as_bytes(),
            &self.sig,
            "mailbox",
        )
    }

    /// Builds and signs a poll request (CLI, tests).
    pub fn sign(owner: &ed25519_dalek::SigningKey, ts: u64, nonce: String, limit: u64) -> Self {
        use ed25519_dalek::Signer as _;
        let mailbox = MailboxKey::from_bytes(owner.verifying_key().to_bytes());
        let mut request = Self {
            mailbox,
            ts,
            nonce,
            limit,
            sig: [0; 64],
        };
        request.sig = owner.sign(request.canonical().as_bytes()).to_bytes();
        request
    }

    /// The JSON a client sends.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mailbox": self.mailbox.to_hex(),
            "ts": self.ts,
            "nonce": self.nonce,
            "limit": self.limit,
            "sig": hex::encode(self.sig),
        })
    }
}

/// `|now - ts| <= SKEW`, the freshness rule of signed client requests.
pub(crate) fn check_fresh(ts: u64, now: u64) -> Result<(), ProtocolError> {
    if ts.abs_diff(now) > SKEW_S {
        Err(ProtocolError::Stale(format!(
            "The request timestamp ts={ts} is more than {SKEW_S} s away from this node's clock ({now}); check your clock and sign a new request."
        )))
    } else {
        Ok(())
    }
}
