//! gRPC is HTTP/2 only: an HTTP/1.x request on the gRPC port is answered
//! 505 instead of being half-served as gRPC.
//!
//! A plain layer rather than `axum::middleware::from_fn`, which clones the
//! service behind it and boxes a future on every call: about 3,000
//! instructions of each join (measured with callgrind) for one comparison.

use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::{Either, Ready, ready};

const ANSWER: &str = "kvs-sidecar speaks gRPC, which needs HTTP/2\n";

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequireHttp2Layer;

#[derive(Debug, Clone)]
pub(crate) struct RequireHttp2<S> {
    inner: S,
}

// === impl RequireHttp2Layer ===

impl<S> tower::Layer<S> for RequireHttp2Layer {
    type Service = RequireHttp2<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireHttp2 { inner }
    }
}

// === impl RequireHttp2 ===

impl<S, B> tower::Service<http::Request<B>> for RequireHttp2<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.version() == http::Version::HTTP_2 {
            return Either::Right(self.inner.call(req));
        }
        let mut answer = http::Response::new(Body::from(ANSWER));
        *answer.status_mut() = http::StatusCode::HTTP_VERSION_NOT_SUPPORTED;
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Either::Left(ready(Ok(answer)))
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn request(version: http::Version) -> http::Request<Body> {
        http::Request::post("/kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession")
            .version(version)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn http1_is_answered_505_and_never_reaches_the_service() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = RequireHttp2Layer.layer(service);
        for version in [http::Version::HTTP_10, http::Version::HTTP_11] {
            let answer = service.clone().oneshot(request(version)).await.unwrap();
            assert_eq!(
                answer.status(),
                http::StatusCode::HTTP_VERSION_NOT_SUPPORTED
            );
        }
        drop(service);
        assert!(handle.next_request().await.is_none(), "nothing was served");
    }

    #[tokio::test]
    async fn http2_goes_through() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = RequireHttp2Layer.layer(service);
        let call = tokio::spawn(service.oneshot(request(http::Version::HTTP_2)));
        let (req, answer) = handle.next_request().await.unwrap();
        assert_eq!(req.version(), http::Version::HTTP_2);
        answer.send_response(http::Response::new(Body::empty()));
        assert_eq!(call.await.unwrap().unwrap().status(), http::StatusCode::OK);
    }
}
