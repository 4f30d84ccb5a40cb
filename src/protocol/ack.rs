//! The ack object of SPEC §6.3: signed by the mailbox owner, replicated verbatim to peers.

use super::fields::{MailboxKey, MsgId, parse_signature};
use super::poll::check_fresh;
use super::{ProtocolError, SKEW_S, Signed, json_error};
use serde::{Deserialize, Serialize};

/// The only ack version this node speaks.
pub const ACK_VERSION: u64 = 1;
/// Most message ids one ack may carry.
pub const MAX_ACK_IDS: usize = 100;

/// A well-formed ack object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckObject {
    pub mailbox: MailboxKey,
    pub ts: u64,
    pub msg_ids: Vec<MsgId>,
    pub sig: [u8; 64],
}

#[derive(Deserialize)]
struct RawAck {
    v: u64,
    mailbox: String,
    ts: u64,
    msg_ids: Vec<String>,
    sig: String,
}

#[derive(Serialize)]
struct WireAck<'a> {
    v: u64,
    mailbox: String,
    ts: u64,
    msg_ids: Vec<&'a str>,
    sig: String,
}

impl Serialize for AckObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireAck {
            v: ACK_VERSION,
            mailbox: self.mailbox.to_hex(),
            ts: self.ts,
            msg_ids: self.msg_ids.iter().map(MsgId::as_str).collect(),
            sig: hex::encode(self.sig),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AckObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawAck::deserialize(deserializer)?;
        AckObject::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

/// The string the mailbox owner signs (SPEC §6.3).
pub fn canonical_string(mailbox: &str, ts: u64, msg_ids: &[&str]) -> String {
    format!("sbdm-ack-v1\n{mailbox}\n{ts}\n{}", msg_ids.join(","))
}

impl AckObject {
    pub fn parse(json: &[u8]) -> Result<Self, ProtocolError> {
        let raw: RawAck = serde_json::from_slice(json).map_err(|e| json_error("ack object", &e))?;
        Self::from_raw(raw)
    }

    /// Parses an ack already decoded as a JSON value (one item of a peer batch).
    pub fn from_value(value: serde_json::Value) -> Result<Self, ProtocolError> {
        let raw: RawAck =
            serde_json::from_value(value).map_err(|e| json_error("ack object", &e))?;
        Self::from_raw(raw)
    }

    /// An ack object from a peer (one item of a batch or of a feed): parsed, then checked with
    /// [`Self::verify_replica`].
    pub fn replica(
        value: serde_json::Value,
        now: u64,
        max_ttl_s: u64,
    ) -> Result<Self, ProtocolError> {
        let ack = Self::unverified_replica(value, now, max_ttl_s)?;
        ack.verify_signature()?;
        Ok(ack)
    }

    /// [`Self::replica`] but for the signature, which the caller still has to verify (a peer
    /// batch verifies all its signatures at once).
    pub fn unverified_replica(
        value: serde_json::Value,
        now: u64,
        max_ttl_s: u64,
    ) -> Result<Self, ProtocolError> {
        let ack = Self::from_value(value)?;
        ack.check_replica_time(now, max_ttl_s)?;
        Ok(ack)
    }

    fn from_raw(raw: RawAck) -> Result<Self, ProtocolError> {
        if raw.v != ACK_VERSION {
            return Err(ProtocolError::BadRequest(format!(
                "Unknown ack version v={}; this node speaks v=1.",
                raw.v
            )));
        }
        let mailbox = MailboxKey::parse("mailbox", &raw.mailbox)?;
        if raw.msg_ids.is_empty() || raw.msg_ids.len() > MAX_ACK_IDS {
            return Err(ProtocolError::BadRequest(format!(
                "Field `msg_ids` must list 1 to {MAX_ACK_IDS} message ids; split larger acks."
            )));
        }
        let msg_ids = raw
            .msg_ids
            .iter()
            .map(|id| MsgId::parse("msg_ids", id))
            .collect::<Result<Vec<_>, _>>()?;
        let sig = parse_signature("sig", &raw.sig)?;
        Ok(Self {
            mailbox,
            ts: raw.ts,
            msg_ids,
            sig,
        })
    }

    pub fn canonical(&self) -> String {
        let ids: Vec<&str> = self.msg_ids.iter().map(MsgId::as_str).collect();
        canonical_string(&self.mailbox.to_hex(), self.ts, &ids)
    }

    /// Client plane (SPEC §6.3): fresh within SKEW, and signed by the mailbox owner.
    pub fn verify_fresh(&self, now: u64) -> Result<(), ProtocolError> {
        self.check_fresh(now)?;
        self.verify_signature()
    }

    /// The time rule of [`Self::verify_fresh`] alone; the signature is [`Signed`].
    pub fn check_fresh(&self, now: u64) -> Result<(), ProtocolError> {
        check_fresh(self.ts, now)
    }

    /// Peer plane (SPEC §7.2): acks may travel long, but not longer than `max_ttl`, and never
    /// from more than SKEW in the future.
    pub fn verify_replica(&self, now: u64, max_ttl_s: u64) -> Result<(), ProtocolError> {
        self.check_replica_time(now, max_ttl_s)?;
        self.verify_signature()
    }

    /// The time rule of [`Self::verify_replica`] alone; the signature is [`Signed`].
    pub fn check_replica_time(&self, now: u64, max_ttl_s: u64) -> Result<(), ProtocolError> {
        if self.ts > now.saturating_add(SKEW_S) {
            return Err(ProtocolError::Stale(format!(
                "The ack timestamp ts={} is more than {SKEW_S} s ahead of this node's clock ({now}).",
                self.ts
            )));
        }
        if now.saturating_sub(self.ts) > max_ttl_s {
            return Err(ProtocolError::Stale(format!(
                "The ack timestamp ts={} is older than max_ttl ({max_ttl_s} s); nothing it could acknowledge is still alive.",
                self.ts
            )));
        }
        Ok(())
    }

    /// Builds and signs an ack (CLI, tests).
    pub fn sign(owner: &ed25519_dalek::SigningKey, ts: u64, msg_ids: Vec<MsgId>) -> Self {
        use ed25519_dalek::Signer as _;
        let mailbox = MailboxKey::of(owner);
        let mut ack = Self {
            mailbox,
            ts,
            msg_ids,
            sig: [0; 64],
        };
        ack.sig = owner.sign(ack.canonical().as_bytes()).to_bytes();
        ack
    }
}

impl Signed for AckObject {
    fn signer(&self) -> (&MailboxKey, &'static str) {
        (&self.mailbox, "mailbox")
    }

    fn signed_string(&self) -> String {
        self.canonical()
    }

    fn signature(&self) -> &[u8; 64] {
        &self.sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ack_at(ts: u64) -> AckObject {
        let owner = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        AckObject::sign(&owner, ts, vec![MsgId::parse("m", "m1").unwrap()])
    }

    #[test]
    fn client_acks_must_be_fresh_within_skew() {
        for ts in [NOW - 300, NOW + 300] {
            assert!(ack_at(ts).verify_fresh(NOW).is_ok());
        }
        for ts in [NOW - 301, NOW + 301] {
            assert!(matches!(
                ack_at(ts).verify_fresh(NOW),
                Err(ProtocolError::Stale(_))
            ));
        }
    }

    #[test]
    fn replicated_acks_may_be_old_up_to_max_ttl_but_not_from_the_future() {
        let max_ttl = 3600;
        for ts in [NOW - 3600, NOW - 301, NOW + 300] {
            assert!(ack_at(ts).verify_replica(NOW, max_ttl).is_ok(), "{ts}");
        }
        for ts in [NOW - 3601, NOW + 301] {
            assert!(
                matches!(
                    ack_at(ts).verify_replica(NOW, max_ttl),
                    Err(ProtocolError::Stale(_))
                ),
                "{ts}"
            );
        }
        let mut forged = ack_at(NOW);
        forged.ts += 1;
        assert!(matches!(
            forged.verify_replica(NOW, max_ttl),
            Err(ProtocolError::BadSignature(_))
        ));
    }
}
