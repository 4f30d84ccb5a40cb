//! SPEC Appendix A, `sbdm-box-v1`: how a client turns text into the envelope's `ciphertext`
//! and back. Relays never call this; any two clients that follow it interoperate.
//!
//! Sealing: `{"v":1,"text":…,"sent_at":…}` (JSON) → pad (`0x80`, then zeros to a multiple of
//! 256) → `crypto_box_easy` with X25519(recipient mailbox key) and X25519-secret(sender key) →
//! `nonce (24) ‖ tag (16) ‖ encrypted padded plaintext`. Opening runs the same steps backwards
//! with the recipient's secret key and the envelope's `sender` key.
//!
//! The keys are the Ed25519 keys mapped to X25519 exactly as libsodium does
//! (`crypto_sign_ed25519_pk_to_curve25519`, `crypto_sign_ed25519_sk_to_curve25519`); the box is
//! libsodium's: X25519 shared secret → HSalsa20 (zero input) → XSalsa20-Poly1305
//! (`crypto_secretbox`). Like libsodium, a public key that is not a valid, torsion-free Edwards
//! point, or a shared secret of all zeros, is refused rather than used.

use crate::protocol::MailboxKey;
use crypto_secretbox::aead::generic_array::GenericArray;
use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use crypto_secretbox::{Kdf as _, XSalsa20Poly1305};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The random nonce in front of every box.
pub const NONCE_BYTES: usize = 24;
/// The Poly1305 tag that `crypto_box_easy` puts in front of the encrypted bytes.
pub const TAG_BYTES: usize = 16;
/// The padded plaintext is a multiple of this many bytes.
pub const PAD_BLOCK: usize = 256;
/// The plaintext version this client writes and reads.
pub const PLAINTEXT_VERSION: u64 = 1;

/// What a box holds once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// The message (may be empty).
    pub text: String,
    /// When the sender wrote it (Unix seconds, the sender's clock).
    pub sent_at: u64,
}

/// Why a box did not open: the message is shown as undecryptable (SPEC Appendix A).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the box is shorter than a nonce and a tag ({0} bytes)")]
    TooShort(usize),
    #[error("the sender key {0} cannot be used for X25519 (not a valid Ed25519 public key)")]
    BadSenderKey(MailboxKey),
    #[error("the box does not open with this mailbox's key and the envelope's sender key")]
    BoxFailed,
    #[error("the plaintext's padding is malformed (no 0x80 after the text, or bytes after it)")]
    BadPadding,
    #[error("the plaintext is not a sbdm-box-v1 JSON object: {0}")]
    BadJson(String),
}

/// Why a box could not be sealed for a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The mailbox key {0} is not a valid Ed25519 public key, so nothing can be encrypted to it; check the recipient's key."
)]
pub struct BadRecipient(pub MailboxKey);

#[derive(Serialize)]
struct WirePlaintext<'a> {
    v: u64,
    text: &'a str,
    sent_at: u64,
}

#[derive(Deserialize)]
struct ReadPlaintext {
    v: u64,
    text: String,
    sent_at: u64,
}

/// The X25519 public key of an Ed25519 public key (libsodium's
/// `crypto_sign_ed25519_pk_to_curve25519`), or `None` where libsodium refuses it too: not a
/// point, small order, or not in the prime-order subgroup.
pub fn x25519_public(ed25519_public: &MailboxKey) -> Option<[u8; 32]> {
    Some(usable_point(ed25519_public)?.to_montgomery().to_bytes())
}

/// The key as a point, unless libsodium would refuse to convert it (see [`x25519_public`]).
fn usable_point(ed25519_public: &MailboxKey) -> Option<VerifyingKey> {
    let key = VerifyingKey::from_bytes(ed25519_public.as_bytes()).ok()?;
    (!key.is_weak() && key.to_edwards().is_torsion_free()).then_some(key)
}

/// The X25519 secret key of an Ed25519 key (libsodium's `crypto_sign_ed25519_sk_to_curve25519`:
/// the first half of SHA-512(seed), clamped).
pub fn x25519_secret(ed25519_secret: &SigningKey) -> [u8; 32] {
    let mut scalar = ed25519_secret.to_scalar_bytes();
    if let Some(first) = scalar.first_mut() {
        *first &= 248;
    }
    if let Some(last) = scalar.last_mut() {
        *last &= 127;
        *last |= 64;
    }
    scalar
}

/// `crypto_box_beforenm`: HSalsa20 of the X25519 shared secret; `None` for an unusable public
/// key or an all-zero shared secret (libsodium refuses both).
fn box_cipher(my_secret: &SigningKey, their_public: &MailboxKey) -> Option<XSalsa20Poly1305> {
    let shared = usable_point(their_public)?
        .to_montgomery()
        .mul_clamped(x25519_secret(my_secret));
    if shared.to_bytes() == [0u8; 32] {
        return None;
    }
    let box_key = XSalsa20Poly1305::kdf(
        GenericArray::from_slice(&shared.to_bytes()),
        &GenericArray::default(),
    );
    Some(XSalsa20Poly1305::new(&box_key))
}

/// The plaintext JSON of Appendix A, unpadded: `{"v":1,"text":…,"sent_at":…}`.
pub fn plaintext_json(text: &str, sent_at: u64) -> Vec<u8> {
    serde_json::to_vec(&WirePlaintext {
        v: PLAINTEXT_VERSION,
        text,
        sent_at,
    })
    // Serializing a struct of a string and two integers cannot fail.
    .unwrap_or_default()
}

/// Appends `0x80`, then zeros up to the next multiple of [`PAD_BLOCK`].
pub fn pad(plaintext: &[u8]) -> Vec<u8> {
    let padded_len = (plaintext.len() / PAD_BLOCK + 1) * PAD_BLOCK;
    let mut padded = Vec::with_capacity(padded_len);
    padded.extend_from_slice(plaintext);
    padded.push(0x80);
    padded.resize(padded_len, 0);
    padded
}

/// Strips the trailing zeros and the `0x80` before them; anything else is malformed.
pub fn unpad(padded: &[u8]) -> Result<&[u8], OpenError> {
    if padded.is_empty() || !padded.len().is_multiple_of(PAD_BLOCK) {
        return Err(OpenError::BadPadding);
    }
    let marker = padded
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(OpenError::BadPadding)?;
    match padded.get(marker) {
        Some(0x80) => Ok(padded.get(..marker).unwrap_or_default()),
        _ => Err(OpenError::BadPadding),
    }
}

/// Seals `text` for `recipient` with a given nonce (deterministic: for test vectors). Use
/// [`seal`] for real messages: a nonce must never be used twice with the same key pair.
pub fn seal_with_nonce(
    sender: &SigningKey,
    recipient: &MailboxKey,
    text: &str,
    sent_at: u64,
    nonce: [u8; NONCE_BYTES],
) -> Result<Vec<u8>, BadRecipient> {
    let cipher = box_cipher(sender, recipient).ok_or(BadRecipient(*recipient))?;
    let padded = pad(&plaintext_json(text, sent_at));
    let sealed = cipher
        .encrypt(GenericArray::from_slice(&nonce), padded.as_slice())
        // XSalsa20-Poly1305 without associated data fails only past 2^38 bytes.
        .map_err(|_| BadRecipient(*recipient))?;
    let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Seals `text` for `recipient` with a fresh random nonce: the bytes for the envelope's
/// `ciphertext` (before base64).
pub fn seal(
    sender: &SigningKey,
    recipient: &MailboxKey,
    text: &str,
    sent_at: u64,
) -> Result<Vec<u8>, super::ClientError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce)?;
    seal_with_nonce(sender, recipient, text, sent_at, nonce)
        .map_err(|e| super::ClientError::Invalid(e.to_string()))
}

/// Opens a box addressed to `recipient`'s mailbox, written by `sender` (the envelope's signed
/// `sender` key).
pub fn open(
    recipient: &SigningKey,
    sender: &MailboxKey,
    box_bytes: &[u8],
) -> Result<Plaintext, OpenError> {
    if box_bytes.len() < NONCE_BYTES + TAG_BYTES {
        return Err(OpenError::TooShort(box_bytes.len()));
    }
    let (nonce, sealed) = box_bytes.split_at(NONCE_BYTES);
    let cipher = box_cipher(recipient, sender).ok_or(OpenError::BadSenderKey(*sender))?;
    let padded = cipher
        .decrypt(GenericArray::from_slice(nonce), sealed)
        .map_err(|_| OpenError::BoxFailed)?;
    let json = unpad(&padded)?;
    let read: ReadPlaintext =
        serde_json::from_slice(json).map_err(|e| OpenError::BadJson(e.to_string()))?;
    if read.v != PLAINTEXT_VERSION {
        return Err(OpenError::BadJson(format!(
            "unknown version v={}; this client reads v=1",
            read.v
        )));
    }
    Ok(Plaintext {
        text: read.text,
        sent_at: read.sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    fn mailbox(key: &SigningKey) -> MailboxKey {
        MailboxKey::of(key)
    }

    #[test]
    fn padding_reaches_the_next_multiple_of_256() {
        for (len, padded) in [
            (0, 256),
            (1, 256),
            (254, 256),
            (255, 256),
            (256, 512),
            (511, 512),
        ] {
            let bytes = vec![b'x'; len];
            let out = pad(&bytes);
            assert_eq!(out.len(), padded, "{len} bytes");
            assert_eq!(out[len], 0x80, "{len} bytes");
            assert!(out[len + 1..].iter().all(|&b| b == 0), "{len} bytes");
            assert_eq!(unpad(&out).unwrap(), bytes.as_slice(), "{len} bytes");
        }
    }

    #[test]
    fn malformed_padding_is_refused() {
        let mut no_marker = vec![b'x'; 256];
        assert_eq!(unpad(&no_marker), Err(OpenError::BadPadding));
        no_marker[255] = 0;
        assert_eq!(
            unpad(&no_marker),
            Err(OpenError::BadPadding),
            "zeros, no 0x80"
        );
        assert_eq!(unpad(&[0u8; 256]), Err(OpenError::BadPadding), "all zeros");
        assert_eq!(unpad(&[]), Err(OpenError::BadPadding), "empty");
        let mut short = pad(b"hi");
        short.pop();
        assert_eq!(unpad(&short), Err(OpenError::BadPadding), "not a multiple");
        let mut wrong_marker = pad(b"hi");
        wrong_marker[2] = 0x81;
        assert_eq!(unpad(&wrong_marker), Err(OpenError::BadPadding));
        // The marker alone (empty plaintext) unpads to nothing.
        assert_eq!(unpad(&pad(b"")).unwrap(), b"");
    }

    #[test]
    fn empty_text_and_text_at_the_block_edge_round_trip() {
        let (alice, bob) = (key(1), key(2));
        let json_overhead = plaintext_json("", 1).len();
        // A text whose JSON is 255 bytes fills one block exactly with its 0x80.
        let edge = "a".repeat(PAD_BLOCK - 1 - json_overhead);
        for text in ["", edge.as_str(), &format!("{edge}b")] {
            let sealed = seal(&alice, &mailbox(&bob), text, 1).unwrap();
            let expected_blocks = (plaintext_json(text, 1).len() / PAD_BLOCK) + 1;
            assert_eq!(
                sealed.len(),
                NONCE_BYTES + TAG_BYTES + expected_blocks * PAD_BLOCK
            );
            let opened = open(&bob, &mailbox(&alice), &sealed).unwrap();
            assert_eq!(opened.text, text);
            assert_eq!(opened.sent_at, 1);
        }
        assert_eq!(plaintext_json(&edge, 1).len(), PAD_BLOCK - 1);
    }

    #[test]
    fn boxes_are_bound_to_both_keys_and_tampering_fails() {
        let (alice, bob, carol) = (key(1), key(2), key(3));
        let sealed = seal(&alice, &mailbox(&bob), "hi", 5).unwrap();
        assert_eq!(
            open(&bob, &mailbox(&carol), &sealed),
            Err(OpenError::BoxFailed)
        );
        assert_eq!(
            open(&carol, &mailbox(&alice), &sealed),
            Err(OpenError::BoxFailed)
        );
        for i in [0, NONCE_BYTES, NONCE_BYTES + TAG_BYTES, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(
                open(&bob, &mailbox(&alice), &tampered),
                Err(OpenError::BoxFailed)
            );
        }
        assert_eq!(
            open(&bob, &mailbox(&alice), &sealed[..39]),
            Err(OpenError::TooShort(39))
        );
    }

    #[test]
    fn a_box_of_something_else_is_malformed_json() {
        let (alice, bob) = (key(1), key(2));
        let cipher = box_cipher(&alice, &mailbox(&bob)).unwrap();
        let nonce = [7u8; NONCE_BYTES];
        for (plain, want_json) in [
            (&b"not json"[..], true),
            (br#"{"v":2,"text":"x","sent_at":1}"#, true),
        ] {
            let sealed = cipher
                .encrypt(GenericArray::from_slice(&nonce), pad(plain).as_slice())
                .unwrap();
            let mut bytes = nonce.to_vec();
            bytes.extend(sealed);
            let err = open(&bob, &mailbox(&alice), &bytes).unwrap_err();
            assert_eq!(matches!(err, OpenError::BadJson(_)), want_json, "{err}");
        }
    }

    #[test]
    fn an_invalid_recipient_key_is_refused() {
        // The identity point (small order) and a y that is not on the curve.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        for bytes in [identity, not_a_point] {
            let recipient = MailboxKey::from_bytes(bytes);
            assert!(x25519_public(&recipient).is_none());
            assert_eq!(
                seal_with_nonce(&key(1), &recipient, "x", 1, [0; NONCE_BYTES]),
                Err(BadRecipient(recipient))
            );
        }
    }
}
