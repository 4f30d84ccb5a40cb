//! The one replica applier: the push routes (SPEC §7.1–7.2) and the feed puller (SPEC §7.4)
//! check and apply what a peer sends through it, so both directions behave the same.
//!
//! Items are checked (shape, time window, Ed25519 signature) and sent to their mailbox shards in
//! order, eagerly, then the answers are collected: per-mailbox order holds, and the shards work
//! in parallel. Every replica that a shard applied (accepted, a duplicate, already acked, an ack
//! applied) is remembered by its signature in [`SeenReplicas`], and so is every client change of
//! this node (its copies come back in the peers' feeds); the puller's pages skip those
//! before any parsing of the item or signature check, so a feed entry that came by push costs
//! a lookup, not a verification. (A different item with a copied signature would fail its own
//! check anyway, so skipping it changes nothing.)

use crate::mailbox::rules::Decision;
use crate::mailbox::shard::{AckReport, ShardError};
use crate::mailbox::{MailboxRouter, Origin};
use crate::protocol::{AckObject, Envelope, EnvelopeLimits, ProtocolError};
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

    /// The key of a still unparsed item, from its `sig` field (`None` if it has none).
    fn key_of_value(item: &serde_json::Value) -> Option<u128> {
        let hex_sig = item.get("sig")?.as_str()?;
        let mut head = [0u8; 16];
        hex::decode_to_slice(hex_sig.get(..32)?, &mut head).ok()?;
        Some(u128::from_le_bytes(head))
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

impl Replica {
    /// A feed entry's `envelope` or `ack` (SPEC §7.3); `None` for an entry with neither.
    pub fn from_change(mut change: serde_json::Value) -> Option<Self> {
        if let Some(value) = change.get_mut("envelope").map(serde_json::Value::take) {
            Some(Self::Envelope(value))
        } else {
            let value = change.get_mut("ack").map(serde_json::Value::take)?;
            Some(Self::Ack(value))
        }
    }

    /// Checks the item exactly as a replica (SPEC §7.1–7.2): shape, time window, signature.
    pub fn check(self, limits: &EnvelopeLimits, now: u64) -> Checked {
        match self {
            Self::Envelope(value) => Envelope::replica(value, limits, now)
                .map_or_else(Checked::Refused, Checked::Envelope),
            Self::Ack(value) => AckObject::replica(value, now, limits.max_ttl_s)
                .map_or_else(Checked::Refused, Checked::Ack),
        }
    }
}

/// A replica after its checks.
#[derive(Debug)]
pub enum Checked {
    Envelope(Envelope),
    Ack(AckObject),
    Refused(ProtocolError),
}

/// What became of one item.
#[derive(Debug)]
pub enum Applied {
    /// The shard's decision, or why the envelope was refused before it reached the shard.
    Envelope(Result<(Arc<Envelope>, Decision), ProtocolError>),
    Ack(Result<AckReport, ProtocolError>),
    /// Applied here before (recognized by its signature); not checked again.
    Known,
}

#[derive(Clone, Copy)]
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

    /// Applies `items` in order as coming from `origin`, at `now`; with `skip_known`, items
    /// applied here before are answered [`Applied::Known`] without a check. Fails only when a
    /// shard could not answer (overloaded, store down): nothing is lost, the sender retries.
    pub async fn apply(
        &self,
        items: Vec<Replica>,
        origin: &Origin,
        now: u64,
        skip_known: bool,
    ) -> Result<Vec<Applied>, ShardError> {
        let mut answers: Vec<Answer> = Vec::with_capacity(items.len());
        for item in items {
            let (value, value_kind) = match &item {
                Replica::Envelope(value) => (value, Kind::Envelope),
                Replica::Ack(value) => (value, Kind::Ack),
            };
            if skip_known
                && SeenReplicas::key_of_value(value).is_some_and(|k| self.seen.contains(k))
            {
                answers.push(Box::pin(async { Ok(Applied::Known) }));
                continue;
            }
            answers.push(match item.check(&self.limits, now) {
                Checked::Envelope(envelope) => self.envelope(envelope, origin),
                Checked::Ack(ack) => self.ack(ack, origin),
                Checked::Refused(err) => {
                    let refused = match value_kind {
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
        let value = serde_json::json!({ "sig": hex::encode(sig) });
        let key = SeenReplicas::key_of_value(&value).unwrap();
        assert!(!seen.contains(key));
        seen.insert(&sig);
        assert!(seen.contains(key));
        assert_eq!(
            SeenReplicas::key_of_value(&serde_json::json!({"sig": "zz"})),
            None
        );
        assert_eq!(
            SeenReplicas::key_of_value(&serde_json::json!({"sig": 5})),
            None
        );
        assert_eq!(SeenReplicas::key_of_value(&serde_json::json!({})), None);
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
