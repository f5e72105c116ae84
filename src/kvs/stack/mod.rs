//! The tower stack every KVS request goes through, outermost first, in the
//! order it waits for things:
//!
//! 1. retry: standard-mode retries within a process-wide quota, never past
//!    the call's deadline;
//! 2. pace: KVS's 5 requests a second per stream for the data-plane APIs,
//!    every attempt included (`pace.rs`);
//! 3. rate limit: per-operation token buckets, slowing down on throttling;
//!    a wait that cannot end before the deadline fails at once;
//! 4. authorize: waits for credentials from the cache of the channel's
//!    account (an assumed role's, or the default chain's);
//! 5. concurrency limit: waits for an upstream slot, taken only now, after
//!    every other wait, and held for the attempt alone;
//! 6. attempt metrics: per-attempt count, outcome and latency;
//! 7. attempt timeout: one stalled attempt becomes a retryable timeout;
//! 8. sign: SigV4 for the channel's region, with the clock corrected by
//!    KVS's `Date` when KVS reported skew;
//! 9. the pooled hyper client.
//!
//! Nothing below the concurrency limit waits for anything but KVS, so an
//! upstream slot is never held by a call that is sleeping.

mod attempt_metrics;
mod attempt_timeout;
mod authorize;
mod concurrency;
pub mod pace;
mod rate_limit;
mod sign;

use std::{sync::Arc, time::Duration};

use tower::{ServiceBuilder, retry::RetryLayer, util::BoxCloneSyncService};

pub use self::{
    attempt_metrics::AttemptMetricsLayer,
    attempt_timeout::AttemptTimeoutLayer,
    authorize::{AuthorizeLayer, Authorized},
    concurrency::ConcurrencyLimitLayer,
    rate_limit::{RateLimitLayer, RateLimits},
    sign::SignLayer,
};
use super::{
    Error, UpstreamRequest, UpstreamResponse,
    retry::{Backoff, RetryPolicy, RetryQuota},
    transport::{BuildError, HttpClient, HttpConfig},
};
use crate::clock::SkewCorrectedClock;

/// The assembled stack, cheap to clone for each call.
pub type Upstream = BoxCloneSyncService<UpstreamRequest, UpstreamResponse, Error>;

#[derive(Debug, Clone)]
pub struct StackConfig {
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Retry a join that may have reached KVS (and so sent an offer)?
    pub retry_sent_joins: bool,
    /// Tokens in the process-wide retry quota.
    pub retry_quota: u32,
    pub rate_limits: RateLimits,
    pub attempt_timeout: Duration,
    pub max_concurrency: usize,
    pub http: HttpConfig,
}

pub fn build(config: &StackConfig, clock: Arc<SkewCorrectedClock>) -> Result<Upstream, BuildError> {
    let quota = Arc::new(RetryQuota::new(config.retry_quota));
    let retry = RetryPolicy::new(
        config.max_attempts,
        config.backoff,
        config.retry_sent_joins,
        quota,
        clock.clone(),
    );
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry))
        .layer(pace::PaceLayer::new(pace::MAX_KEYS))
        .layer(RateLimitLayer::new(config.rate_limits))
        .layer(AuthorizeLayer)
        .layer(ConcurrencyLimitLayer::new(config.max_concurrency))
        .layer(AttemptMetricsLayer)
        .layer(AttemptTimeoutLayer::new(config.attempt_timeout))
        .layer(SignLayer::new(clock))
        .service(HttpClient::new(config.http.clone())?);
    Ok(BoxCloneSyncService::new(stack))
}

/// Takes the service that `poll_ready` made ready for a call that outlives `&mut self`, leaving a fresh
/// clone behind for the next `poll_ready`.
fn take_ready<S: Clone>(service: &mut S) -> S {
    let fresh = service.clone();
    std::mem::replace(service, fresh)
}

/// tower-test's mock speaking the stack's error type, for the layers' unit
/// tests.
#[cfg(test)]
pub(crate) mod mock {
    use std::{
        future::Future,
        pin::Pin,
        task::{Context, Poll},
    };

    pub(crate) use tower_test::mock::Handle;

    use crate::kvs::{BoxError, Error};

    #[derive(Clone)]
    pub(crate) struct Mock<Req, Rsp>(tower_test::mock::Mock<Req, Rsp>);

    pub(crate) fn pair<Req, Rsp>() -> (Mock<Req, Rsp>, Handle<Req, Rsp>) {
        let (mock, handle) = tower_test::mock::pair();
        (Mock(mock), handle)
    }

    /// Errors sent through the handle come back as the [`Error`] they were.
    fn unbox(e: BoxError) -> Error {
        match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::Transport(e.to_string().into()),
        }
    }

    impl<Req, Rsp: Send + 'static> tower::Service<Req> for Mock<Req, Rsp> {
        type Response = Rsp;
        type Error = Error;
        type Future = Pin<Box<dyn Future<Output = Result<Rsp, Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
            self.0.poll_ready(cx).map_err(unbox)
        }

        fn call(&mut self, req: Req) -> Self::Future {
            let answer = self.0.call(req);
            Box::pin(async move { answer.await.map_err(unbox) })
        }
    }
}
