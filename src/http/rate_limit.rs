//! The per-address rate limit of the client plane: a token bucket per client IP address
//! (`MESH_DM_CLIENT_RATE_PER_S`, burst `MESH_DM_CLIENT_RATE_BURST`), kept by `governor`.
//!
//! A valid signature costs an attacker nothing (fresh keys are free), so the client plane limits
//! what one address may ask. [`limit_client_rate`] wraps each client route: a request over the
//! limit gets 429 `rate_limited` with `Retry-After` (whole seconds, at least 1), its body is not
//! read and its connection is closed (see [`super::body`]), and `dm_rate_limited_total{plane=
//! "client"}` counts it. `/health`, `/metrics` and the peer plane (authenticated peers) are not
//! limited. Users behind one NAT or proxy share an address, and so one bucket.
//!
//! The keyed store grows with the addresses seen; [`ClientRateLimit::start_housekeeping`] drops,
//! every few seconds, the buckets that have refilled (an address that stopped sending), so memory
//! is bounded by the addresses active in the last few seconds.

use super::AppState;
use super::body::UnreadBody;
use super::error::ApiError;
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, ResponseError as _, web};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// How often buckets of addresses that stopped sending are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

type KeyedLimiter<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The client plane's per-address limiter; `None` inside when the limit is off. The clock is a
/// parameter so that tests can move time by hand.
pub struct ClientRateLimit<C: Clock = DefaultClock> {
    limiter: Option<(KeyedLimiter<C>, C)>,
}

impl ClientRateLimit {
    /// `rate_per_s` requests per second per address with `burst` at once; a rate of 0 (or one
    /// too small to express) turns the limit off.
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        Self::with_clock(rate_per_s, burst, DefaultClock::default())
    }

    /// Drops, every few seconds, the buckets that have refilled (on the current actix runtime).
    pub fn start_housekeeping(self: &Arc<Self>) {
        if self.limiter.is_none() {
            return;
        }
        let this = Arc::clone(self);
        actix_rt::spawn(async move {
            let mut interval = actix_rt::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                interval.tick().await;
                this.forget_idle_addresses();
            }
        });
    }
}

impl<C: Clock + Clone> ClientRateLimit<C> {
    /// [`ClientRateLimit::new`] on `clock`.
    pub fn with_clock(rate_per_s: f64, burst: u32, clock: C) -> Self {
        let quota = (rate_per_s > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / rate_per_s).ok())
            .flatten()
            .and_then(Quota::with_period)
            .map(|quota| quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)));
        let limiter = quota.map(|quota| {
            (
                KeyedLimiter::dashmap_with_clock(quota, clock.clone()),
                clock,
            )
        });
        Self { limiter }
    }

    /// `Err(wait)` when `address` must wait before its next request.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let Some((limiter, clock)) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }

    /// Addresses with a bucket in memory.
    pub fn tracked_addresses(&self) -> usize {
        self.limiter
            .as_ref()
            .map_or(0, |(limiter, _)| limiter.len())
    }

    /// Drops the buckets that have refilled: their addresses stopped sending, and a fresh
    /// bucket is the same as a full one.
    pub fn forget_idle_addresses(&self) {
        if let Some((limiter, _)) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Whole seconds to announce in `Retry-After`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

/// Middleware of each client route: 429 `rate_limited` past the address's rate.
pub async fn limit_client_rate(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let address = req.peer_addr().map(|addr| addr.ip());
    let refused = match (state, address) {
        (Some(state), Some(address)) => state
            .client_rate
            .check(address)
            .err()
            .map(|wait| (state, wait)),
        _ => None,
    };
    let Some((state, wait)) = refused else {
        return next.call(req).await;
    };
    state
        .metrics
        .rate_limited_total
        .with_label_values(&["client"])
        .inc();
    let retry_after_s = retry_after_seconds(wait);
    let error = ApiError::RateLimited {
        detail: format!(
            "Too many requests from your address; retry in {retry_after_s} s. Clients behind one NAT or proxy share this limit."
        ),
        retry_after_s,
    };
    let (request, payload) = req.into_parts();
    // The body is not read: its connection closes after the 429.
    request
        .extensions_mut()
        .insert(UnreadBody::new(Box::new(payload)));
    Ok(ServiceResponse::new(request, error.error_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
    }

    #[test]
    fn each_address_has_its_own_bucket_and_a_zero_rate_is_no_limit() {
        let limit = ClientRateLimit::new(1.0, 3);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = limit.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check(b).is_ok(), "another address is not affected");
        assert_eq!(limit.tracked_addresses(), 2);

        let off = ClientRateLimit::new(0.0, 1);
        off.forget_idle_addresses();
        for _ in 0..10_000 {
            assert!(off.check(a).is_ok());
        }
        assert_eq!(off.tracked_addresses(), 0);
    }

    #[test]
    fn buckets_of_addresses_that_stopped_sending_are_forgotten() {
        let clock = governor::clock::FakeRelativeClock::default();
        let limit = ClientRateLimit::with_clock(10.0, 20, clock.clone());
        for i in 0..1000u32 {
            let address = IpAddr::from(i.to_be_bytes());
            assert!(limit.check(address).is_ok());
        }
        let busy: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..20 {
            assert!(limit.check(busy).is_ok());
        }
        assert_eq!(limit.tracked_addresses(), 1001);
        // 250 ms later the addresses that sent one request have full buckets again; `busy`
        // has two or three requests back, not its whole burst.
        clock.advance(Duration::from_millis(250));
        limit.forget_idle_addresses();
        assert_eq!(limit.tracked_addresses(), 1);
        let allowed = (0..20).take_while(|_| limit.check(busy).is_ok()).count();
        assert!(
            (1..=3).contains(&allowed),
            "busy's bucket was kept: {allowed}"
        );
        clock.advance(Duration::from_secs(5));
        limit.forget_idle_addresses();
        assert_eq!(limit.tracked_addresses(), 0);
    }
}
