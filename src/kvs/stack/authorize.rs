//! Waits for credentials and attaches them to the request, so the signing
//! further down is pure computation inside the attempt. Waiting here (a cold
//! or invalidated cache) holds no upstream slot.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use aws_credential_types::Credentials;

use crate::kvs::{Error, UpstreamRequest, credentials::CredentialCache};

/// A request with the credentials to sign it.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub request: UpstreamRequest,
    pub credentials: Credentials,
}

#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    credentials: Arc<CredentialCache>,
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    credentials: Arc<CredentialCache>,
}

// === impl AuthorizeLayer ===

impl AuthorizeLayer {
    pub fn new(credentials: Arc<CredentialCache>) -> Self {
        Self { credentials }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            credentials: self.credentials.clone(),
        }
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
        let credentials = self.credentials.clone();
        Box::pin(async move {
            let credentials = credentials.get().await?;
            inner
                .call(Authorized {
                    request,
                    credentials,
                })
                .await
        })
    }
}
