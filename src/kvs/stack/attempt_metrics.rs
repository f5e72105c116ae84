//! Counts and times every attempt sent to KVS, by operation and outcome,
//! counts it toward the call's attempt total for the call's log line, and
//! gives it a span: operation, attempt number, why it is a retry, endpoint
//! host, HTTP status and KVS request id. The span sits here, below the
//! waits for rate, credentials and an upstream slot, so it times the
//! attempt alone; it is at DEBUG, so with traces and debug logs off it is
//! never built. Nothing of the signed request (its headers, its signature)
//! is put on it, and no trace header is added to the request.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tracing::{Span, field::Empty};

use super::Authorized;
use crate::{
    instruments,
    kvs::{Error, Operation, UpstreamResponse},
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
        span: Span,
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
    S: tower::Service<Authorized, Response = UpstreamResponse, Error = Error>,
{
    type Response = UpstreamResponse;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Authorized) -> Self::Future {
        req.request.count_attempt();
        let r = &req.request;
        // Field values are only evaluated when the span is enabled.
        let span = tracing::debug_span!(
            "kvs_attempt",
            otel.name = r.operation.name(),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "aws-api",
            rpc.service = "KinesisVideo",
            rpc.method = r.operation.name(),
            // OTel exports unsigned integers as strings; these are small.
            kvs.attempt = i64::from(r.attempt),
            kvs.retry_reason = r.retry_reason,
            server.address = r.endpoint.host().unwrap_or_default(),
            http.response.status_code = Empty,
            aws.request_id = Empty,
            error.type = Empty,
        );
        let operation = r.operation;
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            operation,
            start: Instant::now(),
            inner,
            span,
        }
    }
}

// === impl ResponseFuture ===

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<UpstreamResponse, Error>>,
{
    type Output = Result<UpstreamResponse, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        let outcome = outcome(result.as_ref().err());
        instruments::upstream_attempt(this.operation.name(), outcome, this.start.elapsed());
        if !this.span.is_disabled() {
            record(this.span, &result, outcome);
        }
        Poll::Ready(result)
    }
}

/// What KVS answered, on the attempt's span. Error messages are left out:
/// the error type and status say what happened, and the call's log line
/// has the (redacted) message.
fn record(span: &Span, result: &Result<UpstreamResponse, Error>, outcome: &'static str) {
    let (status, request_id) = match result {
        Ok(answer) => (Some(answer.status.as_u16()), answer.request_id.as_deref()),
        Err(Error::Service(e)) => (Some(e.http_status), e.request_id.as_deref()),
        Err(_) => (None, None),
    };
    if let Some(status) = status {
        span.record("http.response.status_code", i64::from(status));
    }
    if let Some(id) = request_id {
        span.record("aws.request_id", id);
    }
    if result.is_err() {
        span.record("error.type", outcome);
        span.record("otel.status_code", "error");
    }
}

/// A bounded label for an attempt's outcome: the class of KVS's answer, so
/// a misbehaving endpoint cannot blow up the metric's cardinality.
fn outcome(err: Option<&Error>) -> &'static str {
    match err {
        None => "success",
        Some(Error::Service(e)) => e.kind.as_str(),
        Some(Error::Transport(_)) => "transport_error",
        Some(Error::Connect(_)) => "connect_error",
        Some(Error::AttemptTimeout(_)) => "timeout",
        Some(Error::Credentials(_)) => "credentials_error",
        Some(_) => "error",
    }
}
