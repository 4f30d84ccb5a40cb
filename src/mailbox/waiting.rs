//! Long polls (SPEC §6.2 `wait_s`): polls parked with their mailbox until mail arrives.
//!
//! A poll that finds nothing deliverable, once its nonce is on disk, is parked in its mailbox's
//! [`WaitingPolls`] inside the shard that owns the mailbox (see [`super::shard`]). It leaves in
//! exactly one of these ways, each answering it with the normal poll view of that moment:
//! - an envelope of the mailbox became pending *and durable* (a client deposit, a pushed or
//!   pulled replica, a parked replica accepted later): every waiting poll of the mailbox wakes;
//! - its `wait_s` ran out (a timer on the shard): the usual empty reply;
//! - the node shuts down: every waiting poll is released at once;
//! - its client went away (the reply channel is closed): dropped at the next sweep.
//!
//! The number of waiting polls is bounded node-wide by one [`WaitBudget`] shared by every shard.
//! Each parked poll holds a [`WaitPlace`] that gives its place back when dropped, so the count
//! (and the `dm_waiting_polls` gauge) cannot leak whichever way a poll leaves.

use super::rules::{MailboxState, NonceRefusal, PollView};
use super::shard::ShardError;
use crate::metrics::Metrics;
use actix::SpawnHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;

/// Where a poll's answer goes (the HTTP handler waits on the other end).
pub type PollReply = oneshot::Sender<Result<Result<PollView, NonceRefusal>, ShardError>>;

/// Default of `MESH_DM_MAX_WAITING_POLLS`: every online recipient holds one waiting poll, and a
/// node should carry at least 10,000 of them.
pub const DEFAULT_MAX_WAITING_POLLS: usize = 16_384;

/// The node-wide bound on waiting polls.
pub struct WaitBudget {
    waiting: AtomicUsize,
    max: usize,
    metrics: Arc<Metrics>,
}

impl WaitBudget {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// One place for a waiting poll, or `None` (counted) when the node already holds `max`.
    pub fn try_take(self: &Arc<Self>) -> Option<WaitPlace> {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.metrics.waiting_polls.inc();
            Some(WaitPlace(Arc::clone(self)))
        } else {
            self.metrics.waiting_polls_overflow_total.inc();
            None
        }
    }
}

/// A place in the [`WaitBudget`], given back on drop.
pub struct WaitPlace(Arc<WaitBudget>);

impl Drop for WaitPlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.waiting_polls.dec();
    }
}

/// One parked poll.
pub struct WaitingPoll {
    /// Unique within its shard, so that its timer finds it.
    pub id: u64,
    /// The poll's `limit`, for the view it is answered with.
    pub limit: usize,
    pub reply: PollReply,
    /// The shard's timer that ends the wait; cancelled when the poll leaves earlier.
    pub timer: Option<SpawnHandle>,
    pub place: WaitPlace,
}

impl WaitingPoll {
    /// Answers with the normal poll view of `state` now (what is committed, up to `limit`).
    pub fn answer(self, state: &MailboxState, now: u64) -> Option<SpawnHandle> {
        let _ = self.reply.send(Ok(Ok(state.poll(self.limit, now))));
        self.timer
    }
}

/// The polls waiting on one mailbox, oldest first.
#[derive(Default)]
pub struct WaitingPolls {
    polls: Vec<WaitingPoll>,
}

impl WaitingPolls {
    pub fn is_empty(&self) -> bool {
        self.polls.is_empty()
    }

    pub fn push(&mut self, poll: WaitingPoll) {
        self.polls.push(poll);
    }

    /// Takes the poll `id` out, if it is still waiting.
    pub fn take(&mut self, id: u64) -> Option<WaitingPoll> {
        let index = self.polls.iter().position(|poll| poll.id == id)?;
        Some(self.polls.remove(index))
    }

    /// Answers every waiting poll with the view of `state` now; returns their timers, to cancel.
    pub fn answer_all(&mut self, state: &MailboxState, now: u64) -> Vec<SpawnHandle> {
        self.polls
            .drain(..)
            .filter_map(|poll| poll.answer(state, now))
            .collect()
    }

    /// Drops the polls whose client went away (nobody waits for their answer); returns their
    /// timers, to cancel.
    pub fn drop_abandoned(&mut self) -> Vec<SpawnHandle> {
        let mut timers = Vec::new();
        self.polls.retain_mut(|poll| {
            let gone = poll.reply.is_closed();
            if gone {
                timers.extend(poll.timer.take());
            }
            !gone
        });
        timers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_bounded_and_every_place_comes_back_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let budget = WaitBudget::new(2, Arc::clone(&metrics));
        let first = budget.try_take().unwrap();
        let second = budget.try_take().unwrap();
        assert!(budget.try_take().is_none());
        assert_eq!(metrics.waiting_polls.get(), 2);
        assert_eq!(metrics.waiting_polls_overflow_total.get(), 1);
        drop(first);
        assert_eq!(metrics.waiting_polls.get(), 1);
        let third = budget.try_take().unwrap();
        drop((second, third));
        assert_eq!(metrics.waiting_polls.get(), 0);
    }

    #[test]
    fn abandoned_polls_are_dropped_and_the_others_answered_with_the_view() {
        let budget = WaitBudget::new(10, Arc::new(Metrics::new()));
        let mut waiting = WaitingPolls::default();
        let mut receivers = Vec::new();
        for id in 0..3 {
            let (reply, answer) = oneshot::channel();
            waiting.push(WaitingPoll {
                id,
                limit: 8,
                reply,
                timer: None,
                place: budget.try_take().unwrap(),
            });
            receivers.push(answer);
        }
        drop(receivers.remove(1));
        assert!(waiting.drop_abandoned().is_empty());
        assert!(waiting.take(1).is_none(), "the abandoned poll is gone");
        assert_eq!(budget.waiting.load(Ordering::Acquire), 2);
        let state = MailboxState::default();
        assert!(waiting.answer_all(&state, 0).is_empty(), "no timers here");
        assert!(waiting.is_empty());
        assert_eq!(budget.waiting.load(Ordering::Acquire), 0);
        for mut answer in receivers {
            let view = answer.try_recv().unwrap().unwrap().unwrap();
            assert_eq!((view.pending, view.has_more), (0, false));
        }
    }
}
