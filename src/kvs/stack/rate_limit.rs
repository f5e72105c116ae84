//! Client-side rate limiting per KVS operation, adaptive to throttling.
//!
//! Each operation has a token bucket. A request takes a token, waiting for
//! one if none is left, so a burst of calls is spread out locally instead of
//! being answered `ClientLimitExceededException` by KVS. When KVS throttles
//! anyway (other pods share the account's quota), the rate drops by a third;
//! each success then wins back a little, up to the configured ceiling: the
//! idea of the SDKs' adaptive retry mode, with additive rather than cubic
//! recovery.
//!
//! [`Bucket`] takes the time as an argument, so its arithmetic is tested
//! without clocks.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    kvs::{Error, Operation, UpstreamRequest, retry::RetryKind},
    metrics,
};

/// Never adapt below this: a trickle still probes whether KVS recovered.
const MIN_RATE: f64 = 1.0;
const DECREASE: f64 = 0.7;
/// Share of the ceiling won back per success.
const RECOVERY: f64 = 0.01;

/// A token bucket whose rate adapts between `MIN_RATE` and `ceiling`.
#[derive(Debug, Clone)]
pub struct Bucket {
    ceiling: f64,
    rate: f64,
    /// Tokens available; negative when requests are queued for future ones.
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A bucket allowing `per_second`, with a burst of one second's worth.
    pub fn new(per_second: f64, now: Instant) -> Self {
        let ceiling = per_second.max(MIN_RATE);
        Self {
            ceiling,
            rate: ceiling,
            tokens: ceiling,
            updated: now,
        }
    }

    /// Takes a token and says how long to wait before using it.
    pub fn acquire(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    pub fn throttled(&mut self, now: Instant) {
        self.refill(now);
        self.rate = (self.rate * DECREASE).max(MIN_RATE);
        // No burst above the new rate.
        self.tokens = self.tokens.min(self.rate);
    }

    pub fn succeeded(&mut self, now: Instant) {
        self.refill(now);
        self.rate = (self.rate + self.ceiling * RECOVERY).min(self.ceiling);
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }
}

/// Per-operation rates; `None` leaves an operation unlimited.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub discovery: Option<f64>,
    pub join: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    discovery: Option<Arc<Mutex<Bucket>>>,
    join: Option<Arc<Mutex<Bucket>>>,
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: RateLimitLayer,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    pub fn new(limits: RateLimits) -> Self {
        let bucket =
            |rate: Option<f64>| rate.map(|r| Arc::new(Mutex::new(Bucket::new(r, Instant::now()))));
        Self {
            discovery: bucket(limits.discovery),
            join: bucket(limits.join),
        }
    }

    fn bucket(&self, operation: Operation) -> Option<Arc<Mutex<Bucket>>> {
        match operation {
            Operation::GetSignalingChannelEndpoint => self.discovery.clone(),
            Operation::JoinStorageSession | Operation::JoinStorageSessionAsViewer => {
                self.join.clone()
            }
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.clone(),
        }
    }
}

// === impl RateLimit ===

impl<S> tower::Service<UpstreamRequest> for RateLimit<S>
where
    S: tower::Service<UpstreamRequest, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let Some(bucket) = self.limits.bucket(req.operation) else {
            return Box::pin(inner.call(req));
        };
        let operation = req.operation.name();
        Box::pin(async move {
            let wait = lock(&bucket).acquire(Instant::now());
            if !wait.is_zero() {
                metrics::rate_limited(operation);
                tokio::time::sleep(wait).await;
            }
            let result = inner.call(req).await;
            let mut bucket = lock(&bucket);
            match &result {
                Err(e) if crate::kvs::retry::classify(e) == Some(RetryKind::Throttling) => {
                    bucket.throttled(Instant::now());
                    tracing::debug!(
                        operation,
                        rate = bucket.rate(),
                        "KVS throttled; slowing down"
                    );
                }
                Ok(_) => bucket.succeeded(Instant::now()),
                Err(_) => {}
            }
            metrics::rate_limit(operation, bucket.rate());
            result
        })
    }
}

fn lock(bucket: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // The bucket is plain numbers; a panic elsewhere cannot corrupt it.
    bucket.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_a_burst_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(
                b.acquire(t0),
                Duration::ZERO,
                "a second's burst goes at once"
            );
        }
        assert_eq!(b.acquire(t0), Duration::from_millis(100));
        assert_eq!(b.acquire(t0), Duration::from_millis(200));
        // Half a second later, five tokens were earned, two already spoken for.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.acquire(later), Duration::ZERO);
    }

    #[test]
    fn halves_on_throttling_and_recovers_on_success() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, t0);
        b.throttled(t0);
        assert!((b.rate() - 70.0).abs() < 1e-9);
        b.throttled(t0);
        assert!((b.rate() - 49.0).abs() < 1e-9);
        for _ in 0..10 {
            b.succeeded(t0);
        }
        assert!((b.rate() - 59.0).abs() < 1e-9);
        for _ in 0..1000 {
            b.succeeded(t0);
        }
        assert_eq!(b.rate(), 100.0, "never above the ceiling");
        for _ in 0..100 {
            b.throttled(t0);
        }
        assert_eq!(b.rate(), MIN_RATE, "never below the floor");
    }
}
