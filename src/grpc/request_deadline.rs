//! Reading a request is bounded by the call's deadline: the caller's
//! `grpc-timeout`, capped at `--max-call-duration`, from the moment its
//! headers arrive. Without it a client could send headers and never the
//! body, and hold the stream (and whatever the handler holds while it
//! waits) for as long as it liked: tonic applies `grpc-timeout` only once
//! the message is decoded.
//!
//! The body ends with DEADLINE_EXCEEDED if it is still incomplete at the
//! deadline; the deadline is also left in the request's extensions for
//! later layers ([`CallDeadline`]).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{deadline, error::Late, status};

/// When the call must be answered by, set by [`RequestDeadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallDeadline(pub Instant);

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadlineLayer {
    max: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct RequestDeadline<S> {
    inner: S,
    max: Duration,
}

pin_project! {
    /// A request body that fails with DEADLINE_EXCEEDED if it has not ended
    /// by the deadline. The timer is armed only once the body makes its
    /// reader wait: most requests are complete when their headers are
    /// dispatched, and a timer per call is measurable on the join path.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        at: Instant,
        timer: Option<Pin<Box<Sleep>>>,
        ended: bool,
    }
}

// === impl RequestDeadlineLayer ===

impl RequestDeadlineLayer {
    /// `max`: the deadline of calls that set none (`--max-call-duration`).
    pub(crate) fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> tower::Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDeadline {
            inner,
            max: self.max,
        }
    }
}

// === impl RequestDeadline ===

impl<S> tower::Service<http::Request<Body>> for RequestDeadline<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if super::is_stream(req.uri().path()) {
            return self.inner.call(req);
        }
        let at = deadline::deadline(req.headers(), Instant::now(), self.max);
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(CallDeadline(at));
        let body = DeadlineBody {
            ended: http_body::Body::is_end_stream(&body),
            inner: body,
            at,
            timer: None,
        };
        self.inner
            .call(http::Request::from_parts(parts, Body::new(body)))
    }
}

// === impl DeadlineBody ===

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => match this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*this.at)))
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => {
                    *this.ended = true;
                    // A Status, as tonic reads a body's error for the caller.
                    Poll::Ready(Some(Err(status::to_status(&Late::Request.into()).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn request(timeout: Option<&str>, body: Body) -> http::Request<Body> {
        let mut req =
            http::Request::post("/kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession");
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        req.body(body).unwrap()
    }

    /// A body that sends `first` and then nothing, ever.
    pub(crate) fn stalled(first: &'static [u8]) -> Body {
        use tokio_stream::StreamExt;
        let frames = tokio_stream::once(Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(
            first,
        ))))
        .chain(tokio_stream::pending());
        Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_fails_at_the_callers_deadline() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, ()>();
        let service = RequestDeadlineLayer::new(Duration::from_secs(30)).layer(service);
        let started = Instant::now();
        tokio::spawn(service.oneshot(request(Some("2S"), stalled(b"\0\0\0"))));
        let (req, _answer) = handle.next_request().await.unwrap();
        assert_eq!(
            req.extensions().get::<CallDeadline>(),
            Some(&CallDeadline(started + Duration::from_secs(2)))
        );
        let err = req.into_body().collect().await.unwrap_err();
        let status = tonic::Status::from_error(Box::new(err));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_grpc_timeout_the_maximum_applies() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, ()>();
        let service = RequestDeadlineLayer::new(Duration::from_secs(30)).layer(service);
        let started = Instant::now();
        tokio::spawn(service.oneshot(request(None, stalled(b""))));
        let (req, _answer) = handle.next_request().await.unwrap();
        assert!(req.into_body().collect().await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_is_passed_on_untouched() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, ()>();
        let service = RequestDeadlineLayer::new(Duration::from_secs(30)).layer(service);
        tokio::spawn(service.oneshot(request(Some("1S"), Body::from("hello"))));
        let (req, _answer) = handle.next_request().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
}
