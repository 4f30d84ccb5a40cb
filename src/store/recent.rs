//! The newest client changes, kept in memory by the writer so that pushers read them without
//! going to the store.
//!
//! A pusher that keeps up with its peer asks for what was committed a moment ago. Reading that
//! from the store means a range scan over the change log (every change, replicas included, each
//! with its body) on the blocking pool; the writer had all of it in hand a moment before. So
//! after each durable commit the writer appends the commit's client changes here, with their
//! seqs, and only then announces the commit ([`super::StoreHandle::last_seq`]). A pusher whose
//! cursor lies inside the window takes its items from here; one that fell behind the window
//! (a slow or dead peer, a restart) reads the store as before.
//!
//! The window is bounded ([`MAX_BYTES`], [`MAX_CHANGES`]), forgets changes older than
//! [`MAX_AGE`] (an idle node holds nothing here), and keeps nothing while no pusher reads it
//! ([`RecentClientChanges::add_reader`]: a node without peers). It states exactly what it
//! holds: every client change with `complete_after < seq <= through`.
//!
//! A change acknowledged or expired after it entered the window is still handed out (the store
//! would have left it out): its peer then gets the envelope and, right after it, the ack,
//! which a peer applies in that order anyway.

use super::StoreOp;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most bytes of change JSON kept.
pub const MAX_BYTES: usize = 4 << 20;
/// Most changes kept.
pub const MAX_CHANGES: usize = 8192;
/// Changes older than this are dropped at the writer's next tick.
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// A client change as a pusher sends it: its seq, kind and stored JSON.
#[derive(Debug, Clone)]
pub struct RecentChange {
    pub seq: u64,
    pub envelope: bool,
    pub json: Arc<str>,
    /// The change leaves the feed at this unix time (it is not handed out after it).
    pub until: u64,
    committed_at: Instant,
}

/// What [`RecentClientChanges::read_after`] found.
#[derive(Debug, Default)]
pub struct RecentPage {
    pub changes: Vec<RecentChange>,
    /// Every client change up to this seq is in `changes` or was before the page's start.
    pub through: u64,
}

#[derive(Debug, Default)]
struct Window {
    changes: VecDeque<RecentChange>,
    /// Every client change with a seq above this (up to `through`) is in `changes`.
    complete_after: u64,
    through: u64,
    bytes: usize,
}

/// The window of newest client changes; shared by the writer (appends) and the pushers (reads).
#[derive(Debug, Default)]
pub struct RecentClientChanges {
    window: Mutex<Window>,
    /// Pushers reading the window; none, nothing is kept.
    readers: AtomicUsize,
}

impl RecentClientChanges {
    /// An empty window after the store's last seq (nothing after it is committed yet).
    pub fn new(last_seq: u64) -> Self {
        Self {
            window: Mutex::new(Window {
                complete_after: last_seq,
                through: last_seq,
                ..Window::default()
            }),
            readers: AtomicUsize::new(0),
        }
    }

    /// A pusher starts reading the window (call [`Self::remove_reader`] when it stops).
    pub fn add_reader(&self) {
        self.readers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove_reader(&self) {
        // Never below 0, whatever the order of calls.
        let _ = self
            .readers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a durable commit of `ops` whose highest seq is `last_seq`. The store gives one
    /// seq to each [`StoreOp::PutEnvelope`] and [`StoreOp::ApplyAck`], in order, ending at
    /// `last_seq`.
    pub fn committed(&self, ops: &[StoreOp], last_seq: u64) {
        let first = StoreOp::first_seq(ops, last_seq);
        let now = Instant::now();
        let mut window = self.window();
        if first != window.through.saturating_add(1) || self.readers.load(Ordering::Relaxed) == 0 {
            // Nobody reads the window (no peers): keep nothing. Or seqs this window never saw
            // (cannot happen with one writer; if it did, the store holds the truth). Either
            // way, start again after this commit.
            *window = Window {
                complete_after: last_seq,
                through: last_seq,
                ..Window::default()
            };
            return;
        }
        let mut seq = first;
        for op in ops {
            let change = match op {
                StoreOp::PutEnvelope {
                    envelope,
                    json,
                    from_client: true,
                } => std::str::from_utf8(json).ok().map(|json| RecentChange {
                    seq,
                    envelope: true,
                    json: json.into(),
                    until: envelope.expires_at,
                    committed_at: now,
                }),
                StoreOp::ApplyAck {
                    ack,
                    live_until,
                    from_client: true,
                    ..
                } => serde_json::to_string(ack.as_ref())
                    .ok()
                    .map(|json| RecentChange {
                        seq,
                        envelope: false,
                        json: json.into(),
                        until: *live_until,
                        committed_at: now,
                    }),
                _ => None,
            };
            if op.takes_seq() {
                if let Some(change) = change {
                    window.bytes += change.json.len();
                    window.changes.push_back(change);
                }
                // A client change that could not be kept leaves a hole: the window then
                // starts after it.
                else if is_from_client(op) {
                    window.changes.clear();
                    window.bytes = 0;
                    window.complete_after = seq;
                }
                seq += 1;
            }
        }
        window.through = window.through.max(last_seq);
        while window.bytes > MAX_BYTES || window.changes.len() > MAX_CHANGES {
            window.drop_oldest();
        }
    }

    /// Drops changes older than [`MAX_AGE`] (the writer calls this between commits).
    pub fn forget_old(&self) {
        if let Some(cutoff) = Instant::now().checked_sub(MAX_AGE) {
            self.forget_committed_before(cutoff);
        }
    }

    fn forget_committed_before(&self, cutoff: Instant) {
        let mut window = self.window();
        while window
            .changes
            .front()
            .is_some_and(|change| change.committed_at < cutoff)
        {
            window.drop_oldest();
        }
    }

    /// At most `limit` client changes after seq `after` that are still live at `now`; `None`
    /// when the window does not reach back to `after` (read the store instead).
    pub fn read_after(&self, after: u64, limit: usize, now: u64) -> Option<RecentPage> {
        let window = self.window();
        if after < window.complete_after {
            return None;
        }
        let start = window.changes.partition_point(|change| change.seq <= after);
        let mut page = RecentPage {
            changes: Vec::new(),
            through: window.through.max(after),
        };
        for change in window.changes.range(start..) {
            if page.changes.len() == limit {
                // Complete up to the change before the first one left out.
                page.through = change.seq - 1;
                break;
            }
            if change.until > now {
                page.changes.push(change.clone());
            }
        }
        Some(page)
    }

    /// Changes held now (metrics, tests).
    pub fn len(&self) -> usize {
        self.window().changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Window {
    fn drop_oldest(&mut self) {
        if let Some(change) = self.changes.pop_front() {
            self.bytes -= change.json.len();
            self.complete_after = self.complete_after.max(change.seq);
        }
    }
}

fn is_from_client(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::PutEnvelope {
            from_client: true,
            ..
        } | StoreOp::ApplyAck {
            from_client: true,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Envelope, MailboxKey, MsgId, generate_signing_key, now_unix};

    fn envelope_op(id: &str, from_client: bool) -> StoreOp {
        let key = generate_signing_key().expect("randomness");
        let now = now_unix();
        let envelope = Envelope::sign(
            &key,
            MailboxKey::of(&key),
            MsgId::parse("msg_id", id).expect("id"),
            now,
            now + 600,
            b"ciphertext",
        );
        StoreOp::put_envelope(Arc::new(envelope), from_client)
    }

    /// A window with one reader, as on a node with a peer.
    fn read_by_a_pusher(last_seq: u64) -> RecentClientChanges {
        let recent = RecentClientChanges::new(last_seq);
        recent.add_reader();
        recent
    }

    fn seqs(page: &RecentPage) -> Vec<u64> {
        page.changes.iter().map(|change| change.seq).collect()
    }

    #[test]
    fn client_changes_get_the_seqs_the_store_gave_them() {
        let recent = read_by_a_pusher(10);
        // Seqs 11 (client), 12 (replica), 13 (client); a nonce takes none.
        let ops = vec![
            envelope_op("a", true),
            envelope_op("b", false),
            StoreOp::PutMeta {
                key: "k".into(),
                value: vec![],
            },
            envelope_op("c", true),
        ];
        recent.committed(&ops, 13);
        let page = recent
            .read_after(10, 100, now_unix())
            .expect("in the window");
        assert_eq!(seqs(&page), vec![11, 13]);
        assert_eq!(page.through, 13);
        assert!(page.changes.iter().all(|change| change.envelope));
        assert!(page.changes[0].json.contains("\"msg_id\":\"a\""));
        let after = recent
            .read_after(11, 100, now_unix())
            .expect("in the window");
        assert_eq!(seqs(&after), vec![13]);
        let caught_up = recent
            .read_after(13, 100, now_unix())
            .expect("in the window");
        assert!(caught_up.changes.is_empty());
        assert_eq!(caught_up.through, 13);
    }

    #[test]
    fn a_cursor_before_the_window_reads_the_store() {
        let recent = read_by_a_pusher(10);
        recent.committed(&[envelope_op("a", true)], 11);
        assert!(recent.read_after(9, 100, now_unix()).is_none());
        assert!(recent.read_after(10, 100, now_unix()).is_some());
    }

    #[test]
    fn a_limited_page_is_complete_only_up_to_what_it_holds() {
        let recent = read_by_a_pusher(0);
        let ops: Vec<StoreOp> = ["a", "b", "c"]
            .iter()
            .map(|id| envelope_op(id, true))
            .collect();
        recent.committed(&ops, 3);
        let page = recent.read_after(0, 2, now_unix()).expect("in the window");
        assert_eq!(seqs(&page), vec![1, 2]);
        assert_eq!(page.through, 2);
    }

    #[test]
    fn dropping_old_changes_moves_the_start_of_the_window() {
        let recent = read_by_a_pusher(0);
        let ops: Vec<StoreOp> = (0..MAX_CHANGES + 2)
            .map(|i| envelope_op(&format!("m{i}"), true))
            .collect();
        recent.committed(&ops, ops.len() as u64);
        assert_eq!(recent.len(), MAX_CHANGES);
        assert!(recent.read_after(1, 10, now_unix()).is_none());
        let page = recent.read_after(2, 10, now_unix()).expect("in the window");
        assert_eq!(page.changes[0].seq, 3);
    }

    #[test]
    fn a_commit_with_unexpected_seqs_starts_the_window_again() {
        let recent = read_by_a_pusher(0);
        recent.committed(&[envelope_op("a", true)], 1);
        // Seq 2 was never announced: this commit's change is seq 3.
        recent.committed(&[envelope_op("b", true)], 3);
        assert!(recent.read_after(1, 10, now_unix()).is_none());
        let page = recent.read_after(3, 10, now_unix()).expect("in the window");
        assert!(page.changes.is_empty());
        assert_eq!(page.through, 3);
    }

    #[test]
    fn forgetting_old_changes_empties_an_idle_window() {
        let recent = read_by_a_pusher(0);
        recent.committed(&[envelope_op("a", true)], 1);
        recent.forget_old();
        assert_eq!(recent.len(), 1, "a change of a moment ago stays");
        recent.forget_committed_before(Instant::now());
        assert!(recent.is_empty());
        assert!(recent.read_after(0, 10, now_unix()).is_none());
        let page = recent.read_after(1, 10, now_unix()).expect("in the window");
        assert_eq!(page.through, 1);
    }

    #[test]
    fn without_readers_nothing_is_kept() {
        let recent = RecentClientChanges::new(0);
        recent.committed(&[envelope_op("a", true)], 1);
        assert!(recent.is_empty());
        assert!(
            recent.read_after(0, 10, now_unix()).is_none(),
            "read the store"
        );
        recent.add_reader();
        recent.committed(&[envelope_op("b", true)], 2);
        let page = recent.read_after(1, 10, now_unix()).expect("in the window");
        assert_eq!(seqs(&page), vec![2]);
        recent.remove_reader();
        recent.remove_reader();
        recent.committed(&[envelope_op("c", true)], 3);
        assert!(recent.is_empty());
        assert!(recent.read_after(2, 10, now_unix()).is_none());
    }

    #[test]
    fn expired_changes_are_not_handed_out_but_count_as_read() {
        let recent = read_by_a_pusher(0);
        recent.committed(&[envelope_op("a", true)], 1);
        let page = recent
            .read_after(0, 10, now_unix() + 3600)
            .expect("in the window");
        assert!(page.changes.is_empty());
        assert_eq!(page.through, 1);
    }
}
