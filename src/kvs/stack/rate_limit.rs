//! Client-side rate limiting per KVS operation, adaptive to throttling.
//!
//! Each operation has a token bucket. A request takes a token, waiting for
//! one if none is left, so a burst of calls is spread out locally instead of
//! being answered `ClientLimitExceededException` by KVS. When KVS throttles
//! anyway (other pods share the account's quota), the rate drops by 30%,
//! once per round of requests; it grows back with time and with each
//! success, up to the configured ceiling: the idea of the SDKs' adaptive
//! retry mode, with linear rather than cubic recovery.
//!
//! The limiter never makes a call wait for nothing:
//! - a wait that would end after the call's deadline, or would queue the
//!   call behind more than a second's worth of tokens, is refused at once
//!   with [`Error::RateLimited`] and takes no token;
//! - a call that goes away while waiting gives its token back;
//! - the rate recovers with time, so a limiter pushed to its floor by a
//!   storm cannot stay there once KVS stops throttling.
//!
//! This layer sits above the credentials and the upstream concurrency limit
//! (see `stack/mod.rs`), so a call waiting here holds no upstream slot.
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
    instruments,
    kvs::{Error, ErrorKind, Operation, UpstreamRequest},
};

/// Never adapt below this: a trickle still probes whether KVS recovered.
const MIN_RATE: f64 = 1.0;
const DECREASE: f64 = 0.7;
/// Share of the ceiling won back per success.
const RECOVERY_PER_SUCCESS: f64 = 0.01;
/// Share of the ceiling won back per second without throttling: from the
/// floor to the ceiling in 20 s even when no call gets through.
const RECOVERY_PER_SECOND: f64 = 0.05;
/// Longest queue, in seconds of tokens at the current rate.
const MAX_DEBT_SECONDS: f64 = 1.0;

/// A token bucket whose rate adapts between `MIN_RATE` and `ceiling`.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    ceiling: f64,
    rate: f64,
    /// Tokens available; negative when requests are queued for future ones,
    /// never below `-rate * MAX_DEBT_SECONDS`.
    tokens: f64,
    updated: Instant,
    /// When the rate was last cut: throttles of requests sent by then were
    /// answers to the old rate, already acted on.
    last_decrease: Option<Instant>,
}

impl Bucket {
    /// A bucket allowing `per_second`, with a burst of one second's worth.
    pub(super) fn new(per_second: f64, now: Instant) -> Self {
        let ceiling = per_second.max(MIN_RATE);
        Self {
            ceiling,
            rate: ceiling,
            tokens: ceiling,
            updated: now,
            last_decrease: None,
        }
    }

    /// Takes a token and says how long to wait before using it, or `None`
    /// (taking nothing) when the wait would end after `deadline` or queue
    /// behind more than a second's worth of tokens.
    pub(super) fn acquire(&mut self, now: Instant, deadline: Instant) -> Option<Duration> {
        self.refill(now);
        let after = self.tokens - 1.0;
        if after < -self.rate * MAX_DEBT_SECONDS {
            return None;
        }
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / self.rate)
        };
        if now + wait > deadline {
            return None;
        }
        self.tokens = after;
        Some(wait)
    }

    /// Gives back a token whose wait was abandoned.
    pub(super) fn release(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.rate);
    }

    /// KVS throttled a request sent at `sent`.
    pub(super) fn throttled(&mut self, now: Instant, sent: Instant) {
        self.refill(now);
        if self.last_decrease.is_some_and(|cut| sent <= cut) {
            return;
        }
        self.rate = (self.rate * DECREASE).max(MIN_RATE);
        // No burst above the new rate, and no queue longer than allowed.
        self.tokens = self.tokens.clamp(-self.rate * MAX_DEBT_SECONDS, self.rate);
        self.last_decrease = Some(now);
    }

    pub(super) fn succeeded(&mut self, now: Instant) {
        self.refill(now);
        self.rate = (self.rate + self.ceiling * RECOVERY_PER_SUCCESS).min(self.ceiling);
    }

    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.rate = (self.rate + self.ceiling * RECOVERY_PER_SECOND * elapsed).min(self.ceiling);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }
}

/// Per-operation rates; `None` leaves an operation unlimited.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub discovery: Option<f64>,
    pub join: Option<f64>,
    /// The readiness checks' Describe* requests.
    pub describe: Option<f64>,
}

type SharedBucket = Arc<Mutex<Bucket>>;

#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    discovery: Option<SharedBucket>,
    join: Option<SharedBucket>,
    describe: Option<SharedBucket>,
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: RateLimitLayer,
}

/// A token taken for a future instant; given back unless kept.
struct Reservation<'a> {
    bucket: &'a Mutex<Bucket>,
    kept: bool,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    pub fn new(limits: RateLimits) -> Self {
        let bucket =
            |rate: Option<f64>| rate.map(|r| Arc::new(Mutex::new(Bucket::new(r, Instant::now()))));
        Self {
            discovery: bucket(limits.discovery),
            join: bucket(limits.join),
            describe: bucket(limits.describe),
        }
    }

    fn bucket(&self, operation: Operation) -> Option<SharedBucket> {
        match operation {
            // Signaling APIs share the discovery bucket: KVS's quotas for
            // them are per account (and per channel), like discovery's.
            Operation::GetSignalingChannelEndpoint | Operation::GetIceServerConfig => {
                self.discovery.clone()
            }
            Operation::JoinStorageSession | Operation::JoinStorageSessionAsViewer => {
                self.join.clone()
            }
            // One bucket for the three: DescribeMediaStorageConfiguration's
            // quota (50 per account) is the tightest, and a readiness check
            // makes one of each.
            Operation::DescribeSignalingChannel
            | Operation::DescribeMediaStorageConfiguration
            | Operation::DescribeStream => self.describe.clone(),
            // EnsureStorage's reads and writes are control-plane calls of
            // the same account-wide quotas, a handful per call.
            Operation::DescribeMappedResourceConfiguration
            | Operation::CreateStream
            | Operation::UpdateDataRetention
            | Operation::UpdateMediaStorageConfiguration => self.describe.clone(),
            // A stream's data endpoint is found as a channel's endpoints
            // are: an account-wide control-plane quota.
            Operation::GetDataEndpoint => self.discovery.clone(),
            // KVS limits it per stream, not per account: the per-stream
            // pacer below this layer keeps that limit.
            Operation::ListFragments
            | Operation::GetHlsStreamingSessionUrl
            | Operation::GetDashStreamingSessionUrl => None,
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

impl<S, R> tower::Service<UpstreamRequest> for RateLimit<S>
where
    S: tower::Service<UpstreamRequest, Response = R, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    R: Send,
{
    type Response = R;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

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
            let wait = lock(&bucket).acquire(Instant::now(), req.deadline);
            let Some(wait) = wait else {
                instruments::rate_limit_refused(operation);
                return Err(Error::RateLimited { operation });
            };
            if !wait.is_zero() {
                instruments::rate_limited(operation);
                let reservation = Reservation::new(&bucket);
                tokio::time::sleep(wait).await;
                reservation.keep();
            }
            let sent = Instant::now();
            let result = inner.call(req).await;
            let mut bucket = lock(&bucket);
            match &result {
                Err(Error::Service(e)) if e.kind == ErrorKind::Throttling => {
                    bucket.throttled(Instant::now(), sent);
                    tracing::debug!(
                        operation,
                        rate = bucket.rate(),
                        "KVS throttled; slowing down"
                    );
                }
                Ok(_) => bucket.succeeded(Instant::now()),
                Err(_) => {}
            }
            instruments::rate_limit(operation, bucket.rate());
            result
        })
    }
}

// === impl Reservation ===

impl<'a> Reservation<'a> {
    fn new(bucket: &'a Mutex<Bucket>) -> Self {
        Self {
            bucket,
            kept: false,
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(self.bucket).release(Instant::now());
        }
    }
}

fn lock(bucket: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // The bucket is plain numbers; a panic elsewhere cannot corrupt it.
    bucket.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    use crate::kvs::stack::mock;

    const FAR: Duration = Duration::from_secs(3600);

    #[test]
    fn spreads_a_burst_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(
                b.acquire(t0, t0 + FAR),
                Some(Duration::ZERO),
                "a second's burst goes at once"
            );
        }
        assert_eq!(b.acquire(t0, t0 + FAR), Some(Duration::from_millis(100)));
        assert_eq!(b.acquire(t0, t0 + FAR), Some(Duration::from_millis(200)));
        // Half a second later, five tokens were earned, two already spoken for.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.acquire(later, later + FAR), Some(Duration::ZERO));
    }

    #[test]
    fn refuses_waits_past_the_deadline_or_a_second_of_debt_and_keeps_no_token() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, t0);
        for _ in 0..10 {
            b.acquire(t0, t0).unwrap();
        }
        // The next token is 100 ms away: too late for a 50 ms deadline.
        assert_eq!(b.acquire(t0, t0 + Duration::from_millis(50)), None);
        assert_eq!(
            b.acquire(t0, t0 + Duration::from_millis(100)),
            Some(Duration::from_millis(100)),
            "the refusal took no token"
        );
        for _ in 0..9 {
            b.acquire(t0, t0 + FAR).unwrap();
        }
        assert_eq!(b.acquire(t0, t0 + FAR), None, "a second's worth is queued");
    }

    #[test]
    fn cuts_once_per_round_and_recovers_with_successes_and_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, t0);
        b.throttled(t0, t0);
        assert!((b.rate() - 70.0).abs() < 1e-9);
        // Answers to requests sent before the cut say nothing new.
        let t1 = t0 + Duration::from_millis(1);
        b.throttled(t1, t0);
        assert!((b.rate() - 70.0).abs() < 0.1);
        // A request sent after the cut and throttled again cuts again.
        b.throttled(t1, t1);
        assert!((b.rate() - 49.0).abs() < 0.1);
        for _ in 0..10 {
            b.succeeded(t1);
        }
        assert!((b.rate() - 59.0).abs() < 0.1);
        // Ten seconds without throttling win back half the ceiling.
        b.succeeded(t1 + Duration::from_secs(10));
        assert_eq!(b.rate(), 100.0, "never above the ceiling");
        let mut t = t1;
        for _ in 0..100 {
            t += Duration::from_micros(1);
            b.throttled(t, t);
        }
        assert_eq!(b.rate(), MIN_RATE, "never below the floor");
        // Even with no call getting through, time alone restores the rate.
        let recovered = t + Duration::from_secs(20);
        b.acquire(recovered, recovered + FAR);
        assert_eq!(b.rate(), 100.0);
    }

    fn request(operation: Operation, deadline: Instant) -> UpstreamRequest {
        UpstreamRequest::for_tests(operation, deadline)
    }

    fn limited(
        per_second: f64,
    ) -> (
        RateLimit<mock::Mock<UpstreamRequest, ()>>,
        mock::Handle<UpstreamRequest, ()>,
    ) {
        let (mock, handle) = mock::pair::<UpstreamRequest, ()>();
        let layer = RateLimitLayer::new(RateLimits {
            discovery: Some(per_second),
            join: None,
            describe: None,
        });
        (tower::Layer::layer(&layer, mock), handle)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_cannot_end_before_the_deadline_fails_at_once() {
        let (svc, mut handle) = limited(1.0);
        handle.allow(10);
        let now = Instant::now();
        let first = svc
            .clone()
            .oneshot(request(Operation::GetSignalingChannelEndpoint, now + FAR));
        let first = tokio::spawn(first);
        handle.next_request().await.unwrap().1.send_response(());
        first.await.unwrap().unwrap();
        // The next token is a second away; this call has 500 ms.
        let refused = svc
            .clone()
            .oneshot(request(
                Operation::GetSignalingChannelEndpoint,
                now + Duration::from_millis(500),
            ))
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::RateLimited {
                    operation: "GetSignalingChannelEndpoint"
                })
            ),
            "{refused:?}"
        );
        assert_eq!(now.elapsed(), Duration::ZERO, "refused without waiting");
        // Joins have no limit here and are never held up by discovery's.
        let join = tokio::spawn(
            svc.clone()
                .oneshot(request(Operation::JoinStorageSession, now + FAR)),
        );
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(());
        join.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_token_back() {
        let (svc, mut handle) = limited(1.0);
        handle.allow(10);
        let now = Instant::now();
        let op = Operation::GetSignalingChannelEndpoint;
        let first = tokio::spawn(svc.clone().oneshot(request(op, now + FAR)));
        handle.next_request().await.unwrap().1.send_response(());
        first.await.unwrap().unwrap();

        // A caller queues for the next token (1 s away), then gives up.
        let waiting = tokio::spawn(svc.clone().oneshot(request(op, now + FAR)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiting.abort();
        let _ = waiting.await;

        // Had the token stayed taken, the next would be 2 s away; it is
        // 1 s away from the start, as if the cancelled caller never came.
        let next = tokio::spawn(svc.clone().oneshot(request(op, now + FAR)));
        handle.next_request().await.unwrap().1.send_response(());
        next.await.unwrap().unwrap();
        let waited = now.elapsed();
        assert!(
            waited >= Duration::from_millis(999) && waited < Duration::from_millis(1100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_slows_down_and_time_alone_recovers() {
        let (svc, mut handle) = limited(10.0);
        handle.allow(1000);
        let op = Operation::GetSignalingChannelEndpoint;
        let throttled = || {
            Error::Service(crate::kvs::ServiceError::from_response(
                400,
                &http::HeaderMap::from_iter([(
                    http::HeaderName::from_static("x-amzn-errortype"),
                    http::HeaderValue::from_static("ClientLimitExceededException"),
                )]),
                b"",
            ))
        };
        // A storm: every request throttled for a while.
        let storm_end = Instant::now() + Duration::from_secs(5);
        let answered = Arc::new(AtomicU32::new(0));
        let mut calls = Vec::new();
        for _ in 0..40 {
            let svc = svc.clone();
            calls.push(tokio::spawn(async move {
                svc.oneshot(request(op, Instant::now() + Duration::from_secs(2)))
                    .await
            }));
        }
        while Instant::now() < storm_end {
            tokio::select! {
                next = handle.next_request() => {
                    next.unwrap().1.send_error(throttled());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        for call in calls {
            let _ = call.await;
        }
        assert!(answered.load(Ordering::Relaxed) >= 1);
        // After the storm, with no success to learn from, the limiter lets
        // calls through again within seconds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        let after = tokio::spawn(
            svc.clone()
                .oneshot(request(op, started + Duration::from_secs(1))),
        );
        handle.next_request().await.unwrap().1.send_response(());
        after.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
