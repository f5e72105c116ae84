//! Storage calls are read whole before they are decoded and take a call
//! slot (`service.rs`, `WebRtcStorage::unary`). When the slot was taken as
//! headers arrived, clients that sent headers and no body held every slot
//! while legitimate calls were shed (issue 13). Reading here, under the
//! call's deadline ([`CallDeadline`]) and a size limit
//! (`--max-request-bytes`), a slow body costs its sender a stream and a few
//! KiB, and no one else anything.
//!
//! The time spent waiting for the body comes off the call's deadline:
//! `grpc-timeout` is rewritten to what is left, so the handler's deadline is
//! still the caller's. A request that is whole on arrival, the usual case,
//! is read without a timer and passed on with its header as it came.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;

use super::{deadline, request_deadline::CallDeadline};

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
            let (mut parts, body) = req.into_parts();
            let deadline = parts.extensions.get::<CallDeadline>().map(|d| d.0);
            let read = Limited::new(body, limit).collect();
            tokio::pin!(read);
            // Most requests are whole by the time their headers are
            // dispatched: read without arming a timer, and wait under the
            // deadline only for a body still on its way.
            let (read, waited) =
                match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                    Poll::Ready(read) => (Ok(read), false),
                    Poll::Pending => match deadline {
                        Some(at) => (tokio::time::timeout_at(at, read).await, true),
                        None => (Ok(read.await), true),
                    },
                };
            let message = match read {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(error)) if error.is::<LengthLimitError>() => {
                    return Ok(answer(tonic::Status::resource_exhausted(format!(
                        "request larger than {} bytes (--max-request-bytes)",
                        limit - FRAME_HEADER
                    ))));
                }
                // Our own deadline (request_deadline), or the peer's reset.
                Ok(Err(error)) => return Ok(answer(tonic::Status::from_error(error))),
                Err(_) => {
                    return Ok(answer(tonic::Status::deadline_exceeded(
                        "the request did not arrive within its deadline",
                    )));
                }
            };
            // A read that did not wait took no time worth taking off: the
            // handler works the same deadline out from the same header.
            if let (Some(at), true) = (deadline, waited) {
                let left = at.saturating_duration_since(Instant::now());
                parts
                    .headers
                    .insert("grpc-timeout", deadline::header_value(left));
            }
            inner
                .call(http::Request::from_parts(parts, Body::from(message)))
                .await
        })
    }
}

fn answer(status: tonic::Status) -> http::Response<Body> {
    status.into_http()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::*;
    use crate::grpc::request_deadline::tests::stalled;

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
    async fn the_inner_service_sees_only_complete_requests_with_the_time_left() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = BufferRequestLayer::new(|p| p.starts_with(PREFIX), 4096).layer(service);
        let at = Instant::now() + Duration::from_secs(10);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(1);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let call = tokio::spawn(service.oneshot(request(
            &format!("{PREFIX}JoinStorageSession"),
            body,
            Some(at),
        )));
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.send(Ok(http_body::Frame::data("abc".into())))
            .await
            .unwrap();
        drop(tx);
        let (req, answer) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()["grpc-timeout"], "7000000u");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");
        answer.send_response(http::Response::new(Body::empty()));
        call.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whole_on_arrival_keeps_its_deadline_header() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = BufferRequestLayer::new(|p| p.starts_with(PREFIX), 4096).layer(service);
        let mut req = request(
            &format!("{PREFIX}JoinStorageSession"),
            Body::from("abc"),
            Some(Instant::now() + Duration::from_secs(5)),
        );
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("5S"));
        let call = tokio::spawn(service.oneshot(req));
        let (req, answer) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()["grpc-timeout"], "5S");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");
        answer.send_response(http::Response::new(Body::empty()));
        call.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_never_reaches_the_inner_service() {
        let (service, mut handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        let service = BufferRequestLayer::new(|p| p.starts_with(PREFIX), 4096).layer(service);
        let started = Instant::now();
        let at = started + Duration::from_secs(2);
        let response = service
            .oneshot(request(
                &format!("{PREFIX}JoinStorageSession"),
                stalled(b"\0"),
                Some(at),
            ))
            .await
            .unwrap();
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
