//! Turns an [`UpstreamRequest`] into a signed HTTP request, with credentials
//! from the cache and the time from the injected clock.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;

use crate::{
    clock::SharedClock,
    kvs::{Error, UpstreamRequest, credentials::CredentialCache, sign},
};

#[derive(Debug, Clone)]
pub struct SignLayer {
    credentials: Arc<CredentialCache>,
    clock: SharedClock,
}

#[derive(Debug, Clone)]
pub struct Sign<S> {
    inner: S,
    credentials: Arc<CredentialCache>,
    clock: SharedClock,
}

impl SignLayer {
    pub fn new(credentials: Arc<CredentialCache>, clock: SharedClock) -> Self {
        Self { credentials, clock }
    }
}

impl<S> tower::Layer<S> for SignLayer {
    type Service = Sign<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            inner,
            credentials: self.credentials.clone(),
            clock: self.clock.clone(),
        }
    }
}

// === impl Sign ===

impl<S> tower::Service<UpstreamRequest> for Sign<S>
where
    S: tower::Service<http::Request<Full<Bytes>>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let credentials = self.credentials.clone();
        let clock = self.clock.clone();
        Box::pin(async move {
            let credentials = credentials.get().await?;
            let mut http = req.to_http()?;
            sign::sign(
                &mut http,
                &credentials,
                &req.region,
                sign::SERVICE,
                clock.now(),
            )?;
            inner.call(http.map(Full::new)).await
        })
    }
}
