//! Field formats of SPEC §1: lowercase-hex keys and signatures, message ids, nonces, base64.
//!
//! Each parser takes the field's name so that its error sentence tells the client which field
//! to fix and what shape it must have.

use super::ProtocolError;
use std::fmt;

/// An Ed25519 public key naming a mailbox or a sender (32 bytes, written as 64 lowercase hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxKey([u8; 32]);

impl MailboxKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The public key of `key`: its owner's mailbox, or its sender key.
    pub fn of(key: &ed25519_dalek::SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(field: &str, value: &str) -> Result<Self, ProtocolError> {
        parse_lower_hex::<32>(field, value, "an Ed25519 public key").map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for MailboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for MailboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

/// Longest `msg_id` accepted (SPEC §1).
pub const MAX_MSG_ID_CHARS: usize = 128;

/// A sender-chosen message id: 1..=128 chars of `[A-Za-z0-9_-]`. Shared, not copied, by its
/// clones: a mailbox keeps each pending id in three places (by id, in delivery order, by expiry).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MsgId(std::sync::Arc<str>);

impl MsgId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ProtocolError> {
        let well_formed = !value.is_empty()
            && value.len() <= MAX_MSG_ID_CHARS
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if well_formed {
            Ok(Self(value.into()))
        } else {
            Err(ProtocolError::BadRequest(format!(
                "Field `{field}` must be 1 to {MAX_MSG_ID_CHARS} characters of A-Z, a-z, 0-9, '_' or '-'."
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses an Ed25519 signature: 128 lowercase hex characters.
pub fn parse_signature(field: &str, value: &str) -> Result<[u8; 64], ProtocolError> {
    parse_lower_hex::<64>(field, value, "an Ed25519 signature")
}

/// Parses exactly `N` bytes written as `2N` lowercase hex characters.
fn parse_lower_hex<const N: usize>(
    field: &str,
    value: &str,
    what: &str,
) -> Result<[u8; N], ProtocolError> {
    let error = || {
        ProtocolError::BadRequest(format!(
            "Field `{field}` must be {what}: exactly {} lowercase hex characters (0-9, a-f).",
            N * 2
        ))
    };
    if value.len() != N * 2 || !is_lower_hex(value) {
        return Err(error());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(value, &mut out).map_err(|_| error())?;
    Ok(out)
}

/// True when every character is one of `0-9a-f`.
pub fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Shortest and longest poll nonce, in hex characters (SPEC §6.2).
pub const NONCE_HEX_CHARS: std::ops::RangeInclusive<usize> = 16..=64;

/// Checks a poll nonce: 16..=64 lowercase hex characters.
pub fn check_nonce(value: &str) -> Result<(), ProtocolError> {
    if NONCE_HEX_CHARS.contains(&value.len()) && is_lower_hex(value) {
        Ok(())
    } else {
        Err(ProtocolError::BadRequest(
            "Field `nonce` must be 16 to 64 lowercase hex characters; use a fresh random value for every poll."
                .into(),
        ))
    }
}

/// Decodes standard base64 with padding (RFC 4648 §4).
pub fn decode_base64(field: &str, value: &str) -> Result<Vec<u8>, ProtocolError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| {
            ProtocolError::BadRequest(format!(
                "Field `{field}` must be standard base64 with padding (RFC 4648 section 4)."
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_64_lowercase_hex() {
        let good = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
        assert_eq!(MailboxKey::parse("sender", good).unwrap().to_hex(), good);
        assert!(MailboxKey::parse("sender", &good.to_uppercase()).is_err());
        assert!(MailboxKey::parse("sender", &good[..62]).is_err());
        assert!(MailboxKey::parse("sender", &format!("{good}00")).is_err());
        assert!(MailboxKey::parse("sender", &good.replace('8', "g")).is_err());
        assert!(MailboxKey::parse("sender", "").is_err());
    }

    #[test]
    fn msg_ids_follow_the_alphabet_and_length() {
        assert!(MsgId::parse("msg_id", "dm_0001-a").is_ok());
        assert!(MsgId::parse("msg_id", &"a".repeat(128)).is_ok());
        assert!(MsgId::parse("msg_id", &"a".repeat(129)).is_err());
        assert!(MsgId::parse("msg_id", "").is_err());
        assert!(MsgId::parse("msg_id", "a b").is_err());
        assert!(MsgId::parse("msg_id", "é").is_err());
        assert!(MsgId::parse("msg_id", "a/b").is_err());
    }

    #[test]
    fn nonces_are_16_to_64_lowercase_hex() {
        assert!(check_nonce(&"a".repeat(16)).is_ok());
        assert!(check_nonce(&"0".repeat(64)).is_ok());
        assert!(check_nonce(&"a".repeat(15)).is_err());
        assert!(check_nonce(&"a".repeat(65)).is_err());
        assert!(check_nonce(&"A".repeat(16)).is_err());
    }

    #[test]
    fn base64_must_be_standard_and_padded() {
        assert_eq!(decode_base64("c", "AAE=").unwrap(), vec![0, 1]);
        assert!(decode_base64("c", "AAE").is_err());
        assert!(decode_base64("c", "AA-_").is_err());
        assert!(decode_base64("c", "!!!!").is_err());
    }
}
