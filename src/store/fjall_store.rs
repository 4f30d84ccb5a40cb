//! The [`Store`] on fjall, an LSM tree: the default store of a node that fsyncs.
//!
//! It holds the same tables as [`super::redb_store`] (one fjall keyspace each) with the same
//! keys and records ([`super::records`]); integers are stored big-endian. Why a second engine:
//! under the node's write pattern a redb commit copies every B-tree page it touches (a deposit's
//! random-keyed index entry alone dirties a 4 KiB page, an ack five), while fjall appends the
//! batch to its journal, fsyncs once and inserts into memtables; flushing and compaction run on
//! fjall's own threads. BENCHMARKS.md has the figures.
//!
//! One commit is one fjall write batch (atomic across keyspaces, fsynced before
//! [`Store::commit`] returns). A batch cannot read its own writes and must not name a key twice,
//! so a commit collects its writes in an `Overlay` (last write per key wins, reads look there
//! first) and hands fjall only the final value of each key. The counters (next seq, pending
//! envelopes, stored bytes) live in memory, are written into every batch, and are read back
//! on open. Only the writer thread commits, so nothing else races these read-modify-writes.
//!
//! Readers other than the writer read through a snapshot (`Database::snapshot`), which fjall
//! moves past a batch only once all of it is in; a plain keyspace read would see a commit half
//! applied (`readers_see_whole_commits_only` in the contract tests).
//!
//! After a failed write fjall poisons the database: [`Store::reopen`] drops every handle and
//! opens the directory again, which replays the journal up to its last whole batch.

use super::records::{
    EXPIRY_CHANGE, EXPIRY_NONCE, EXPIRY_PARKED, EXPIRY_TOMBSTONE, GC_BATCH_RECORDS, LogPage,
    change_kind, change_record, envelope_change_json, envelope_key, expiry_key, live_envelope,
    live_nonce, live_parked, live_tombstone, nonce_key, parse_change_record, prefix_end, read_u64,
    split_envelope_key,
};
use super::{FeedPage, LogFilter, Recovered, Store, StoreError, StoreOp};
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

/// The directory (inside `MESH_DM_DATA_DIR`) that holds the fjall database.
pub const DATABASE_DIR: &str = "fjall";

/// Largest memtable of the change log before fjall flushes it to a table file. Bounds the
/// memory the store holds beyond its block cache (fjall's default is 64 MiB per keyspace).
const CHANGES_MEMTABLE_BYTES: u64 = 8 << 20;
/// The same for the other keyspaces, whose records are small (keys, seqs, times).
const SMALL_MEMTABLE_BYTES: u64 = 1 << 20;
/// Most bytes of journal kept before memtables are flushed: bounds what a restart after
/// `kill -9` replays.
const JOURNAL_BYTES: u64 = 64 << 20;

/// The keyspaces, in the order of [`Open::keyspaces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Meta,
    Changes,
    Index,
    Tombstones,
    Expiry,
    Parked,
    Nonces,
}

impl Table {
    const ALL: [Table; 7] = [
        Table::Meta,
        Table::Changes,
        Table::Index,
        Table::Tombstones,
        Table::Expiry,
        Table::Parked,
        Table::Nonces,
    ];

    /// The keyspace's name: the same as redb's table.
    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Changes => "changes",
            Table::Index => "envelope_index",
            Table::Tombstones => "tombstones",
            Table::Expiry => "expiry",
            Table::Parked => "parked",
            Table::Nonces => "nonces",
        }
    }
}

/// An open database and its keyspaces (dropping it closes the database).
struct Open {
    db: Database,
    keyspaces: [Keyspace; 7],
}

impl Open {
    fn keyspace(&self, table: Table) -> &Keyspace {
        &self.keyspaces[table as usize]
    }
}

/// The counters kept in memory and written with every batch.
#[derive(Debug, Clone, Copy)]
struct Counters {
    next_seq: u64,
    pending: u64,
    stored: u64,
}

pub struct FjallStore {
    /// `None` only while [`Store::reopen`] is between closing and opening, or after
    /// [`Store::close`].
    open: RwLock<Option<Open>>,
    dir: PathBuf,
    data_dir: PathBuf,
    cache_bytes: u64,
    epoch: String,
    next_seq: AtomicU64,
    pending: AtomicU64,
    stored: AtomicU64,
}

fn backend(err: fjall::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn reopening() -> StoreError {
    StoreError::Backend("the store is being reopened after a storage error".into())
}

fn open_dir(dir: &Path, cache_bytes: u64) -> Result<Open, StoreError> {
    let db = Database::builder(dir)
        .cache_size(cache_bytes)
        .max_journaling_size(JOURNAL_BYTES)
        .open()
        .map_err(|err| match err {
            fjall::Error::Locked => StoreError::Backend(format!(
                "{} is in use by another process (another node on the same MESH_DM_DATA_DIR?)",
                dir.display()
            )),
            other => StoreError::Backend(format!("cannot open {}: {other}", dir.display())),
        })?;
    let mut keyspaces = Vec::with_capacity(Table::ALL.len());
    for table in Table::ALL {
        keyspaces.push(
            db.keyspace(table.name(), || {
                KeyspaceCreateOptions::default().max_memtable_size(match table {
                    Table::Changes => CHANGES_MEMTABLE_BYTES,
                    _ => SMALL_MEMTABLE_BYTES,
                })
            })
            .map_err(backend)?,
        );
    }
    let keyspaces: [Keyspace; 7] = keyspaces
        .try_into()
        .map_err(|_| StoreError::Backend("keyspace count".into()))?;
    Ok(Open { db, keyspaces })
}

/// The counter `key` of `meta` (absent: `default`).
fn meta_counter(open: &Open, key: &str, default: u64) -> Result<u64, StoreError> {
    open.keyspace(Table::Meta)
        .get(key)
        .map_err(backend)?
        .map(|v| read_u64(&v))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// Creates what a new store needs (the epoch) with one durable batch — which also proves that
/// the database takes writes — and reads back the epoch and the counters.
fn prepare(open: &Open) -> Result<(String, Counters), StoreError> {
    let meta = open.keyspace(Table::Meta);
    let epoch = match meta.get("epoch").map_err(backend)? {
        Some(epoch) => String::from_utf8_lossy(&epoch).into_owned(),
        None => crate::protocol::random_hex(16)
            .map_err(|e| StoreError::Backend(format!("no randomness: {e}")))?,
    };
    let mut batch = open.db.batch().durability(Some(PersistMode::SyncData));
    batch.insert(meta, "epoch", epoch.as_bytes());
    batch.commit().map_err(backend)?;
    let counters = Counters {
        next_seq: meta_counter(open, "next_seq", 1)?,
        pending: meta_counter(open, "pending_count", 0)?,
        stored: meta_counter(open, "stored_bytes", 0)?,
    };
    Ok((epoch, counters))
}

/// The writes of one commit, last write per key: what fjall gets at the end, and what the
/// commit's own reads see first.
struct Overlay<'o> {
    open: &'o Open,
    /// One map per table (in [`Table::ALL`] order), so that a lookup borrows the key instead
    /// of copying it.
    writes: [HashMap<Vec<u8>, Option<Vec<u8>>>; 7],
    counters: Counters,
}

impl<'o> Overlay<'o> {
    fn new(open: &'o Open, counters: Counters) -> Self {
        Self {
            open,
            writes: Default::default(),
            counters,
        }
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.writes[table as usize].get(key) {
            return Ok(value.clone());
        }
        Ok(self
            .open
            .keyspace(table)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn get_u64(&self, table: Table, key: &[u8]) -> Result<Option<u64>, StoreError> {
        self.get(table, key)?.map(|v| read_u64(&v)).transpose()
    }

    fn insert(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes[table as usize].insert(key, Some(value));
    }

    /// Removes `key`, which the caller knows is there (or does not mind writing a tombstone
    /// for), without reading it first: a point read in the writer costs more than the delete.
    fn delete(&mut self, table: Table, key: &[u8]) {
        self.writes[table as usize].insert(key.to_vec(), None);
    }

    /// Removes `key`; returns what it held.
    fn remove(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.get(table, key)?;
        if old.is_some() {
            self.writes[table as usize].insert(key.to_vec(), None);
        }
        Ok(old)
    }

    fn put_envelope(
        &mut self,
        envelope: &Envelope,
        json: &[u8],
        from_client: bool,
    ) -> Result<(), StoreError> {
        // An id can be stored again once its earlier envelope expired (and its tombstone, if
        // any): the earlier record goes first.
        self.remove_envelope(&envelope.mailbox, &envelope.msg_id)?;
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        self.counters.pending += 1;
        let key = envelope_key(&envelope.mailbox, &envelope.msg_id);
        let record = change_record(envelope.expires_at, change_kind(true, from_client), json);
        self.counters.stored += record.len() as u64;
        self.insert(Table::Changes, seq.to_be_bytes().to_vec(), record);
        self.insert(Table::Index, key.clone(), seq.to_be_bytes().to_vec());
        // A parked replica that is now accepted is parked no more.
        self.unpark(&key)?;
        let expiry = expiry_key(
            envelope.expires_at,
            EXPIRY_CHANGE,
            &[&seq.to_be_bytes(), &key],
        );
        self.insert(Table::Expiry, expiry, Vec::new());
        Ok(())
    }

    fn park(&mut self, envelope: &Envelope) -> Result<(), StoreError> {
        let json = serde_json::to_vec(envelope).map_err(StoreError::backend)?;
        let key = envelope_key(&envelope.mailbox, &envelope.msg_id);
        self.unpark(&key)?;
        self.counters.stored += json.len() as u64;
        let expiry = expiry_key(envelope.expires_at, EXPIRY_PARKED, &[&key]);
        self.insert(Table::Parked, key, json);
        self.insert(Table::Expiry, expiry, Vec::new());
        Ok(())
    }

    /// Drops the parked replica under `key`, if any.
    fn unpark(&mut self, key: &[u8]) -> Result<(), StoreError> {
        if let Some(old) = self.remove(Table::Parked, key)? {
            self.counters.stored = self.counters.stored.saturating_sub(old.len() as u64);
        }
        Ok(())
    }

    fn remove_envelope(&mut self, mailbox: &MailboxKey, msg_id: &MsgId) -> Result<(), StoreError> {
        let key = envelope_key(mailbox, msg_id);
        let Some(seq) = self.remove(Table::Index, &key)? else {
            return Ok(());
        };
        let seq = read_u64(&seq)?;
        if let Some(record) = self.remove(Table::Changes, &seq.to_be_bytes())? {
            self.counters.pending = self.counters.pending.saturating_sub(1);
            self.counters.stored = self.counters.stored.saturating_sub(record.len() as u64);
            let (until, _, _) = parse_change_record(&record)?;
            let expiry = expiry_key(until, EXPIRY_CHANGE, &[&seq.to_be_bytes(), &key]);
            self.delete(Table::Expiry, &expiry);
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
        if let Some(old) = self.get_u64(Table::Tombstones, &key)? {
            if old >= until {
                return Ok(());
            }
            let stale = expiry_key(old, EXPIRY_TOMBSTONE, &[&key]);
            self.delete(Table::Expiry, &stale);
        }
        let expiry = expiry_key(until, EXPIRY_TOMBSTONE, &[&key]);
        self.insert(Table::Tombstones, key, until.to_be_bytes().to_vec());
        self.insert(Table::Expiry, expiry, Vec::new());
        Ok(())
    }

    fn apply_ack(
        &mut self,
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
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        let json = serde_json::to_vec(ack).map_err(StoreError::backend)?;
        let record = change_record(live_until, change_kind(false, from_client), &json);
        self.counters.stored += record.len() as u64;
        self.insert(Table::Changes, seq.to_be_bytes().to_vec(), record);
        let expiry = expiry_key(live_until, EXPIRY_CHANGE, &[&seq.to_be_bytes()]);
        self.insert(Table::Expiry, expiry, Vec::new());
        Ok(())
    }

    /// Drops one expired record named by an expiry key.
    fn drop_expired(&mut self, expiry: &[u8]) -> Result<(), StoreError> {
        let (head, payload) = expiry
            .split_at_checked(9)
            .ok_or_else(|| StoreError::Corrupt("short expiry key".into()))?;
        let until = read_u64(&head[..8])?;
        match head[8] {
            EXPIRY_CHANGE => {
                let (seq_bytes, key) = payload
                    .split_at_checked(8)
                    .ok_or_else(|| StoreError::Corrupt("short expiry payload".into()))?;
                let seq = read_u64(seq_bytes)?;
                let removed = self.remove(Table::Changes, seq_bytes)?;
                if let Some(record) = &removed {
                    self.counters.stored = self.counters.stored.saturating_sub(record.len() as u64);
                }
                if !key.is_empty() {
                    if removed.is_some() {
                        self.counters.pending = self.counters.pending.saturating_sub(1);
                    }
                    if self.get_u64(Table::Index, key)? == Some(seq) {
                        self.delete(Table::Index, key);
                    }
                }
            }
            EXPIRY_TOMBSTONE => {
                if self.get_u64(Table::Tombstones, payload)? == Some(until) {
                    self.delete(Table::Tombstones, payload);
                }
            }
            EXPIRY_PARKED => self.unpark(payload)?,
            EXPIRY_NONCE => self.delete(Table::Nonces, payload),
            other => {
                return Err(StoreError::Corrupt(format!("unknown expiry kind {other}")));
            }
        }
        self.delete(Table::Expiry, expiry);
        Ok(())
    }

    /// Writes everything as one durable batch; returns the counters it leaves.
    fn commit(mut self) -> Result<Counters, StoreError> {
        let counters = self.counters;
        self.insert(
            Table::Meta,
            b"next_seq".to_vec(),
            counters.next_seq.to_be_bytes().to_vec(),
        );
        self.insert(
            Table::Meta,
            b"pending_count".to_vec(),
            counters.pending.to_be_bytes().to_vec(),
        );
        self.insert(
            Table::Meta,
            b"stored_bytes".to_vec(),
            counters.stored.to_be_bytes().to_vec(),
        );
        let mut batch = self.open.db.batch().durability(Some(PersistMode::SyncData));
        for (table, writes) in Table::ALL.into_iter().zip(self.writes) {
            let keyspace = self.open.keyspace(table);
            for (key, value) in writes {
                match value {
                    Some(value) => batch.insert(keyspace, key, value),
                    None => batch.remove(keyspace, key),
                }
            }
        }
        batch.commit().map_err(backend)?;
        Ok(counters)
    }
}

/// The bounds of every key that starts with `prefix`.
fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (
        Bound::Included(prefix.to_vec()),
        prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl FjallStore {
    /// Opens (or creates) the database in `data_dir/fjall` with a block cache of `cache_bytes`.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let dir = data_dir.join(DATABASE_DIR);
        let cache_bytes = cache_bytes as u64;
        let open = open_dir(&dir, cache_bytes)?;
        let (epoch, counters) = prepare(&open)?;
        Ok(Self {
            open: RwLock::new(Some(open)),
            dir,
            data_dir: data_dir.to_path_buf(),
            cache_bytes,
            epoch,
            next_seq: AtomicU64::new(counters.next_seq),
            pending: AtomicU64::new(counters.pending),
            stored: AtomicU64::new(counters.stored),
        })
    }

    fn counters(&self) -> Counters {
        Counters {
            next_seq: self.next_seq.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
        }
    }

    fn set_counters(&self, counters: Counters) {
        self.next_seq.store(counters.next_seq, Ordering::Relaxed);
        self.pending.store(counters.pending, Ordering::Relaxed);
        self.stored.store(counters.stored, Ordering::Relaxed);
    }

    /// Runs `read` on the open database (an error while it is being reopened).
    fn with_open<T>(
        &self,
        read: impl FnOnce(&Open) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.open.read().unwrap_or_else(PoisonError::into_inner);
        read(guard.as_ref().ok_or_else(reopening)?)
    }

    /// Live state of every mailbox whose key starts with `prefix` (all of them for `&[]`).
    fn read_state(&self, prefix: &[u8], now: u64) -> Result<Recovered, StoreError> {
        self.with_open(|open| {
            let snapshot = open.db.snapshot();
            let mut state = Recovered::default();
            let range = prefix_range(prefix);
            for item in snapshot.range(open.keyspace(Table::Index), range.clone()) {
                let (_, seq) = item.into_inner().map_err(backend)?;
                let record = snapshot
                    .get(open.keyspace(Table::Changes), &*seq)
                    .map_err(backend)?;
                if let Some(envelope) = record.map(|r| live_envelope(&r, now)).transpose()? {
                    let seq = read_u64(&seq)?;
                    state
                        .envelopes
                        .extend(envelope.map(|envelope| (seq, envelope)));
                }
            }
            for item in snapshot.range(open.keyspace(Table::Parked), range.clone()) {
                let (_, json) = item.into_inner().map_err(backend)?;
                state.parked.extend(live_parked(&json, now)?);
            }
            for item in snapshot.range(open.keyspace(Table::Nonces), range.clone()) {
                let (key, until) = item.into_inner().map_err(backend)?;
                state
                    .nonces
                    .extend(live_nonce(&key, read_u64(&until)?, now));
            }
            for item in snapshot.range(open.keyspace(Table::Tombstones), range) {
                let (key, until) = item.into_inner().map_err(backend)?;
                state
                    .tombstones
                    .extend(live_tombstone(&key, read_u64(&until)?, now)?);
            }
            Ok(state)
        })
    }
}

impl Store for FjallStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn commit(&self, ops: &[StoreOp]) -> Result<u64, StoreError> {
        let counters = self.with_open(|open| {
            let mut overlay = Overlay::new(open, self.counters());
            for op in ops {
                match op {
                    StoreOp::PutEnvelope {
                        envelope,
                        json,
                        from_client,
                    } => overlay.put_envelope(envelope, json, *from_client)?,
                    StoreOp::ApplyAck {
                        ack,
                        removed,
                        tombstones,
                        live_until,
                        from_client,
                    } => overlay.apply_ack(ack, removed, tombstones, *live_until, *from_client)?,
                    StoreOp::Park(envelope) => overlay.park(envelope)?,
                    StoreOp::Unpark { mailbox, msg_id } => {
                        overlay.unpark(&envelope_key(mailbox, msg_id))?;
                    }
                    StoreOp::PutNonce {
                        mailbox,
                        nonce,
                        until,
                    } => {
                        let key = nonce_key(mailbox, nonce);
                        let expiry = expiry_key(*until, EXPIRY_NONCE, &[&key]);
                        overlay.insert(Table::Nonces, key, until.to_be_bytes().to_vec());
                        overlay.insert(Table::Expiry, expiry, Vec::new());
                    }
                    StoreOp::PutMeta { key, value } => {
                        overlay.insert(Table::Meta, key.as_bytes().to_vec(), value.clone());
                    }
                }
            }
            overlay.commit()
        })?;
        self.set_counters(counters);
        Ok(counters.next_seq - 1)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.next_seq.load(Ordering::Relaxed).saturating_sub(1))
    }

    fn collect_garbage(&self, now: u64) -> Result<usize, StoreError> {
        let dropped = self.with_open(|open| {
            // Everything with until <= now: keys below (now + 1) in big-endian order.
            let end = now.saturating_add(1).to_be_bytes();
            let mut due = Vec::new();
            for item in open
                .keyspace(Table::Expiry)
                .range::<&[u8], _>(..end.as_slice())
                .take(GC_BATCH_RECORDS)
            {
                due.push(item.key().map_err(backend)?.to_vec());
            }
            if due.is_empty() {
                // Nothing to drop: no commit, no fsync.
                return Ok(None);
            }
            let mut overlay = Overlay::new(open, self.counters());
            for key in &due {
                overlay.drop_expired(key)?;
            }
            Ok(Some((due.len(), overlay.commit()?)))
        })?;
        Ok(match dropped {
            Some((dropped, counters)) => {
                self.set_counters(counters);
                dropped
            }
            None => 0,
        })
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
        // Every handle goes before the directory is opened again (fjall holds a lock on it).
        drop(
            self.open
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let open = open_dir(&self.dir, self.cache_bytes)?;
        let (epoch, counters) = prepare(&open)?;
        if epoch != self.epoch {
            return Err(StoreError::Corrupt(format!(
                "{} has another epoch after reopening ({epoch} instead of {})",
                self.dir.display(),
                self.epoch
            )));
        }
        self.set_counters(counters);
        *self.open.write().unwrap_or_else(PoisonError::into_inner) = Some(open);
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        let open = self
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match open {
            Some(open) => open.db.persist(PersistMode::SyncAll).map_err(backend),
            None => Ok(()),
        }
    }

    fn data_dir(&self) -> Option<&Path> {
        Some(&self.data_dir)
    }

    fn parked_mailboxes(&self) -> Result<Vec<MailboxKey>, StoreError> {
        self.with_open(|open| {
            let mut mailboxes: Vec<MailboxKey> = Vec::new();
            for item in open.db.snapshot().iter(open.keyspace(Table::Parked)) {
                let key = item.key().map_err(backend)?;
                let (mailbox, _) = split_envelope_key(&key)?;
                if mailboxes.last() != Some(&mailbox) {
                    mailboxes.push(mailbox);
                }
            }
            Ok(mailboxes)
        })
    }

    fn read_log_until(
        &self,
        since: u64,
        until: u64,
        limit: usize,
        now: u64,
        filter: LogFilter,
    ) -> Result<FeedPage, StoreError> {
        let mut page = LogPage::new(since, limit, now, filter);
        if until <= since {
            return Ok(page.finish());
        }
        self.with_open(|open| {
            let start = since.saturating_add(1).to_be_bytes();
            let end = until.to_be_bytes();
            // A snapshot, never the keyspace itself: a keyspace read sees a batch while fjall is
            // still inserting it, key by key, and a pusher would move its cursor past a change
            // of that commit that was not in yet (a hole in what it pushes).
            let snapshot = open.db.snapshot();
            for item in snapshot.range::<&[u8], _>(
                open.keyspace(Table::Changes),
                start.as_slice()..=end.as_slice(),
            ) {
                let (seq, record) = item.into_inner().map_err(backend)?;
                if !page.take(read_u64(&seq)?, &record)? {
                    break;
                }
            }
            Ok(page.finish())
        })
    }

    fn envelope_json(
        &self,
        mailbox: &MailboxKey,
        ids: Vec<MsgId>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.with_open(|open| {
            let snapshot = open.db.snapshot();
            ids.iter()
                .map(|msg_id| {
                    let key = envelope_key(mailbox, msg_id);
                    let Some(seq) = snapshot
                        .get(open.keyspace(Table::Index), &key)
                        .map_err(backend)?
                    else {
                        return Ok(None);
                    };
                    let Some(record) = snapshot
                        .get(open.keyspace(Table::Changes), &*seq)
                        .map_err(backend)?
                    else {
                        return Ok(None);
                    };
                    let (_, _, json) = parse_change_record(&record)?;
                    Ok(Some(json.to_vec()))
                })
                .collect()
        })
    }

    fn change_json(&self, seqs: &[u64]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.with_open(|open| {
            let snapshot = open.db.snapshot();
            seqs.iter()
                .map(|seq| {
                    let Some(record) = snapshot
                        .get(open.keyspace(Table::Changes), seq.to_be_bytes())
                        .map_err(backend)?
                    else {
                        return Ok(None);
                    };
                    envelope_change_json(&record)
                })
                .collect()
        })
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_open(|open| {
            Ok(open
                .db
                .snapshot()
                .get(open.keyspace(Table::Meta), key)
                .map_err(backend)?
                .map(|v| v.to_vec()))
        })
    }
}
