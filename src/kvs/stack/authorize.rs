//! Waits for credentials and attaches them to the request, so the signing
//! further down is pure computation inside the attempt. Waiting here (a cold
//! or invalidated cache) holds no upstream slot.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use aws_credential_types::Credentials;

use crate::kvs::{Error, UpstreamRequest};

/// A request with the credentials to sign it.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub request: UpstreamRequest,
    pub credentials: Credentials,
}

/// Each request carries the credential cache of its channel's account
/// (`UpstreamRequest::credentials`), so the layer holds none.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizeLayer;

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

// === impl AuthorizeLayer ===

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

// === impl Authorize ===

impl<S> tower::Service<UpstreamRequest> for Authorize<S>
where
    S: tower::Service<Authorized, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: UpstreamRequest) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        Box::pin(async move {
            let credentials = request.credentials.get().await?;
            inner
                .call(Authorized {
                    request,
                    credentials,
                })
                .await
        })
    }
}
