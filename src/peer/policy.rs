//! Retry policy of a peer, as pure functions of time: exponential backoff with jitter, a token
//! bucket, and a circuit breaker. Time is always passed in (`now: Instant`), so the tests run on
//! a paused, hand-moved clock with no sleeps.

use std::time::{Duration, Instant};

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` a peer can impose; a longer one is taken as this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// Delay before retry number `failures` (1 = first retry): `base · 2^(failures-1)`, capped at
/// `max`, then "equal jitter": a uniformly random point in its upper half, so that peers that
/// failed together do not retry together. `unit_random` is in `[0, 1)`.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration, unit_random: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// Delay before the next try after `failures` failures in a row (1 = the first): the jittered
/// exponential backoff, but never earlier than the peer's `Retry-After` (capped at
/// [`RETRY_AFTER_MAX`]). Grows with `failures` all the way to `max`.
pub fn retry_delay(
    failures: u32,
    retry_after: Option<Duration>,
    base: Duration,
    max: Duration,
    unit_random: f64,
) -> Duration {
    let backoff = backoff_delay(failures, base, max, unit_random);
    match retry_after {
        Some(wait) => backoff.max(wait.min(RETRY_AFTER_MAX)),
        None => backoff,
    }
}

/// The wait a `Retry-After` header value asks for at `now_unix` (seconds since the epoch): either
/// delta-seconds (`"120"`) or an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`, IMF-fixdate).
/// `None` when the value is neither; a date in the past is a wait of zero.
pub fn parse_retry_after(value: &str, now_unix: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    // The HTTP-date forms (RFC 9110 §5.6.7) by actix-web's own parser.
    let at: actix_web::http::header::HttpDate = value.parse().ok()?;
    let at = std::time::SystemTime::from(at)
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(Duration::from_secs(at.as_secs().saturating_sub(now_unix)))
}

/// What a caller does after one call to a peer (PATTERNS §1 "Errors that say what to do").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// Keep the work and try again after [`retry_delay`]: a transport error, a 5xx, a 429 (with
    /// the peer's `Retry-After`, if any).
    Retry { retry_after: Option<Duration> },
    /// The peer refused this request for good (a 4xx other than 403 and 429, or a reply that is
    /// not the protocol's): drop it, count it, go on; the peer's pull of our feed repairs it.
    Advance,
    /// The peer refuses our signature (403): secrets differ, or one is being rotated. Retried
    /// with backoff like a failure, but logged and counted as an auth problem for an operator.
    AuthRefused,
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

    /// Ends the cooldown now (half-open: the next call may go), keeping the failure count, so
    /// that one more failure opens the breaker again and the backoff keeps growing.
    pub fn half_open(&mut self) {
        self.open_until = None;
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        // At or past the threshold every failure (the half-open try after a cooldown) opens
        // the breaker again at once; the count keeps growing, so the backoff does too.
        if self.consecutive_failures >= self.max_failures {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    /// Puts back what a previous run recorded: failures in a row, and how long the breaker
    /// stays open from now (zero: closed).
    pub fn restore(&mut self, failures: u32, open_for: Duration, now: Instant) {
        self.consecutive_failures = failures;
        self.open_until = (!open_for.is_zero()).then(|| now + open_for);
    }

    /// Failures in a row so far, never reset by the breaker opening (drives the backoff).
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

    #[test]
    fn retry_delay_grows_to_its_maximum_and_stays_there() {
        let (base, max) = (BACKOFF_BASE, BACKOFF_MAX);
        let mut previous_ceiling = Duration::ZERO;
        for failures in 1..=12 {
            let ceiling = retry_delay(failures, None, base, max, 1.0);
            assert!(ceiling >= previous_ceiling, "never shrinks ({failures})");
            previous_ceiling = ceiling;
        }
        assert_eq!(previous_ceiling, BACKOFF_MAX, "reached after 12 failures");
        for failures in [13, 50, 1000, u32::MAX] {
            assert_eq!(retry_delay(failures, None, base, max, 1.0), BACKOFF_MAX);
            assert_eq!(retry_delay(failures, None, base, max, 0.0), BACKOFF_MAX / 2);
        }
    }

    #[test]
    fn retry_delay_honours_retry_after_within_a_sane_maximum() {
        let (base, max) = (BACKOFF_BASE, BACKOFF_MAX);
        let two_s = Some(Duration::from_secs(2));
        // A first failure would retry after 50-100 ms; the peer asked for 2 s.
        for r in [0.0, 0.5, 1.0] {
            assert_eq!(retry_delay(1, two_s, base, max, r), Duration::from_secs(2));
        }
        // A backoff already longer than the peer asked for is kept.
        assert_eq!(retry_delay(20, two_s, base, max, 1.0), BACKOFF_MAX);
        // A peer cannot park us for a day.
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(86_400)), base, max, 0.0),
            RETRY_AFTER_MAX
        );
        assert_eq!(
            retry_delay(1, Some(Duration::ZERO), base, max, 0.0),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn retry_after_is_parsed_as_seconds_or_http_date() {
        // 2015-10-21T07:28:00Z
        let now = 1_445_412_480;
        let parse = |v| parse_retry_after(v, now);
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:30:30 GMT"),
            Some(Duration::from_secs(150))
        );
        assert_eq!(
            parse("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO),
            "a past date is no wait"
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0),
            Some(Duration::from_secs(784_111_777))
        );
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2028 00:00:01 GMT", 0),
            Some(Duration::from_secs(1_835_395_201))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 24:28:00 GMT",
            "Wed, 21 Oct 2015 07:28 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn breaker_failures_keep_counting_while_it_reopens() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, Duration::from_secs(1));
        for _ in 0..10 {
            breaker.on_failure(t0);
        }
        assert_eq!(breaker.failures(), 10);
        assert!(breaker.is_open(t0));
    }
}
