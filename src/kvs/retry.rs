//! Retries in the AWS SDKs' "standard" mode: which failures are worth another
//! attempt, how long to wait before it, and the tower `Policy` that applies
//! both without ever starting an attempt after the call's deadline.
//!
//! Classification and backoff are pure functions of their inputs (the jitter
//! is passed in), so they are tested without clocks or randomness.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{Error, ErrorKind, ServiceError, UpstreamRequest, UpstreamResponse};
use crate::{clock::SkewCorrectedClock, instruments};

/// Why a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// KVS asked us to slow down.
    Throttling,
    /// A 5xx that is usually gone on the next attempt.
    TransientServer,
    /// The connection failed, was reset, or a pooled connection had died.
    Transport,
    /// The attempt timed out.
    Timeout,
    /// KVS rejected the credentials as expired: refresh them, then retry once.
    ExpiredCredentials,
    /// KVS rejected the request time as too skewed: correct the clock by the
    /// server's `Date`, re-sign, retry once.
    ClockSkew,
}

impl RetryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryKind::Throttling => "throttling",
            RetryKind::TransientServer => "server_error",
            RetryKind::Transport => "transport",
            RetryKind::Timeout => "timeout",
            RetryKind::ExpiredCredentials => "expired_credentials",
            RetryKind::ClockSkew => "clock_skew",
        }
    }
}

/// Whether an attempt's failure is retryable, and as what. Client faults
/// (InvalidArgument, AccessDenied, ResourceNotFound, the viewer limit, ...)
/// never are.
pub fn classify(err: &Error) -> Option<RetryKind> {
    match err {
        Error::Service(e) => match e.kind {
            ErrorKind::Throttling => Some(RetryKind::Throttling),
            ErrorKind::Transient => Some(RetryKind::TransientServer),
            ErrorKind::ExpiredCredentials => Some(RetryKind::ExpiredCredentials),
            ErrorKind::ClockSkew => Some(RetryKind::ClockSkew),
            ErrorKind::ViewerLimit
            | ErrorKind::NotFound
            | ErrorKind::AccessDenied
            | ErrorKind::InvalidArgument
            | ErrorKind::ResourceInUse
            | ErrorKind::VersionMismatch
            | ErrorKind::NoDataRetention
            | ErrorKind::AccountLimit
            | ErrorKind::NotPlayable
            | ErrorKind::AuthRejected
            | ErrorKind::Other => None,
        },
        Error::Transport(_) | Error::Connect(_) => Some(RetryKind::Transport),
        Error::AttemptTimeout(_) => Some(RetryKind::Timeout),
        _ => None,
    }
}

/// Exponential backoff with full jitter: before retry `n` (1-based), wait
/// `jitter * min(base * 2^(n-1), max)` with `jitter` uniform in `[0, 1)`.
/// Throttling starts from a longer base, as the SDKs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub throttling_base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            throttling_base: Duration::from_millis(500),
            max: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    /// The wait before retrying after `err`: KVS's `x-amz-retry-after` when
    /// it sent one (as the SDKs honour it), never beyond our longest
    /// backoff; the jittered backoff otherwise.
    pub fn delay_after(&self, err: &Error, kind: RetryKind, retry: u32, jitter: f64) -> Duration {
        match err {
            Error::Service(ServiceError {
                retry_after: Some(asked),
                ..
            }) => (*asked).min(self.max),
            _ => self.delay(kind, retry, jitter),
        }
    }

    pub fn delay(&self, kind: RetryKind, retry: u32, jitter: f64) -> Duration {
        let base = match kind {
            RetryKind::Throttling => self.throttling_base,
            // A refreshed credential is a new situation, not a busy server.
            RetryKind::ExpiredCredentials | RetryKind::ClockSkew => return Duration::ZERO,
            _ => self.base,
        };
        let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(30));
        exp.min(self.max).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Tokens a successful call without retries returns to the quota.
const NO_RETRY_INCREMENT: u32 = 1;
const RETRY_COST: u32 = 5;
const TIMEOUT_RETRY_COST: u32 = 10;

/// The retry quota shared by the whole process: the SDKs' token bucket
/// (500 tokens; a retry costs 5, a retry after a timeout 10; a success pays
/// back). During an outage the bucket empties and calls fail fast instead
/// of multiplying the load on KVS by the attempt limit.
#[derive(Debug)]
pub struct RetryQuota {
    tokens: std::sync::atomic::AtomicU32,
    capacity: u32,
}

impl RetryQuota {
    pub fn new(capacity: u32) -> Self {
        instruments::retry_quota(capacity);
        Self {
            tokens: capacity.into(),
            capacity,
        }
    }

    /// Takes the cost of a retry of `kind`, or `None` if too few tokens are
    /// left.
    pub fn try_acquire(&self, kind: RetryKind) -> Option<u32> {
        use std::sync::atomic::Ordering;
        let cost = match kind {
            RetryKind::Timeout => TIMEOUT_RETRY_COST,
            _ => RETRY_COST,
        };
        let left = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
            .ok()?
            - cost;
        instruments::retry_quota(left);
        Some(cost)
    }

    pub fn refund(&self, tokens: u32) {
        use std::sync::atomic::Ordering;
        let capacity = self.capacity;
        let before = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + tokens).min(capacity))
            })
            .unwrap_or(capacity);
        if before < capacity {
            instruments::retry_quota((before + tokens).min(capacity));
        }
    }

    pub fn available(&self) -> u32 {
        self.tokens.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The per-call retry state. tower clones the policy for every call, so the
/// counters here belong to one call; the quota is shared.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    /// Whether a join that may have reached KVS is retried (a second offer).
    retry_sent_joins: bool,
    quota: Arc<RetryQuota>,
    clock: Arc<SkewCorrectedClock>,
    attempts: u32,
    last_cost: Option<u32>,
    refreshed_credentials: bool,
    corrected_clock: bool,
    /// Where each backoff's jitter (0 to 1) comes from: random, or fixed in
    /// tests.
    jitter: fn() -> f64,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    pub fn new(
        max_attempts: u32,
        backoff: Backoff,
        retry_sent_joins: bool,
        quota: Arc<RetryQuota>,
        clock: Arc<SkewCorrectedClock>,
    ) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            backoff,
            retry_sent_joins,
            quota,
            clock,
            attempts: 1,
            last_cost: None,
            refreshed_credentials: false,
            corrected_clock: false,
            jitter: fastrand::f64,
        }
    }

    #[cfg(test)]
    fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

impl tower::retry::Policy<UpstreamRequest, UpstreamResponse, Error> for RetryPolicy {
    type Future = Wait;

    fn retry(
        &mut self,
        req: &mut UpstreamRequest,
        result: &mut Result<UpstreamResponse, Error>,
    ) -> Option<Wait> {
        let err = match result {
            Ok(_) => {
                // A success pays back what its retry cost (or a token for a
                // first-time success), so the quota refills as KVS recovers.
                self.quota
                    .refund(self.last_cost.take().unwrap_or(NO_RETRY_INCREMENT));
                return None;
            }
            Err(err) => err,
        };
        let kind = classify(err)?;
        let operation = req.operation.name();
        if !self.retry_sent_joins && req.operation.is_join() && err.may_have_reached_kvs() {
            return None;
        }
        // A second playback session could end someone else's (KVS keeps
        // 10 per stream): only what surely did not open one is retried.
        if req.operation.opens_session() && err.may_have_reached_kvs() {
            return None;
        }

        if kind == RetryKind::ExpiredCredentials {
            // One forced refresh per call, outside the attempt budget: the
            // attempt failed because of our state, not KVS's.
            if self.refreshed_credentials {
                return None;
            }
            self.refreshed_credentials = true;
            instruments::retry(operation, kind.as_str());
            next_attempt(req, kind);
            // The request's own credentials: its channel's account's.
            let credentials = req.credentials.clone();
            return Some(Box::pin(async move { credentials.invalidate() }));
        }

        if kind == RetryKind::ClockSkew {
            // Once per call: if the corrected time is refused too, the
            // problem is not our clock.
            let Error::Service(ServiceError {
                server_date: Some(server_now),
                ..
            }) = err
            else {
                return None;
            };
            if self.corrected_clock {
                return None;
            }
            self.corrected_clock = true;
            let skew = self.clock.correct(*server_now);
            tracing::warn!(
                skew_seconds = skew,
                "KVS says our clock is off; correcting by its Date header"
            );
            instruments::clock_skew(skew);
            instruments::retry(operation, kind.as_str());
            next_attempt(req, kind);
            return Some(Box::pin(std::future::ready(())));
        }

        if self.attempts >= self.max_attempts {
            return None;
        }
        let delay = self
            .backoff
            .delay_after(err, kind, self.attempts, (self.jitter)());
        // Waiting past the deadline only to be cut off would hide the real
        // error behind DEADLINE_EXCEEDED; answer with the real one now.
        if Instant::now() + delay >= req.deadline {
            return None;
        }
        let Some(cost) = self.quota.try_acquire(kind) else {
            instruments::retry_quota_exhausted(operation);
            let last = std::mem::replace(err, Error::DeadlineExceeded);
            *err = Error::RetryQuotaExhausted(Box::new(last));
            return None;
        };
        self.last_cost = Some(cost);
        self.attempts += 1;
        instruments::retry(operation, kind.as_str());
        next_attempt(req, kind);
        tracing::debug!(
            operation,
            reason = kind.as_str(),
            ?delay,
            attempt = self.attempts,
            "retrying"
        );
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, req: &UpstreamRequest) -> Option<UpstreamRequest> {
        Some(req.clone())
    }
}

/// Numbers the retry about to be sent and says why, for its span: tower
/// sends the request the policy was given, so the change reaches it.
fn next_attempt(req: &mut UpstreamRequest, kind: RetryKind) {
    req.attempt += 1;
    req.retry_reason = Some(kind.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::Operation;

    fn service(status: u16, code: &str) -> Error {
        Error::Service(ServiceError::from_response(
            status,
            &http::HeaderMap::from_iter([(
                http::HeaderName::from_static("x-amzn-errortype"),
                http::HeaderValue::from_str(code).unwrap(),
            )]),
            b"",
        ))
    }

    #[test]
    fn retries_what_standard_mode_retries_and_kvs_throttling() {
        let cases = [
            (
                service(400, "ClientLimitExceededException"),
                Some(RetryKind::Throttling),
            ),
            (service(429, "x"), Some(RetryKind::Throttling)),
            (
                service(503, "ServiceUnavailable"),
                Some(RetryKind::TransientServer),
            ),
            (
                service(400, "RequestTimeoutException"),
                Some(RetryKind::TransientServer),
            ),
            (service(501, "x"), None),
            (
                service(403, "ExpiredTokenException"),
                Some(RetryKind::ExpiredCredentials),
            ),
            (
                service(403, "RequestTimeTooSkewed"),
                Some(RetryKind::ClockSkew),
            ),
            (service(400, "InvalidArgumentException"), None),
            (service(400, "ResourceInUseException"), None),
            (service(403, "InvalidSignatureException"), None),
            (
                Error::Transport("connection refused".into()),
                Some(RetryKind::Transport),
            ),
            (
                Error::AttemptTimeout(Duration::from_secs(1)),
                Some(RetryKind::Timeout),
            ),
            (Error::DeadlineExceeded, None),
            (Error::RateLimited { operation: "x" }, None),
            (Error::Credentials("no provider".into()), None),
        ];
        for (err, want) in cases {
            assert_eq!(classify(&err), want, "{err:?}");
        }
    }

    #[test]
    fn quota_charges_retries_refunds_successes_and_runs_dry() {
        let q = RetryQuota::new(20);
        assert_eq!(q.try_acquire(RetryKind::TransientServer), Some(5));
        assert_eq!(q.try_acquire(RetryKind::Timeout), Some(10));
        assert_eq!(q.available(), 5);
        assert_eq!(
            q.try_acquire(RetryKind::Timeout),
            None,
            "not enough for a timeout retry"
        );
        assert_eq!(q.try_acquire(RetryKind::Throttling), Some(5));
        assert_eq!(q.try_acquire(RetryKind::Throttling), None, "empty");
        q.refund(5);
        q.refund(1);
        assert_eq!(q.available(), 6);
        q.refund(100);
        assert_eq!(q.available(), 20, "never above capacity");
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            throttling_base: Duration::from_millis(500),
            max: Duration::from_secs(2),
        };
        let full = |kind, n| b.delay(kind, n, 1.0);
        assert_eq!(
            full(RetryKind::TransientServer, 1),
            Duration::from_millis(100)
        );
        assert_eq!(
            full(RetryKind::TransientServer, 2),
            Duration::from_millis(200)
        );
        assert_eq!(full(RetryKind::Transport, 3), Duration::from_millis(400));
        assert_eq!(full(RetryKind::Throttling, 1), Duration::from_millis(500));
        assert_eq!(full(RetryKind::Throttling, 3), Duration::from_secs(2));
        assert_eq!(full(RetryKind::Timeout, 60), Duration::from_secs(2));
        assert_eq!(
            b.delay(RetryKind::TransientServer, 2, 0.5),
            Duration::from_millis(100)
        );
        assert_eq!(b.delay(RetryKind::TransientServer, 2, 0.0), Duration::ZERO);
        assert_eq!(full(RetryKind::ExpiredCredentials, 1), Duration::ZERO);

        let asked = |ms: &'static str| {
            Error::Service(ServiceError::from_response(
                429,
                &http::HeaderMap::from_iter([(
                    http::HeaderName::from_static("x-amz-retry-after"),
                    http::HeaderValue::from_static(ms),
                )]),
                b"",
            ))
        };
        let kind = RetryKind::Throttling;
        assert_eq!(
            b.delay_after(&asked("1500"), kind, 1, 0.1),
            Duration::from_millis(1500),
            "KVS's wait replaces the jittered backoff"
        );
        assert_eq!(
            b.delay_after(&asked("600000"), kind, 1, 0.1),
            Duration::from_secs(2),
            "bounded by the longest backoff"
        );
        assert_eq!(
            b.delay_after(&service(429, "x"), kind, 1, 1.0),
            Duration::from_millis(500)
        );
    }

    fn policy(max_attempts: u32, quota: u32) -> RetryPolicy {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            throttling_base: Duration::from_millis(500),
            max: Duration::from_secs(2),
        };
        let clock = Arc::new(SkewCorrectedClock::new(Arc::new(crate::clock::SystemClock)));
        RetryPolicy::new(
            max_attempts,
            backoff,
            false,
            Arc::new(RetryQuota::new(quota)),
            clock,
        )
        .with_jitter(|| 1.0)
    }

    fn request(deadline: Duration) -> UpstreamRequest {
        UpstreamRequest::for_tests(Operation::DescribeStream, Instant::now() + deadline)
    }

    fn retry(p: &mut RetryPolicy, req: &mut UpstreamRequest, err: Error) -> (Option<Wait>, Error) {
        let mut result = Err(err);
        let wait = tower::retry::Policy::retry(p, req, &mut result);
        (wait, result.expect_err("an error"))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_the_backoff_within_the_budget_and_deadline() {
        let mut p = policy(3, 500);
        let mut req = request(Duration::from_secs(10));
        let started = Instant::now();
        let (wait, _) = retry(&mut p, &mut req, service(503, "ServiceUnavailable"));
        wait.expect("a first retry").await;
        // Jitter 1.0: the full first backoff.
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!((req.attempt, req.retry_reason), (2, Some("server_error")));
        let (wait, _) = retry(&mut p, &mut req, service(503, "ServiceUnavailable"));
        wait.expect("a second retry").await;
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // The third attempt was the last.
        let (wait, _) = retry(&mut p, &mut req, service(503, "ServiceUnavailable"));
        assert!(wait.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_that_would_end_past_the_deadline_answers_the_error_now() {
        let mut p = policy(3, 500);
        // Throttling waits 500 ms; 400 ms are left.
        let mut req = request(Duration::from_millis(400));
        let (wait, err) = retry(
            &mut p,
            &mut req,
            service(400, "ClientLimitExceededException"),
        );
        assert!(wait.is_none());
        assert!(matches!(err, Error::Service(_)), "the real error: {err:?}");
        assert_eq!(req.attempt, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_are_refreshed_and_the_clock_corrected_once_per_call() {
        let mut p = policy(1, 500);
        let mut req = request(Duration::from_secs(10));
        // Outside the attempt budget (1), once.
        let expired = || service(403, "ExpiredTokenException");
        let (wait, _) = retry(&mut p, &mut req, expired());
        wait.expect("one refresh").await;
        assert_eq!(req.retry_reason, Some("expired_credentials"));
        assert!(retry(&mut p, &mut req, expired()).0.is_none());

        let skewed = || {
            Error::Service(ServiceError::from_response(
                403,
                &http::HeaderMap::from_iter([
                    (
                        http::HeaderName::from_static("x-amzn-errortype"),
                        http::HeaderValue::from_static("InvalidSignatureException"),
                    ),
                    (
                        http::header::DATE,
                        http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
                    ),
                ]),
                br#"{"message":"Signature expired: 19941106T084937Z is now earlier than ..."}"#,
            ))
        };
        let (wait, _) = retry(&mut p, &mut req, skewed());
        wait.expect("one correction").await;
        assert!(retry(&mut p, &mut req, skewed()).0.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_quota_stops_retrying_and_says_so_with_the_last_error() {
        // A server error retry costs 5 tokens; 4 are left.
        let mut p = policy(3, 4);
        let mut req = request(Duration::from_secs(10));
        let (wait, err) = retry(&mut p, &mut req, service(503, "ServiceUnavailable"));
        assert!(wait.is_none());
        match err {
            Error::RetryQuotaExhausted(last) => assert!(matches!(*last, Error::Service(_))),
            other => panic!("{other:?}"),
        }
    }
}
