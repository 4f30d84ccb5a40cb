//! Messages as a client sees them: an envelope built from text (sealed, then signed with
//! [`Envelope::sign`]), and an envelope received on a poll turned into a [`Received`] after every
//! check a recipient must make itself (the relay is not trusted with any of them).
//!
//! Checks on a received envelope, in order: well formed (SPEC §3 shape), addressed to this
//! mailbox, signature of its `sender` over the canonical string, then the box opens with this
//! mailbox's key and that `sender` (Appendix A). A failure is never dropped: it becomes
//! [`Content::Rejected`] or [`Content::Undecryptable`], which the user sees and can acknowledge.

use super::ClientError;
use super::payload::{self, OpenError, Plaintext};
use crate::protocol::{Envelope, MailboxKey, MsgId, random_hex};
use base64::Engine as _;
use ed25519_dalek::SigningKey;

/// Bytes of randomness in a generated `msg_id` (hex-encoded: 32 characters).
pub const MSG_ID_RANDOM_BYTES: usize = 16;

/// Seals `text` for `to`, then signs an envelope from `sender` created `now`, living `ttl_s`
/// seconds, with a random `msg_id`.
pub fn build_envelope(
    sender: &SigningKey,
    to: &MailboxKey,
    text: &str,
    now: u64,
    ttl_s: u64,
) -> Result<Envelope, ClientError> {
    let box_bytes = payload::seal(sender, to, text, now)?;
    let msg_id = new_msg_id()?;
    Ok(Envelope::sign(
        sender,
        *to,
        msg_id,
        now,
        now.saturating_add(ttl_s),
        &box_bytes,
    ))
}

/// A fresh random message id (32 lowercase hex characters).
pub fn new_msg_id() -> Result<MsgId, ClientError> {
    let id = random_hex(MSG_ID_RANDOM_BYTES)?;
    MsgId::parse("msg_id", &id).map_err(|e| ClientError::Invalid(e.to_string()))
}

/// One envelope of a poll, as far as the recipient could check and open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The envelope's `msg_id` when it is well formed (what an ack names).
    pub msg_id: Option<MsgId>,
    /// The `sender` field as sent (trust it only with [`Content::Read`]).
    pub sender: Option<String>,
    /// The envelope's `created_at`, when present.
    pub created_at: Option<u64>,
    pub content: Content,
}

/// What a received envelope turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Signed by `sender`, addressed to this mailbox, and its box opened.
    Read(Plaintext),
    /// Signed and addressed correctly, but the box did not open or its plaintext is malformed
    /// (SPEC Appendix A: shown as undecryptable, can still be acknowledged).
    Undecryptable(OpenError),
    /// Not an envelope this mailbox should accept at all (the relay changed or invented it).
    Rejected(EnvelopeProblem),
}

/// Why a received envelope was not even opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeProblem {
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("addressed to another mailbox ({0})")]
    WrongMailbox(MailboxKey),
    #[error("the signature does not verify with the envelope's sender key")]
    BadSignature,
}

impl Received {
    /// The opened plaintext, or why there is none (for callers that want `?`).
    pub fn plaintext(&self) -> Result<&Plaintext, ClientError> {
        match &self.content {
            Content::Read(plaintext) => Ok(plaintext),
            Content::Undecryptable(err) => Err(ClientError::Undecryptable(err.clone())),
            Content::Rejected(problem) => Err(ClientError::Rejected(problem.clone())),
        }
    }

    /// The short machine word for a message that could not be read: `undecryptable`,
    /// `bad_signature`, `wrong_mailbox` or `malformed_envelope`; `None` for a readable one.
    pub fn error_code(&self) -> Option<&'static str> {
        match &self.content {
            Content::Read(_) => None,
            Content::Undecryptable(_) => Some("undecryptable"),
            Content::Rejected(EnvelopeProblem::BadSignature) => Some("bad_signature"),
            Content::Rejected(EnvelopeProblem::WrongMailbox(_)) => Some("wrong_mailbox"),
            Content::Rejected(EnvelopeProblem::Malformed(_)) => Some("malformed_envelope"),
        }
    }
}

/// Checks and opens one envelope of `owner`'s poll reply (a JSON value as the node sent it).
pub fn open_received(owner: &SigningKey, value: &serde_json::Value) -> Received {
    let field_str = |name: &str| value.get(name).and_then(|v| v.as_str());
    let msg_id = field_str("msg_id").and_then(|id| MsgId::parse("msg_id", id).ok());
    let sender = field_str("sender").map(str::to_string);
    let created_at = value.get("created_at").and_then(serde_json::Value::as_u64);
    let content = check_and_open(owner, value);
    Received {
        msg_id,
        sender,
        created_at,
        content,
    }
}

fn check_and_open(owner: &SigningKey, value: &serde_json::Value) -> Content {
    let limits = crate::protocol::EnvelopeLimits {
        // The recipient takes whatever size its relay accepted.
        max_msg_bytes: usize::MAX,
        max_ttl_s: u64::MAX,
    };
    let envelope = match Envelope::from_value(value.clone(), &limits) {
        Ok(envelope) => envelope,
        Err(err) => return Content::Rejected(EnvelopeProblem::Malformed(err.to_string())),
    };
    let me = MailboxKey::of(owner);
    if envelope.mailbox != me {
        return Content::Rejected(EnvelopeProblem::WrongMailbox(envelope.mailbox));
    }
    // Only the signature: the time rules are the relay's business, and an old message is
    // still worth reading.
    if crate::protocol::verify_signature(
        &envelope.sender,
        envelope.canonical().as_bytes(),
        &envelope.sig,
        "sender",
    )
    .is_err()
    {
        return Content::Rejected(EnvelopeProblem::BadSignature);
    }
    let Ok(box_bytes) = base64::engine::general_purpose::STANDARD.decode(&*envelope.ciphertext)
    else {
        return Content::Rejected(EnvelopeProblem::Malformed(
            "ciphertext is not base64".into(),
        ));
    };
    match payload::open(owner, &envelope.sender, &box_bytes) {
        Ok(plaintext) => Content::Read(plaintext),
        Err(err) => Content::Undecryptable(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::now_unix;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn mailbox(key: &SigningKey) -> MailboxKey {
        MailboxKey::of(key)
    }

    #[test]
    fn a_built_envelope_opens_for_its_recipient_only() {
        let (alice, bob, carol) = (key(1), key(2), key(3));
        let envelope = build_envelope(&alice, &mailbox(&bob), "hello", now_unix(), 60).unwrap();
        let json = serde_json::to_value(&envelope).unwrap();
        let received = open_received(&bob, &json);
        assert_eq!(received.msg_id.as_ref(), Some(&envelope.msg_id));
        assert_eq!(received.sender, Some(mailbox(&alice).to_hex()));
        match received.content {
            Content::Read(plain) => assert_eq!(plain.text, "hello"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            open_received(&carol, &json).content,
            Content::Rejected(EnvelopeProblem::WrongMailbox(mailbox(&bob)))
        );
    }

    #[test]
    fn a_changed_envelope_is_shown_as_rejected_not_dropped() {
        let (alice, bob) = (key(1), key(2));
        let envelope = build_envelope(&alice, &mailbox(&bob), "hello", now_unix(), 60).unwrap();
        let mut json = serde_json::to_value(&envelope).unwrap();
        json["expires_at"] = (envelope.expires_at + 1).into();
        let received = open_received(&bob, &json);
        assert_eq!(received.error_code(), Some("bad_signature"));
        assert_eq!(received.msg_id.as_ref(), Some(&envelope.msg_id));
        json["ciphertext"] = "%%%".into();
        assert_eq!(
            open_received(&bob, &json).error_code(),
            Some("malformed_envelope")
        );
    }

    #[test]
    fn a_signed_box_that_does_not_open_is_undecryptable() {
        let (alice, bob) = (key(1), key(2));
        let envelope = Envelope::sign(
            &alice,
            mailbox(&bob),
            MsgId::parse("m", "garbage-1").unwrap(),
            now_unix(),
            now_unix() + 60,
            &[7u8; 100],
        );
        let received = open_received(&bob, &serde_json::to_value(&envelope).unwrap());
        assert_eq!(
            received.content,
            Content::Undecryptable(OpenError::BoxFailed)
        );
        assert_eq!(received.error_code(), Some("undecryptable"));
    }
}
