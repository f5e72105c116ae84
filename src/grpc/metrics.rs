//! A server-side tower layer that counts and times every gRPC call by
//! service, method and status code, without the handlers knowing.
//!
//! The status is read where gRPC puts it: the response headers for a
//! trailers-only answer (errors), the trailers otherwise. A body dropped
//! before its trailers is a call the client cancelled.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Code;

use crate::instruments;

/// The methods we label by name; anything else is `unknown`, so scanners
/// probing random paths cannot grow the metric's cardinality. Service names
/// come from the generated code, so a renamed package cannot leave a stale
/// label behind.
const KNOWN: &[(&str, &str)] = &[
    (STORAGE, "JoinStorageSession"),
    (STORAGE, "JoinStorageSessionAsViewer"),
    (STORAGE, "MaintainStorageSession"),
    (STORAGE, "GetSignalingConnection"),
    (STORAGE, "CheckStorageReadiness"),
    (STORAGE, "GetRecordingStatus"),
    (STORAGE, "WatchRecording"),
    (STORAGE, "EnsureStorage"),
    (STORAGE, "GetPlaybackUrl"),
    (HEALTH, "Check"),
    (HEALTH, "Watch"),
    (REFLECTION_V1, "ServerReflectionInfo"),
    (REFLECTION_V1ALPHA, "ServerReflectionInfo"),
];

const STORAGE: &str = crate::pb::web_rtc_storage_service_server::SERVICE_NAME;
const HEALTH: &str = tonic_health::pb::health_server::SERVICE_NAME;
const REFLECTION_V1: &str = tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME;
const REFLECTION_V1ALPHA: &str =
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcMetricsLayer;

#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
}

#[derive(Debug)]
struct Pending {
    service: &'static str,
    method: &'static str,
    start: Instant,
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

pin_project! {
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.finish(Code::Cancelled);
            }
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

// === impl GrpcMetrics ===

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
{
    type Response = http::Response<MeteredBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let (service, method) = labels(req.uri().path());
        instruments::grpc_started(service, method);
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                service,
                method,
                start: Instant::now(),
            }),
        }
    }
}

fn labels(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    KNOWN
        .iter()
        .find(|(s, m)| *s == service && *m == method)
        .copied()
        .unwrap_or(("unknown", "unknown"))
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let Some(p) = pending {
                    p.finish(Code::Internal);
                }
                return Poll::Ready(Err(e));
            }
        };
        if let Some(code) = grpc_status(response.headers())
            && let Some(p) = pending.take()
        {
            p.finish(code);
        }
        Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, pending })))
    }
}

// === impl MeteredBody ===

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        // Take the pending record only once the status is known.
        if let Some(code) = frame_status(frame.as_ref())
            && let Some(p) = this.pending.take()
        {
            p.finish(code);
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

impl Pending {
    fn finish(self, code: Code) {
        instruments::grpc_handled(self.service, self.method, code, self.start.elapsed());
    }
}

/// The call's status as a response body frame tells it: in the trailers,
/// `Internal` for a body error, `Unknown` for a body that ended without
/// trailers; `None` for a data frame (not known yet).
pub(super) fn frame_status<D, E>(frame: Option<&Result<Frame<D>, E>>) -> Option<Code> {
    match frame {
        Some(Ok(f)) => f
            .trailers_ref()
            .map(|t| grpc_status(t).unwrap_or(Code::Unknown)),
        Some(Err(_)) => Some(Code::Internal),
        None => Some(Code::Unknown),
    }
}

pub(super) fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_known_methods_only() {
        assert_eq!(
            labels("/kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession"),
            (
                "kvs.webrtcstorage.v1.WebRtcStorageService",
                "JoinStorageSession"
            )
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(
            labels("/kvs.webrtcstorage.v1.WebRtcStorageService/CheckStorageReadiness"),
            (
                "kvs.webrtcstorage.v1.WebRtcStorageService",
                "CheckStorageReadiness"
            )
        );
        assert_eq!(labels("/evil/../x"), ("unknown", "unknown"));
        assert_eq!(labels("/"), ("unknown", "unknown"));
    }
}
