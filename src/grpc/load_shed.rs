//! Refuses calls beyond a limit in flight, at once, instead of queueing
//! them without bound: under a flood the sidecar answers RESOURCE_EXHAUSTED
//! in microseconds and its memory stays flat. Only the storage service is
//! limited; health checks and reflection always get through, so a busy
//! sidecar is not mistaken for a dead one.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use axum::body::Body;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

pin_project! {
    #[project = ResponseProj]
    pub enum ResponseFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            permit: Option<OwnedSemaphorePermit>,
        },
        Shed { limit: usize },
    }
}

// === impl LoadShedLayer ===

impl LoadShedLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> tower::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

// === impl LoadShed ===

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for LoadShed<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let permit = if super::is_unary_storage_call(req.uri().path()) {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return ResponseFuture::Shed { limit: self.limit },
            }
        } else {
            None
        };
        ResponseFuture::Admitted {
            inner: self.inner.call(req),
            permit,
        }
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseProj::Admitted { inner, permit } => {
                let response = ready!(inner.poll(cx))?;
                // A unary answer is fully computed by now; the slot frees.
                drop(permit.take());
                Poll::Ready(Ok(response.map(Body::new)))
            }
            ResponseProj::Shed { limit } => {
                metrics::counter!(crate::metrics::CALLS_SHED).increment(1);
                let status = tonic::Status::resource_exhausted(format!(
                    "the sidecar is at its limit of {limit} calls in flight; retry with backoff"
                ));
                Poll::Ready(Ok(status.into_http::<Body>()))
            }
        }
    }
}
