//! Durable state: the [`Store`] trait, its two engines ([`fjall_store`], the default on disk;
//! [`redb_store`], for data dirs earlier releases wrote and for memory mode), the record layout
//! they share ([`records`]), and the group-commit writer.
//!
//! Mailbox actors never touch the disk. They send [`StoreOp`]s to the single [`writer`]
//! thread through a bounded channel; the writer takes every request that arrived while the
//! previous commit was running, applies them in one transaction (one fsync), assigns each
//! stored change its `seq` in commit order, then answers every request (with the seq of its first
//! change, which mailboxes keep to read a polled envelope in one lookup) and announces the highest
//! seq on a watch channel ([`StoreHandle::last_seq`]), which wakes the pushers. A 200 on deposit or ack
//! is sent only after that answer, so it means "on disk". Before announcing, the writer keeps the
//! commit's client changes in a small in-memory window ([`recent`]), from which pushers that keep
//! up read without a store scan.
//!
//! What is stored (see [`redb_store`] for the tables): every accepted envelope and every applied
//! ack object as a *change* numbered by a strictly increasing `seq` and tagged with its origin
//! (a client of this node, or a peer: the log the pushers read, [`LogFilter`]); tombstones; an expiry index
//! that lets garbage collection drop expired changes and tombstones without a scan; and small
//! metadata (the store's epoch, the next seq, peer cursors). `MESH_DM_PERSIST=memory` runs the
//! very same code on redb's in-memory backend. Both engines pass the same contract tests
//! (`contract_tests.rs`).
//!
//! A failed commit puts the store in an *outage* ([`status`]): the writer answers every write
//! with 503 and the time of its next attempt, and reopens the database with backoff until it
//! takes writes again. A node-wide [`budget`] bounds the bytes of stored envelopes and acks.

pub mod budget;
#[cfg(test)]
mod contract_tests;
pub mod fjall_store;
pub mod recent;
pub mod records;
pub mod redb_store;
pub mod status;
pub mod writer;

use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId};
use std::sync::Arc;

pub use fjall_store::FjallStore;
pub use redb_store::RedbStore;
pub use writer::{Committed, StoreHandle, WriterError};

/// One change to apply in a commit.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// An envelope accepted by its mailbox (gets a seq). `from_client`: deposited by a client
    /// of this node, so this node's pushers send it to every peer.
    PutEnvelope {
        envelope: Arc<Envelope>,
        /// The envelope's JSON (SPEC §3), made once: stored as the change, and kept in the
        /// poll cache ([`crate::mailbox::bodies`]) once durable.
        json: Arc<[u8]>,
        from_client: bool,
    },
    /// An ack object applied to its mailbox (gets a seq): removes the listed envelopes and writes
    /// the tombstones. The ack stays in the change feed until `live_until`.
    ApplyAck {
        ack: Arc<AckObject>,
        removed: Vec<MsgId>,
        tombstones: Vec<(MsgId, u64)>,
        live_until: u64,
        /// Sent by a client of this node (pushed to every peer).
        from_client: bool,
    },
    /// A replica refused for want of room (cap or full mailbox), kept until the mailbox frees a
    /// slot (SPEC §7.4's convergence promise). Not pending, not in the feed.
    Park(Arc<Envelope>),
    /// A parked replica that was accepted later or became pointless (acknowledged).
    Unpark { mailbox: MailboxKey, msg_id: MsgId },
    /// A poll nonce used for a mailbox, remembered until `until` (so a restart cannot reopen
    /// the replay window of SPEC §6.2).
    PutNonce {
        mailbox: MailboxKey,
        nonce: Box<str>,
        until: u64,
    },
    /// Small metadata, e.g. a peer cursor.
    PutMeta { key: String, value: Vec<u8> },
}

impl StoreOp {
    /// Whether the store gives this op the next seq of the log (ops are numbered in order).
    pub fn takes_seq(&self) -> bool {
        matches!(self, StoreOp::PutEnvelope { .. } | StoreOp::ApplyAck { .. })
    }

    /// The seq of the first op of `ops` that [takes one](Self::takes_seq), for a commit of
    /// `ops` whose highest seq is `last_seq` (the next ones follow without a gap). For `ops`
    /// without any, the seq after `last_seq`.
    pub fn first_seq(ops: &[StoreOp], last_seq: u64) -> u64 {
        let numbered = ops.iter().filter(|op| op.takes_seq()).count() as u64;
        last_seq.saturating_add(1).saturating_sub(numbered)
    }

    /// [`StoreOp::PutEnvelope`] with the envelope's JSON made here.
    pub fn put_envelope(envelope: Arc<Envelope>, from_client: bool) -> Self {
        // Serializing plain fields into a Vec cannot fail.
        let json = serde_json::to_vec(envelope.as_ref()).unwrap_or_default();
        Self::PutEnvelope {
            envelope,
            json: json.into(),
            from_client,
        }
    }
}

/// Most changes one [`Store::read_log`] steps over, so that one read stays short.
pub const MAX_SCANNED_PER_READ: usize = 8192;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Backend(String),
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn backend(err: impl std::fmt::Display) -> Self {
        Self::Backend(err.to_string())
    }
}

/// The live state of some mailboxes, as read back from the store.
#[derive(Default)]
pub struct Recovered {
    /// Pending envelopes with the seq of their change in the log (where a poll reads them).
    pub envelopes: Vec<(u64, Arc<Envelope>)>,
    pub parked: Vec<Arc<Envelope>>,
    pub tombstones: Vec<(MailboxKey, MsgId, u64)>,
    pub nonces: Vec<(MailboxKey, Box<str>, u64)>,
}

/// One entry of the change feed (SPEC §7.3), as stored JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEntry {
    /// The envelope's JSON.
    Envelope(String),
    /// The ack object's JSON.
    Ack(String),
}

/// Which changes a read of the log returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFilter {
    /// Every live change: the feed of SPEC §7.3.
    All,
    /// Only what this node's clients sent: what a pusher sends.
    FromClients,
    /// The feed without this node's clients' changes up to this seq: a puller that already got
    /// them by push asks for the rest only.
    SkipClientsThrough(u64),
}

/// A page of the change log.
#[derive(Debug, Default)]
pub struct FeedPage {
    pub changes: Vec<(u64, FeedEntry)>,
    /// The last seq this read looked at (returned or stepped over): where the next read starts.
    pub through: u64,
    pub more: bool,
}

/// What a store must do: [`FjallStore`] on disk, [`RedbStore`] on disk or in memory; the trait
/// keeps the rest of the node independent of them.
pub trait Store: Send + Sync + 'static {
    /// The id of this store, created with it (SPEC §7.3).
    fn epoch(&self) -> &str;
    /// Applies `ops` in one durable transaction; returns the highest seq given so far (0: none).
    /// Each [`StoreOp::PutEnvelope`] and [`StoreOp::ApplyAck`] gets the next seq, in the order
    /// of `ops` ([`recent`] relies on it); no other op takes one.
    fn commit(&self, ops: &[StoreOp]) -> Result<u64, StoreError>;
    /// The highest seq given so far (0: none).
    fn last_seq(&self) -> Result<u64, StoreError>;
    /// Drops changes and tombstones whose time has come; returns how many records went.
    fn collect_garbage(&self, now: u64) -> Result<usize, StoreError>;
    /// Reads back the live state of every mailbox (tests and tools; a node loads mailboxes one
    /// at a time with [`Store::load_mailbox`]).
    fn recover(&self, now: u64) -> Result<Recovered, StoreError>;
    /// Reads back the live state of one mailbox.
    fn load_mailbox(&self, mailbox: &MailboxKey, now: u64) -> Result<Recovered, StoreError>;
    /// Pending envelopes in the store (kept up to date by every commit).
    fn pending_count(&self) -> u64;
    /// Bytes of the stored change records (envelopes, acks) and parked replicas, the figure the
    /// storage budget is measured against (kept up to date by every commit).
    fn stored_bytes(&self) -> u64;
    /// Closes and reopens the database after a storage error (only the writer thread calls
    /// this); fails while the fault persists.
    fn reopen(&self) -> Result<(), StoreError>;
    /// Closes the database for good at shutdown (only the writer thread calls this, after its
    /// last commit): a file closed this way opens again at once, while one left open by the
    /// process exiting is walked whole by the next open to repair it (seconds per GiB).
    fn close(&self) -> Result<(), StoreError>;
    /// The directory holding the database file (`None` in memory mode).
    fn data_dir(&self) -> Option<&std::path::Path>;
    /// Mailboxes that hold parked replicas (loaded at start-up, so that room freed by expiry
    /// reaches them).
    fn parked_mailboxes(&self) -> Result<Vec<MailboxKey>, StoreError>;
    /// At most `limit` live changes after `since` that pass `filter`, in seq order; stops early
    /// (`more`) after stepping over [`MAX_SCANNED_PER_READ`] changes the filter leaves out.
    fn read_log(
        &self,
        since: u64,
        limit: usize,
        now: u64,
        filter: LogFilter,
    ) -> Result<FeedPage, StoreError> {
        self.read_log_until(since, u64::MAX, limit, now, filter)
    }
    /// [`Store::read_log`] that stops after seq `until`.
    fn read_log_until(
        &self,
        since: u64,
        until: u64,
        limit: usize,
        now: u64,
        filter: LogFilter,
    ) -> Result<FeedPage, StoreError>;
    /// The stored JSON of the pending envelopes `ids` of `mailbox`, in order (`None`: not
    /// pending). Polls read what the [`crate::mailbox::bodies`] cache does not hold.
    fn envelope_json(
        &self,
        mailbox: &MailboxKey,
        ids: Vec<MsgId>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// The stored JSON of the envelopes whose changes are at `seqs`, in order (`None`: no
    /// envelope there any more). One point read each: polls know their envelopes' seqs, and
    /// check that what they read is the envelope they meant ([`crate::mailbox::bodies`]).
    fn change_json(&self, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Small metadata written with [`StoreOp::PutMeta`].
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
}
