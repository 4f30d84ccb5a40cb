//! One health record per peer link, shared by the peer's pusher and puller (and the one writer
//! of its breaker gauge).
//!
//! - A failed push (transport, 5xx, 429, 403: `CallVerdict::Retry` and `CallVerdict::AuthRefused`
//!   of [`super::policy::CallVerdict`]) counts toward the circuit breaker and sets the backoff
//!   before the next push ([`retry_delay`]: exponential, jittered, never before the peer's
//!   `Retry-After`). A reply the peer answered otherwise (2xx, another 4xx) is not a link failure.
//! - A failed pull is a failure of another endpoint on its own cadence: it does not hold pushes
//!   back, except for the peer's `Retry-After`, which covers the whole link.
//! - A push answered 2xx closes the breaker and clears the backoff. While the breaker is open
//!   pushes stop, but the pull keeps its interval: a pull that succeeds then ends the cooldown at
//!   once (half-open) and wakes the pusher for one try, so pushes come back as soon as the peer
//!   does, not a whole cooldown later; if that try fails, the breaker opens again (at most one
//!   push try per successful pull while the peer refuses pushes).

use super::policy::{BACKOFF_BASE, BACKOFF_MAX, CircuitBreaker, retry_delay};
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

struct State {
    breaker: CircuitBreaker,
    /// No push before this (the backoff after the last failure).
    retry_at: Option<Instant>,
    /// When the open breaker closes, in Unix seconds (fixed when it opens, for the record).
    open_until_unix: u64,
}

/// What a failure did to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// This failure opened the breaker.
    pub opened: bool,
    /// Failures in a row, this one included.
    pub failures: u32,
}

pub struct LinkHealth {
    url: String,
    state: Mutex<State>,
    /// Longest backoff: [`BACKOFF_MAX`], or the breaker's cooldown when that is shorter (a
    /// backoff past the cooldown would leave a peer alone longer than the operator asked).
    backoff_max: Duration,
    cooldown: Duration,
    recovered: Notify,
    metrics: Arc<Metrics>,
}

impl LinkHealth {
    pub fn new(url: &str, max_failures: u32, cooldown: Duration, metrics: Arc<Metrics>) -> Self {
        let health = Self {
            url: url.to_string(),
            state: Mutex::new(State {
                breaker: CircuitBreaker::new(max_failures, cooldown),
                retry_at: None,
                open_until_unix: 0,
            }),
            cooldown,
            backoff_max: BACKOFF_MAX.min(cooldown).max(BACKOFF_BASE),
            recovered: Notify::new(),
            metrics,
        };
        health.publish(&health.lock(), Instant::now());
        health
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The breaker gauge and the `/status` fields, from one reading.
    fn publish(&self, state: &State, now: Instant) {
        let (open, failures) = (state.breaker.is_open(now), state.breaker.failures());
        self.metrics
            .peer_circuit_open
            .with_label_values(&[&self.url])
            .set(i64::from(open));
        self.metrics.status.update_peer(&self.url, |peer| {
            peer.breaker = if open { "open" } else { "closed" };
            peer.consecutive_failures = failures;
        });
    }

    /// `Err(wait)` while a push must wait (breaker open, or backing off after a failure).
    pub fn push_allowed(&self, now: Instant) -> Result<(), Duration> {
        let state = self.lock();
        state.breaker.check(now)?;
        match state.retry_at {
            Some(at) if at > now => Err(at - now),
            _ => Ok(()),
        }
    }

    /// A pull answered 2xx: if the breaker is open, one push may try now.
    pub fn pull_succeeded(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        if !state.breaker.is_open(now) {
            return;
        }
        state.breaker.half_open();
        state.retry_at = None;
        self.publish(&state, now);
        drop(state);
        self.recovered.notify_waiters();
    }

    /// A push answered 2xx.
    pub fn on_success(&self) {
        let mut state = self.lock();
        let was_failing = state.breaker.failures() > 0 || state.retry_at.is_some();
        state.breaker.on_success();
        state.retry_at = None;
        if was_failing {
            self.publish(&state, Instant::now());
            drop(state);
            self.recovered.notify_waiters();
        }
    }

    /// A pull that failed; `retry_after` is the peer's `Retry-After`, which pushes honour too.
    pub fn pull_failed(&self, now: Instant, retry_after: Option<Duration>) {
        if let Some(wait) = retry_after {
            let mut state = self.lock();
            let until = now + wait;
            state.retry_at = Some(state.retry_at.map_or(until, |at| at.max(until)));
        }
    }

    /// A push that failed as a link failure; `retry_after` is the peer's `Retry-After`.
    pub fn push_failed(&self, now: Instant, retry_after: Option<Duration>) -> Failure {
        let mut state = self.lock();
        let opened = state.breaker.on_failure(now);
        if opened {
            state.open_until_unix = crate::protocol::now_unix()
                .saturating_add(self.cooldown.as_secs_f64().ceil() as u64);
        }
        let failures = state.breaker.failures();
        let unit = f64::from(getrandom::u32().unwrap_or(0)) / f64::from(u32::MAX);
        let delay = retry_delay(
            failures.max(1),
            retry_after,
            BACKOFF_BASE,
            self.backoff_max,
            unit,
        );
        state.retry_at = Some(now + delay);
        self.publish(&state, now);
        Failure { opened, failures }
    }

    /// What survives a restart: failures in a row, and when an open breaker closes, in Unix
    /// seconds (0: closed), at `now` / `now_unix`.
    pub fn persisted(&self, now: Instant, now_unix: u64) -> (u32, u64) {
        let state = self.lock();
        let open_until = if state.breaker.is_open(now) && state.open_until_unix > now_unix {
            state.open_until_unix
        } else {
            0
        };
        (state.breaker.failures(), open_until)
    }

    /// Puts back what [`Self::persisted`] gave before a restart: a breaker still open stays open
    /// for what remains of its cooldown (a restart does not hammer a dead peer).
    pub fn restore(&self, failures: u32, open_until_unix: u64, now_unix: u64) {
        let now = Instant::now();
        let mut state = self.lock();
        let open_for = Duration::from_secs(open_until_unix.saturating_sub(now_unix));
        state.breaker.restore(failures, open_for, now);
        state.open_until_unix = if open_for.is_zero() {
            0
        } else {
            open_until_unix
        };
        self.publish(&state, now);
    }

    /// Refreshes the gauges (a breaker's cooldown ends without a call).
    pub fn refresh(&self) {
        self.publish(&self.lock(), Instant::now());
    }

    /// Resolves when a call succeeds after failures (the link is healthy again).
    pub async fn recovered(self: Arc<Self>) {
        self.recovered.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pushes_open_the_breaker_and_a_successful_pull_closes_it() {
        let metrics = Arc::new(Metrics::new());
        let health = LinkHealth::new("http://p", 2, Duration::from_secs(60), Arc::clone(&metrics));
        let now = Instant::now();
        assert_eq!(health.push_allowed(now), Ok(()));
        // Failed pulls hold nothing back, unless the peer asks for a pause.
        health.pull_failed(now, None);
        health.pull_failed(now, None);
        assert_eq!(health.push_allowed(now), Ok(()));
        health.pull_failed(now, Some(Duration::from_secs(3)));
        assert!(health.push_allowed(now).is_err(), "the peer's Retry-After");
        assert_eq!(health.push_allowed(now + Duration::from_secs(3)), Ok(()));
        // Two failed pushes open the breaker.
        assert_eq!(
            health.push_failed(now, None),
            Failure {
                opened: false,
                failures: 1
            }
        );
        assert!(health.push_allowed(now).is_err(), "backing off");
        assert!(health.push_failed(now, Some(Duration::from_secs(7))).opened);
        let wait = health.push_allowed(now).unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        let gauge = || {
            metrics
                .peer_circuit_open
                .with_label_values(&["http://p"])
                .get()
        };
        assert_eq!(gauge(), 1);
        // The next pull succeeds: one push may go at once; if it fails, open again.
        health.pull_succeeded();
        assert_eq!(health.push_allowed(Instant::now()), Ok(()));
        assert_eq!(gauge(), 0);
        assert!(health.push_failed(Instant::now(), None).opened);
        assert_eq!(gauge(), 1);
        // A pull success while the breaker is closed changes nothing (the backoff stays).
        let health = LinkHealth::new(
            "http://q",
            5,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        );
        health.push_failed(now, Some(Duration::from_secs(20)));
        health.pull_succeeded();
        assert!(health.push_allowed(now).is_err());
        // A push that succeeds clears everything.
        health.on_success();
        assert_eq!(health.push_allowed(now), Ok(()));
    }

    #[test]
    fn an_open_breaker_survives_a_restart_for_what_remains_of_its_cooldown() {
        let metrics = Arc::new(Metrics::new());
        let before = LinkHealth::new("http://p", 1, Duration::from_secs(60), Arc::clone(&metrics));
        let now = Instant::now();
        assert_eq!(before.persisted(now, 1000), (0, 0));
        before.push_failed(now, None);
        let opened_at = crate::protocol::now_unix();
        let (failures, open_until) = before.persisted(now, opened_at);
        assert_eq!(failures, 1);
        assert!(
            (opened_at + 60..=opened_at + 61).contains(&open_until),
            "{open_until}"
        );
        let open_until = 1060;
        let after = LinkHealth::new("http://p", 1, Duration::from_secs(60), metrics);
        after.restore(failures, open_until, 1010);
        let wait = after.push_allowed(Instant::now()).unwrap_err();
        assert!(
            wait > Duration::from_secs(49) && wait <= Duration::from_secs(50),
            "{wait:?}"
        );
        // A cooldown that ended while the node was down leaves the breaker closed.
        let later = LinkHealth::new(
            "http://p",
            1,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        );
        later.restore(failures, open_until, 2000);
        assert_eq!(later.push_allowed(Instant::now()), Ok(()));
        assert_eq!(later.persisted(Instant::now(), 2000), (1, 0));
    }

    #[test]
    fn retry_after_holds_the_next_push_back() {
        let health = LinkHealth::new(
            "http://p",
            5,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        );
        let now = Instant::now();
        health.push_failed(now, Some(Duration::from_secs(9)));
        let wait = health.push_allowed(now).unwrap_err();
        assert!(
            wait >= Duration::from_secs(9) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[actix_rt::test]
    async fn a_successful_pull_while_the_breaker_is_open_wakes_the_waiting_pusher() {
        let health = Arc::new(LinkHealth::new(
            "http://p",
            1,
            Duration::from_secs(60),
            Arc::new(Metrics::new()),
        ));
        health.push_failed(Instant::now(), None);
        let waiting = actix_rt::spawn(Arc::clone(&health).recovered());
        actix_rt::task::yield_now().await;
        // The breaker (1 failure) is open: a successful pull wakes the pusher.
        health.pull_succeeded();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
