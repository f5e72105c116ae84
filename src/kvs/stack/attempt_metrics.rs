//! Counts and times every attempt sent to KVS, by operation and outcome, and
//! counts it toward the call's attempt total for the call's log line.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::Authorized;
use crate::{
    kvs::{Error, Operation},
    metrics,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptMetricsLayer;

#[derive(Debug, Clone)]
pub struct AttemptMetrics<S> {
    inner: S,
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        operation: Operation,
        start: Instant,
    }
}

impl<S> tower::Layer<S> for AttemptMetricsLayer {
    type Service = AttemptMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptMetrics { inner }
    }
}

// === impl AttemptMetrics ===

impl<S> tower::Service<Authorized> for AttemptMetrics<S>
where
    S: tower::Service<Authorized, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Authorized) -> Self::Future {
        req.request.count_attempt();
        ResponseFuture {
            operation: req.request.operation,
            start: Instant::now(),
            inner: self.inner.call(req),
        }
    }
}

// === impl ResponseFuture ===

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        metrics::upstream_attempt(
            this.operation.name(),
            outcome(result.as_ref().err()),
            this.start.elapsed(),
        );
        Poll::Ready(result)
    }
}

/// A bounded label for an attempt's outcome: the class of KVS's answer, so
/// a misbehaving endpoint cannot blow up the metric's cardinality.
fn outcome(err: Option<&Error>) -> &'static str {
    match err {
        None => "success",
        Some(Error::Service(e)) => e.kind.as_str(),
        Some(Error::Transport(_)) => "transport_error",
        Some(Error::AttemptTimeout(_)) => "timeout",
        Some(Error::Credentials(_)) => "credentials_error",
        Some(_) => "error",
    }
}
