//! The one replica applier: the push routes (SPEC §7.1–7.2) and the feed puller (SPEC §7.4)
//! check and apply what a peer sends through it, so both directions behave the same.
//!
//! Items are checked (shape and time window of each, then the Ed25519 signatures of the whole
//! batch in one [`verify_batch`]) and sent to their mailbox shards in order, eagerly, then the
//! answers are collected: per-mailbox order holds, and the shards work in parallel. Every
//! replica that a shard applied (accepted, a duplicate, already acked, an ack applied) is
//! remembered by its signature in [`SeenReplicas`], and so is every client change of this node
//! (its copies come back in the peers' feeds); the puller's pages skip those before any parsing
//! of the item or signature check, so a feed entry that came by push costs a lookup, not a
//! verification. (A different item with a copied signature would fail its own
//! check anyway, so skipping it changes nothing.)

use crate::mailbox::rules::Decision;
use crate::mailbox::shard::{AckReport, ShardError};
use crate::mailbox::{MailboxRouter, Origin};
use crate::protocol::signature::verify_batch;
use crate::protocol::wire::signature_field;
use crate::protocol::{AckObject, Envelope, EnvelopeLimits, ProtocolError, Signed};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

/// Signatures remembered per generation; two generations are kept.
pub const SEEN_PER_GENERATION: usize = 1 << 17;

/// Recently applied replicas, by the first 16 bytes of their signature (bounded: two
/// generations of [`SEEN_PER_GENERATION`], the older dropped when the newer fills up).
#[derive(Debug, Default)]
pub struct SeenReplicas {
    generations: Mutex<[HashSet<u128>; 2]>,
}

impl SeenReplicas {
    fn key(sig: &[u8; 64]) -> u128 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&sig[..16]);
        u128::from_le_bytes(head)
    }

    /// The key of a signature given as hex (`None` if it is not hex of at least 16 bytes).
    fn key_of_hex(hex_sig: &str) -> Option<u128> {
        let mut head = [0u8; 16];
        hex::decode_to_slice(hex_sig.get(..32)?, &mut head).ok()?;
        Some(u128::from_le_bytes(head))
    }

    /// The key of a still unparsed item, from its `sig` field (`None` if it has none): only
    /// that field is read out of the raw JSON, the rest is stepped over.
    fn key_of_raw(item: &RawValue) -> Option<u128> {
        Self::key_of_hex(signature_field(item.get())?)
    }

    fn insert(&self, sig: &[u8; 64]) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if generations[0].len() >= SEEN_PER_GENERATION {
            generations.swap(0, 1);
            generations[0].clear();
        }
        generations[0].insert(Self::key(sig));
    }

    fn contains(&self, key: u128) -> bool {
        let generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generations.iter().any(|set| set.contains(&key))
    }
}

/// One item a peer sent, still unparsed.
#[derive(Debug)]
pub enum Replica {
    Envelope(serde_json::Value),
    Ack(serde_json::Value),
}

/// A feed entry's item (SPEC §7.3), still raw JSON: recognized by its signature
/// ([`ReplicaApplier::knows`]) before anything else of it is parsed.
#[derive(Debug, Clone, Copy)]
pub struct FeedItem<'a> {
    kind: Kind,
    raw: &'a RawValue,
}

/// One entry of a feed page, still raw.
#[derive(Debug, Clone, Copy)]
pub enum FeedChange<'a> {
    /// `{"seq", "envelope"}` or `{"seq", "ack"}` (SPEC §7.3).
    Item(FeedItem<'a>),
    /// `{"seq", "sig"}`: the answer to a digest request (`digest=1`, a dmrelay extension).
    Digest { sig: &'a str },
}

impl<'a> FeedChange<'a> {
    /// Reads a feed entry; `None` for one that is neither (not an object, or without an
    /// `envelope`, an `ack` or a string `sig`).
    pub fn of(change: &'a RawValue) -> Option<Self> {
        #[derive(Deserialize)]
        struct Change<'a> {
            #[serde(borrow)]
            envelope: Option<&'a RawValue>,
            #[serde(borrow)]
            ack: Option<&'a RawValue>,
            #[serde(borrow)]
            sig: Option<&'a str>,
        }
        let change = serde_json::from_str::<Change>(change.get()).ok()?;
        match (change.envelope, change.ack, change.sig) {
            (Some(raw), _, _) => Some(Self::Item(FeedItem {
                kind: Kind::Envelope,
                raw,
            })),
            (None, Some(raw), _) => Some(Self::Item(FeedItem {
                kind: Kind::Ack,
                raw,
            })),
            (None, None, Some(sig)) => Some(Self::Digest { sig }),
            (None, None, None) => None,
        }
    }
}

impl FeedItem<'_> {
    /// The item, parsed for its checks.
    pub fn into_replica(self) -> Option<Replica> {
        // Raw values are valid JSON: this parse fails only on nesting too deep for serde_json.
        let value = serde_json::from_str(self.raw.get()).ok()?;
        Some(match self.kind {
            Kind::Envelope => Replica::Envelope(value),
            Kind::Ack => Replica::Ack(value),
        })
    }
}

impl Replica {
    /// A feed entry's `envelope` or `ack` (SPEC §7.3); `None` for an entry with neither.
    pub fn from_change(change: &RawValue) -> Option<Self> {
        match FeedChange::of(change)? {
            FeedChange::Item(item) => item.into_replica(),
            FeedChange::Digest { .. } => None,
        }
    }

    /// Checks the item exactly as a replica (SPEC §7.1–7.2): shape, time window, signature.
    pub fn check(self, limits: &EnvelopeLimits, now: u64) -> Checked {
        let checked = self.check_unsigned(limits, now);
        let verified = checked.signed().map(Signed::verify_signature);
        match verified {
            Some(Err(err)) => Checked::Refused(err),
            Some(Ok(())) | None => checked,
        }
    }

    /// Shape and time window, not the signature.
    fn check_unsigned(self, limits: &EnvelopeLimits, now: u64) -> Checked {
        match self {
            Self::Envelope(value) => Envelope::unverified_replica(value, limits, now)
                .map_or_else(Checked::Refused, Checked::Envelope),
            Self::Ack(value) => AckObject::unverified_replica(value, now, limits.max_ttl_s)
                .map_or_else(Checked::Refused, Checked::Ack),
        }
    }
}

/// Checks every item as [`Replica::check`] does, answering in order: first the shape and time
/// window of each, then the signatures of those that passed, in one batch.
pub fn check_batch(items: Vec<Replica>, limits: &EnvelopeLimits, now: u64) -> Vec<Checked> {
    let checked: Vec<Checked> = items
        .into_iter()
        .map(|item| item.check_unsigned(limits, now))
        .collect();
    let signature_checks: Vec<_> = checked
        .iter()
        .filter_map(Checked::signed)
        .map(Signed::signature_check)
        .collect();
    let mut verdicts = verify_batch(&signature_checks).into_iter();
    checked
        .into_iter()
        .map(|checked| {
            let Some(signed) = checked.signed() else {
                return checked;
            };
            // One verdict per signed item, in the same order.
            match signed.signature_outcome(verdicts.next() == Some(true)) {
                Ok(()) => checked,
                Err(err) => Checked::Refused(err),
            }
        })
        .collect()
}

/// A replica after its checks.
#[derive(Debug)]
pub enum Checked {
    Envelope(Envelope),
    Ack(AckObject),
    Refused(ProtocolError),
}

impl Checked {
    /// The item whose signature is still to be verified (`None` if already refused).
    fn signed(&self) -> Option<&dyn Signed> {
        match self {
            Self::Envelope(envelope) => Some(envelope),
            Self::Ack(ack) => Some(ack),
            Self::Refused(_) => None,
        }
    }
}

/// What became of one item.
#[derive(Debug)]
pub enum Applied {
    /// The shard's decision, or why the envelope was refused before it reached the shard.
    Envelope(Result<(Arc<Envelope>, Decision), ProtocolError>),
    Ack(Result<AckReport, ProtocolError>),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Envelope,
    Ack,
}

type Answer = Pin<Box<dyn Future<Output = Result<Applied, ShardError>>>>;

/// Checks and applies replicas; cheap to clone.
#[derive(Clone)]
pub struct ReplicaApplier {
    mailboxes: MailboxRouter,
    limits: EnvelopeLimits,
    seen: Arc<SeenReplicas>,
}

impl ReplicaApplier {
    pub fn new(mailboxes: MailboxRouter, limits: EnvelopeLimits) -> Self {
        Self {
            mailboxes,
            limits,
            seen: Arc::default(),
        }
    }

    /// Remembers a change this node's client made, now durable: its copies that come back in
    /// the peers' feeds are recognized without a check.
    pub fn remember(&self, sig: &[u8; 64]) {
        self.seen.insert(sig);
    }

    /// Whether `item` was applied here before (or is a change of this node's clients),
    /// recognized by its signature. A different item with a copied signature would fail its
    /// own check anyway, so skipping it changes nothing.
    pub fn knows(&self, item: &FeedItem) -> bool {
        SeenReplicas::key_of_raw(item.raw).is_some_and(|key| self.seen.contains(key))
    }

    /// [`Self::knows`] for an item known only by its signature (a digest entry), in hex.
    pub fn knows_signature(&self, hex_sig: &str) -> bool {
        SeenReplicas::key_of_hex(hex_sig).is_some_and(|key| self.seen.contains(key))
    }

    /// Applies `items` in order as coming from `origin`, at `now`, each checked. Fails only
    /// when a shard could not answer (overloaded, store down): nothing is lost, the sender
    /// retries.
    pub async fn apply(
        &self,
        items: Vec<Replica>,
        origin: &Origin,
        now: u64,
    ) -> Result<Vec<Applied>, ShardError> {
        let kinds: Vec<Kind> = items
            .iter()
            .map(|item| match item {
                Replica::Envelope(_) => Kind::Envelope,
                Replica::Ack(_) => Kind::Ack,
            })
            .collect();
        let mut checked = check_batch(items, &self.limits, now).into_iter();
        let mut answers: Vec<Answer> = Vec::with_capacity(kinds.len());
        for kind in kinds {
            // check_batch answers every item it was given, in order: one per kind here.
            let Some(checked) = checked.next() else {
                break;
            };
            answers.push(match checked {
                Checked::Envelope(envelope) => self.envelope(envelope, origin),
                Checked::Ack(ack) => self.ack(ack, origin),
                Checked::Refused(err) => {
                    let refused = match kind {
                        Kind::Envelope => Applied::Envelope(Err(err)),
                        Kind::Ack => Applied::Ack(Err(err)),
                    };
                    Box::pin(async move { Ok(refused) })
                }
            });
        }
        let mut applied = Vec::with_capacity(answers.len());
        for answer in answers {
            applied.push(answer.await?);
        }
        Ok(applied)
    }

    fn envelope(&self, envelope: Envelope, origin: &Origin) -> Answer {
        let envelope = Arc::new(envelope);
        let answer = self
            .mailboxes
            .deposit(Arc::clone(&envelope), origin.clone());
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let decision = answer.await?;
            if matches!(
                decision,
                Decision::Accept | Decision::Duplicate | Decision::Acked
            ) {
                seen.insert(&envelope.sig);
            }
            Ok(Applied::Envelope(Ok((envelope, decision))))
        })
    }

    fn ack(&self, ack: AckObject, origin: &Origin) -> Answer {
        let ack = Arc::new(ack);
        let sig = ack.sig;
        let answer = self.mailboxes.acknowledge(ack, origin.clone());
        let seen = Arc::clone(&self.seen);
        Box::pin(async move {
            let report = answer.await?;
            seen.insert(&sig);
            Ok(Applied::Ack(Ok(report)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_signatures_are_bounded_and_recognized_from_their_hex() {
        let seen = SeenReplicas::default();
        let sig = [7u8; 64];
        let raw = |json: serde_json::Value| RawValue::from_string(json.to_string()).unwrap();
        let value = raw(serde_json::json!({ "sig": hex::encode(sig), "ciphertext": "x\"y" }));
        let key = SeenReplicas::key_of_raw(&value).unwrap();
        assert!(!seen.contains(key));
        seen.insert(&sig);
        assert!(seen.contains(key));
        assert_eq!(
            SeenReplicas::key_of_raw(&raw(serde_json::json!({"sig": "zz"}))),
            None
        );
        assert_eq!(
            SeenReplicas::key_of_raw(&raw(serde_json::json!({"sig": 5}))),
            None
        );
        assert_eq!(SeenReplicas::key_of_raw(&raw(serde_json::json!({}))), None);
        assert_eq!(SeenReplicas::key_of_raw(&raw(serde_json::json!([1]))), None);
        // Two generations: the first signature survives one full generation, not two.
        for i in 0..SEEN_PER_GENERATION as u64 {
            let mut other = [0u8; 64];
            other[..8].copy_from_slice(&i.to_le_bytes());
            other[8] = 1;
            seen.insert(&other);
        }
        assert!(seen.contains(key), "kept in the older generation");
        for i in 0..SEEN_PER_GENERATION as u64 {
            let mut other = [0u8; 64];
            other[..8].copy_from_slice(&i.to_le_bytes());
            other[8] = 2;
            seen.insert(&other);
        }
        assert!(!seen.contains(key), "dropped with its generation");
    }
}
