//! The poll request of SPEC §6.2, signed by the mailbox owner.
//!
//! `wait_s` (long poll) travels in the same body but is not signed: it only changes when the
//! node answers, never what it answers.

use super::fields::{MailboxKey, check_nonce, parse_signature};
use super::{ProtocolError, SKEW_S, Signed, json_error};
use serde::{Deserialize, Serialize};

/// `limit` when the request has none.
pub const DEFAULT_POLL_LIMIT: u64 = 8;
/// Largest `limit` a poll may ask for.
pub const MAX_POLL_LIMIT: u64 = 100;
/// Longest a poll may ask the node to wait for mail (`wait_s`, SPEC §6.2).
pub const MAX_POLL_WAIT_S: u64 = 30;

/// A well-formed poll request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    pub mailbox: MailboxKey,
    pub ts: u64,
    pub nonce: String,
    pub limit: u64,
    pub sig: [u8; 64],
    /// Seconds the node may hold the request while the mailbox is empty (0: answer at once).
    /// Not signed.
    pub wait_s: u64,
}

#[derive(Deserialize, Serialize)]
struct RawPoll {
    mailbox: String,
    ts: u64,
    nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    sig: String,
    /// Kept as any JSON value so that a wrong type gets its own sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_s: Option<serde_json::Value>,
}

/// `wait_s` as sent: absent or null is 0, otherwise a whole number of seconds up to the maximum.
fn parse_wait_s(value: Option<&serde_json::Value>) -> Result<u64, ProtocolError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(value) => value
            .as_u64()
            .filter(|&seconds| seconds <= MAX_POLL_WAIT_S)
            .ok_or_else(|| {
                ProtocolError::BadRequest(format!(
                    "Field `wait_s` must be a whole number of seconds between 0 and {MAX_POLL_WAIT_S}, got {value}."
                ))
            }),
    }
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
        let wait_s = parse_wait_s(raw.wait_s.as_ref())?;
        Ok(Self {
            mailbox,
            ts: raw.ts,
            nonce: raw.nonce,
            limit,
            sig,
            wait_s,
        })
    }

    pub fn canonical(&self) -> String {
        canonical_string(&self.mailbox.to_hex(), self.ts, &self.nonce, self.limit)
    }

    /// Checks freshness (`|now - ts| <= SKEW`) and the owner's signature. The nonce window is
    /// the mailbox actor's job, since only it sees every poll of the mailbox.
    pub fn verify(&self, now: u64) -> Result<(), ProtocolError> {
        self.check_time(now)?;
        self.verify_signature()
    }

    /// Freshness alone (`|now - ts| <= SKEW`); the signature is [`Signed`].
    pub fn check_time(&self, now: u64) -> Result<(), ProtocolError> {
        check_fresh(self.ts, now)
    }

    /// The same request, asking the node to wait up to `wait_s` seconds for mail (the
    /// signature stays valid: `wait_s` is not signed).
    pub fn with_wait(mut self, wait_s: u64) -> Self {
        self.wait_s = wait_s;
        self
    }

    /// Builds and signs a poll request (CLI, tests); it does not wait (see [`Self::with_wait`]).
    pub fn sign(owner: &ed25519_dalek::SigningKey, ts: u64, nonce: String, limit: u64) -> Self {
        use ed25519_dalek::Signer as _;
        let mailbox = MailboxKey::of(owner);
        let mut request = Self {
            mailbox,
            ts,
            nonce,
            limit,
            sig: [0; 64],
            wait_s: 0,
        };
        request.sig = owner.sign(request.canonical().as_bytes()).to_bytes();
        request
    }

    /// The JSON a client sends (`wait_s` only when it is not 0).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "mailbox": self.mailbox.to_hex(),
            "ts": self.ts,
            "nonce": self.nonce,
            "limit": self.limit,
            "sig": hex::encode(self.sig),
        });
        if self.wait_s > 0
            && let Some(object) = json.as_object_mut()
        {
            object.insert("wait_s".into(), self.wait_s.into());
        }
        json
    }
}

impl Signed for PollRequest {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn signed() -> PollRequest {
        PollRequest::sign(
            &SigningKey::from_bytes(&[7; 32]),
            1_800_000_000,
            "ab".repeat(8),
            8,
        )
    }

    fn with_wait(wait_s: serde_json::Value) -> Vec<u8> {
        let mut json = signed().to_json();
        json["wait_s"] = wait_s;
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn wait_s_defaults_to_0_and_is_not_signed() {
        let plain = PollRequest::parse(&serde_json::to_vec(&signed().to_json()).unwrap()).unwrap();
        assert_eq!(plain.wait_s, 0);
        let waiting = PollRequest::parse(&with_wait(30.into())).unwrap();
        assert_eq!(waiting.wait_s, 30);
        assert_eq!(waiting.canonical(), plain.canonical());
        waiting.verify(1_800_000_000).unwrap();
        assert_eq!(
            PollRequest::parse(&with_wait(serde_json::Value::Null))
                .unwrap()
                .wait_s,
            0
        );
        let json = signed().with_wait(5).to_json();
        assert_eq!(json["wait_s"], 5);
        assert!(signed().to_json().get("wait_s").is_none());
    }

    #[test]
    fn wait_s_out_of_range_or_of_the_wrong_type_is_a_bad_request() {
        for bad in [
            serde_json::json!(31),
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("x"),
            serde_json::json!(true),
        ] {
            match PollRequest::parse(&with_wait(bad.clone())) {
                Err(ProtocolError::BadRequest(detail)) => {
                    assert!(detail.contains("wait_s"), "{bad}: {detail}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
