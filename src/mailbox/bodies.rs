//! Envelope bodies for polls: mailboxes hold metadata only ([`super::rules::PendingMeta`]), so a
//! poll's envelopes come from here, as the very JSON the store keeps.
//!
//! [`EnvelopeBodies`] is a bounded cache of that JSON (`MESH_DM_BODY_CACHE_MB`), filled when a
//! deposit or replica becomes durable, so that mail polled soon after it arrived (the common
//! case: the recipient is online) costs no store read. Older mail is read from the store right on
//! the HTTP worker (and not cached: a mailbox is read back once, then acknowledged): one point
//! read per envelope, by the seq of its change that the mailbox keeps (no index lookup), which
//! the store's cache or the OS page cache answer. On tokio's blocking pool the same
//! read cost ~50 µs more node CPU per poll (a hop to a pool thread and back; `BENCHMARKS.md`).
//! A body is found by its envelope's signature, and a body read from the
//! store is used only if it ends with that signature: an id acknowledged and later reused by
//! another envelope can never be served with the old one's body. Eviction is first in, first
//! out, by bytes.

use crate::protocol::MailboxKey;
use crate::store::{Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::rules::{PollItem, SigDigest};

/// Bytes counted per cached body besides its JSON (key twice, map and queue entries).
const ENTRY_OVERHEAD_BYTES: usize = 192;

/// The JSON of one envelope, shared between the cache and the replies that send it.
pub type Body = Arc<[u8]>;

#[derive(Default)]
struct Cached {
    bodies: HashMap<SigDigest, Body>,
    /// Insertion order, oldest first.
    order: VecDeque<SigDigest>,
    bytes: usize,
}

/// The bounded cache of envelope JSON by signature; cheap to share.
pub struct EnvelopeBodies {
    cached: Mutex<Cached>,
    capacity_bytes: usize,
}

/// The envelopes a poll delivers, as JSON, oldest first.
#[derive(Debug)]
pub struct PolledMail {
    pub messages: Vec<Body>,
    pub pending: usize,
    pub has_more: bool,
}

/// Whether `json` is the stored JSON of the envelope whose signature has digest `sig` (the
/// node's own serializer writes `"sig":"<128 hex>"` last; the digest is hex characters 64..96).
fn signed_by(json: &[u8], sig: &SigDigest) -> bool {
    const TAIL: usize = r#""sig":""#.len() + 128 + r#""}"#.len();
    let Some(tail) = json
        .len()
        .checked_sub(TAIL)
        .and_then(|start| json.get(start..))
    else {
        return false;
    };
    let mut digest_hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits.
    hex::encode_to_slice(sig, &mut digest_hex).is_ok()
        && tail.starts_with(br#""sig":""#)
        && tail.ends_with(br#""}"#)
        && tail[7 + 64..7 + 96] == digest_hex
}

impl EnvelopeBodies {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            cached: Mutex::default(),
            capacity_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the body of a durable envelope, dropping the oldest past the capacity.
    pub fn insert(&self, sig: &SigDigest, body: Body) {
        let cost = body.len() + ENTRY_OVERHEAD_BYTES;
        if cost > self.capacity_bytes {
            return;
        }
        let mut cached = self.lock();
        if cached.bodies.contains_key(sig) {
            return;
        }
        cached.bodies.insert(*sig, body);
        cached.order.push_back(*sig);
        cached.bytes += cost;
        while cached.bytes > self.capacity_bytes {
            let Some(oldest) = cached.order.pop_front() else {
                break;
            };
            if let Some(gone) = cached.bodies.remove(&oldest) {
                cached.bytes -= gone.len() + ENTRY_OVERHEAD_BYTES;
            }
        }
    }

    #[cfg(test)]
    fn get(&self, sig: &SigDigest) -> Option<Body> {
        self.lock().bodies.get(sig).cloned()
    }

    /// Bytes the cache holds now (its own accounting, overhead included).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The bodies of `items` of `mailbox`, in order: from the cache, the rest from the store.
    /// An item whose envelope left the store meanwhile (acknowledged or expired since the
    /// mailbox answered) is left out.
    pub fn fetch(
        &self,
        store: &dyn Store,
        mailbox: MailboxKey,
        items: Vec<PollItem>,
    ) -> Result<Vec<Body>, StoreError> {
        let mut found: Vec<Option<Body>> = {
            let cached = self.lock();
            items
                .iter()
                .map(|item| cached.bodies.get(&item.sig).cloned())
                .collect()
        };
        let missing: Vec<usize> = (0..items.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        // One point read each, by where the mailbox says the envelope is in the log.
        let seqs: Vec<u64> = missing.iter().map(|&i| items[i].seq).collect();
        let read = store.change_json(&seqs)?;
        let mut not_there = Vec::new();
        for (&i, json) in missing.iter().zip(read) {
            match json.filter(|json| signed_by(json, &items[i].sig)) {
                // Not cached: the cache keeps room for fresh mail, which is what gets polled.
                Some(json) => found[i] = Some(json.into()),
                None => not_there.push(i),
            }
        }
        if !not_there.is_empty() {
            // Gone from that seq: acknowledged or expired meanwhile (then it is gone by id
            // too), or a seq that does not match the log (a bug; reading by id still serves
            // the right body, and the warning says so).
            let ids = not_there.iter().map(|&i| items[i].msg_id.clone()).collect();
            let read = store.envelope_json(&mailbox, ids)?;
            for (&i, json) in not_there.iter().zip(read) {
                if let Some(json) = json.filter(|json| signed_by(json, &items[i].sig)) {
                    tracing::warn!(%mailbox, seq = items[i].seq, "a pending envelope was not at the seq its mailbox named; read by its id instead");
                    found[i] = Some(json.into());
                }
            }
        }
        Ok(found.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize, fill: u8) -> Body {
        vec![fill; len].into()
    }

    #[test]
    fn keeps_the_newest_bodies_within_its_capacity() {
        let cache = EnvelopeBodies::new(3 * (100 + ENTRY_OVERHEAD_BYTES));
        for n in 0..5u8 {
            cache.insert(&[n; 16], body(100, n));
        }
        assert!(cache.get(&[0; 16]).is_none());
        assert!(cache.get(&[1; 16]).is_none());
        for n in 2..5u8 {
            assert_eq!(cache.get(&[n; 16]).as_deref(), Some(&[n; 100][..]));
        }
        assert_eq!(cache.bytes(), 3 * (100 + ENTRY_OVERHEAD_BYTES));
        // A body larger than the whole cache is not kept (and evicts nothing).
        cache.insert(&[9; 16], body(10_000, 9));
        assert!(cache.get(&[9; 16]).is_none());
        assert!(cache.get(&[4; 16]).is_some());
    }

    /// A poll reads an older envelope by the seq its mailbox keeps; a seq that does not hold
    /// it (which would be a bug) still finds it by its id, and never serves another body.
    #[test]
    fn stored_bodies_are_read_by_seq_and_by_id_when_the_seq_misses() {
        use crate::protocol::Envelope;
        use crate::store::{RedbStore, StoreOp};
        use crate::test_envelopes::{NOW, envelope};
        let sign = |id: &str| envelope(id, NOW + 3600);
        let (a, b) = (sign("a"), sign("b"));
        let store = RedbStore::in_memory().unwrap();
        let seq_a = store
            .commit(&[StoreOp::put_envelope(Arc::clone(&a), true)])
            .unwrap();
        let seq_b = store
            .commit(&[StoreOp::put_envelope(Arc::clone(&b), true)])
            .unwrap();
        let item = |e: &Envelope, seq: u64| PollItem {
            msg_id: e.msg_id.clone(),
            sig: crate::mailbox::rules::sig_digest(&e.sig),
            seq,
        };
        let json = |e: &Envelope| Body::from(serde_json::to_vec(e).unwrap());
        let bodies = EnvelopeBodies::new(0);
        let fetch = |items| bodies.fetch(&store, a.mailbox, items).unwrap();
        assert_eq!(
            fetch(vec![item(&a, seq_a), item(&b, seq_b)]),
            vec![json(&a), json(&b)]
        );
        // Swapped seqs: each seq holds the other envelope, whose signature does not match.
        assert_eq!(
            fetch(vec![item(&a, seq_b), item(&b, seq_a)]),
            vec![json(&a), json(&b)]
        );
        // A seq past the log.
        assert_eq!(fetch(vec![item(&b, seq_b + 10)]), vec![json(&b)]);
    }

    #[test]
    fn a_stored_body_counts_only_for_its_own_signature() {
        let mut sig = [7u8; 64];
        sig[40] = 0xab;
        let json = format!("{{\"v\":1,\"sig\":\"{}\"}}", hex::encode(sig));
        let digest = crate::mailbox::rules::sig_digest(&sig);
        assert!(signed_by(json.as_bytes(), &digest));
        // Another S, the same R: not this envelope.
        let mut other = sig;
        other[40] = 0xac;
        assert!(!signed_by(
            json.as_bytes(),
            &crate::mailbox::rules::sig_digest(&other)
        ));
        // Not our serializer's shape, or too short.
        assert!(!signed_by(
            json.replace("\"sig\"", "\"sag\"").as_bytes(),
            &digest
        ));
        assert!(!signed_by(b"{}", &digest));
        assert!(!signed_by(&json.as_bytes()[1..json.len() - 1], &digest));
    }
}
