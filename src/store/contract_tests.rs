//! The [`Store`] contract, tested on every engine: each test below runs once on redb (its
//! in-memory backend where no file is needed) and once on fjall (in a temporary directory).

use super::*;
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId};
use ed25519_dalek::SigningKey;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy)]
enum Engine {
    Redb,
    Fjall,
}

/// A store opened by a test; keeps its temporary directory alive.
struct Opened {
    store: Box<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Opened {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl Engine {
    /// A new, empty store.
    fn fresh(self) -> Opened {
        match self {
            Engine::Redb => Opened {
                store: Box::new(RedbStore::in_memory().unwrap()),
                _dir: None,
            },
            Engine::Fjall => {
                let dir = tempfile::tempdir().unwrap();
                Opened {
                    store: Box::new(FjallStore::open_with_cache(dir.path(), 1 << 20).unwrap()),
                    _dir: Some(dir),
                }
            }
        }
    }

    fn open(self, dir: &Path) -> Opened {
        self.open_with_cache(dir, 8 << 20)
    }

    fn open_with_cache(self, dir: &Path, cache_bytes: usize) -> Opened {
        let store: Box<dyn Store> = match self {
            Engine::Redb => Box::new(RedbStore::open_with_cache(dir, cache_bytes).unwrap()),
            Engine::Fjall => Box::new(FjallStore::open_with_cache(dir, cache_bytes).unwrap()),
        };
        Opened { store, _dir: None }
    }
}

use crate::test_envelopes::{NOW, envelope};

fn ack_of(ids: &[&str]) -> Arc<AckObject> {
    let bob = SigningKey::from_bytes(&[2; 32]);
    Arc::new(AckObject::sign(
        &bob,
        NOW,
        ids.iter().map(|i| MsgId::parse("m", i).unwrap()).collect(),
    ))
}

fn replica_op(envelope: Arc<Envelope>) -> StoreOp {
    StoreOp::put_envelope(envelope, false)
}

fn client_op(envelope: Arc<Envelope>) -> StoreOp {
    StoreOp::put_envelope(envelope, true)
}

fn ids(page: &FeedPage) -> Vec<u64> {
    page.changes.iter().map(|(seq, _)| *seq).collect()
}

fn seqs_increase_in_commit_order_and_survive_reopen(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let epoch;
    {
        let store = engine.open(dir.path());
        epoch = store.epoch().to_string();
        let last = store
            .commit(&[
                replica_op(envelope("a", NOW + 100)),
                StoreOp::PutMeta {
                    key: "cursor/x".into(),
                    value: vec![1],
                },
                replica_op(envelope("b", NOW + 100)),
            ])
            .unwrap();
        assert_eq!(last, 2, "the meta record takes no seq");
        assert_eq!(store.last_seq().unwrap(), 2);
    }
    let store = engine.open(dir.path());
    assert_eq!(store.epoch(), epoch, "the epoch belongs to the store file");
    assert_eq!(store.last_seq().unwrap(), 2, "durable");
    let last = store
        .commit(&[replica_op(envelope("c", NOW + 100))])
        .unwrap();
    assert_eq!(last, 3);
    assert_eq!(store.get_meta("cursor/x").unwrap(), Some(vec![1]));
    let recovered = store.recover(NOW).unwrap();
    assert_eq!(recovered.envelopes.len(), 3);
    assert_ne!(engine.fresh().epoch(), epoch, "a new store has a new epoch");
}

fn ack_removes_envelope_from_feed_and_keeps_tombstones(engine: Engine) {
    let store = engine.fresh();
    store
        .commit(&[
            replica_op(envelope("a", NOW + 100)),
            replica_op(envelope("b", NOW + 100)),
        ])
        .unwrap();
    let ack = ack_of(&["a", "zz"]);
    let a = MsgId::parse("m", "a").unwrap();
    let zz = MsgId::parse("m", "zz").unwrap();
    store
        .commit(&[StoreOp::ApplyAck {
            ack,
            removed: vec![a.clone()],
            tombstones: vec![(a, NOW + 100), (zz, NOW + 500)],
            live_until: NOW + 500,
            from_client: false,
        }])
        .unwrap();
    let page = store.read_log(0, 10, NOW, LogFilter::All).unwrap();
    assert_eq!(ids(&page), vec![2, 3]);
    assert!(matches!(page.changes[1].1, FeedEntry::Ack(_)));
    let recovered = store.recover(NOW).unwrap();
    assert_eq!(recovered.envelopes.len(), 1);
    assert_eq!(recovered.tombstones.len(), 2);

    // At NOW+100 the envelope and one tombstone expire; the ack lives on until NOW+500.
    store.collect_garbage(NOW + 100).unwrap();
    assert_eq!(
        ids(&store.read_log(0, 10, NOW + 100, LogFilter::All).unwrap()),
        vec![3]
    );
    assert_eq!(store.recover(NOW + 100).unwrap().tombstones.len(), 1);
    store.collect_garbage(NOW + 500).unwrap();
    assert!(
        store
            .read_log(0, 10, NOW, LogFilter::All)
            .unwrap()
            .changes
            .is_empty()
    );
    assert!(store.recover(NOW).unwrap().tombstones.is_empty());
}

fn parked_replicas_survive_until_accepted_or_expired(engine: Engine) {
    let store = engine.fresh();
    let a = envelope("a", NOW + 100);
    let b = envelope("b", NOW + 200);
    store
        .commit(&[StoreOp::Park(Arc::clone(&a)), StoreOp::Park(Arc::clone(&b))])
        .unwrap();
    assert_eq!(store.recover(NOW).unwrap().parked.len(), 2);
    assert!(
        store
            .read_log(0, 10, NOW, LogFilter::All)
            .unwrap()
            .changes
            .is_empty(),
        "parked is not in the feed"
    );
    store.commit(&[replica_op(a)]).unwrap();
    let recovered = store.recover(NOW).unwrap();
    assert_eq!(recovered.parked.len(), 1, "accepting unparks");
    assert_eq!(recovered.envelopes.len(), 1);
    store.collect_garbage(NOW + 200).unwrap();
    assert!(store.recover(NOW).unwrap().parked.is_empty());
}

fn nonces_survive_reopen_until_their_window_ends(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mailbox = MailboxKey::from_bytes([7; 32]);
    {
        let store = engine.open(dir.path());
        store
            .commit(&[StoreOp::PutNonce {
                mailbox,
                nonce: "00112233445566778899".into(),
                until: NOW + 600,
            }])
            .unwrap();
    }
    let store = engine.open(dir.path());
    let recovered = store.recover(NOW).unwrap();
    assert_eq!(
        recovered.nonces,
        vec![(mailbox, "00112233445566778899".into(), NOW + 600)]
    );
    assert!(store.recover(NOW + 600).unwrap().nonces.is_empty());
    store.collect_garbage(NOW + 600).unwrap();
    assert!(store.recover(NOW).unwrap().nonces.is_empty(), "collected");
}

fn pending_envelopes_read_back_as_their_json_by_id(engine: Engine) {
    let store = engine.fresh();
    let (a, b) = (envelope("a", NOW + 100), envelope("b", NOW + 100));
    let bob = a.mailbox;
    store
        .commit(&[replica_op(Arc::clone(&a)), client_op(Arc::clone(&b))])
        .unwrap();
    let id = |text: &str| MsgId::parse("m", text).unwrap();
    let read = store
        .envelope_json(&bob, vec![id("b"), id("nope"), id("a")])
        .unwrap();
    let json = |e: &Envelope| Some(serde_json::to_vec(e).unwrap());
    assert_eq!(read, vec![json(&b), None, json(&a)]);
    // Another mailbox with the same ids holds nothing.
    let other = MailboxKey::from_bytes([0xee; 32]);
    assert_eq!(
        store.envelope_json(&other, vec![id("a")]).unwrap(),
        vec![None]
    );
    // Acknowledged: gone.
    store
        .commit(&[StoreOp::ApplyAck {
            ack: ack_of(&["a"]),
            removed: vec![id("a")],
            tombstones: vec![(id("a"), NOW + 100)],
            live_until: NOW + 100,
            from_client: false,
        }])
        .unwrap();
    assert_eq!(
        store.envelope_json(&bob, vec![id("a")]).unwrap(),
        vec![None]
    );
}

fn pending_envelopes_read_back_by_the_seq_they_were_recovered_with(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (envelope("a", NOW + 100), envelope("b", NOW + 100));
    let last = {
        let store = engine.open(dir.path());
        store.commit(&[client_op(Arc::clone(&a))]).unwrap();
        store.commit(&[replica_op(Arc::clone(&b))]).unwrap()
    };
    let store = engine.open(dir.path());
    let mut recovered = store.load_mailbox(&a.mailbox, NOW).unwrap().envelopes;
    recovered.sort_by_key(|(seq, _)| *seq);
    // The seqs the commits gave, in commit order.
    assert_eq!(
        recovered,
        vec![(last - 1, Arc::clone(&a)), (last, Arc::clone(&b))]
    );
    let json = |e: &Envelope| Some(serde_json::to_vec(e).unwrap());
    assert_eq!(
        store.change_json(&[last, last + 7, last - 1]).unwrap(),
        vec![json(&b), None, json(&a)]
    );
    // Acknowledged: gone from its seq; the ack's own change is not an envelope.
    let ack_seq = store
        .commit(&[StoreOp::ApplyAck {
            ack: ack_of(&["a"]),
            removed: vec![MsgId::parse("m", "a").unwrap()],
            tombstones: vec![(MsgId::parse("m", "a").unwrap(), NOW + 100)],
            live_until: NOW + 100,
            from_client: false,
        }])
        .unwrap();
    assert_eq!(
        store.change_json(&[last - 1, ack_seq, last]).unwrap(),
        vec![None, None, json(&b)]
    );
}

fn mailboxes_load_one_by_one_and_the_pending_count_is_kept(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let other = Arc::new(Envelope::sign(
        &SigningKey::from_bytes(&[1; 32]),
        MailboxKey::from_bytes([0xff; 32]),
        MsgId::parse("m", "o1").unwrap(),
        NOW,
        NOW + 100,
        b"x",
    ));
    let bob = envelope("a", NOW + 100).mailbox;
    {
        let store = engine.open(dir.path());
        store
            .commit(&[
                replica_op(envelope("a", NOW + 100)),
                replica_op(envelope("b", NOW + 50)),
                replica_op(Arc::clone(&other)),
                // The same id again replaces, it does not add.
                replica_op(envelope("b", NOW + 60)),
            ])
            .unwrap();
        assert_eq!(store.pending_count(), 3);
        let a = MsgId::parse("m", "a").unwrap();
        store
            .commit(&[StoreOp::ApplyAck {
                ack: ack_of(&["a"]),
                removed: vec![a.clone()],
                tombstones: vec![(a, NOW + 100)],
                live_until: NOW + 100,
                from_client: false,
            }])
            .unwrap();
        assert_eq!(store.pending_count(), 2);
    }
    let store = engine.open(dir.path());
    assert_eq!(store.pending_count(), 2, "the count is durable");
    let mine = store.load_mailbox(&bob, NOW).unwrap();
    assert_eq!(mine.envelopes.len(), 1);
    assert_eq!(mine.envelopes[0].1.expires_at, NOW + 60);
    assert_eq!(mine.tombstones.len(), 1);
    let theirs = store.load_mailbox(&other.mailbox, NOW).unwrap();
    assert_eq!(
        theirs
            .envelopes
            .into_iter()
            .map(|(_, e)| e)
            .collect::<Vec<_>>(),
        vec![other]
    );
    assert!(theirs.tombstones.is_empty());
    store.collect_garbage(NOW + 60).unwrap();
    assert_eq!(store.pending_count(), 1, "expiry counts too");
    assert!(store.load_mailbox(&bob, NOW).unwrap().envelopes.is_empty());
}

fn the_log_tells_client_changes_from_replicas(engine: Engine) {
    let store = engine.fresh();
    assert_eq!(store.last_seq().unwrap(), 0);
    let ack = ack_of(&["zz"]);
    store
        .commit(&[
            client_op(envelope("a", NOW + 100)),
            replica_op(envelope("b", NOW + 100)),
            StoreOp::ApplyAck {
                ack,
                removed: vec![],
                tombstones: vec![],
                live_until: NOW + 100,
                from_client: true,
            },
            replica_op(envelope("c", NOW + 100)),
            client_op(envelope("d", NOW + 100)),
        ])
        .unwrap();
    let all = store.read_log(0, 10, NOW, LogFilter::All).unwrap();
    assert_eq!(
        (ids(&all), all.through, all.more),
        (vec![1, 2, 3, 4, 5], 5, false)
    );
    let pushed = store.read_log(0, 10, NOW, LogFilter::FromClients).unwrap();
    assert_eq!(ids(&pushed), vec![1, 3, 5]);
    assert!(matches!(pushed.changes[1].1, FeedEntry::Ack(_)));
    let tail = store.read_log(3, 10, NOW, LogFilter::FromClients).unwrap();
    assert_eq!((ids(&tail), tail.through), (vec![5], 5));
    // A puller that got 1 and 3 by push: the rest only, and its cursor still reaches 5.
    let rest = store
        .read_log(0, 10, NOW, LogFilter::SkipClientsThrough(3))
        .unwrap();
    assert_eq!((ids(&rest), rest.through), (vec![2, 4, 5], 5));
    // Nothing left after stepping over replicas: the read still moves past them.
    let replicas_only = store.read_log(3, 10, NOW, LogFilter::SkipClientsThrough(5));
    let replicas_only = replicas_only.unwrap();
    assert_eq!((ids(&replicas_only), replicas_only.through), (vec![4], 5));
    let page = store.read_log(0, 1, NOW, LogFilter::FromClients).unwrap();
    // Full after 1; the replica at 2 was stepped over before the client change at 3.
    assert_eq!((ids(&page), page.through, page.more), (vec![1], 2, true));
    // What the filter leaves out is stepped over in bounded reads.
    let many: Vec<StoreOp> = (0..MAX_SCANNED_PER_READ + 10)
        .map(|i| replica_op(envelope(&format!("r{i}"), NOW + 100)))
        .collect();
    store.commit(&many).unwrap();
    // `until` stops a read: nothing after it is returned or stepped over.
    let upto = store.read_log_until(0, 4, 10, NOW, LogFilter::All).unwrap();
    assert_eq!(
        (ids(&upto), upto.through, upto.more),
        (vec![1, 2, 3, 4], 4, false)
    );
    let upto = store
        .read_log_until(1, 4, 10, NOW, LogFilter::SkipClientsThrough(3))
        .unwrap();
    assert_eq!((ids(&upto), upto.through), (vec![2, 4], 4));
    assert!(
        store
            .read_log_until(4, 4, 10, NOW, LogFilter::All)
            .unwrap()
            .changes
            .is_empty()
    );
    let long = store.read_log(5, 10, NOW, LogFilter::FromClients).unwrap();
    assert!(long.changes.is_empty() && long.more);
    assert_eq!(long.through, 5 + MAX_SCANNED_PER_READ as u64);
    let end = store
        .read_log(long.through, 10, NOW, LogFilter::FromClients)
        .unwrap();
    assert!(end.changes.is_empty() && !end.more);
    assert_eq!(end.through, store.last_seq().unwrap());
}

fn stored_bytes_follow_every_record_and_survive_a_reopen(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = engine.open_with_cache(dir.path(), 1 << 20);
    assert_eq!(store.stored_bytes(), 0);
    let (a, b) = (envelope("a", NOW + 100), envelope("b", NOW + 100));
    let record = |e: &Envelope| 9 + serde_json::to_vec(e).unwrap().len() as u64;
    store.commit(&[replica_op(Arc::clone(&a))]).unwrap();
    assert_eq!(store.stored_bytes(), record(&a));
    // The same id again replaces its record; a parked replica counts its JSON.
    store
        .commit(&[replica_op(Arc::clone(&a)), StoreOp::Park(Arc::clone(&b))])
        .unwrap();
    let parked = record(&b) - 9;
    assert_eq!(store.stored_bytes(), record(&a) + parked);
    let a_id = MsgId::parse("m", "a").unwrap();
    let ack = ack_of(&["a"]);
    let ack_record = 9 + serde_json::to_vec(&*ack).unwrap().len() as u64;
    store
        .commit(&[StoreOp::ApplyAck {
            ack,
            removed: vec![a_id.clone()],
            tombstones: vec![(a_id, NOW + 100)],
            live_until: NOW + 100,
            from_client: false,
        }])
        .unwrap();
    assert_eq!(store.stored_bytes(), parked + ack_record);

    let epoch = store.epoch().to_string();
    store.reopen().unwrap();
    assert_eq!(store.epoch(), epoch);
    assert_eq!(store.stored_bytes(), parked + ack_record, "durable");
    assert_eq!(store.recover(NOW).unwrap().parked.len(), 1, "data kept");
    store.collect_garbage(NOW + 100).unwrap();
    assert_eq!(store.stored_bytes(), 0, "expiry frees it all");
    drop(store);
    let store = engine.open(dir.path());
    assert_eq!(store.stored_bytes(), 0);
}

fn feed_pages_by_limit(engine: Engine) {
    let store = engine.fresh();
    let ops: Vec<StoreOp> = (0..5)
        .map(|i| replica_op(envelope(&format!("m{i}"), NOW + 100)))
        .collect();
    store.commit(&ops).unwrap();
    let first = store.read_log(0, 2, NOW, LogFilter::All).unwrap();
    assert_eq!(ids(&first), vec![1, 2]);
    assert!(first.more);
    let last = store.read_log(4, 2, NOW, LogFilter::All).unwrap();
    assert_eq!(ids(&last), vec![5]);
    assert!(!last.more);
}

fn a_commit_reads_its_own_writes(engine: Engine) {
    let store = engine.fresh();
    let a = MsgId::parse("m", "a").unwrap();
    // Stored and acknowledged in one commit: the ack finds the envelope the same commit wrote.
    let last = store
        .commit(&[
            client_op(envelope("a", NOW + 100)),
            replica_op(envelope("b", NOW + 100)),
            StoreOp::ApplyAck {
                ack: ack_of(&["a"]),
                removed: vec![a.clone()],
                tombstones: vec![(a, NOW + 100)],
                live_until: NOW + 100,
                from_client: true,
            },
        ])
        .unwrap();
    assert_eq!(last, 3);
    assert_eq!(store.pending_count(), 1);
    let page = store.read_log(0, 10, NOW, LogFilter::All).unwrap();
    assert_eq!(
        ids(&page),
        vec![2, 3],
        "the acknowledged envelope left the log"
    );
    let recovered = store.recover(NOW).unwrap();
    assert_eq!(recovered.envelopes.len(), 1);
    assert_eq!(recovered.tombstones.len(), 1);
    // Expiry of what is left empties the store.
    store.collect_garbage(NOW + 100).unwrap();
    assert_eq!(store.pending_count(), 0);
    assert_eq!(store.stored_bytes(), 0);
    assert!(store.recover(NOW).unwrap().tombstones.is_empty());
}

fn reopen_keeps_everything_and_takes_writes(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = engine.open(dir.path());
    let epoch = store.epoch().to_string();
    store
        .commit(&[replica_op(envelope("a", NOW + 100))])
        .unwrap();
    store.reopen().unwrap();
    assert_eq!(store.epoch(), epoch);
    assert_eq!(store.pending_count(), 1);
    assert_eq!(
        store
            .commit(&[replica_op(envelope("b", NOW + 100))])
            .unwrap(),
        2,
        "seqs go on after a reopen"
    );
    assert_eq!(store.recover(NOW).unwrap().envelopes.len(), 2);
    store.close().unwrap();
    drop(store);
    let store = engine.open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 2);
    assert_eq!(store.pending_count(), 2);
}

/// A reader of the log never sees part of a commit: the pushers move their cursor past what
/// they read, so a change that became visible after a later one of the same commit would never
/// be pushed.
fn readers_see_whole_commits_only(engine: Engine) {
    const COMMITS: usize = 150;
    const PER_COMMIT: usize = 24;
    let store = engine.fresh();
    let total = (COMMITS * PER_COMMIT) as u64;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for c in 0..COMMITS {
                let ops: Vec<StoreOp> = (0..PER_COMMIT)
                    .map(|i| replica_op(envelope(&format!("c{c}-{i}"), NOW + 100)))
                    .collect();
                store.commit(&ops).unwrap();
            }
        });
        let mut cursor = 0;
        while cursor < total {
            let page = store.read_log(cursor, 10_000, NOW, LogFilter::All).unwrap();
            for (seq, _) in &page.changes {
                assert_eq!(*seq, cursor + 1, "a gap in the log after seq {cursor}");
                cursor = *seq;
            }
            assert_eq!(page.through, cursor);
            assert_eq!(
                cursor % PER_COMMIT as u64,
                0,
                "a read ended inside a commit, at seq {cursor}"
            );
        }
    });
}

/// Each test once per engine.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Redb);
            })*
        }
        mod fjall {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Fjall);
            })*
        }
    };
}

/// The writer's window of newest client changes ([`super::recent`]) numbers a commit's changes
/// itself, from the rule of [`Store::commit`]: it must hand out exactly what the store's log
/// gives a pusher.
fn the_writer_window_numbers_client_changes_as_the_store_does(engine: Engine) {
    let store = engine.fresh();
    store
        .commit(&[replica_op(envelope("before", NOW + 100))])
        .unwrap();
    let recent = super::recent::RecentClientChanges::new(store.last_seq().unwrap());
    recent.add_reader();
    let ops = vec![
        client_op(envelope("a", NOW + 100)),
        StoreOp::PutNonce {
            mailbox: envelope("a", NOW).mailbox,
            nonce: "n1".into(),
            until: NOW + 100,
        },
        replica_op(envelope("b", NOW + 100)),
        StoreOp::Park(envelope("parked", NOW + 100)),
        client_op(envelope("c", NOW + 100)),
        StoreOp::ApplyAck {
            ack: ack_of(&["b"]),
            removed: vec![MsgId::parse("m", "b").unwrap()],
            tombstones: vec![],
            live_until: NOW + 100,
            from_client: true,
        },
        StoreOp::PutMeta {
            key: "k".into(),
            value: vec![],
        },
    ];
    let last = store.commit(&ops).unwrap();
    recent.committed(&ops, last);
    let from_store = store.read_log(1, 100, NOW, LogFilter::FromClients).unwrap();
    let from_window = recent.read_after(1, 100, NOW).unwrap();
    let window: Vec<(u64, FeedEntry)> = from_window
        .changes
        .iter()
        .map(|change| {
            let json = change.json.to_string();
            let entry = if change.envelope {
                FeedEntry::Envelope(json)
            } else {
                FeedEntry::Ack(json)
            };
            (change.seq, entry)
        })
        .collect();
    assert_eq!(window.len(), 3, "a, c and the ack");
    assert_eq!(window, from_store.changes);
    assert_eq!(from_window.through, last);
}

on_every_engine!(
    the_writer_window_numbers_client_changes_as_the_store_does,
    readers_see_whole_commits_only,
    a_commit_reads_its_own_writes,
    reopen_keeps_everything_and_takes_writes,
    seqs_increase_in_commit_order_and_survive_reopen,
    ack_removes_envelope_from_feed_and_keeps_tombstones,
    parked_replicas_survive_until_accepted_or_expired,
    nonces_survive_reopen_until_their_window_ends,
    pending_envelopes_read_back_as_their_json_by_id,
    pending_envelopes_read_back_by_the_seq_they_were_recovered_with,
    mailboxes_load_one_by_one_and_the_pending_count_is_kept,
    the_log_tells_client_changes_from_replicas,
    stored_bytes_follow_every_record_and_survive_a_reopen,
    feed_pages_by_limit,
);
