//! Storage calls are read whole before they are decoded and take a call
//! slot (`service.rs`, `WebRtcStorage::unary`). When the slot was taken as
//! headers arrived, clients that sent headers and no body held every slot
//! while legitimate calls were shed (issue 13). Reading here, under a size
//! limit (`--max-request-bytes`), a slow body costs its sender a stream and
//! a few KiB, and no one else anything.
//!
//! The read is bounded by the call's deadline through the body itself
//! (`request_deadline`'s `DeadlineBody`, the one bound on a request body):
//! a body still incomplete at the deadline ends with DEADLINE_EXCEEDED
//! here. The deadline stays in the request's extensions ([`CallDeadline`])
//! for the handler; nothing is rewritten.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{
    error::{CallError, Shed},
    status,
};

/// gRPC's length-prefixed framing: a flag byte and a 4-byte length.
const FRAME_HEADER: usize = 5;

#[derive(Debug, Clone)]
pub(crate) struct BufferRequestLayer {
    applies: fn(&str) -> bool,
    limit: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct BufferRequest<S> {
    inner: S,
    applies: fn(&str) -> bool,
    limit: usize,
}

// === impl BufferRequestLayer ===

impl BufferRequestLayer {
    /// Buffers requests whose path `applies`, refusing those whose message
    /// is larger than `max_message` bytes.
    pub(crate) fn new(applies: fn(&str) -> bool, max_message: usize) -> Self {
        Self {
            applies,
            limit: max_message.saturating_add(FRAME_HEADER),
        }
    }
}

impl<S> tower::Layer<S> for BufferRequestLayer {
    type Service = BufferRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferRequest {
            inner,
            applies: self.applies,
            limit: self.limit,
        }
    }
}

// === impl BufferRequest ===

impl<S> tower::Service<http::Request<Body>> for BufferRequest<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service made ready by poll_ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !(self.applies)(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let message = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.is::<LengthLimitError>() => {
                    return Ok(answer(&Shed::TooLarge(limit - FRAME_HEADER).into()));
                }
                // The call's deadline (request_deadline), or the peer's reset.
                Err(error) => return Ok(status::body_failed(error).into_http()),
            };
            inner
                .call(http::Request::from_parts(parts, Body::from(message)))
                .await
        })
    }
}

fn answer(error: &CallError) -> http::Response<Body> {
    status::to_status(error).into_http()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;
    use crate::grpc::request_deadline::{CallDeadline, RequestDeadlineLayer, tests::stalled};
    use tokio::time::Instant;

    const PREFIX: &str = "/kvs.webrtcstorage.v1.WebRtcStorageService/";

    fn request(path: &str, body: Body, deadline: Option<Instant>) -> http::Request<Body> {
        let mut req = http::Request::post(path).body(body).unwrap();
        if let Some(at) = deadline {
            req.extensions_mut().insert(CallDeadline(at));
        }
        req
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_service_sees_only_complete_requests_with_their_deadline() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = BufferRequestLayer::new(|p| p.starts_with(PREFIX), 4096).layer(service);
        let at = Instant::now() + Duration::from_secs(10);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(1);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut req = request(&format!("{PREFIX}JoinStorageSession"), body, Some(at));
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("10S"));
        let call = tokio::spawn(service.oneshot(req));
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.send(Ok(http_body::Frame::data("abc".into())))
            .await
            .unwrap();
        drop(tx);
        let (req, answer) = handle.next_request().await.unwrap();
        // The deadline travels as it came, parsed once: in the extensions.
        assert_eq!(
            req.extensions().get::<CallDeadline>(),
            Some(&CallDeadline(at))
        );
        assert_eq!(req.headers()["grpc-timeout"], "10S");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");
        answer.send_response(http::Response::new(Body::empty()));
        call.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_never_reaches_the_inner_service() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        // As served: the deadline layer outside, bounding the body.
        let service = RequestDeadlineLayer::new(Duration::from_secs(30))
            .layer(BufferRequestLayer::new(|p| p.starts_with(PREFIX), 4096).layer(service));
        let started = Instant::now();
        let mut req = request(&format!("{PREFIX}JoinStorageSession"), stalled(b"\0"), None);
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("2S"));
        let response = service.oneshot(req).await.unwrap();
        assert_eq!(grpc_status(&response), Some("4"), "DEADLINE_EXCEEDED");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The service is gone, and no request ever reached it.
        assert!(
            handle.next_request().await.is_none(),
            "nothing reached the inner service"
        );
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_and_others_pass_unread() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = BufferRequestLayer::new(|p| p.starts_with(PREFIX), 10).layer(service);
        let response = service
            .clone()
            .oneshot(request(
                &format!("{PREFIX}JoinStorageSession"),
                Body::from(vec![0u8; 16]),
                None,
            ))
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), Some("8"), "RESOURCE_EXHAUSTED");

        // Health and reflection stream their bodies: not buffered.
        let call = tokio::spawn(service.oneshot(request(
            "/grpc.health.v1.Health/Check",
            stalled(b""),
            None,
        )));
        let (_req, answer) = handle.next_request().await.unwrap();
        answer.send_response(http::Response::new(Body::empty()));
        call.await.unwrap().unwrap();
    }
}
