//! The tower stack every KVS request goes through, outermost first:
//!
//! 1. retry: standard-mode retries within a process-wide quota, never past
//!    the call's deadline;
//! 2. rate limit: per-operation token buckets, slowing down on throttling;
//! 3. attempt metrics: per-attempt count, outcome and latency;
//! 4. attempt timeout: one stalled attempt becomes a retryable timeout;
//! 5. sign: cached credentials, SigV4 for the channel's region, with the
//!    clock corrected by KVS's `Date` when KVS reported skew;
//! 6. concurrency limit: bounds requests (and so connections) in flight;
//! 7. the pooled hyper client.

mod attempt_metrics;
mod attempt_timeout;
pub mod rate_limit;
mod sign;

use std::{sync::Arc, time::Duration};

use tower::{
    ServiceBuilder, limit::ConcurrencyLimitLayer, retry::RetryLayer, util::BoxCloneSyncService,
};

pub use self::{
    attempt_metrics::AttemptMetricsLayer,
    attempt_timeout::AttemptTimeoutLayer,
    rate_limit::{RateLimitLayer, RateLimits},
    sign::SignLayer,
};
use super::{
    Error, UpstreamRequest, UpstreamResponse,
    credentials::CredentialCache,
    http::{HttpClient, HttpConfig},
    retry::{Backoff, RetryPolicy, RetryQuota},
};
use crate::clock::{SharedClock, SkewCorrectedClock};

/// The assembled stack, cheap to clone for each call.
pub type Upstream = BoxCloneSyncService<UpstreamRequest, UpstreamResponse, Error>;

#[derive(Debug, Clone)]
pub struct StackConfig {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Tokens in the process-wide retry quota.
    pub retry_quota: u32,
    pub rate_limits: RateLimits,
    pub attempt_timeout: Duration,
    pub max_concurrency: usize,
    pub http: HttpConfig,
}

pub fn build(
    config: &StackConfig,
    credentials: Arc<CredentialCache>,
    clock: SharedClock,
) -> Result<Upstream, Error> {
    let quota = Arc::new(RetryQuota::new(config.retry_quota));
    let clock = Arc::new(SkewCorrectedClock::new(clock));
    let retry = RetryPolicy::new(
        config.max_attempts,
        config.backoff,
        credentials.clone(),
        quota,
        clock.clone(),
    );
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(RateLimitLayer::new(config.rate_limits))
        .layer(AttemptMetricsLayer)
        .layer(AttemptTimeoutLayer::new(config.attempt_timeout))
        .layer(SignLayer::new(credentials, clock))
        .layer(ConcurrencyLimitLayer::new(config.max_concurrency))
        .service(HttpClient::new(config.http.clone())?);
    Ok(BoxCloneSyncService::new(stack))
}

/// Takes the service that `poll_ready` made ready (it may hold a
/// concurrency permit) for a call that outlives `&mut self`, leaving a fresh
/// clone behind for the next `poll_ready`.
fn take_ready<S: Clone>(service: &mut S) -> S {
    let fresh = service.clone();
    std::mem::replace(service, fresh)
}
