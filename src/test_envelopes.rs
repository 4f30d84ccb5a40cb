//! Signed envelopes for unit tests (compiled only for them): the same sender, mailbox, time
//! and ciphertext everywhere, so that tests of different modules speak of the same mail.

use crate::protocol::{Envelope, MailboxKey, MsgId};
use ed25519_dalek::SigningKey;
use std::sync::Arc;

/// The unit tests' "now".
pub const NOW: u64 = 1_800_000_000;

/// The sender of [`envelope`] (alice, seed 1).
pub fn alice() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// The owner of the mailbox of [`envelope`] (bob, seed 2).
pub fn bob() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// An envelope from alice to bob's mailbox with id `id`, created at [`NOW`], expiring at
/// `expires_at`, of one byte of ciphertext.
pub fn envelope(id: &str, expires_at: u64) -> Arc<Envelope> {
    Arc::new(Envelope::sign(
        &alice(),
        MailboxKey::of(&bob()),
        MsgId::parse("m", id).unwrap(),
        NOW,
        expires_at,
        b"x",
    ))
}
