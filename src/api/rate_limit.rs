//! Per-tenant token bucket on Phase 1 (creating batches), with `governor`.
//!
//! The bucket is per node: with N nodes behind a load balancer a tenant gets up to N times the
//! configured rate. Phase 2 is bounded by the load shield instead, since a stream's cost is its
//! items, not its request.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::auth::Tenant;
use super::error::{ApiError, RATE_LIMIT_LIMIT, RATE_LIMIT_REMAINING};
use super::state::ApiState;
use crate::metrics;
use crate::tasks::{self, NamedTask};

type TenantBuckets =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// What the bucket said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Allowed; `remaining` more requests fit in the bucket right now.
    Allowed { limit: u32, remaining: u32 },
    /// Refused; the next request fits after `retry_after`.
    Limited { limit: u32, retry_after: Duration },
    /// No limit is configured.
    Unlimited,
}

pub struct CreateRateLimiter {
    buckets: Option<TenantBuckets>,
    burst: u32,
    clock: DefaultClock,
}

impl CreateRateLimiter {
    /// `per_second` of 0 turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = burst.max(1);
        let buckets = NonZeroU32::new(per_second).map(|rate| {
            let quota = Quota::per_second(rate)
                .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"));
            RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
        });
        Self {
            buckets,
            burst,
            clock: DefaultClock::default(),
        }
    }

    pub fn check(&self, tenant: &str) -> RateDecision {
        let Some(buckets) = &self.buckets else {
            return RateDecision::Unlimited;
        };
        match buckets.check_key(&tenant.to_owned()) {
            Ok(snapshot) => RateDecision::Allowed {
                limit: self.burst,
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => RateDecision::Limited {
                limit: self.burst,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Forgets tenants whose buckets are full again, so idle tenants cost no memory.
    pub fn forget_idle_tenants(&self) {
        if let Some(buckets) = &self.buckets {
            buckets.retain_recent();
        }
    }
}

/// How often idle tenants' buckets are forgotten.
const FORGET_IDLE_PERIOD: Duration = Duration::from_secs(60);

/// The limiter's upkeep: forgets idle tenants every minute until shutdown.
pub fn forget_idle_tenants_every_minute(
    limiter: Arc<CreateRateLimiter>,
    shutdown: CancellationToken,
) -> NamedTask {
    tasks::every(
        "rate-limit-buckets",
        FORGET_IDLE_PERIOD,
        FORGET_IDLE_PERIOD,
        shutdown,
        move || {
            limiter.forget_idle_tenants();
            std::future::ready(())
        },
    )
}

/// Middleware of Phase 1: a tenant over its rate gets `429` before the request is looked at;
/// allowed answers say how much of the bucket is left.
pub async fn limit_creates(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Tenant(tenant) = match Tenant::from_request_parts(&mut parts, &state).await {
        Ok(tenant) => tenant,
        Err(unauthorized) => return unauthorized.into_response(),
    };
    match state.create_limiter.check(&tenant) {
        RateDecision::Unlimited => next.run(Request::from_parts(parts, body)).await,
        RateDecision::Allowed { limit, remaining } => {
            let mut response = next.run(Request::from_parts(parts, body)).await;
            let headers = response.headers_mut();
            headers.insert(RATE_LIMIT_LIMIT, limit.into());
            headers.insert(RATE_LIMIT_REMAINING, remaining.into());
            response
        }
        RateDecision::Limited { limit, retry_after } => {
            metrics::request_shed("rate_limited");
            // Whole seconds, rounded up: a client waiting that long is let through.
            let retry_after_seconds =
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            ApiError::RateLimited {
                retry_after_seconds: retry_after_seconds.max(1),
                limit,
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_beyond_its_burst_is_limited_and_others_are_not() {
        let limiter = CreateRateLimiter::new(1, 3);
        for remaining in [2, 1, 0] {
            assert_eq!(
                limiter.check("acme"),
                RateDecision::Allowed {
                    limit: 3,
                    remaining
                }
            );
        }
        match limiter.check("acme") {
            RateDecision::Limited { limit, retry_after } => {
                assert_eq!(limit, 3);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        assert!(matches!(
            limiter.check("globex"),
            RateDecision::Allowed { remaining: 2, .. }
        ));
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        let limiter = CreateRateLimiter::new(0, 1);
        for _ in 0..10 {
            assert_eq!(limiter.check("acme"), RateDecision::Unlimited);
        }
    }
}
