//! The [`Store`] on redb: a file with fsync on every commit, or redb's in-memory backend.
//!
//! Tables:
//! - `meta`: `epoch`, `next_seq`, peer cursors (`cursor/...`).
//! - `changes`: `seq -> until(8, BE) ‖ kind(1) ‖ JSON`, kind 'E' an envelope, 'A' an ack, and
//!   'e', 'a' the same sent by a client of this node (what the pushers send).
//! - `envelope_index`: `mailbox(32) ‖ msg_id -> seq` of its pending envelope.
//! - `tombstones`: `mailbox(32) ‖ msg_id -> until`.
//! - `parked`: `mailbox(32) ‖ msg_id -> envelope JSON` of replicas waiting for room.
//! - `nonces`: `mailbox(32) ‖ nonce -> until` of poll nonces in their replay window.
//! - `expiry`: `until(8, BE) ‖ kind ‖ payload -> ()`, where kind 'C' carries `seq(8) ‖ key?` of a
//!   change, 'T' the key of a tombstone, 'P' of a parked replica, 'N' of a nonce; a range scan up to
//!   `now` finds what to drop.
//!
//! The database sits in a swappable cell: after a failed commit redb refuses every later write
//! until it is closed and opened again, so the writer thread calls [`Store::reopen`], which closes
//! the file and opens it anew (redb repairs it if needed). Readers take the database out of the
//! cell for the instant it takes to begin a transaction; while it is being reopened they get an
//! error (a 503), never a half-opened database.

use super::records::{
    EXPIRY_CHANGE, EXPIRY_NONCE, EXPIRY_PARKED, EXPIRY_TOMBSTONE, GC_BATCH_RECORDS, LogPage,
    change_kind, change_record, envelope_change_json, envelope_key, expiry_key, live_envelope,
    live_nonce, live_parked, live_tombstone, nonce_key, parse_change_record, prefix_end, read_u64,
    split_envelope_key,
};
use super::{FeedPage, LogFilter, Recovered, Store, StoreError, StoreOp};
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const ENVELOPE_INDEX: TableDefinition<&[u8], u64> = TableDefinition::new("envelope_index");
const TOMBSTONES: TableDefinition<&[u8], u64> = TableDefinition::new("tombstones");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const PARKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("parked");
const NONCES: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");

/// The database file's name inside `MESH_DM_DATA_DIR`.
pub const DATABASE_FILE: &str = "dmrelay.redb";

/// redb's own default page cache (1 GiB), used when no size is given.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

pub struct RedbStore {
    /// `None` only while [`Store::reopen`] is between closing and opening the file.
    db: RwLock<Option<Database>>,
    /// The database file (`None` in memory mode).
    path: Option<PathBuf>,
    cache_bytes: usize,
    epoch: String,
    durable: bool,
    /// Mirror of `meta/pending_count`, the number of live pending envelopes.
    pending: AtomicU64,
    /// Mirror of `meta/stored_bytes`, the bytes of stored change and parked records.
    stored: AtomicU64,
}

/// What [`RedbStore::prepare`] reads back from a freshly opened database.
struct Prepared {
    epoch: String,
    pending: u64,
    stored: u64,
}

fn reopening() -> StoreError {
    StoreError::Backend("the store is being reopened after a storage error".into())
}

fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "{} is in use by another process (another node on the same MESH_DM_DATA_DIR?)",
                path.display()
            )),
            other => StoreError::Backend(format!("cannot open {}: {other}", path.display())),
        })
}

impl RedbStore {
    /// Opens (or creates) the database file in `data_dir`, with redb's default cache.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database file in `data_dir` with a page cache of `cache_bytes`.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let db = open_file(&path, cache_bytes)?;
        Self::init(db, Some(path), cache_bytes)
    }

    /// A store that keeps everything in RAM (`MESH_DM_PERSIST=memory`).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::in_memory_with_cache(DEFAULT_CACHE_BYTES)
    }

    /// An in-memory store whose page cache is at most `cache_bytes`.
    pub fn in_memory_with_cache(cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(StoreError::backend)?;
        Self::init(db, None, cache_bytes)
    }

    fn init(db: Database, path: Option<PathBuf>, cache_bytes: usize) -> Result<Self, StoreError> {
        let prepared = Self::prepare(&db)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            durable: path.is_some(),
            path,
            cache_bytes,
            epoch: prepared.epoch,
            pending: AtomicU64::new(prepared.pending),
            stored: AtomicU64::new(prepared.stored),
        })
    }

    /// Creates what a new store needs (epoch, tables) in one write transaction — which also
    /// proves that the database takes writes — and reads back the counters.
    fn prepare(db: &Database) -> Result<Prepared, StoreError> {
        let txn = db.begin_write().map_err(StoreError::backend)?;
        let epoch = {
            let mut meta = txn.open_table(META).map_err(StoreError::backend)?;
            let existing = meta
                .get("epoch")
                .map_err(StoreError::backend)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            let epoch = match existing {
                Some(epoch) => epoch,
                None => {
                    let epoch = crate::protocol::random_hex(16)
                        .map_err(|e| StoreError::Backend(format!("no randomness: {e}")))?;
                    meta.insert("epoch", epoch.as_bytes())
                        .map_err(StoreError::backend)?;
                    meta.insert("next_seq", 1u64.to_be_bytes().as_slice())
                        .map_err(StoreError::backend)?;
                    epoch
                }
            };
            // Create every table so that readers never meet a missing one.
            let changes = txn.open_table(CHANGES).map_err(StoreError::backend)?;
            txn.open_table(ENVELOPE_INDEX)
                .map_err(StoreError::backend)?;
            txn.open_table(TOMBSTONES).map_err(StoreError::backend)?;
            txn.open_table(EXPIRY).map_err(StoreError::backend)?;
            let parked = txn.open_table(PARKED).map_err(StoreError::backend)?;
            txn.open_table(NONCES).map_err(StoreError::backend)?;
            // Stores written before the byte count existed get it counted once.
            if meta
                .get("stored_bytes")
                .map_err(StoreError::backend)?
                .is_none()
            {
                let mut stored = 0u64;
                for item in changes.iter().map_err(StoreError::backend)? {
                    let (_, record) = item.map_err(StoreError::backend)?;
                    stored += record.value().len() as u64;
                }
                for item in parked.iter().map_err(StoreError::backend)? {
                    let (_, record) = item.map_err(StoreError::backend)?;
                    stored += record.value().len() as u64;
                }
                meta.insert("stored_bytes", stored.to_be_bytes().as_slice())
                    .map_err(StoreError::backend)?;
            }
            epoch
        };
        txn.commit().map_err(StoreError::backend)?;
        let txn = db.begin_read().map_err(StoreError::backend)?;
        let meta = txn.open_table(META).map_err(StoreError::backend)?;
        let counter = |key: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(key)
                .map_err(StoreError::backend)?
                .map(|v| read_u64(v.value()))
                .transpose()?
                .unwrap_or(0))
        };
        Ok(Prepared {
            epoch,
            pending: counter("pending_count")?,
            stored: counter("stored_bytes")?,
        })
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = guard.as_ref().ok_or_else(reopening)?;
        db.begin_read().map_err(StoreError::backend)
    }

    /// Live state of every mailbox whose key starts with `prefix` (all of them for `&[]`).
    fn read_state(&self, prefix: &[u8], now: u64) -> Result<Recovered, StoreError> {
        let txn = self.begin_read()?;
        let mut state = Recovered::default();
        let end = prefix_end(prefix);
        let range = (
            Bound::Included(prefix),
            end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        );
        let index = txn
            .open_table(ENVELOPE_INDEX)
            .map_err(StoreError::backend)?;
        let changes = txn.open_table(CHANGES).map_err(StoreError::backend)?;
        for item in index.range::<&[u8]>(range).map_err(StoreError::backend)? {
            let (_, seq) = item.map_err(StoreError::backend)?;
            let record = changes.get(seq.value()).map_err(StoreError::backend)?;
            if let Some(envelope) = record.map(|r| live_envelope(r.value(), now)).transpose()? {
                let seq = seq.value();
                state
                    .envelopes
                    .extend(envelope.map(|envelope| (seq, envelope)));
            }
        }
        let parked = txn.open_table(PARKED).map_err(StoreError::backend)?;
        for item in parked.range::<&[u8]>(range).map_err(StoreError::backend)? {
            let (_, json) = item.map_err(StoreError::backend)?;
            state.parked.extend(live_parked(json.value(), now)?);
        }
        let nonces = txn.open_table(NONCES).map_err(StoreError::backend)?;
        for item in nonces.range::<&[u8]>(range).map_err(StoreError::backend)? {
            let (key, until) = item.map_err(StoreError::backend)?;
            state
                .nonces
                .extend(live_nonce(key.value(), until.value(), now));
        }
        let tombstones = txn.open_table(TOMBSTONES).map_err(StoreError::backend)?;
        for item in tombstones
            .range::<&[u8]>(range)
            .map_err(StoreError::backend)?
        {
            let (key, until) = item.map_err(StoreError::backend)?;
            state
                .tombstones
                .extend(live_tombstone(key.value(), until.value(), now)?);
        }
        Ok(state)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = guard.as_ref().ok_or_else(reopening)?;
            db.begin_write().map_err(StoreError::backend)?
        };
        let durability = if self.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(StoreError::backend)?;
        Ok(txn)
    }
}

/// The tables of one write transaction, opened once per commit.
struct WriteTables<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    changes: redb::Table<'t, u64, &'static [u8]>,
    index: redb::Table<'t, &'static [u8], u64>,
    tombstones: redb::Table<'t, &'static [u8], u64>,
    expiry: redb::Table<'t, &'static [u8], ()>,
    parked: redb::Table<'t, &'static [u8], &'static [u8]>,
    nonces: redb::Table<'t, &'static [u8], u64>,
    /// Change of the number of pending envelopes in this transaction.
    pending_delta: i64,
    /// Change of the bytes of change and parked records in this transaction.
    bytes_delta: i64,
}

impl<'t> WriteTables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            meta: txn.open_table(META).map_err(StoreError::backend)?,
            changes: txn.open_table(CHANGES).map_err(StoreError::backend)?,
            index: txn
                .open_table(ENVELOPE_INDEX)
                .map_err(StoreError::backend)?,
            tombstones: txn.open_table(TOMBSTONES).map_err(StoreError::backend)?,
            expiry: txn.open_table(EXPIRY).map_err(StoreError::backend)?,
            parked: txn.open_table(PARKED).map_err(StoreError::backend)?,
            nonces: txn.open_table(NONCES).map_err(StoreError::backend)?,
            pending_delta: 0,
            bytes_delta: 0,
        })
    }

    fn put_envelope(
        &mut self,
        seq: u64,
        envelope: &Envelope,
        json: &[u8],
        from_client: bool,
    ) -> Result<(), StoreError> {
        // An id can be stored again once its earlier envelope expired (and its tombstone, if
        // any): the earlier record goes first.
        self.remove_envelope(&envelope.mailbox, &envelope.msg_id)?;
        self.pending_delta += 1;
        let key = envelope_key(&envelope.mailbox, &envelope.msg_id);
        let record = change_record(envelope.expires_at, change_kind(true, from_client), json);
        self.bytes_delta += record.len() as i64;
        self.changes
            .insert(seq, record.as_slice())
            .map_err(StoreError::backend)?;
        self.index
            .insert(key.as_slice(), seq)
            .map_err(StoreError::backend)?;
        // A parked replica that is now accepted is parked no more.
        self.unpark(&key)?;
        let expiry = expiry_key(
            envelope.expires_at,
            EXPIRY_CHANGE,
            &[&seq.to_be_bytes(), &key],
        );
        self.expiry
            .insert(expiry.as_slice(), ())
            .map_err(StoreError::backend)?;
        Ok(())
    }

    fn park(&mut self, envelope: &Envelope) -> Result<(), StoreError> {
        let json = serde_json::to_vec(envelope).map_err(StoreError::backend)?;
        let key = envelope_key(&envelope.mailbox, &envelope.msg_id);
        self.unpark(&key)?;
        self.bytes_delta += json.len() as i64;
        self.parked
            .insert(key.as_slice(), json.as_slice())
            .map_err(StoreError::backend)?;
        let expiry = expiry_key(envelope.expires_at, EXPIRY_PARKED, &[&key]);
        self.expiry
            .insert(expiry.as_slice(), ())
            .map_err(StoreError::backend)?;
        Ok(())
    }

    /// Drops the parked replica under `key`, if any.
    fn unpark(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let removed = self
            .parked
            .remove(key)
            .map_err(StoreError::backend)?
            .map(|v| v.value().len());
        if let Some(len) = removed {
            self.bytes_delta -= len as i64;
        }
        Ok(())
    }

    fn remove_envelope(&mut self, mailbox: &MailboxKey, msg_id: &MsgId) -> Result<(), StoreError> {
        let key = envelope_key(mailbox, msg_id);
        let Some(seq) = self
            .index
            .remove(key.as_slice())
            .map_err(StoreError::backend)?
            .map(|v| v.value())
        else {
            return Ok(());
        };
        let record = self
            .changes
            .remove(seq)
            .map_err(StoreError::backend)?
            .map(|v| v.value().to_vec());
        if let Some(record) = record {
            self.pending_delta -= 1;
            self.bytes_delta -= record.len() as i64;
            let (until, _, _) = parse_change_record(&record)?;
            let expiry = expiry_key(until, EXPIRY_CHANGE, &[&seq.to_be_bytes(), &key]);
            self.expiry
                .remove(expiry.as_slice())
                .map_err(StoreError::backend)?;
        }
        Ok(())
    }

    fn put_tombstone(
        &mut self,
        mailbox: &MailboxKey,
        msg_id: &MsgId,
        until: u64,
    ) -> Result<(), StoreError> {
        let key = envelope_key(mailbox, msg_id);
        let old = self
            .tombstones
            .get(key.as_slice())
            .map_err(StoreError::backend)?
            .map(|v| v.value());
        if let Some(old) = old {
            if old >= until {
                return Ok(());
            }
            let stale = expiry_key(old, EXPIRY_TOMBSTONE, &[&key]);
            self.expiry
                .remove(stale.as_slice())
                .map_err(StoreError::backend)?;
        }
        self.tombstones
            .insert(key.as_slice(), until)
            .map_err(StoreError::backend)?;
        let expiry = expiry_key(until, EXPIRY_TOMBSTONE, &[&key]);
        self.expiry
            .insert(expiry.as_slice(), ())
            .map_err(StoreError::backend)?;
        Ok(())
    }

    fn apply_ack(
        &mut self,
        seq: u64,
        ack: &AckObject,
        removed: &[MsgId],
        tombstones: &[(MsgId, u64)],
        live_until: u64,
        from_client: bool,
    ) -> Result<(), StoreError> {
        for msg_id in removed {
            self.remove_envelope(&ack.mailbox, msg_id)?;
        }
        for (msg_id, until) in tombstones {
            self.put_tombstone(&ack.mailbox, msg_id, *until)?;
        }
        let json = serde_json::to_vec(ack).map_err(StoreError::backend)?;
        let record = change_record(live_until, change_kind(false, from_client), &json);
        self.bytes_delta += record.len() as i64;
        self.changes
            .insert(seq, record.as_slice())
            .map_err(StoreError::backend)?;
        let expiry = expiry_key(live_until, EXPIRY_CHANGE, &[&seq.to_be_bytes()]);
        self.expiry
            .insert(expiry.as_slice(), ())
            .map_err(StoreError::backend)?;
        Ok(())
    }

    /// Applies this transaction's stored-bytes delta to `meta/stored_bytes`; returns the total.
    fn save_stored_bytes(&mut self) -> Result<u64, StoreError> {
        let delta = std::mem::take(&mut self.bytes_delta);
        self.add_to_counter("stored_bytes", delta)
    }

    /// Applies this transaction's pending delta to `meta/pending_count`; returns the new count.
    fn save_pending_count(&mut self) -> Result<u64, StoreError> {
        let delta = std::mem::take(&mut self.pending_delta);
        self.add_to_counter("pending_count", delta)
    }

    /// Adds `delta` to the big-endian counter `meta/{key}` (absent: 0); returns the new value.
    fn add_to_counter(&mut self, key: &str, delta: i64) -> Result<u64, StoreError> {
        let current = self
            .meta
            .get(key)
            .map_err(StoreError::backend)?
            .map(|v| read_u64(v.value()))
            .transpose()?
            .unwrap_or(0);
        let updated = current.saturating_add_signed(delta);
        self.meta
            .insert(key, updated.to_be_bytes().as_slice())
            .map_err(StoreError::backend)?;
        Ok(updated)
    }

    /// Drops one expired record named by an expiry key.
    fn drop_expired(&mut self, expiry: &[u8]) -> Result<(), StoreError> {
        let (head, payload) = expiry
            .split_at_checked(9)
            .ok_or_else(|| StoreError::Corrupt("short expiry key".into()))?;
        let until = read_u64(&head[..8])?;
        match head[8] {
            EXPIRY_CHANGE => {
                let (seq, key) = payload
                    .split_at_checked(8)
                    .ok_or_else(|| StoreError::Corrupt("short expiry payload".into()))?;
                let seq = read_u64(seq)?;
                let removed_len = self
                    .changes
                    .remove(seq)
                    .map_err(StoreError::backend)?
                    .map(|v| v.value().len());
                if let Some(len) = removed_len {
                    self.bytes_delta -= len as i64;
                }
                let removed = removed_len.is_some();
                if !key.is_empty() {
                    if removed {
                        self.pending_delta -= 1;
                    }
                    let current = self
                        .index
                        .get(key)
                        .map_err(StoreError::backend)?
                        .map(|v| v.value());
                    if current == Some(seq) {
                        self.index.remove(key).map_err(StoreError::backend)?;
                    }
                }
            }
            EXPIRY_TOMBSTONE => {
                let current = self
                    .tombstones
                    .get(payload)
                    .map_err(StoreError::backend)?
                    .map(|v| v.value());
                if current == Some(until) {
                    self.tombstones
                        .remove(payload)
                        .map_err(StoreError::backend)?;
                }
            }
            EXPIRY_PARKED => {
                self.unpark(payload)?;
            }
            EXPIRY_NONCE => {
                self.nonces.remove(payload).map_err(StoreError::backend)?;
            }
            other => {
                return Err(StoreError::Corrupt(format!("unknown expiry kind {other}")));
            }
        }
        self.expiry.remove(expiry).map_err(StoreError::backend)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn commit(&self, ops: &[StoreOp]) -> Result<u64, StoreError> {
        let txn = self.begin_write()?;
        let (pending, stored, last_seq);
        {
            let mut tables = WriteTables::open(&txn)?;
            let mut next_seq = tables
                .meta
                .get("next_seq")
                .map_err(StoreError::backend)?
                .map(|v| read_u64(v.value()))
                .transpose()?
                .unwrap_or(1);
            for op in ops {
                match op {
                    StoreOp::PutEnvelope {
                        envelope,
                        json,
                        from_client,
                    } => {
                        tables.put_envelope(next_seq, envelope, json, *from_client)?;
                        next_seq += 1;
                    }
                    StoreOp::ApplyAck {
                        ack,
                        removed,
                        tombstones,
                        live_until,
                        from_client,
                    } => {
                        tables.apply_ack(
                            next_seq,
                            ack,
                            removed,
                            tombstones,
                            *live_until,
                            *from_client,
                        )?;
                        next_seq += 1;
                    }
                    StoreOp::Park(envelope) => {
                        tables.park(envelope)?;
                    }
                    StoreOp::Unpark { mailbox, msg_id } => {
                        let key = envelope_key(mailbox, msg_id);
                        tables.unpark(&key)?;
                    }
                    StoreOp::PutNonce {
                        mailbox,
                        nonce,
                        until,
                    } => {
                        let key = nonce_key(mailbox, nonce);
                        tables
                            .nonces
                            .insert(key.as_slice(), *until)
                            .map_err(StoreError::backend)?;
                        let expiry = expiry_key(*until, EXPIRY_NONCE, &[&key]);
                        tables
                            .expiry
                            .insert(expiry.as_slice(), ())
                            .map_err(StoreError::backend)?;
                    }
                    StoreOp::PutMeta { key, value } => {
                        tables
                            .meta
                            .insert(key.as_str(), value.as_slice())
                            .map_err(StoreError::backend)?;
                    }
                }
            }
            tables
                .meta
                .insert("next_seq", next_seq.to_be_bytes().as_slice())
                .map_err(StoreError::backend)?;
            last_seq = next_seq - 1;
            pending = tables.save_pending_count()?;
            stored = tables.save_stored_bytes()?;
        }
        txn.commit().map_err(StoreError::backend)?;
        self.pending.store(pending, Ordering::Relaxed);
        self.stored.store(stored, Ordering::Relaxed);
        Ok(last_seq)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(StoreError::backend)?;
        let next = meta
            .get("next_seq")
            .map_err(StoreError::backend)?
            .map(|v| read_u64(v.value()))
            .transpose()?
            .unwrap_or(1);
        Ok(next.saturating_sub(1))
    }

    fn collect_garbage(&self, now: u64) -> Result<usize, StoreError> {
        let txn = self.begin_write()?;
        let mut dropped = 0;
        let (pending, stored);
        {
            let mut tables = WriteTables::open(&txn)?;
            // Everything with until <= now: keys below (now + 1) in big-endian order.
            let end = now.saturating_add(1).to_be_bytes();
            let due: Vec<Vec<u8>> = tables
                .expiry
                .range::<&[u8]>(..end.as_slice())
                .map_err(StoreError::backend)?
                .take(GC_BATCH_RECORDS)
                .map(|item| item.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(StoreError::backend)?;
            if due.is_empty() {
                // Nothing to drop: no commit, no fsync.
                drop(tables);
                txn.abort().map_err(StoreError::backend)?;
                return Ok(0);
            }
            for key in &due {
                tables.drop_expired(key)?;
                dropped += 1;
            }
            pending = tables.save_pending_count()?;
            stored = tables.save_stored_bytes()?;
        }
        txn.commit().map_err(StoreError::backend)?;
        self.pending.store(pending, Ordering::Relaxed);
        self.stored.store(stored, Ordering::Relaxed);
        Ok(dropped)
    }

    fn recover(&self, now: u64) -> Result<Recovered, StoreError> {
        self.read_state(&[], now)
    }

    fn load_mailbox(&self, mailbox: &MailboxKey, now: u64) -> Result<Recovered, StoreError> {
        self.read_state(mailbox.as_bytes(), now)
    }

    fn pending_count(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            // Nothing to reopen in RAM (closing would lose everything): a write transaction
            // tells whether the database takes writes again.
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = guard.as_ref().ok_or_else(reopening)?;
            return Self::prepare(db).map(|_| ());
        };
        let old = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old
            && let Err(err) = old.close()
        {
            tracing::warn!(%err, "closing the store after a storage error failed");
        }
        let db = open_file(path, self.cache_bytes)?;
        let prepared = Self::prepare(&db)?;
        if prepared.epoch != self.epoch {
            return Err(StoreError::Corrupt(format!(
                "{} has another epoch after reopening ({} instead of {})",
                path.display(),
                prepared.epoch,
                self.epoch
            )));
        }
        self.pending.store(prepared.pending, Ordering::Relaxed);
        self.stored.store(prepared.stored, Ordering::Relaxed);
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        let db = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match db {
            Some(db) => db.close().map_err(StoreError::backend),
            None => Ok(()),
        }
    }

    fn data_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    fn parked_mailboxes(&self) -> Result<Vec<MailboxKey>, StoreError> {
        let txn = self.begin_read()?;
        let parked = txn.open_table(PARKED).map_err(StoreError::backend)?;
        let mut mailboxes: Vec<MailboxKey> = Vec::new();
        for item in parked.iter().map_err(StoreError::backend)? {
            let (key, _) = item.map_err(StoreError::backend)?;
            let (mailbox, _) = split_envelope_key(key.value())?;
            if mailboxes.last() != Some(&mailbox) {
                mailboxes.push(mailbox);
            }
        }
        Ok(mailboxes)
    }

    fn read_log_until(
        &self,
        since: u64,
        until: u64,
        limit: usize,
        now: u64,
        filter: LogFilter,
    ) -> Result<FeedPage, StoreError> {
        let txn = self.begin_read()?;
        let changes = txn.open_table(CHANGES).map_err(StoreError::backend)?;
        let mut page = LogPage::new(since, limit, now, filter);
        if until <= since {
            return Ok(page.finish());
        }
        for item in changes
            .range(since.saturating_add(1)..=until)
            .map_err(StoreError::backend)?
        {
            let (seq, record) = item.map_err(StoreError::backend)?;
            if !page.take(seq.value(), record.value())? {
                break;
            }
        }
        Ok(page.finish())
    }

    fn envelope_json(
        &self,
        mailbox: &MailboxKey,
        ids: Vec<MsgId>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.begin_read()?;
        let index = txn
            .open_table(ENVELOPE_INDEX)
            .map_err(StoreError::backend)?;
        let changes = txn.open_table(CHANGES).map_err(StoreError::backend)?;
        ids.iter()
            .map(|msg_id| {
                let key = envelope_key(mailbox, msg_id);
                let Some(seq) = index.get(key.as_slice()).map_err(StoreError::backend)? else {
                    return Ok(None);
                };
                let Some(record) = changes.get(seq.value()).map_err(StoreError::backend)? else {
                    return Ok(None);
                };
                let (_, _, json) = parse_change_record(record.value())?;
                Ok(Some(json.to_vec()))
            })
            .collect()
    }

    fn change_json(&self, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.begin_read()?;
        let changes = txn.open_table(CHANGES).map_err(StoreError::backend)?;
        seqs.iter()
            .map(
                |&seq| match changes.get(seq).map_err(StoreError::backend)? {
                    Some(record) => envelope_change_json(record.value()),
                    None => Ok(None),
                },
            )
            .collect()
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(StoreError::backend)?;
        Ok(meta
            .get(key)
            .map_err(StoreError::backend)?
            .map(|v| v.value().to_vec()))
    }
}
