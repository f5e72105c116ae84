//! One `tracing` span per storage call, named after its gRPC method, so
//! every line logged while serving it (retries, throttling, the call line)
//! belongs to it; a tower layer, so no handler repeats it. The handler
//! records the channel once it has validated it (an invalid value is never
//! logged).
//!
//! With traces on (`crate::telemetry`) the span is also the OpenTelemetry
//! server span: it continues the caller's W3C `traceparent`/`tracestate`
//! and carries the `rpc.*` attributes and the final gRPC status code. The
//! span lives as long as the response body, so a `MaintainStorageSession`
//! stream's span lasts as long as the stream.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame};
use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tonic::Code;
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{frame_status, grpc_status};
use crate::{pb::web_rtc_storage_service_server::SERVICE_NAME, telemetry};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallSpanLayer;

#[derive(Debug, Clone)]
pub(crate) struct CallSpan<S> {
    inner: S,
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

pin_project! {
    pub struct SpannedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        // Whether the status is still to be recorded.
        open: bool,
    }

    impl<B> PinnedDrop for SpannedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.open && let Some(span) = this.span {
                finish(span, Code::Cancelled);
            }
        }
    }
}

impl<S> tower::Layer<S> for CallSpanLayer {
    type Service = CallSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallSpan { inner }
    }
}

// === impl CallSpan ===

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for CallSpan<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
{
    type Response = http::Response<SpannedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let span = call_span(req.uri().path(), req.headers());
        let inner = match &span {
            Some(span) => span.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ResponseFuture { inner, span }
    }
}

/// The span of a storage call, or `None` for anything else (health
/// probes, reflection, unknown paths: not worth a span each).
fn call_span(path: &str, headers: &http::HeaderMap) -> Option<Span> {
    // One callsite per method, so each span is named after its method.
    macro_rules! span {
        ($method:literal) => {
            (
                $method,
                tracing::info_span!($method, channel = Empty, otel.kind = Empty),
            )
        };
    }
    let (method, span) = match super::storage_method(path)? {
        "JoinStorageSession" => span!("JoinStorageSession"),
        "JoinStorageSessionAsViewer" => span!("JoinStorageSessionAsViewer"),
        "MaintainStorageSession" => span!("MaintainStorageSession"),
        "GetSignalingConnection" => span!("GetSignalingConnection"),
        "CheckStorageReadiness" => span!("CheckStorageReadiness"),
        "GetRecordingStatus" => span!("GetRecordingStatus"),
        "WatchRecording" => span!("WatchRecording"),
        "EnsureStorage" => span!("EnsureStorage"),
        "GetPlaybackUrl" => span!("GetPlaybackUrl"),
        _ => return None,
    };
    if telemetry::traces_on() {
        // Before the span is first entered, when the OTel span is started.
        span.record("otel.kind", "server");
        let _ = span.set_parent(telemetry::caller_context(headers));
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", SERVICE_NAME);
        span.set_attribute("rpc.method", method);
    }
    Some(span)
}

/// Records the call's final status on its span.
fn finish(span: &Span, code: Code) {
    if !telemetry::traces_on() {
        return;
    }
    span.set_attribute("rpc.grpc.status_code", code as i64);
    // The semantic conventions' server errors; a caller's mistake (a bad
    // argument, an unknown channel) leaves the server span's status unset.
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.set_status(Status::error(code.description()));
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SpannedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let span = this.span.take();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let Some(span) = &span {
                    finish(span, Code::Internal);
                }
                return Poll::Ready(Err(e));
            }
        };
        // A trailers-only answer (an error) has its status in the headers.
        let mut open = span.is_some();
        if let Some(code) = grpc_status(response.headers())
            && let Some(span) = &span
        {
            finish(span, code);
            open = false;
        }
        Poll::Ready(Ok(response.map(|inner| SpannedBody { inner, span, open })))
    }
}

// === impl SpannedBody ===

impl<B: Body> Body for SpannedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.as_ref().map(Span::enter);
        let frame = ready!(this.inner.poll_frame(cx));
        if *this.open
            && let Some(code) = frame_status(frame.as_ref())
            && let Some(span) = this.span.as_ref()
        {
            finish(span, code);
            *this.open = false;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_storage_calls_only() {
        let headers = http::HeaderMap::new();
        let span = |path: &str| call_span(path, &headers);
        // No subscriber here, so the spans are disabled; whether one is
        // made at all is what is tested.
        assert!(span("/kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession").is_some());
        assert!(
            span("/kvs.webrtcstorage.v1.WebRtcStorageService/MaintainStorageSession").is_some()
        );
        assert!(span("/kvs.webrtcstorage.v1.WebRtcStorageService/Nope").is_none());
        assert!(span("/grpc.health.v1.Health/Check").is_none());
        assert!(span("/kvs.webrtcstorage.v1.WebRtcStorageServiceX/JoinStorageSession").is_none());
    }
}
