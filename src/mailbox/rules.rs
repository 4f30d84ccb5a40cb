//! The mailbox rules of SPEC §4 as plain data and functions, with no actor and no I/O.
//!
//! One [`MailboxState`] holds everything a mailbox decides with: pending envelopes (by id, in
//! delivery order, counted per sender), tombstones of acknowledged ids, and the poll nonces seen
//! in the freshness window. A pending envelope is held as metadata only ([`PendingMeta`]: sender,
//! times, signature); its ciphertext stays in the store (and the bounded [`super::bodies`] cache),
//! so a mailbox costs memory per envelope in bytes, not kilobytes. Time is always a parameter (`now`), so every rule is testable
//! without a clock. Expiry is kept in ordered queues, so an access costs O(expired · log n), not a
//! scan of the mailbox.

use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId, SKEW_S};
use crate::store::StoreOp;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::Arc;

/// The per-mailbox limits of SPEC §4.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    /// Most pending envelopes from one sender in one mailbox (default 2).
    pub pending_per_sender: u32,
    /// Most pending envelopes in one mailbox (default 48).
    pub mailbox: u32,
    /// Most poll nonces remembered per mailbox within the window; past that, polls are
    /// refused with `rate_limited` rather than forgetting a nonce (which would allow a replay).
    pub nonces: usize,
}

impl MailboxLimits {
    /// No limits: used when restoring state the rules already accepted once.
    pub const UNLIMITED: Self = Self {
        pending_per_sender: u32::MAX,
        mailbox: u32::MAX,
        nonces: usize::MAX,
    };
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            pending_per_sender: 2,
            mailbox: 48,
            nonces: 4096,
        }
    }
}

/// The outcome of SPEC §4 for one envelope, in the rule order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Rule 1: the id was acknowledged; nothing is stored.
    Acked,
    /// Rule 2: the same envelope is already pending.
    Duplicate,
    /// Rule 2: another envelope with this id is pending.
    Conflict,
    /// Rule 3: the mailbox holds `limit` pending envelopes.
    MailboxFull { limit: u32 },
    /// Rule 4: the sender already has `pending` (>= `limit`) unread envelopes here.
    CapViolation { pending: u32, limit: u32 },
    /// Rule 5: store it.
    Accept,
}

impl Decision {
    /// The outcome's name in SPEC §6.1 / §7.1 (a `status`, or the `error` code of a refusal);
    /// also the `status` label of `dm_deposit_total`.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Accept => "accepted",
            Decision::Duplicate => "duplicate",
            Decision::Acked => "acked",
            Decision::Conflict => "conflict",
            Decision::MailboxFull { .. } => "mailbox_full",
            Decision::CapViolation { .. } => "cap_violation",
        }
    }
}

/// What an acknowledgement did to a mailbox.
#[derive(Debug, Default)]
pub struct AckEffect {
    /// Ids of the envelopes removed from the pending set (their quota is free again).
    pub removed: Vec<MsgId>,
    /// Ids that were not pending (never seen, already acknowledged, or expired).
    pub unknown: usize,
    /// Tombstones of every id of the ack, as they now stand: `(msg_id, until)`.
    pub tombstones: Vec<(MsgId, u64)>,
    /// Whether the ack changed anything (removed an envelope, wrote or extended a tombstone).
    /// An ack that changed nothing is not stored again, so acks do not echo between peers.
    pub changed: bool,
}

/// 16 bytes that tell one signed envelope from any other: the first half of its signature's `S`.
/// `S = r + SHA-512(R‖A‖M)·a mod ℓ` is a hash-derived scalar for every other envelope, message or
/// key, so two envelopes share these 128 bits with probability 2^-128, and a signer cannot steer
/// it short of 2^128 tries. A mailbox keeps this instead of the 64-byte signature (48 bytes less
/// per pending envelope, counted by a hash map's every bucket).
pub type SigDigest = [u8; 16];

/// The [`SigDigest`] of a signature.
pub fn sig_digest(sig: &[u8; 64]) -> SigDigest {
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&sig[32..48]);
    digest
}

/// One envelope a poll delivers: which one, and the digest of its signature that tells it from
/// an earlier envelope that had the same id (the body is fetched by id, then matched by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollItem {
    pub msg_id: MsgId,
    pub sig: SigDigest,
    /// Where the envelope is in the store's log: its body is one point read away.
    pub seq: u64,
}

/// What a poll sees.
#[derive(Debug)]
pub struct PollView {
    pub messages: Vec<PollItem>,
    pub pending: usize,
    pub has_more: bool,
}

/// Why a poll nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    /// Already used within the window.
    Replay,
    /// Too many polls in the window for this mailbox.
    TooMany,
}

/// Pending envelopes past which a mailbox keeps a per-sender count (below, it counts by a scan).
pub const SENDER_COUNTS_FROM: usize = 64;

/// What a mailbox keeps of a pending envelope: all its rules need, and no ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMeta {
    pub sender: MailboxKey,
    pub created_at: u64,
    pub expires_at: u64,
    /// Tells a copy (`duplicate`) from another envelope with the same id (`conflict`).
    pub sig: SigDigest,
}

impl PendingMeta {
    pub fn of(envelope: &Envelope) -> Self {
        Self {
            sender: envelope.sender,
            created_at: envelope.created_at,
            expires_at: envelope.expires_at,
            sig: sig_digest(&envelope.sig),
        }
    }
}

struct PendingEntry {
    meta: PendingMeta,
    /// The seq of its change in the store's log, once durable. `None` while the store commit
    /// is in flight: such an entry already counts against the caps (so two racing deposits
    /// cannot both pass) but is not delivered yet. (No more room than the `committed: bool` it
    /// replaced, which took 8 bytes with its padding.)
    stored_at: Option<NonZeroU64>,
}

/// Where a durable entry is in the log. Seqs start at 1; were a 0 ever passed, the entry must
/// still be delivered (it is durable): it gets a seq no change has, and its poll reads it by id.
fn position(seq: u64) -> NonZeroU64 {
    NonZeroU64::new(seq).unwrap_or(NonZeroU64::MAX)
}

/// Everything one mailbox decides with.
#[derive(Default)]
pub struct MailboxState {
    pending: HashMap<MsgId, PendingEntry>,
    /// Delivery order: oldest first by `created_at`, then `msg_id` (SPEC §6.2).
    order: BTreeSet<(u64, MsgId)>,
    /// Pending envelopes per sender, kept only for mailboxes holding more than
    /// [`SENDER_COUNTS_FROM`]; a smaller mailbox counts by a scan of its pending entries, which
    /// is as fast at that size and saves a hash map per mailbox (~650 bytes for 10 senders).
    per_sender: Option<HashMap<MailboxKey, u32>>,
    /// Acknowledged ids and the time their tombstone may go.
    tombstones: HashMap<MsgId, u64>,
    pending_expiry: BTreeSet<(u64, MsgId)>,
    tombstone_expiry: BTreeSet<(u64, MsgId)>,
    nonces: HashMap<Box<str>, u64>,
    /// Nonces by the time they may be forgotten; always pushed with `now + 2·SKEW`, so ordered.
    nonce_expiry: VecDeque<(u64, Box<str>)>,
    /// Replicas refused for want of room, oldest first, retried when a slot frees (SPEC §7.4:
    /// a replica that arrived before the ack freeing its quota must still be accepted).
    parked: std::collections::BTreeMap<(u64, MsgId), Arc<Envelope>>,
}

/// What retrying the parked replicas did.
#[derive(Debug, Default)]
pub struct Unparked {
    /// Accepted now (inserted uncommitted, to be stored).
    pub accepted: Vec<Arc<Envelope>>,
    /// Dropped for good (acknowledged or already pending meanwhile).
    pub dropped: Vec<Arc<Envelope>>,
}

impl Unparked {
    /// The store operations that make it durable: the dropped ones unparked, the accepted ones
    /// stored as replicas (which unparks them too).
    pub fn store_ops(&self, mailbox: MailboxKey) -> Vec<StoreOp> {
        let unpark = self.dropped.iter().map(|envelope| StoreOp::Unpark {
            mailbox,
            msg_id: envelope.msg_id.clone(),
        });
        let store = self
            .accepted
            .iter()
            .map(|envelope| deposit_op(envelope, false));
        unpark.chain(store).collect()
    }
}

/// What a deposit does to a mailbox ([`MailboxState::plan_deposit`]).
#[derive(Debug)]
pub enum DepositPlan {
    /// Accepted, its slot reserved (uncommitted): store this, then answer `accepted`.
    Store(StoreOp),
    /// A copy of an envelope whose first write is still in flight: answer `duplicate` once that
    /// write is durable, never before.
    AfterFirstCopy,
    /// Answer with `decision` now. `park`: a replica refused for want of room, kept until room
    /// frees up (SPEC §7.4's convergence promise).
    Answer { decision: Decision, park: bool },
}

/// The store operation of an accepted deposit (`from_client`: this node's client, so pushed).
pub fn deposit_op(envelope: &Arc<Envelope>, from_client: bool) -> StoreOp {
    StoreOp::put_envelope(Arc::clone(envelope), from_client)
}

impl AckEffect {
    /// The store operation that makes the ack durable, or `None` when it changed nothing and
    /// came from a peer (storing it again would echo it around the mesh through the feeds). A
    /// client's repeated ack is stored (and pushed) again: its 200 must mean "on disk" even if
    /// the first attempt's commit failed after it was applied in memory. The ack stays in the
    /// feed as long as its longest tombstone.
    pub fn store_op(&self, ack: &Arc<AckObject>, from_client: bool) -> Option<StoreOp> {
        if !self.changed && !from_client {
            return None;
        }
        let live_until = self
            .tombstones
            .iter()
            .map(|(_, until)| *until)
            .max()
            .unwrap_or(ack.ts);
        Some(StoreOp::ApplyAck {
            ack: Arc::clone(ack),
            removed: self.removed.clone(),
            tombstones: self.tombstones.clone(),
            live_until,
            from_client,
        })
    }
}

impl MailboxState {
    /// True when the mailbox holds nothing worth keeping in memory.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
            && self.tombstones.is_empty()
            && self.nonces.is_empty()
            && self.parked.is_empty()
    }

    /// Keeps a replica refused by rule 3 or 4 for a later retry. At most `limits.mailbox`
    /// replicas are parked per mailbox, and at most one per `msg_id` (the store keeps parked
    /// replicas by id, so memory must not hold more than a restart would read back); returns
    /// false when this one was not kept.
    pub fn park(&mut self, envelope: Arc<Envelope>, limits: &MailboxLimits) -> bool {
        let key = (envelope.created_at, envelope.msg_id.clone());
        let same_id_parked = self.parked.keys().any(|(_, id)| *id == envelope.msg_id);
        if same_id_parked || self.parked.len() >= limits.mailbox as usize {
            return false;
        }
        self.parked.insert(key, envelope);
        true
    }

    /// Number of parked replicas.
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Runs the rules again on every parked replica, oldest first: accepted ones become
    /// pending (uncommitted), acknowledged or duplicate ones are dropped, others stay parked.
    pub fn retry_parked(&mut self, limits: &MailboxLimits) -> Unparked {
        let mut result = Unparked::default();
        let keys: Vec<(u64, MsgId)> = self.parked.keys().cloned().collect();
        for key in keys {
            let Some(envelope) = self.parked.get(&key).cloned() else {
                continue;
            };
            match self.decide(&envelope, limits) {
                Decision::Accept => {
                    self.parked.remove(&key);
                    self.insert(Arc::clone(&envelope), None);
                    result.accepted.push(envelope);
                }
                Decision::Acked | Decision::Duplicate | Decision::Conflict => {
                    self.parked.remove(&key);
                    result.dropped.push(envelope);
                }
                Decision::MailboxFull { .. } | Decision::CapViolation { .. } => {}
            }
        }
        result
    }

    /// Number of pending envelopes (committed or not).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Pending envelopes from `sender`.
    pub fn pending_from(&self, sender: &MailboxKey) -> u32 {
        match &self.per_sender {
            Some(counts) => counts.get(sender).copied().unwrap_or(0),
            None => {
                let from_sender = self.pending.values().filter(|e| e.meta.sender == *sender);
                u32::try_from(from_sender.count()).unwrap_or(u32::MAX)
            }
        }
    }

    /// SPEC §4 for `envelope`, in the rule order. The caller has run [`Self::expire`] first.
    /// Decides a deposit and, if it is accepted, reserves its slot at once (so that the next
    /// deposit already counts it); returns what the caller must do.
    pub fn plan_deposit(
        &mut self,
        envelope: &Arc<Envelope>,
        limits: &MailboxLimits,
        from_client: bool,
    ) -> DepositPlan {
        let decision = self.decide(envelope, limits);
        match decision {
            Decision::Accept => {
                self.insert(Arc::clone(envelope), None);
                DepositPlan::Store(deposit_op(envelope, from_client))
            }
            Decision::Duplicate if !self.is_committed(&envelope.msg_id) => {
                DepositPlan::AfterFirstCopy
            }
            Decision::CapViolation { .. } | Decision::MailboxFull { .. } => DepositPlan::Answer {
                decision,
                park: !from_client,
            },
            Decision::Duplicate | Decision::Acked | Decision::Conflict => DepositPlan::Answer {
                decision,
                park: false,
            },
        }
    }

    pub fn decide(&self, envelope: &Envelope, limits: &MailboxLimits) -> Decision {
        if self.tombstones.contains_key(&envelope.msg_id) {
            return Decision::Acked;
        }
        if let Some(existing) = self.pending.get(&envelope.msg_id) {
            return if existing.meta.sig == sig_digest(&envelope.sig) {
                Decision::Duplicate
            } else {
                Decision::Conflict
            };
        }
        if self.pending.len() >= limits.mailbox as usize {
            return Decision::MailboxFull {
                limit: limits.mailbox,
            };
        }
        let from_sender = self.pending_from(&envelope.sender);
        if from_sender >= limits.pending_per_sender {
            return Decision::CapViolation {
                pending: from_sender,
                limit: limits.pending_per_sender,
            };
        }
        Decision::Accept
    }

    /// Stores an envelope the decision accepted. `stored_at`: the seq of its change in the
    /// store's log, `None` while its write is in flight.
    /// A parked replica with the same id goes: it could only conflict, and storing the envelope
    /// unparks that id on disk too (`StoreOp::PutEnvelope`).
    pub fn insert(&mut self, envelope: Arc<Envelope>, stored_at: Option<u64>) {
        let id = envelope.msg_id.clone();
        if !self.parked.is_empty() {
            self.parked.retain(|(_, parked_id), _| *parked_id != id);
        }
        self.order.insert((envelope.created_at, id.clone()));
        self.pending_expiry
            .insert((envelope.expires_at, id.clone()));
        match &mut self.per_sender {
            Some(counts) => *counts.entry(envelope.sender).or_insert(0) += 1,
            // This envelope is not in `pending` yet: it is counted below, once there.
            None if self.pending.len() >= SENDER_COUNTS_FROM => {
                let mut counts: HashMap<MailboxKey, u32> = HashMap::new();
                for entry in self.pending.values() {
                    *counts.entry(entry.meta.sender).or_insert(0) += 1;
                }
                *counts.entry(envelope.sender).or_insert(0) += 1;
                self.per_sender = Some(counts);
            }
            None => {}
        }
        self.pending.insert(
            id,
            PendingEntry {
                meta: PendingMeta::of(&envelope),
                stored_at: stored_at.map(position),
            },
        );
    }

    /// Whether `msg_id` is pending and its write has reached the disk.
    pub fn is_committed(&self, msg_id: &MsgId) -> bool {
        self.pending
            .get(msg_id)
            .is_some_and(|entry| entry.stored_at.is_some())
    }

    /// The write of `msg_id` reached the disk as the change `seq`: deliver it from now on.
    pub fn mark_committed(&mut self, msg_id: &MsgId, seq: u64) {
        if let Some(entry) = self.pending.get_mut(msg_id) {
            entry.stored_at = Some(position(seq));
        }
    }

    /// The write of `msg_id` failed: take back the reservation (only if it is still the same one).
    pub fn remove_uncommitted(&mut self, envelope: &Envelope) -> bool {
        match self.pending.get(&envelope.msg_id) {
            Some(entry)
                if entry.stored_at.is_none() && entry.meta.sig == sig_digest(&envelope.sig) =>
            {
                self.remove_pending(&envelope.msg_id).is_some()
            }
            _ => false,
        }
    }

    fn remove_pending(&mut self, msg_id: &MsgId) -> Option<PendingMeta> {
        let meta = self.pending.remove(msg_id)?.meta;
        self.order.remove(&(meta.created_at, msg_id.clone()));
        self.pending_expiry
            .remove(&(meta.expires_at, msg_id.clone()));
        if let Some(counts) = &mut self.per_sender
            && let Some(count) = counts.get_mut(&meta.sender)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&meta.sender);
            }
        }
        // Hysteresis: a mailbox hovering at the threshold does not build the map every time.
        if self.pending.len() < SENDER_COUNTS_FROM / 2 {
            self.per_sender = None;
        }
        Some(meta)
    }

    /// Writes or extends a tombstone; returns its time and whether it changed.
    fn set_tombstone(&mut self, msg_id: MsgId, until: u64) -> (u64, bool) {
        let until = match self.tombstones.get(&msg_id) {
            Some(&old) if old >= until => return (old, false),
            Some(&old) => {
                self.tombstone_expiry.remove(&(old, msg_id.clone()));
                until
            }
            None => until,
        };
        self.tombstones.insert(msg_id.clone(), until);
        self.tombstone_expiry.insert((until, msg_id));
        (until, true)
    }

    /// Restores a tombstone read back from the store.
    pub fn restore_tombstone(&mut self, msg_id: MsgId, until: u64) {
        self.set_tombstone(msg_id, until);
    }

    /// SPEC §4's acknowledgement for every id of `ack`: delete the envelope, free the quota,
    /// leave a tombstone until the envelope's `expires_at` (unknown id: `ts + max_ttl`).
    pub fn acknowledge(&mut self, ack: &AckObject, max_ttl_s: u64) -> AckEffect {
        let mut effect = AckEffect::default();
        for msg_id in &ack.msg_ids {
            let until = match self.remove_pending(msg_id) {
                Some(meta) => {
                    let until = meta.expires_at;
                    effect.removed.push(msg_id.clone());
                    effect.changed = true;
                    until
                }
                None => {
                    effect.unknown += 1;
                    ack.ts.saturating_add(max_ttl_s)
                }
            };
            let (until, changed) = self.set_tombstone(msg_id.clone(), until);
            effect.changed |= changed;
            effect.tombstones.push((msg_id.clone(), until));
        }
        effect
    }

    /// Drops envelopes, tombstones and nonces whose time has come; returns the ids of the
    /// envelopes dropped.
    pub fn expire(&mut self, now: u64) -> Vec<MsgId> {
        let mut expired = Vec::new();
        while let Some((until, _)) = self.pending_expiry.first() {
            if *until > now {
                break;
            }
            if let Some((_, msg_id)) = self.pending_expiry.pop_first()
                && self.remove_pending(&msg_id).is_some()
            {
                expired.push(msg_id);
            }
        }
        while let Some((until, _)) = self.tombstone_expiry.first() {
            if *until > now {
                break;
            }
            if let Some((_, msg_id)) = self.tombstone_expiry.pop_first() {
                self.tombstones.remove(&msg_id);
            }
        }
        self.parked.retain(|_, envelope| envelope.expires_at > now);
        while let Some((until, _)) = self.nonce_expiry.front() {
            if *until > now {
                break;
            }
            if let Some((_, nonce)) = self.nonce_expiry.pop_front() {
                self.nonces.remove(&nonce);
            }
        }
        expired
    }

    /// Records a poll nonce, refusing one already used within the window (SPEC §6.2).
    pub fn use_nonce(
        &mut self,
        nonce: &str,
        now: u64,
        limits: &MailboxLimits,
    ) -> Result<u64, NonceRefusal> {
        if self.nonces.contains_key(nonce) {
            return Err(NonceRefusal::Replay);
        }
        if self.nonces.len() >= limits.nonces {
            return Err(NonceRefusal::TooMany);
        }
        // A request signed at `ts` is accepted until `ts + SKEW`, and `ts >= now - SKEW`.
        let until = now.saturating_add(2 * SKEW_S);
        let nonce: Box<str> = nonce.into();
        self.restore_nonce(nonce, until);
        Ok(until)
    }

    /// Remembers a nonce until `until` (also used when reading nonces back from the store,
    /// oldest first, so the expiry queue stays ordered).
    pub fn restore_nonce(&mut self, nonce: Box<str>, until: u64) {
        self.nonces.insert(nonce.clone(), until);
        self.nonce_expiry.push_back((until, nonce));
    }

    /// The oldest `limit` deliverable envelopes (SPEC §6.2). Non-destructive.
    pub fn poll(&self, limit: usize, now: u64) -> PollView {
        let deliverable = self.order.iter().filter_map(|(_, id)| {
            let entry = self.pending.get(id)?;
            let seq = entry.stored_at?;
            (entry.meta.expires_at > now).then_some((id, &entry.meta, seq.get()))
        });
        let mut messages = Vec::with_capacity(limit.min(self.pending.len()));
        let mut pending = 0usize;
        for (msg_id, meta, seq) in deliverable {
            if messages.len() < limit {
                messages.push(PollItem {
                    msg_id: msg_id.clone(),
                    sig: meta.sig,
                    seq,
                });
            }
            pending += 1;
        }
        PollView {
            has_more: pending > messages.len(),
            messages,
            pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_800_000_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn mailbox_of(owner: &SigningKey) -> MailboxKey {
        MailboxKey::of(owner)
    }

    fn envelope(sender: &SigningKey, to: &SigningKey, id: &str, created_at: u64) -> Arc<Envelope> {
        let msg_id = MsgId::parse("msg_id", id).unwrap();
        Arc::new(Envelope::sign(
            sender,
            mailbox_of(to),
            msg_id,
            created_at,
            created_at + 3600,
            b"hello",
        ))
    }

    fn ack(owner: &SigningKey, ids: &[&str]) -> AckObject {
        let ids = ids
            .iter()
            .map(|id| MsgId::parse("msg_ids", id).unwrap())
            .collect();
        AckObject::sign(owner, NOW, ids)
    }

    #[test]
    fn the_cap_holds_whether_senders_are_counted_by_scan_or_by_map() {
        let bob = key(200);
        let senders: Vec<SigningKey> = (0..100).map(key).collect();
        let limits = MailboxLimits {
            pending_per_sender: 3,
            mailbox: 1000,
            ..MailboxLimits::default()
        };
        let mut state = MailboxState::default();
        let mut ids: Vec<(usize, String)> = Vec::new();
        let check = |state: &MailboxState, ids: &[(usize, String)]| {
            for (n, sender) in senders.iter().enumerate() {
                let expected = ids.iter().filter(|(s, _)| *s == n).count() as u32;
                assert_eq!(
                    state.pending_from(&mailbox_of(sender)),
                    expected,
                    "sender {n}"
                );
            }
        };
        // One each from 80 senders: past SENDER_COUNTS_FROM the map takes over.
        for (n, sender) in senders.iter().enumerate().take(80) {
            let id = format!("a{n}");
            let e = envelope(sender, &bob, &id, NOW);
            assert_eq!(state.decide(&e, &limits), Decision::Accept);
            state.insert(e, Some(1));
            ids.push((n, id));
        }
        assert!(state.per_sender.is_some());
        check(&state, &ids);
        // Sender 0 up to its cap, then refused.
        for id in ["b1", "b2"] {
            let e = envelope(&senders[0], &bob, id, NOW);
            assert_eq!(state.decide(&e, &limits), Decision::Accept);
            state.insert(e, Some(1));
            ids.push((0, id.to_string()));
        }
        let over = envelope(&senders[0], &bob, "b3", NOW);
        assert_eq!(
            state.decide(&over, &limits),
            Decision::CapViolation {
                pending: 3,
                limit: 3
            }
        );
        // Acknowledge down below the hysteresis: counting falls back to the scan, still exact.
        while ids.len() > 20 {
            let (_, id) = ids.remove(1);
            let effect = state.acknowledge(&ack(&bob, &[id.as_str()]), 3600);
            assert_eq!(effect.removed.len(), 1);
        }
        assert!(state.per_sender.is_none());
        check(&state, &ids);
        // a0, b1 and b2 are still pending (index 1 was acknowledged each time).
        assert_eq!(ids.iter().filter(|(s, _)| *s == 0).count(), 3);
        assert_eq!(
            state.decide(&over, &limits),
            Decision::CapViolation {
                pending: 3,
                limit: 3
            }
        );
        // One of them acknowledged: room for exactly one more.
        state.acknowledge(&ack(&bob, &["b1"]), 3600);
        assert_eq!(state.decide(&over, &limits), Decision::Accept);
    }

    #[test]
    fn rule_5_accepts_until_rule_4_caps_the_sender() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        for i in 0..2 {
            let e = envelope(&alice, &bob, &format!("m{i}"), NOW);
            assert_eq!(state.decide(&e, &limits), Decision::Accept);
            state.insert(e, Some(1));
        }
        let third = envelope(&alice, &bob, "m2", NOW);
        assert_eq!(
            state.decide(&third, &limits),
            Decision::CapViolation {
                pending: 2,
                limit: 2
            }
        );
        // Another sender is not affected by Alice's cap.
        let carol = key(3);
        assert_eq!(
            state.decide(&envelope(&carol, &bob, "c0", NOW), &limits),
            Decision::Accept
        );
    }

    #[test]
    fn where_an_entry_is_stored_costs_no_memory() {
        // The seq takes the 8 bytes the `committed: bool` it replaced took with its padding.
        assert_eq!(
            std::mem::size_of::<PendingEntry>(),
            std::mem::size_of::<PendingMeta>() + 8
        );
        assert_eq!(std::mem::size_of::<Option<NonZeroU64>>(), 8);
    }

    #[test]
    fn a_durable_entry_is_delivered_even_without_a_valid_seq() {
        let (alice, bob) = (key(1), key(2));
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m0", NOW), None);
        state.insert(envelope(&alice, &bob, "m1", NOW), Some(0));
        state.mark_committed(&MsgId::parse("x", "m0").unwrap(), 0);
        // Seqs start at 1: a 0 is a seq no change has, so the poll reads these by id.
        let view = state.poll(8, NOW);
        assert_eq!(view.pending, 2);
        assert!(view.messages.iter().all(|item| item.seq == u64::MAX));
    }

    #[test]
    fn uncommitted_entries_count_against_the_cap_but_are_not_delivered() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m0", NOW), None);
        state.insert(envelope(&alice, &bob, "m1", NOW), None);
        assert!(matches!(
            state.decide(&envelope(&alice, &bob, "m2", NOW), &limits),
            Decision::CapViolation { .. }
        ));
        assert_eq!(state.poll(8, NOW).pending, 0);
        state.mark_committed(&MsgId::parse("x", "m0").unwrap(), 7);
        let view = state.poll(8, NOW);
        assert_eq!(view.pending, 1);
        // The poll knows where the body is: the seq the commit gave.
        assert_eq!(view.messages[0].seq, 7);
        assert_eq!(view.messages[0].msg_id.as_str(), "m0");
        assert!(state.remove_uncommitted(&envelope(&alice, &bob, "m1", NOW)));
        assert_eq!(state.pending_from(&mailbox_of(&alice)), 1);
    }

    #[test]
    fn rule_order_tombstone_then_duplicate_then_full_then_cap() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits {
            pending_per_sender: 1,
            mailbox: 1,
            nonces: 16,
        };
        let mut state = MailboxState::default();
        let first = envelope(&alice, &bob, "m0", NOW);
        state.insert(Arc::clone(&first), Some(1));
        // Same id, same signature: duplicate beats full and cap.
        assert_eq!(state.decide(&first, &limits), Decision::Duplicate);
        // Same id, other signature: conflict.
        let forged_twin = envelope(&alice, &bob, "m0", NOW + 1);
        assert_eq!(state.decide(&forged_twin, &limits), Decision::Conflict);
        // New id: the mailbox is full before the sender is capped.
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "m1", NOW), &limits),
            Decision::MailboxFull { limit: 1 }
        );
        // Acknowledged: tombstone beats everything.
        let effect = state.acknowledge(&ack(&bob, &["m0"]), 604_800);
        assert_eq!(effect.removed.len(), 1);
        assert_eq!(state.decide(&first, &limits), Decision::Acked);
    }

    #[test]
    fn ack_frees_quota_and_tombstones_unknown_ids_until_ts_plus_max_ttl() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m0", NOW), Some(1));
        state.insert(envelope(&alice, &bob, "m1", NOW), Some(1));
        let effect = state.acknowledge(&ack(&bob, &["m0", "never-seen"]), 1000);
        assert_eq!(effect.removed.len(), 1);
        assert_eq!(effect.unknown, 1);
        assert!(effect.changed);
        let again = state.acknowledge(&ack(&bob, &["m0", "never-seen"]), 1000);
        assert!(!again.changed, "a repeated ack changes nothing");
        assert_eq!(again.unknown, 2);
        assert_eq!(
            effect.tombstones,
            vec![
                (MsgId::parse("x", "m0").unwrap(), NOW + 3600),
                (MsgId::parse("x", "never-seen").unwrap(), NOW + 1000)
            ]
        );
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "m2", NOW), &limits),
            Decision::Accept
        );
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "never-seen", NOW), &limits),
            Decision::Acked
        );
        // Tombstones go at their time, and the id could be used again.
        state.expire(NOW + 1000);
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "never-seen", NOW), &limits),
            Decision::Accept
        );
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "m0", NOW), &limits),
            Decision::Acked
        );
    }

    #[test]
    fn expiry_frees_quota() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m0", NOW), Some(1));
        state.insert(envelope(&alice, &bob, "m1", NOW + 10), Some(1));
        assert_eq!(state.expire(NOW + 3599).len(), 0);
        assert_eq!(state.expire(NOW + 3600).len(), 1);
        assert_eq!(state.pending_from(&mailbox_of(&alice)), 1);
        assert_eq!(
            state.decide(&envelope(&alice, &bob, "m2", NOW), &limits),
            Decision::Accept
        );
        state.expire(NOW + 3610);
        assert!(state.is_empty());
    }

    #[test]
    fn poll_is_oldest_first_limited_and_non_destructive() {
        let (alice, carol, bob) = (key(1), key(3), key(2));
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "b", NOW + 5), Some(1));
        state.insert(envelope(&carol, &bob, "a", NOW + 5), Some(1));
        state.insert(envelope(&alice, &bob, "z", NOW), Some(1));
        let view = state.poll(2, NOW);
        let ids: Vec<&str> = view.messages.iter().map(|e| e.msg_id.as_str()).collect();
        assert_eq!(ids, ["z", "a"]);
        assert_eq!(view.pending, 3);
        assert!(view.has_more);
        let all = state.poll(100, NOW);
        assert_eq!(all.messages.len(), 3);
        assert!(!all.has_more);
        assert_eq!(state.poll(0, NOW).messages.len(), 0);
        assert_eq!(state.poll(0, NOW).pending, 3);
    }

    #[test]
    fn parked_replica_is_accepted_once_the_ack_frees_its_quota() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m1", NOW), Some(1));
        state.insert(envelope(&alice, &bob, "m2", NOW + 1), Some(1));
        // m3 arrives from a peer before the ack of m1 does.
        let m3 = envelope(&alice, &bob, "m3", NOW + 2);
        assert!(matches!(
            state.decide(&m3, &limits),
            Decision::CapViolation { .. }
        ));
        assert!(state.park(Arc::clone(&m3), &limits));
        assert!(!state.park(Arc::clone(&m3), &limits), "parked once");
        assert!(
            state.retry_parked(&limits).accepted.is_empty(),
            "still no room"
        );
        state.acknowledge(&ack(&bob, &["m1"]), 604_800);
        let unparked = state.retry_parked(&limits);
        assert_eq!(unparked.accepted, vec![m3]);
        assert_eq!(state.parked_len(), 0);
        assert_eq!(
            state.pending_from(&mailbox_of(&alice)),
            2,
            "the cap still holds"
        );
    }

    #[test]
    fn parked_replica_that_gets_acknowledged_is_dropped_and_parking_is_bounded() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits {
            pending_per_sender: 1,
            mailbox: 2,
            nonces: 16,
        };
        let mut state = MailboxState::default();
        state.insert(envelope(&alice, &bob, "m1", NOW), Some(1));
        assert!(state.park(envelope(&alice, &bob, "m2", NOW), &limits));
        assert!(state.park(envelope(&alice, &bob, "m3", NOW), &limits));
        assert!(
            !state.park(envelope(&alice, &bob, "m4", NOW), &limits),
            "bounded"
        );
        state.acknowledge(&ack(&bob, &["m1", "m2"]), 604_800);
        let unparked = state.retry_parked(&limits);
        assert_eq!(unparked.dropped.len(), 1);
        assert_eq!(unparked.accepted.len(), 1);
        assert_eq!(unparked.accepted[0].msg_id.as_str(), "m3");
        // Parked replicas expire with their envelope.
        state.park(envelope(&alice, &bob, "m5", NOW), &limits);
        state.expire(NOW + 3600);
        assert_eq!(state.parked_len(), 0);
    }

    /// Found by tests/model.rs: a replica parked under an id, then a client's envelope with the
    /// same id accepted. The store's `PutEnvelope` unparks that id, so after a restart the parked
    /// twin was gone while memory still held it (and would have accepted it once the other
    /// expired). Memory now agrees with the store: accepting an id unparks it, one parked per id.
    #[test]
    fn accepting_an_id_unparks_it_and_one_replica_is_parked_per_id() {
        let (alice, carol, bob) = (key(1), key(3), key(2));
        let limits = MailboxLimits {
            pending_per_sender: 1,
            ..MailboxLimits::default()
        };
        let mut state = MailboxState::default();
        state.insert(envelope(&carol, &bob, "c0", NOW), Some(1));
        // Carol is at her cap: her replica "x" is parked.
        assert!(state.park(envelope(&carol, &bob, "x", NOW + 5), &limits));
        // Another replica with the same id (another time, so another key) is not parked again.
        assert!(!state.park(envelope(&carol, &bob, "x", NOW + 9), &limits));
        assert_eq!(state.parked_len(), 1);
        // Alice's envelope "x" is accepted: the parked "x" goes, as it does in the store.
        let alices = envelope(&alice, &bob, "x", NOW);
        assert_eq!(state.decide(&alices, &limits), Decision::Accept);
        state.insert(alices, Some(1));
        assert_eq!(state.parked_len(), 0);
    }

    #[test]
    fn nonces_are_single_use_within_the_window_and_bounded() {
        let limits = MailboxLimits {
            nonces: 2,
            ..MailboxLimits::default()
        };
        let mut state = MailboxState::default();
        assert_eq!(state.use_nonce("n1", NOW, &limits), Ok(NOW + 2 * SKEW_S));
        assert_eq!(
            state.use_nonce("n1", NOW, &limits),
            Err(NonceRefusal::Replay)
        );
        assert!(state.use_nonce("n2", NOW, &limits).is_ok());
        assert_eq!(
            state.use_nonce("n3", NOW, &limits),
            Err(NonceRefusal::TooMany)
        );
        state.expire(NOW + 2 * SKEW_S);
        assert!(state.use_nonce("n1", NOW + 2 * SKEW_S, &limits).is_ok());
    }

    #[test]
    fn an_ack_is_stored_when_it_changed_something_or_came_from_a_client() {
        let (alice, bob) = (key(1), key(2));
        let mut state = MailboxState::default();
        let m1 = envelope(&alice, &bob, "m1", NOW);
        state.insert(Arc::clone(&m1), Some(1));
        let first = Arc::new(ack(&bob, &["m1", "zz"]));
        let effect = state.acknowledge(&first, 600);
        let Some(StoreOp::ApplyAck {
            removed,
            tombstones,
            live_until,
            from_client,
            ..
        }) = effect.store_op(&first, false)
        else {
            panic!("a change is stored");
        };
        assert_eq!(removed, vec![m1.msg_id.clone()]);
        assert_eq!(tombstones.len(), 2);
        // The feed keeps it as long as its longest tombstone (the unknown id's ts + max_ttl).
        assert_eq!(live_until, (m1.expires_at).max(first.ts + 600));
        assert!(!from_client);
        // The same ack again changes nothing: a peer's copy is not stored, a client's is.
        let again = state.acknowledge(&first, 600);
        assert!(!again.changed);
        assert!(again.store_op(&first, false).is_none());
        assert!(matches!(
            again.store_op(&first, true),
            Some(StoreOp::ApplyAck {
                from_client: true,
                ..
            })
        ));
    }

    #[test]
    fn unparked_replicas_become_unparks_and_replica_stores() {
        let (alice, bob) = (key(1), key(2));
        let (kept, gone) = (
            envelope(&alice, &bob, "kept", NOW),
            envelope(&alice, &bob, "gone", NOW),
        );
        let unparked = Unparked {
            accepted: vec![Arc::clone(&kept)],
            dropped: vec![Arc::clone(&gone)],
        };
        let ops = unparked.store_ops(mailbox_of(&bob));
        assert!(matches!(&ops[..], [
            StoreOp::Unpark { msg_id, .. },
            StoreOp::PutEnvelope { envelope, from_client: false, .. },
        ] if *msg_id == gone.msg_id && envelope.msg_id == kept.msg_id));
    }

    #[test]
    fn a_deposit_plan_reserves_the_slot_waits_for_the_first_copy_and_parks_only_replicas() {
        let (alice, bob) = (key(1), key(2));
        let limits = MailboxLimits::default();
        let mut state = MailboxState::default();
        let m1 = envelope(&alice, &bob, "m1", NOW);
        assert!(matches!(
            state.plan_deposit(&m1, &limits, true),
            DepositPlan::Store(StoreOp::PutEnvelope {
                from_client: true,
                ..
            })
        ));
        // Reserved at once; a copy before the write is durable waits for it.
        assert!(matches!(
            state.plan_deposit(&m1, &limits, false),
            DepositPlan::AfterFirstCopy
        ));
        state.mark_committed(&m1.msg_id, 7);
        assert!(matches!(
            state.plan_deposit(&m1, &limits, false),
            DepositPlan::Answer {
                decision: Decision::Duplicate,
                park: false
            }
        ));
        let m2 = envelope(&alice, &bob, "m2", NOW);
        assert!(matches!(
            state.plan_deposit(&m2, &limits, false),
            DepositPlan::Store(StoreOp::PutEnvelope {
                from_client: false,
                ..
            })
        ));
        // Over the cap: a client is refused, a replica is also parked.
        let m3 = envelope(&alice, &bob, "m3", NOW);
        for (from_client, park) in [(true, false), (false, true)] {
            assert!(matches!(
                state.plan_deposit(&m3, &limits, from_client),
                DepositPlan::Answer { decision: Decision::CapViolation { .. }, park: p } if p == park
            ));
        }
    }
}
