//! Whether the store takes writes: [`StoreStatus`], shared by the writer thread (which sets it)
//! and the HTTP layer (which reads it for `/health` and for the `Retry-After` of a 503).
//!
//! When a commit fails with a storage error, the writer records an [`Outage`]: the reason and
//! the instant of its next attempt to reopen the database. Until that attempt succeeds every
//! write is answered at once with 503 `unavailable`, whose `Retry-After` is the time left until
//! that attempt, and `/health` answers 503 with the reason. Attempts back off from
//! [`FIRST_REOPEN_DELAY`] to [`MAX_REOPEN_DELAY`] ([`reopen_delay`]).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Wait before the first attempt to reopen the store after a failure.
pub const FIRST_REOPEN_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between two attempts: once the fault is gone, the node recovers within it.
pub const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);

/// The wait before attempt number `failures` (1 after the first failure), doubling each time.
pub fn reopen_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_REOPEN_DELAY
        .saturating_mul(1u32 << doublings)
        .min(MAX_REOPEN_DELAY)
}

/// The store refuses writes: why, and when the writer tries again.
#[derive(Debug, Clone)]
pub struct Outage {
    pub reason: String,
    pub next_attempt: Instant,
}

impl Outage {
    /// Whole seconds until the next attempt, at least 1 (the value of `Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        let left = self.next_attempt.saturating_duration_since(Instant::now());
        left.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The store's current outage, if any.
#[derive(Debug, Default)]
pub struct StoreStatus {
    outage: Mutex<Option<Outage>>,
}

impl StoreStatus {
    pub fn outage(&self) -> Option<Outage> {
        self.outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, outage: Option<Outage>) {
        *self.outage.lock().unwrap_or_else(PoisonError::into_inner) = outage;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reopen_delay_doubles_up_to_its_maximum() {
        assert_eq!(reopen_delay(0), FIRST_REOPEN_DELAY);
        assert_eq!(reopen_delay(1), FIRST_REOPEN_DELAY);
        assert_eq!(reopen_delay(2), FIRST_REOPEN_DELAY * 2);
        assert_eq!(reopen_delay(3), FIRST_REOPEN_DELAY * 4);
        assert_eq!(reopen_delay(5), FIRST_REOPEN_DELAY * 16);
        assert_eq!(reopen_delay(6), MAX_REOPEN_DELAY);
        assert_eq!(reopen_delay(u32::MAX), MAX_REOPEN_DELAY);
    }

    #[test]
    fn retry_after_is_the_time_left_rounded_up() {
        let outage = Outage {
            reason: "disk full".into(),
            next_attempt: Instant::now() + Duration::from_millis(2500),
        };
        assert_eq!(outage.retry_after_s(), 3);
        let due = Outage {
            next_attempt: Instant::now(),
            ..outage
        };
        assert_eq!(due.retry_after_s(), 1);
    }
}
