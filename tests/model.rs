//! Model-based tests of the mailbox rules (SPEC §4) and of replication between nodes (SPEC §7.4).
//!
//! 1. `one_node_agrees_with_the_reference_model`: random sequences of client deposits, replicas,
//!    acks, polls, clock advances (expiry) and restarts run against the real [`MailboxState`]
//!    with the real store (`RedbStore::in_memory()`, fed the very `StoreOp`s the shard writes) and
//!    against [`RefMailbox`], a plain reading of SPEC §4 written with `Vec`s and linear scans.
//!    A restart throws every `MailboxState` away and reloads it through the shard's own load
//!    path ([`state_from`] over `Store::load_mailbox`); for the reference a restart changes
//!    nothing, so any state lost or resurrected by the store shows up as a disagreement. After
//!    every step: outcomes agree, the cap and the mailbox limit hold, the full poll lists the same
//!    envelopes in the same order, and what the store would reload equals what is in memory.
//! 2. `replicas_and_acks_converge_between_nodes`: 2–3 in-process nodes exchange pushed envelopes
//!    and acks in random order, with duplicates and delays, and pull each other's feeds. The cap
//!    must hold on every node at every step; at the end, once everything is delivered, every node
//!    must hold exactly the envelopes deposited and not acknowledged (SPEC §7.4's promise,
//!    including replicas parked for want of room until the ack freeing it arrives).
//!
//! Signing is slow, so keys, envelopes and acks are made once and the strategies pick indices.
//! Default case counts keep the file well under 20 s in a debug build; set `PROPTEST_CASES` for a
//! longer run.

use dmrelay::mailbox::rules::{
    Decision, MailboxLimits, MailboxState, NonceRefusal, PollItem, SigDigest, deposit_op,
    sig_digest,
};
use dmrelay::mailbox::shard::state_from;
use dmrelay::protocol::{AckObject, Envelope, EnvelopeLimits, MailboxKey, MsgId};
use dmrelay::store::{RedbStore, Store, StoreOp};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

const T0: u64 = 1_800_000_000;
const MAX_TTL_S: u64 = 7_200;
/// A request's nonce stays spent for twice the skew window (see `MailboxState::use_nonce`).
const NONCE_LIFETIME_S: u64 = 600;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// How often each interesting path was taken over all cases of a property: a property whose
/// generator never reaches a rule proves nothing about it, so every test asserts its list.
#[derive(Default)]
struct Coverage(std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>);

impl Coverage {
    fn hit(&self, label: &'static str) {
        *self.0.lock().unwrap().entry(label).or_default() += 1;
    }

    fn assert_reached(&self, labels: &[&'static str]) {
        let seen = self.0.lock().unwrap();
        eprintln!("coverage: {seen:?}");
        for label in labels {
            assert!(
                seen.get(label).is_some_and(|n| *n > 0),
                "the generator never reached `{label}`: {seen:?}"
            );
        }
    }
}

/// Runs `test` on `cases` inputs from `strategy`, shrinking a failure as `proptest!` does.
fn check<S: Strategy>(default_cases: u32, strategy: S, test: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let mut config = cases(default_cases);
    config.source_file = Some(file!());
    // A failing case is saved beside this file (tests/model.proptest-regressions) and run first
    // next time.
    config.failure_persistence = Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
    ));
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(err) = runner.run(&strategy, |value| {
        test(value);
        Ok(())
    }) {
        panic!("{err}");
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(key: &SigningKey) -> MailboxKey {
    MailboxKey::of(key)
}

fn id(text: &str) -> MsgId {
    MsgId::parse("msg_id", text).unwrap()
}

fn ids_of(items: &[PollItem]) -> Vec<(String, SigDigest)> {
    items
        .iter()
        .map(|e| (e.msg_id.as_str().to_string(), e.sig))
        .collect()
}

fn envelope_ids(envelopes: &[Arc<Envelope>]) -> Vec<(String, SigDigest)> {
    envelopes
        .iter()
        .map(|e| (e.msg_id.as_str().to_string(), sig_digest(&e.sig)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The reference model: SPEC §4 read literally, plus the parking of SPEC §7.4.
// ---------------------------------------------------------------------------------------------

/// One mailbox as SPEC §4 describes it, with no index and no cleverness.
#[derive(Default)]
struct RefMailbox {
    pending: Vec<Arc<Envelope>>,
    /// `(msg_id, until)`.
    tombstones: Vec<(String, u64)>,
    /// Replicas refused for want of room, retried (oldest first) when an ack frees room and on
    /// every sweep, at most `mailbox` of them.
    parked: Vec<Arc<Envelope>>,
    /// `(nonce, until)`.
    nonces: Vec<(String, u64)>,
    /// Parked replicas accepted so far (for the coverage report only).
    unparked: usize,
}

impl RefMailbox {
    fn expire(&mut self, now: u64) {
        self.pending.retain(|e| e.expires_at > now);
        self.tombstones.retain(|(_, until)| *until > now);
        self.parked.retain(|e| e.expires_at > now);
        self.nonces.retain(|(_, until)| *until > now);
    }

    fn decide(&self, envelope: &Envelope, limits: &MailboxLimits) -> Decision {
        let msg_id = envelope.msg_id.as_str();
        if self.tombstones.iter().any(|(id, _)| id == msg_id) {
            return Decision::Acked;
        }
        if let Some(same_id) = self.pending.iter().find(|e| e.msg_id.as_str() == msg_id) {
            return if same_id.sig == envelope.sig {
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
        let from_sender = self
            .pending
            .iter()
            .filter(|e| e.sender == envelope.sender)
            .count() as u32;
        if from_sender >= limits.pending_per_sender {
            return Decision::CapViolation {
                pending: from_sender,
                limit: limits.pending_per_sender,
            };
        }
        Decision::Accept
    }

    fn deposit(
        &mut self,
        envelope: &Arc<Envelope>,
        replica: bool,
        now: u64,
        limits: &MailboxLimits,
    ) -> Decision {
        self.expire(now);
        let decision = self.decide(envelope, limits);
        match decision {
            Decision::Accept => {
                // An accepted id is parked no more (a parked twin could only conflict).
                self.parked.retain(|p| p.msg_id != envelope.msg_id);
                self.pending.push(Arc::clone(envelope));
            }
            Decision::MailboxFull { .. } | Decision::CapViolation { .. } if replica => {
                // At most one parked replica per id, at most `mailbox` in all.
                let already = self.parked.iter().any(|p| p.msg_id == envelope.msg_id);
                if !already && self.parked.len() < limits.mailbox as usize {
                    self.parked.push(Arc::clone(envelope));
                }
            }
            _ => {}
        }
        decision
    }

    fn retry_parked(&mut self, limits: &MailboxLimits) {
        let mut waiting = std::mem::take(&mut self.parked);
        waiting.sort_by(|a, b| (a.created_at, &a.msg_id).cmp(&(b.created_at, &b.msg_id)));
        for envelope in waiting {
            match self.decide(&envelope, limits) {
                Decision::Accept => {
                    self.unparked += 1;
                    self.pending.push(envelope);
                }
                Decision::MailboxFull { .. } | Decision::CapViolation { .. } => {
                    self.parked.push(envelope)
                }
                Decision::Acked | Decision::Duplicate | Decision::Conflict => {}
            }
        }
    }

    /// Returns the ids removed and the number of unknown ids.
    fn acknowledge(
        &mut self,
        ack: &AckObject,
        now: u64,
        limits: &MailboxLimits,
    ) -> (Vec<String>, usize) {
        self.expire(now);
        let mut removed = Vec::new();
        let mut unknown = 0;
        for msg_id in &ack.msg_ids {
            let msg_id = msg_id.as_str();
            let until = match self
                .pending
                .iter()
                .position(|e| e.msg_id.as_str() == msg_id)
            {
                Some(index) => {
                    let envelope = self.pending.remove(index);
                    removed.push(msg_id.to_string());
                    envelope.expires_at
                }
                None => {
                    unknown += 1;
                    ack.ts + MAX_TTL_S
                }
            };
            match self.tombstones.iter_mut().find(|(id, _)| id == msg_id) {
                Some((_, old)) => *old = (*old).max(until),
                None => self.tombstones.push((msg_id.to_string(), until)),
            }
        }
        if !removed.is_empty() {
            self.retry_parked(limits);
        }
        (removed, unknown)
    }

    fn sorted(&self) -> Vec<Arc<Envelope>> {
        let mut all = self.pending.clone();
        all.sort_by(|a, b| (a.created_at, &a.msg_id).cmp(&(b.created_at, &b.msg_id)));
        all
    }

    fn poll(
        &mut self,
        nonce: &str,
        limit: usize,
        now: u64,
        limits: &MailboxLimits,
    ) -> Result<PollSeen, NonceRefusal> {
        self.expire(now);
        if self.nonces.iter().any(|(n, _)| n == nonce) {
            return Err(NonceRefusal::Replay);
        }
        if self.nonces.len() >= limits.nonces {
            return Err(NonceRefusal::TooMany);
        }
        self.nonces
            .push((nonce.to_string(), now + NONCE_LIFETIME_S));
        let all = self.sorted();
        Ok(PollSeen {
            messages: envelope_ids(&all[..limit.min(all.len())]),
            pending: all.len(),
            has_more: all.len() > limit,
        })
    }

    fn sweep(&mut self, now: u64, limits: &MailboxLimits) {
        self.expire(now);
        if !self.parked.is_empty() {
            self.retry_parked(limits);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct PollSeen {
    messages: Vec<(String, SigDigest)>,
    pending: usize,
    has_more: bool,
}

// ---------------------------------------------------------------------------------------------
// The implementation: MailboxState driven as the shard drives it, over the real store.
// ---------------------------------------------------------------------------------------------

/// One node's mailboxes: the rules in memory, the store behind them, and the same sequence of
/// decisions and writes as `MailboxShard` (without the actor, with a virtual clock).
struct StoredNode {
    store: RedbStore,
    states: HashMap<MailboxKey, MailboxState>,
    limits: MailboxLimits,
}

impl StoredNode {
    fn new(limits: MailboxLimits) -> Self {
        Self {
            store: RedbStore::in_memory().unwrap(),
            states: HashMap::new(),
            limits,
        }
    }

    /// What the shard's load path makes of the store for `mailbox` at `now`.
    fn reload(&self, mailbox: &MailboxKey, now: u64) -> MailboxState {
        state_from(self.store.load_mailbox(mailbox, now).unwrap(), now)
    }

    /// The mailbox in memory (loaded on first use), with what expired dropped.
    fn state(&mut self, mailbox: MailboxKey, now: u64) -> &mut MailboxState {
        if !self.states.contains_key(&mailbox) {
            let state = self.reload(&mailbox, now);
            self.states.insert(mailbox, state);
        }
        let state = self.states.get_mut(&mailbox).unwrap();
        state.expire(now);
        state
    }

    /// Commits `ops`; returns the seq of their first numbered change, as the writer tells it.
    fn commit(&self, ops: Vec<StoreOp>) -> u64 {
        if ops.is_empty() {
            return 0;
        }
        let last_seq = self.store.commit(&ops).unwrap();
        StoreOp::first_seq(&ops, last_seq)
    }

    fn deposit(&mut self, envelope: &Arc<Envelope>, replica: bool, now: u64) -> Decision {
        let limits = self.limits;
        let state = self.state(envelope.mailbox, now);
        let decision = state.decide(envelope, &limits);
        match decision {
            Decision::Accept => {
                state.insert(Arc::clone(envelope), None);
                let seq = self.commit(vec![deposit_op(envelope, !replica)]);
                self.state(envelope.mailbox, now)
                    .mark_committed(&envelope.msg_id, seq);
            }
            Decision::MailboxFull { .. } | Decision::CapViolation { .. }
                if replica && state.park(Arc::clone(envelope), &limits) =>
            {
                self.commit(vec![StoreOp::Park(Arc::clone(envelope))]);
            }
            _ => {}
        }
        decision
    }

    fn retry_parked(&mut self, mailbox: MailboxKey, now: u64) {
        let limits = self.limits;
        let state = self.state(mailbox, now);
        if state.parked_len() == 0 {
            return;
        }
        let unparked = state.retry_parked(&limits);
        let first_seq = self.commit(unparked.store_ops(mailbox));
        let state = self.state(mailbox, now);
        // As the shard does: the accepted ones are the last ops, in order.
        for (nth, envelope) in (0u64..).zip(&unparked.accepted) {
            state.mark_committed(&envelope.msg_id, first_seq + nth);
        }
    }

    fn acknowledge(
        &mut self,
        ack: &Arc<AckObject>,
        replica: bool,
        now: u64,
    ) -> (Vec<String>, usize) {
        let effect = self.state(ack.mailbox, now).acknowledge(ack, MAX_TTL_S);
        if !effect.removed.is_empty() {
            self.retry_parked(ack.mailbox, now);
        }
        if let Some(op) = effect.store_op(ack, !replica) {
            self.commit(vec![op]);
        }
        let removed = effect
            .removed
            .iter()
            .map(|id| id.as_str().to_string())
            .collect();
        (removed, effect.unknown)
    }

    fn poll(
        &mut self,
        mailbox: MailboxKey,
        nonce: &str,
        limit: usize,
        now: u64,
    ) -> Result<PollSeen, NonceRefusal> {
        let limits = self.limits;
        let state = self.state(mailbox, now);
        let until = state.use_nonce(nonce, now, &limits)?;
        let view = state.poll(limit, now);
        self.commit(vec![StoreOp::PutNonce {
            mailbox,
            nonce: nonce.into(),
            until,
        }]);
        Ok(PollSeen {
            messages: ids_of(&view.messages),
            pending: view.pending,
            has_more: view.has_more,
        })
    }

    /// The shard's periodic sweep (expiry, parked retries) and the node's store GC.
    fn sweep(&mut self, now: u64) {
        let mailboxes: Vec<MailboxKey> = self.states.keys().copied().collect();
        for mailbox in mailboxes {
            if self.state(mailbox, now).parked_len() > 0 {
                self.retry_parked(mailbox, now);
            }
        }
        self.store.collect_garbage(now).unwrap();
    }

    /// Forgets everything in memory; the next request reloads from the store.
    fn restart(&mut self) {
        self.states.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Property 1: one node against the reference model.
// ---------------------------------------------------------------------------------------------

const SENDERS: u8 = 3;
const IDS_PER_SENDER: u64 = 4;

struct Pool {
    mailboxes: Vec<MailboxKey>,
    senders: Vec<MailboxKey>,
    envelopes: Vec<Arc<Envelope>>,
    acks: Vec<Arc<AckObject>>,
}

/// Two mailboxes; three senders with four ids each per mailbox (created within two minutes, with
/// ties, lifetimes from 15 min to 2 h); conflicting twins; one envelope from 20 min in the
/// future; acks of single ids, of several, of unknown ids, at two timestamps.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let owners = [key(101), key(102)];
        let senders: Vec<SigningKey> = (0..SENDERS).map(|s| key(1 + s)).collect();
        let ttl = [900, 3600, 7200, 1800];
        let mut envelopes = Vec::new();
        let mut acks = Vec::new();
        for owner in &owners {
            let mailbox = public(owner);
            for (s, sender) in senders.iter().enumerate() {
                for k in 0..IDS_PER_SENDER {
                    // Senders 0 and 1 share created_at: the order falls back to msg_id.
                    let created_at = T0 + 30 * k + 7 * (s as u64 / 2);
                    let msg_id = id(&format!("s{s}m{k}"));
                    let body = format!("{s}/{k}");
                    envelopes.push(Arc::new(Envelope::sign(
                        sender,
                        mailbox,
                        msg_id,
                        created_at,
                        created_at + ttl[k as usize],
                        body.as_bytes(),
                    )));
                }
            }
            // Same id as s0m0, another sender, another time: a conflict when both meet.
            envelopes.push(Arc::new(Envelope::sign(
                &senders[1],
                mailbox,
                id("s0m0"),
                T0 + 45,
                T0 + 3600,
                b"twin",
            )));
            // Same id and time as s1m1, other content.
            envelopes.push(Arc::new(Envelope::sign(
                &senders[1],
                mailbox,
                id("s1m1"),
                T0 + 30,
                T0 + 30 + 3600,
                b"other",
            )));
            // Created 20 minutes ahead: refused (SPEC §3) until the clock is within SKEW of it.
            envelopes.push(Arc::new(Envelope::sign(
                &senders[2],
                mailbox,
                id("future"),
                T0 + 1200,
                T0 + 4000,
                b"later",
            )));
            let all: Vec<String> = (0..SENDERS)
                .flat_map(|s| (0..IDS_PER_SENDER).map(move |k| format!("s{s}m{k}")))
                .collect();
            let mut sets: Vec<Vec<String>> = all.iter().map(|i| vec![i.clone()]).collect();
            sets.push(vec!["s0m0".into(), "s0m1".into()]);
            sets.push(vec!["s0m2".into(), "s1m0".into(), "s2m3".into()]);
            sets.push(vec!["never".into()]);
            sets.push(vec!["s2m0".into(), "s2m1".into(), "never2".into()]);
            sets.push(vec!["future".into(), "s1m1".into()]);
            sets.push(all.clone());
            for (n, set) in sets.iter().enumerate() {
                let ids = set.iter().map(|i| id(i)).collect();
                let ts = if n % 3 == 2 { T0 + 3000 } else { T0 };
                acks.push(Arc::new(AckObject::sign(owner, ts, ids)));
            }
        }
        Pool {
            mailboxes: owners.iter().map(public).collect(),
            senders: senders.iter().map(public).collect(),
            envelopes,
            acks,
        }
    })
}

#[derive(Debug, Clone)]
enum Step {
    /// A client's deposit (`replica == false`) or a peer's replica.
    Deposit { envelope: usize, replica: bool },
    /// A client's ack or a peer's.
    Ack { ack: usize, replica: bool },
    Poll {
        mailbox: usize,
        nonce: usize,
        limit: usize,
    },
    /// Time passes; the sweep and the store's GC run.
    Advance { seconds: u64 },
    /// The node restarts: memory is gone, the store remains.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let pool = pool();
    prop_oneof![
        6 => (0..pool.envelopes.len(), prop::bool::weighted(0.75))
            .prop_map(|(envelope, replica)| Step::Deposit { envelope, replica }),
        3 => (0..pool.acks.len(), any::<bool>()).prop_map(|(ack, replica)| Step::Ack { ack, replica }),
        2 => (0..pool.mailboxes.len(), 0..5usize, prop::sample::select(vec![0usize, 1, 3, 100]))
            .prop_map(|(mailbox, nonce, limit)| Step::Poll { mailbox, nonce, limit }),
        1 => prop::sample::select(vec![1u64, 60, 299, 600, 900, 1800])
            .prop_map(|seconds| Step::Advance { seconds }),
        1 => Just(Step::Restart),
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused by SPEC §3 (time window) before the rules.
    Invalid(&'static str),
    Decided(Decision),
    Acked {
        removed: Vec<String>,
        unknown: usize,
    },
    Polled(Result<PollSeen, NonceRefusal>),
    Nothing,
}

/// SPEC §3's time rules, read plainly (the signatures are valid by construction).
fn reference_time_check(envelope: &Envelope, now: u64) -> Result<(), &'static str> {
    if envelope.created_at > now + 300 {
        return Err("stale");
    }
    if now >= envelope.expires_at {
        return Err("expired");
    }
    Ok(())
}

fn check_node(node: &mut StoredNode, reference: &mut HashMap<MailboxKey, RefMailbox>, now: u64) {
    let pool = pool();
    let limits = node.limits;
    for mailbox in &pool.mailboxes {
        let model = reference.entry(*mailbox).or_default();
        model.expire(now);
        let durable = node.reload(mailbox, now);
        let state = node.state(*mailbox, now);
        for sender in &pool.senders {
            assert!(
                state.pending_from(sender) <= limits.pending_per_sender,
                "the cap holds"
            );
        }
        assert!(
            state.pending_len() <= limits.mailbox as usize,
            "the mailbox limit holds"
        );
        let polled = state.poll(usize::MAX, now).messages;
        let live = ids_of(&polled);
        assert_eq!(
            live,
            envelope_ids(&model.sorted()),
            "pending set and order (SPEC §6.2)"
        );
        assert_eq!(state.parked_len(), model.parked.len(), "parked replicas");
        let reloaded = durable.poll(usize::MAX, now).messages;
        assert_eq!(
            ids_of(&reloaded),
            live,
            "what a restart would reload equals what is in memory"
        );
        // Where each pending envelope is in the log: the same in memory and after a reload,
        // and that change is the very envelope (a poll reads its body there).
        let seqs: Vec<u64> = polled.iter().map(|item| item.seq).collect();
        assert_eq!(
            reloaded.iter().map(|item| item.seq).collect::<Vec<_>>(),
            seqs,
            "the seqs a restart would reload equal those in memory"
        );
        let bodies = node.store.change_json(&seqs).unwrap();
        for (item, body) in polled.iter().zip(bodies) {
            let body = body.unwrap_or_else(|| panic!("no change at seq {}", item.seq));
            let envelope: Envelope = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (envelope.msg_id.as_str(), sig_digest(&envelope.sig)),
                (item.msg_id.as_str(), item.sig),
                "the change at a pending envelope's seq is that envelope"
            );
        }
    }
}

/// Pending, parked and unparked envelopes over all mailboxes of the reference.
fn counts(reference: &HashMap<MailboxKey, RefMailbox>) -> (usize, usize, usize) {
    reference
        .values()
        .fold((0, 0, 0), |(pending, parked, unparked), m| {
            (
                pending + m.pending.len(),
                parked + m.parked.len(),
                unparked + m.unparked,
            )
        })
}

fn note(
    outcome: &Outcome,
    step: &Step,
    before: &(usize, usize, usize),
    reference: &HashMap<MailboxKey, RefMailbox>,
    coverage: &Coverage,
) {
    let after = counts(reference);
    let unparked = after.2 > before.2;
    match (outcome, step) {
        (Outcome::Invalid(_), _) => coverage.hit("invalid (SPEC §3 time window)"),
        (Outcome::Decided(decision), Step::Deposit { replica, .. }) => {
            coverage.hit(match decision {
                Decision::Accept => "accepted",
                Decision::Duplicate => "duplicate",
                Decision::Conflict => "conflict",
                Decision::Acked => "acked",
                Decision::MailboxFull { .. } => "mailbox_full",
                Decision::CapViolation { .. } => "cap_violation",
            });
            if *replica && after.1 > before.1 {
                coverage.hit("replica parked");
            }
        }
        (Outcome::Acked { removed, unknown }, _) => {
            if !removed.is_empty() {
                coverage.hit("ack removed");
            }
            if *unknown > 0 {
                coverage.hit("ack of unknown id");
            }
            if unparked {
                coverage.hit("parked accepted after ack");
            }
        }
        (Outcome::Polled(Ok(seen)), _) => coverage.hit(if seen.has_more {
            "poll has_more"
        } else {
            "poll"
        }),
        (Outcome::Polled(Err(NonceRefusal::Replay)), _) => coverage.hit("poll replay"),
        (Outcome::Polled(Err(NonceRefusal::TooMany)), _) => coverage.hit("poll too many"),
        (_, Step::Advance { .. }) => {
            if after.0 < before.0 {
                coverage.hit("expired");
            }
            if unparked {
                coverage.hit("parked accepted after expiry");
            }
        }
        (_, Step::Restart) if before.0 > 0 => coverage.hit("restart with pending"),
        _ => {}
    }
}

fn run_one_node(steps: &[Step], coverage: &Coverage) {
    let pool = pool();
    let limits = MailboxLimits {
        pending_per_sender: 2,
        mailbox: 4,
        nonces: 3,
    };
    let envelope_limits = EnvelopeLimits {
        max_msg_bytes: 8192,
        max_ttl_s: MAX_TTL_S,
    };
    let mut node = StoredNode::new(limits);
    let mut reference: HashMap<MailboxKey, RefMailbox> = HashMap::new();
    let mut now = T0;
    for (n, step) in steps.iter().enumerate() {
        let before = counts(&reference);
        let (actual, expected) = match step {
            Step::Deposit { envelope, replica } => {
                let envelope = &pool.envelopes[*envelope];
                let model = reference.entry(envelope.mailbox).or_default();
                match (
                    envelope.verify(now, &envelope_limits),
                    reference_time_check(envelope, now),
                ) {
                    (Ok(()), Ok(())) => (
                        Outcome::Decided(node.deposit(envelope, *replica, now)),
                        Outcome::Decided(model.deposit(envelope, *replica, now, &limits)),
                    ),
                    (actual, expected) => (
                        Outcome::Invalid(if actual.is_ok() {
                            "accepted"
                        } else {
                            "refused"
                        }),
                        Outcome::Invalid(if expected.is_ok() {
                            "accepted"
                        } else {
                            "refused"
                        }),
                    ),
                }
            }
            Step::Ack { ack, replica } => {
                let ack = &pool.acks[*ack];
                let (removed, unknown) = node.acknowledge(ack, *replica, now);
                let model = reference.entry(ack.mailbox).or_default();
                let (model_removed, model_unknown) = model.acknowledge(ack, now, &limits);
                (
                    Outcome::Acked { removed, unknown },
                    Outcome::Acked {
                        removed: model_removed,
                        unknown: model_unknown,
                    },
                )
            }
            Step::Poll {
                mailbox,
                nonce,
                limit,
            } => {
                let mailbox = pool.mailboxes[*mailbox];
                let nonce = format!("{nonce:032x}");
                let model = reference.entry(mailbox).or_default();
                (
                    Outcome::Polled(node.poll(mailbox, &nonce, *limit, now)),
                    Outcome::Polled(model.poll(&nonce, *limit, now, &limits)),
                )
            }
            Step::Advance { seconds } => {
                now += seconds;
                node.sweep(now);
                for model in reference.values_mut() {
                    model.sweep(now, &limits);
                }
                (Outcome::Nothing, Outcome::Nothing)
            }
            Step::Restart => {
                node.restart();
                (Outcome::Nothing, Outcome::Nothing)
            }
        };
        assert_eq!(actual, expected, "step {n}: {step:?} at T0+{}", now - T0);
        note(&actual, step, &before, &reference, coverage);
        check_node(&mut node, &mut reference, now);
    }
}

/// SPEC §4 (rule order, cap, mailbox limit, acks and tombstones, expiry), §6.2 (poll order,
/// nonces) and durability across restarts, against the reference model.
#[test]
fn one_node_agrees_with_the_reference_model() {
    let coverage = Coverage::default();
    check(64, prop::collection::vec(step(), 1..120), |steps| {
        run_one_node(&steps, &coverage)
    });
    coverage.assert_reached(&[
        "invalid (SPEC §3 time window)",
        "accepted",
        "duplicate",
        "conflict",
        "acked",
        "mailbox_full",
        "cap_violation",
        "replica parked",
        "ack removed",
        "ack of unknown id",
        "parked accepted after ack",
        "parked accepted after expiry",
        "poll",
        "poll has_more",
        "poll replay",
        "poll too many",
        "expired",
        "restart with pending",
    ]);
}

// ---------------------------------------------------------------------------------------------
// Property 2: several nodes, replicas and acks in any order.
// ---------------------------------------------------------------------------------------------

const MESH_CAP: u32 = 2;
const MESH_SENDERS: u8 = 2;
const MESH_IDS: usize = 8;

struct MeshPool {
    envelopes: Vec<Arc<Envelope>>,
    acks: Vec<Arc<AckObject>>,
}

/// One mailbox, two senders with eight ids each, acks of one or several ids (and an unknown one).
fn mesh_pool() -> &'static MeshPool {
    static POOL: OnceLock<MeshPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let owner = key(110);
        let mailbox = public(&owner);
        let mut envelopes = Vec::new();
        for s in 0..MESH_SENDERS {
            let sender = key(20 + s);
            for k in 0..MESH_IDS {
                let created_at = T0 + 10 * k as u64;
                envelopes.push(Arc::new(Envelope::sign(
                    &sender,
                    mailbox,
                    id(&format!("s{s}m{k}")),
                    created_at,
                    created_at + 7200,
                    format!("{s}/{k}").as_bytes(),
                )));
            }
        }
        let mut acks: Vec<Arc<AckObject>> = envelopes
            .iter()
            .map(|e| Arc::new(AckObject::sign(&owner, T0, vec![e.msg_id.clone()])))
            .collect();
        for set in [
            vec!["s0m0", "s0m1"],
            vec!["s1m0", "s1m1", "s0m2"],
            vec!["s1m2", "s1m3", "nobody"],
        ] {
            let ids = set.into_iter().map(id).collect();
            acks.push(Arc::new(AckObject::sign(&owner, T0, ids)));
        }
        MeshPool { envelopes, acks }
    })
}

#[derive(Debug, Clone)]
enum Item {
    Envelope(Arc<Envelope>),
    Ack(Arc<AckObject>),
}

/// A node of the mesh: the rules for the one mailbox, and its change feed (envelopes accepted,
/// acks that changed something, in commit order). It has no store, so its entries are all
/// "stored at" seq 1: where a body is read is checked by the one-node property above.
struct MeshNode {
    state: MailboxState,
    feed: Vec<Item>,
    /// A replica found no room and no parking space either: only a pull brings it back.
    park_overflowed: bool,
}

impl MeshNode {
    fn new() -> Self {
        Self {
            state: MailboxState::default(),
            feed: Vec::new(),
            park_overflowed: false,
        }
    }

    fn pending_ids(&self) -> BTreeSet<String> {
        self.state
            .poll(usize::MAX, T0)
            .messages
            .iter()
            .map(|e| e.msg_id.as_str().to_string())
            .collect()
    }

    fn accept(&mut self, envelope: &Arc<Envelope>) {
        self.state.insert(Arc::clone(envelope), Some(1));
        self.feed.push(Item::Envelope(Arc::clone(envelope)));
    }

    /// A client's deposit: true when accepted (then pushed to every peer).
    fn deposit(&mut self, envelope: &Arc<Envelope>, limits: &MailboxLimits) -> Decision {
        let decision = self.state.decide(envelope, limits);
        if decision == Decision::Accept {
            self.accept(envelope);
        }
        decision
    }

    /// A replica, pushed or pulled: as the shard does for `Origin::Peer`.
    fn replica(&mut self, envelope: &Arc<Envelope>, limits: &MailboxLimits, coverage: &Coverage) {
        match self.state.decide(envelope, limits) {
            Decision::Accept => self.accept(envelope),
            Decision::MailboxFull { .. } | Decision::CapViolation { .. } => {
                let parking_full = self.state.parked_len() >= limits.mailbox as usize;
                if self.state.park(Arc::clone(envelope), limits) {
                    coverage.hit("replica parked");
                } else if parking_full {
                    self.park_overflowed = true;
                }
            }
            Decision::Acked => coverage.hit("replica after its ack"),
            Decision::Duplicate | Decision::Conflict => {}
        }
    }

    /// An ack, from a client or a peer; returns whether it changed anything.
    fn acknowledge(
        &mut self,
        ack: &Arc<AckObject>,
        limits: &MailboxLimits,
        coverage: &Coverage,
    ) -> bool {
        let effect = self.state.acknowledge(ack, MAX_TTL_S);
        if !effect.removed.is_empty() {
            let unparked = self.state.retry_parked(limits);
            for envelope in unparked.accepted {
                coverage.hit("parked replica accepted after the ack");
                self.state.mark_committed(&envelope.msg_id, 1);
                self.feed.push(Item::Envelope(envelope));
            }
        }
        if effect.changed {
            self.feed.push(Item::Ack(Arc::clone(ack)));
        }
        effect.changed
    }

    /// The live feed after the cursor `since` (SPEC §7.3): envelopes still pending, and the acks.
    /// Returns the entries and the new cursor.
    fn live_feed(&self, since: usize) -> (Vec<Item>, usize) {
        let entries = self.feed[since.min(self.feed.len())..]
            .iter()
            .filter(|item| match item {
                Item::Envelope(e) => {
                    self.state.is_committed(&e.msg_id)
                        && self
                            .state
                            .poll(usize::MAX, T0)
                            .messages
                            .iter()
                            .any(|p| p.msg_id == e.msg_id && p.sig == sig_digest(&e.sig))
                }
                Item::Ack(_) => true,
            })
            .cloned()
            .collect();
        (entries, self.feed.len())
    }

    fn apply(&mut self, item: &Item, limits: &MailboxLimits, coverage: &Coverage) {
        match item {
            Item::Envelope(e) => self.replica(e, limits, coverage),
            Item::Ack(a) => {
                self.acknowledge(a, limits, coverage);
            }
        }
    }

    fn check_cap(&self, limits: &MailboxLimits) {
        for s in 0..MESH_SENDERS {
            let sender = public(&key(20 + s));
            assert!(
                self.state.pending_from(&sender) <= limits.pending_per_sender,
                "the cap holds on every node at every step"
            );
        }
        assert!(self.state.pending_len() <= limits.mailbox as usize);
    }
}

#[derive(Debug, Clone)]
enum MeshStep {
    /// A client deposits at `node` (skipped unless the sender is honest: fewer than the cap of
    /// its envelopes deposited and not acknowledged).
    Deposit { node: usize, envelope: usize },
    /// The owner acknowledges at `node` (any ack of the pool: ids not sent yet, several ids).
    Ack { node: usize, ack: usize },
    /// The owner acknowledges at `node` one of the envelopes it could have read (deposited
    /// somewhere, not acknowledged yet), as a reading client does.
    AckRead { node: usize, pick: usize },
    /// One pushed message in flight arrives (`pick` chooses which: any order); with `again`
    /// it stays in flight and will arrive a second time.
    Deliver { pick: usize, again: bool },
    /// `to` reads `from`'s feed and applies every entry.
    Pull { from: usize, to: usize },
}

fn mesh_step(nodes: usize) -> impl Strategy<Value = MeshStep> {
    let pool = mesh_pool();
    prop_oneof![
        4 => (0..nodes, 0..pool.envelopes.len())
            .prop_map(|(node, envelope)| MeshStep::Deposit { node, envelope }),
        1 => (0..nodes, 0..pool.acks.len()).prop_map(|(node, ack)| MeshStep::Ack { node, ack }),
        2 => (0..nodes, any::<usize>()).prop_map(|(node, pick)| MeshStep::AckRead { node, pick }),
        4 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, again)| MeshStep::Deliver { pick, again }),
        3 => (0..nodes, 0..nodes).prop_map(|(from, to)| MeshStep::Pull { from, to }),
    ]
}

fn mesh_case() -> impl Strategy<Value = (usize, Vec<MeshStep>)> {
    (2usize..=3)
        .prop_flat_map(|nodes| (Just(nodes), prop::collection::vec(mesh_step(nodes), 1..160)))
}

/// `to` reads `from`'s feed from its cursor and applies every entry as if pushed.
fn pull(
    nodes: &mut [MeshNode],
    cursors: &mut HashMap<(usize, usize), usize>,
    from: usize,
    to: usize,
    limits: &MailboxLimits,
    coverage: &Coverage,
) {
    let cursor = cursors.entry((from, to)).or_default();
    let (entries, next) = nodes[from].live_feed(*cursor);
    *cursor = next;
    for item in &entries {
        nodes[to].apply(item, limits, coverage);
    }
}

fn run_mesh(node_count: usize, steps: &[MeshStep], coverage: &Coverage) {
    if node_count == 3 {
        coverage.hit("three nodes");
    }
    let pool = mesh_pool();
    // The mailbox limit never binds for honest senders (senders × cap), so the promise holds.
    let limits = MailboxLimits {
        pending_per_sender: MESH_CAP,
        mailbox: MESH_CAP * u32::from(MESH_SENDERS),
        nonces: 16,
    };
    let mut nodes: Vec<MeshNode> = (0..node_count).map(|_| MeshNode::new()).collect();
    let mut in_flight: Vec<(usize, Item)> = Vec::new();
    // What clients were told: envelopes accepted somewhere, ids acknowledged somewhere.
    let mut deposited: HashMap<String, Arc<Envelope>> = HashMap::new();
    let mut acked: HashSet<String> = HashSet::new();
    // Each node's durable cursor in each peer's feed: what is behind it is never offered again.
    let mut cursors: HashMap<(usize, usize), usize> = HashMap::new();
    for step in steps {
        match step {
            MeshStep::Deposit { node, envelope } => {
                let envelope = &pool.envelopes[*envelope];
                let id = envelope.msg_id.as_str();
                let outstanding = deposited
                    .values()
                    .filter(|e| e.sender == envelope.sender && !acked.contains(e.msg_id.as_str()))
                    .count();
                // An honest sender waits for its messages to be read before sending more
                // (resending one it already sent is fine).
                let honest = deposited.contains_key(id) || outstanding < MESH_CAP as usize;
                let decision = honest.then(|| nodes[*node].deposit(envelope, &limits));
                if matches!(decision, Some(Decision::CapViolation { .. })) {
                    coverage.hit("client refused for the cap");
                }
                if decision == Some(Decision::Accept) {
                    deposited.insert(id.to_string(), Arc::clone(envelope));
                    for peer in (0..node_count).filter(|p| p != node) {
                        in_flight.push((peer, Item::Envelope(Arc::clone(envelope))));
                    }
                }
            }
            MeshStep::Ack { .. } | MeshStep::AckRead { .. } => {
                let (node, ack) = match step {
                    MeshStep::Ack { node, ack } => (node, *ack),
                    MeshStep::AckRead { node, pick } => {
                        // The single-id acks come first in the pool, in envelope order.
                        let unread: Vec<usize> = (0..pool.envelopes.len())
                            .filter(|&i| {
                                let id = pool.envelopes[i].msg_id.as_str();
                                deposited.contains_key(id) && !acked.contains(id)
                            })
                            .collect();
                        match unread.len() {
                            0 => (node, pool.acks.len() - 1),
                            n => (node, unread[pick % n]),
                        }
                    }
                    _ => unreachable!(),
                };
                let ack = &pool.acks[ack];
                nodes[*node].acknowledge(ack, &limits, coverage);
                acked.extend(ack.msg_ids.iter().map(|i| i.as_str().to_string()));
                // A client's ack is stored and pushed even when it changed nothing here.
                for peer in (0..node_count).filter(|p| p != node) {
                    in_flight.push((peer, Item::Ack(Arc::clone(ack))));
                }
            }
            MeshStep::Deliver { pick, again } => {
                if !in_flight.is_empty() {
                    let index = pick % in_flight.len();
                    let (to, item) = if *again {
                        in_flight[index].clone()
                    } else {
                        in_flight.remove(index)
                    };
                    if *again {
                        coverage.hit("delivered twice");
                    }
                    nodes[to].apply(&item, &limits, coverage);
                }
            }
            MeshStep::Pull { from, to } => {
                if from != to {
                    pull(&mut nodes, &mut cursors, *from, *to, &limits, coverage);
                }
            }
        }
        for node in &nodes {
            node.check_cap(&limits);
        }
    }
    // The network heals: every push arrives, then every node pulls every other until nothing
    // changes (the periodic pull of SPEC §7.4).
    for (to, item) in std::mem::take(&mut in_flight) {
        nodes[to].apply(&item, &limits, coverage);
    }
    let expected: BTreeSet<String> = deposited
        .keys()
        .filter(|id| !acked.contains(*id))
        .cloned()
        .collect();
    // Every client change is pushed to every peer of a full mesh, so once the pushes are in,
    // every node must already agree: a replica refused for the cap is parked and accepted when
    // the ack freeing its quota arrives. Only a replica that found the parking full as well
    // needs the pull below.
    if !nodes.iter().any(|node| node.park_overflowed) {
        coverage.hit("converged by pushes alone");
        for (n, node) in nodes.iter().enumerate() {
            assert_eq!(
                node.pending_ids(),
                expected,
                "node {n} after every push arrived (SPEC §7.4, parked replicas)"
            );
        }
    }
    for _ in 0..2 * node_count + 2 {
        let before: Vec<BTreeSet<String>> = nodes.iter().map(MeshNode::pending_ids).collect();
        for from in 0..node_count {
            for to in (0..node_count).filter(|&to| to != from) {
                pull(&mut nodes, &mut cursors, from, to, &limits, coverage);
                nodes[to].check_cap(&limits);
            }
        }
        let after: Vec<BTreeSet<String>> = nodes.iter().map(MeshNode::pending_ids).collect();
        if before == after {
            break;
        }
    }
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.pending_ids(),
            expected,
            "node {n} holds every envelope deposited and not acknowledged, and nothing else (SPEC §7.4)"
        );
    }
}

/// SPEC §4's cap on every node at every step, and SPEC §7.4's convergence promise (including
/// replicas parked until the ack that frees their quota arrives), whatever the order,
/// duplication and delay of pushes and pulls.
#[test]
fn replicas_and_acks_converge_between_nodes() {
    let coverage = Coverage::default();
    check(96, mesh_case(), |(nodes, steps)| {
        run_mesh(nodes, &steps, &coverage)
    });
    coverage.assert_reached(&[
        "three nodes",
        "client refused for the cap",
        "replica parked",
        "parked replica accepted after the ack",
        "replica after its ack",
        "delivered twice",
        "converged by pushes alone",
    ]);
}
