//! The per-shard cache of mailboxes in memory: which mailboxes are loaded, which are loading
//! and what waits for them, how many loads run at once, and eviction. No actix and no store:
//! the shard starts the loads it is told to start and hands their results back, so every rule
//! of loading is here and tested on its own.
//!
//! - A request for a loaded mailbox runs at once ([`Admit::Ready`]).
//! - A request for another mailbox waits in that mailbox's slot, in order; the first one makes
//!   the shard start a load, unless [`MailboxCache::max_loads`] run already, in which case the
//!   load is queued and started when one finishes.
//! - At most `max_waiting` requests wait for loads in all; past that a request is refused
//!   ([`Admit::Overloaded`]), so waiting work is bounded like the shard's own queue.
//! - A load that finished installs the entry (or not, if it failed) and hands back what waited,
//!   in arrival order, with the next queued load to start.

use crate::protocol::MailboxKey;
use std::collections::{HashMap, VecDeque};

enum Slot<E, W> {
    Loaded(Box<E>),
    Loading(Vec<W>),
}

/// What to do with a request (`W`, the work that needs its mailbox in memory).
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<W> {
    /// The mailbox is in memory: run the work now.
    Ready(W),
    /// Too many requests wait for loads: refuse the work.
    Overloaded(W),
    /// The work waits for the mailbox's load; `start` names a load the caller must start now.
    Waiting { start: Option<MailboxKey> },
}

/// Mailbox entries `E` by key, and the work `W` waiting for those being loaded.
pub struct MailboxCache<E, W> {
    slots: HashMap<MailboxKey, Slot<E, W>>,
    loads_running: usize,
    loads_queued: VecDeque<MailboxKey>,
    /// Work waiting in `Loading` slots, over all mailboxes.
    waiting: usize,
    max_loads: usize,
    max_waiting: usize,
}

impl<E, W> MailboxCache<E, W> {
    pub fn new(max_loads: usize, max_waiting: usize) -> Self {
        Self {
            slots: HashMap::new(),
            loads_running: 0,
            loads_queued: VecDeque::new(),
            waiting: 0,
            max_loads: max_loads.max(1),
            max_waiting,
        }
    }

    /// Loads that may run at once.
    pub fn max_loads(&self) -> usize {
        self.max_loads
    }

    /// Takes a request for `mailbox`.
    pub fn admit(&mut self, mailbox: MailboxKey, work: W) -> Admit<W> {
        if let Some(Slot::Loaded(_)) = self.slots.get(&mailbox) {
            return Admit::Ready(work);
        }
        if self.waiting >= self.max_waiting {
            return Admit::Overloaded(work);
        }
        self.waiting += 1;
        if let Some(Slot::Loading(waiting)) = self.slots.get_mut(&mailbox) {
            waiting.push(work);
            return Admit::Waiting { start: None };
        }
        self.slots.insert(mailbox, Slot::Loading(vec![work]));
        if self.loads_running < self.max_loads {
            self.loads_running += 1;
            Admit::Waiting {
                start: Some(mailbox),
            }
        } else {
            self.loads_queued.push_back(mailbox);
            Admit::Waiting { start: None }
        }
    }

    /// The load of `mailbox` finished with `entry` (`None`: it failed). Returns the work that
    /// waited for it, in order, and the next load the caller must start, if any.
    pub fn load_done(
        &mut self,
        mailbox: MailboxKey,
        entry: Option<E>,
    ) -> (Vec<W>, Option<MailboxKey>) {
        let next = self.loads_queued.pop_front();
        if next.is_none() {
            self.loads_running = self.loads_running.saturating_sub(1);
        }
        let waiting = match self.slots.remove(&mailbox) {
            Some(Slot::Loading(waiting)) => waiting,
            Some(loaded @ Slot::Loaded(_)) => {
                // Cannot happen (a loaded mailbox is never loaded again); keep what is there.
                self.slots.insert(mailbox, loaded);
                return (Vec::new(), next);
            }
            None => Vec::new(),
        };
        self.waiting = self.waiting.saturating_sub(waiting.len());
        if let Some(entry) = entry {
            self.slots.insert(mailbox, Slot::Loaded(Box::new(entry)));
        }
        (waiting, next)
    }

    /// The entry of a loaded mailbox.
    pub fn get_mut(&mut self, mailbox: &MailboxKey) -> Option<&mut E> {
        match self.slots.get_mut(mailbox) {
            Some(Slot::Loaded(entry)) => Some(entry),
            _ => None,
        }
    }

    /// Takes a loaded mailbox out of memory.
    pub fn remove(&mut self, mailbox: &MailboxKey) -> Option<Box<E>> {
        match self.slots.remove(mailbox) {
            Some(Slot::Loaded(entry)) => Some(entry),
            Some(loading) => {
                self.slots.insert(*mailbox, loading);
                None
            }
            None => None,
        }
    }

    /// Every loaded entry.
    pub fn loaded_mut(&mut self) -> impl Iterator<Item = (&MailboxKey, &mut E)> {
        self.slots.iter_mut().filter_map(|(key, slot)| match slot {
            Slot::Loaded(entry) => Some((key, &mut **entry)),
            Slot::Loading(_) => None,
        })
    }

    /// Keeps the loaded entries for which `keep` is true (mailboxes being loaded always stay);
    /// returns how many left memory.
    pub fn retain_loaded(&mut self, mut keep: impl FnMut(&MailboxKey, &mut E) -> bool) -> usize {
        let before = self.slots.len();
        self.slots.retain(|key, slot| match slot {
            Slot::Loaded(entry) => keep(key, entry),
            Slot::Loading(_) => true,
        });
        before - self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> MailboxKey {
        MailboxKey::from_bytes([n; 32])
    }

    #[test]
    fn requests_wait_in_order_for_their_load_and_loads_are_bounded() {
        let mut cache: MailboxCache<&str, u32> = MailboxCache::new(2, 100);
        assert_eq!(
            cache.admit(key(1), 1),
            Admit::Waiting {
                start: Some(key(1))
            }
        );
        assert_eq!(cache.admit(key(1), 2), Admit::Waiting { start: None });
        assert_eq!(
            cache.admit(key(2), 3),
            Admit::Waiting {
                start: Some(key(2))
            }
        );
        // Two loads run: the third mailbox's load is queued.
        assert_eq!(cache.admit(key(3), 4), Admit::Waiting { start: None });
        let (work, next) = cache.load_done(key(1), Some("one"));
        assert_eq!((work, next), (vec![1, 2], Some(key(3))));
        assert_eq!(cache.admit(key(1), 5), Admit::Ready(5));
        assert_eq!(cache.get_mut(&key(1)), Some(&mut "one"));
        // A failed load hands its work back and installs nothing.
        let (work, next) = cache.load_done(key(2), None);
        assert_eq!((work, next), (vec![3], None));
        assert!(cache.get_mut(&key(2)).is_none());
        let (work, next) = cache.load_done(key(3), Some("three"));
        assert_eq!((work, next), (vec![4], None));
        // Both load places are free again.
        assert_eq!(
            cache.admit(key(4), 6),
            Admit::Waiting {
                start: Some(key(4))
            }
        );
        assert_eq!(
            cache.admit(key(5), 7),
            Admit::Waiting {
                start: Some(key(5))
            }
        );
    }

    #[test]
    fn waiting_work_is_bounded() {
        let mut cache: MailboxCache<(), u32> = MailboxCache::new(1, 2);
        assert!(matches!(cache.admit(key(1), 1), Admit::Waiting { .. }));
        assert!(matches!(cache.admit(key(2), 2), Admit::Waiting { .. }));
        assert_eq!(cache.admit(key(3), 3), Admit::Overloaded(3));
        let (work, next) = cache.load_done(key(1), Some(()));
        assert_eq!((work, next), (vec![1], Some(key(2))));
        assert_eq!(cache.admit(key(1), 4), Admit::Ready(4), "loaded: no bound");
        assert!(matches!(cache.admit(key(3), 5), Admit::Waiting { .. }));
    }

    #[test]
    fn eviction_keeps_what_is_loading_and_what_the_predicate_keeps() {
        let mut cache: MailboxCache<u32, u32> = MailboxCache::new(4, 10);
        for n in 1..=3 {
            cache.admit(key(n), 0);
            cache.load_done(key(n), Some(u32::from(n)));
        }
        cache.admit(key(9), 0);
        let evicted = cache.retain_loaded(|_, entry| *entry != 2);
        assert_eq!(evicted, 1);
        assert!(cache.get_mut(&key(2)).is_none());
        assert_eq!(cache.loaded_mut().count(), 2);
        assert!(
            cache.remove(&key(9)).is_none(),
            "a loading mailbox is not removed"
        );
        assert_eq!(cache.remove(&key(1)).map(|e| *e), Some(1));
        let (work, _) = cache.load_done(key(9), Some(9));
        assert_eq!(work, vec![0], "its waiting work survived");
    }
}
