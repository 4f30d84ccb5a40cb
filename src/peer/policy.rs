//! Retry policy of a peer, as pure functions of time: exponential backoff with jitter, a token
//! bucket, and a circuit breaker. Time is always passed in (`now: Instant`), so the tests run on
//! a paused, hand-moved clock with no sleeps.

use std::time::{Duration, Instant};

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Delay before retry number `failures` (1 = first retry): `base · 2^(failures-1)`, capped at
/// `max`, then "equal jitter": a uniformly random point in its upper half, so that peers that
/// failed together do not retry together. `unit_random` is in `[0, 1)`.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration, unit_random: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// A token bucket: `rate_per_s` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate_per_s,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        self.updated = now;
    }

    /// Takes `n` tokens if they are all there (a batch goes whole or waits).
    pub fn try_take(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        let n = n as f64;
        if n > self.burst || self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// How long until `n` tokens are there (`n` is capped at the burst, which always comes).
    pub fn wait_for(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        let missing = (n as f64).min(self.burst) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate_per_s)
        }
    }
}

/// Closed → (max failures in a row) → open for `cooldown` → half-open (one try) → closed or open.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    max_failures: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(max_failures: u32, cooldown: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            cooldown,
            consecutive_failures: 0,
            open_until: None,
        }
    }

    /// Whether a request may be sent at `now`; `Err(remaining)` while open.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// True while the breaker skips its peer.
    pub fn is_open(&self, now: Instant) -> bool {
        self.check(now).is_err()
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= self.max_failures {
            // Half-open after the cooldown: one more failure opens it again at once.
            self.consecutive_failures = self.max_failures - 1;
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    /// Failures in a row so far (drives the backoff).
    pub fn failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        assert_eq!(backoff_delay(1, base, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(1, base, max, 0.999_999).as_millis(), 99);
        assert_eq!(backoff_delay(2, base, max, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(4, base, max, 0.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(20, base, max, 0.0), Duration::from_secs(15));
        assert_eq!(
            backoff_delay(u32::MAX, base, max, 1.0),
            Duration::from_secs(30)
        );
        for r in [0.0, 0.3, 0.7, 0.99] {
            let d = backoff_delay(3, base, max, r);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
        }
    }

    #[test]
    fn token_bucket_limits_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert!(bucket.try_take(5, t0), "a full bucket gives its burst");
        assert!(!bucket.try_take(1, t0));
        assert_eq!(bucket.wait_for(1, t0), Duration::from_millis(100));
        assert_eq!(bucket.wait_for(3, t0), Duration::from_millis(300));
        // A batch waits until it can go whole.
        let t1 = t0 + Duration::from_millis(250);
        assert!(!bucket.try_take(3, t1));
        assert_eq!(bucket.wait_for(3, t1), Duration::from_millis(50));
        assert!(bucket.try_take(2, t1));
        // Never more than the burst, however long the wait.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!bucket.try_take(6, t2));
        assert_eq!(bucket.wait_for(60, t2), Duration::ZERO);
        assert!(bucket.try_take(5, t2));
    }

    #[test]
    fn breaker_opens_after_max_failures_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(120);
        let mut breaker = CircuitBreaker::new(3, cooldown);
        assert!(!breaker.on_failure(t0));
        assert!(!breaker.on_failure(t0));
        assert!(breaker.check(t0).is_ok());
        assert!(breaker.on_failure(t0), "third failure opens it");
        assert_eq!(breaker.check(t0), Err(cooldown));
        assert!(breaker.is_open(t0 + Duration::from_secs(119)));
        // Half-open: one try is allowed; its failure opens the breaker again at once.
        let t1 = t0 + cooldown;
        assert!(breaker.check(t1).is_ok());
        assert!(breaker.on_failure(t1));
        assert!(breaker.is_open(t1));
        // A success closes it and resets the count.
        let t2 = t1 + cooldown;
        breaker.on_success();
        assert!(breaker.check(t2).is_ok());
        assert_eq!(breaker.failures(), 0);
        assert!(!breaker.on_failure(t2));
    }
}
