//! How far each peer's own clients' changes reached this node without a gap, so that the pull
//! of that peer's feed can skip them (issue: "pull is the repair path, not a second copy").
//!
//! Two things move the mark of a peer, both meaning "every change the peer's clients made up to
//! seq `n` of its store is applied here": the puller's cursor (it applied the whole feed up to
//! there), and a push batch answered 200 whose [`LogPosition`] starts at or before the mark (it
//! held every client change of the peer in `(after, through]`). A batch after a gap (one that
//! was refused, or sent before a restart of this node) does not move the mark; the pull then
//! fetches the gap, and the next batch joins up again. A change of epoch starts over.
//!
//! In memory only: after a restart the first pull fetches everything once, as it always did.

use crate::protocol::wire::LogPosition;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    epoch: String,
    through: u64,
    /// When a push last moved the mark.
    pushed_at: Option<Instant>,
}

/// The marks of every peer, shared by the push route (writer) and the pullers (readers).
#[derive(Debug, Default)]
pub struct PushedThrough {
    marks: Mutex<HashMap<String, Mark>>,
}

impl PushedThrough {
    /// The puller applied `peer`'s feed of `epoch` up to `seq`.
    pub fn pulled(&self, peer: &str, epoch: &str, seq: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        match marks.get_mut(peer) {
            Some(mark) if mark.epoch == epoch => mark.through = mark.through.max(seq),
            _ => {
                marks.insert(
                    peer.to_string(),
                    Mark {
                        epoch: epoch.to_string(),
                        through: seq,
                        pushed_at: None,
                    },
                );
            }
        }
    }

    /// A push batch from `peer` at `position` was applied (answered 200).
    pub fn pushed(&self, peer: &str, position: &LogPosition) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mark) = marks.get_mut(peer)
            && mark.epoch == position.epoch
            && position.after <= mark.through
            && position.through > mark.through
        {
            mark.through = position.through;
            mark.pushed_at = Some(Instant::now());
        }
    }

    /// What a pull of `peer`'s feed from `epoch`/`since` may skip: its clients' changes up to
    /// the returned seq (`None`: nothing beyond what the cursor covers already).
    pub fn skip_for(&self, peer: &str, epoch: Option<&str>, since: u64) -> Option<u64> {
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mark = marks.get(peer)?;
        (Some(mark.epoch.as_str()) == epoch && mark.through > since).then_some(mark.through)
    }

    /// Where a pull of `peer`'s feed (of `epoch`) should stop while the peer's pushes are
    /// flowing (a push moved the mark within `window` before `now`): at the mark, leaving what
    /// comes after it to the pushes; `None` when they are not (the pull reads everything, as
    /// the repair path it is).
    pub fn flowing_until(
        &self,
        peer: &str,
        epoch: Option<&str>,
        window: Duration,
        now: Instant,
    ) -> Option<u64> {
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mark = marks.get(peer)?;
        let fresh = mark
            .pushed_at
            .is_some_and(|at| now.saturating_duration_since(at) <= window);
        (Some(mark.epoch.as_str()) == epoch && fresh).then_some(mark.through)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, after: u64, through: u64) -> LogPosition {
        LogPosition {
            epoch: epoch.into(),
            after,
            through,
        }
    }

    #[test]
    fn pushes_extend_the_mark_only_without_a_gap() {
        let marks = PushedThrough::default();
        marks.pushed("p", &at("e", 0, 5));
        assert_eq!(marks.skip_for("p", Some("e"), 0), None, "no anchor yet");
        marks.pulled("p", "e", 3);
        assert_eq!(marks.skip_for("p", Some("e"), 3), None);
        marks.pushed("p", &at("e", 3, 7));
        assert_eq!(marks.skip_for("p", Some("e"), 3), Some(7));
        marks.pushed("p", &at("e", 9, 12));
        assert_eq!(marks.skip_for("p", Some("e"), 3), Some(7), "8..9 missing");
        marks.pushed("p", &at("e", 7, 9));
        marks.pushed("p", &at("e", 9, 12));
        assert_eq!(marks.skip_for("p", Some("e"), 3), Some(12));
        // A late retry of an old batch does not move it back.
        marks.pushed("p", &at("e", 3, 7));
        assert_eq!(marks.skip_for("p", Some("e"), 3), Some(12));
        assert_eq!(marks.skip_for("p", Some("e"), 12), None, "nothing to skip");
        assert_eq!(marks.skip_for("p", Some("other"), 3), None);
        assert_eq!(marks.skip_for("q", Some("e"), 3), None);
        marks.pushed("p", &at("new", 0, 20));
        assert_eq!(
            marks.skip_for("p", Some("e"), 3),
            Some(12),
            "other epoch ignored"
        );
        marks.pulled("p", "new", 0);
        assert_eq!(
            marks.skip_for("p", Some("new"), 0),
            None,
            "a new epoch starts over"
        );
        marks.pushed("p", &at("new", 0, 20));
        assert_eq!(marks.skip_for("p", Some("new"), 0), Some(20));
    }

    #[test]
    fn a_pull_stops_at_the_mark_only_while_pushes_move_it() {
        let marks = PushedThrough::default();
        let window = Duration::from_secs(10);
        marks.pulled("p", "e", 3);
        let now = Instant::now();
        assert_eq!(
            marks.flowing_until("p", Some("e"), window, now),
            None,
            "no push yet"
        );
        marks.pushed("p", &at("e", 3, 9));
        let now = Instant::now();
        assert_eq!(marks.flowing_until("p", Some("e"), window, now), Some(9));
        assert_eq!(marks.flowing_until("p", Some("x"), window, now), None);
        // The pushes stopped: past the window the pull reads everything again.
        let later = now + window + Duration::from_millis(1);
        assert_eq!(marks.flowing_until("p", Some("e"), window, later), None);
        // A pull moving the mark is not a push.
        marks.pulled("p", "e", 20);
        assert_eq!(marks.skip_for("p", Some("e"), 3), Some(20));
        assert_eq!(marks.flowing_until("p", Some("e"), window, later), None);
    }
}
