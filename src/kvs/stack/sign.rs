//! Turns an [`Authorized`] request into a signed HTTP request, with the time
//! from the injected clock. Pure computation: the credentials were waited for
//! above the upstream slot (`authorize.rs`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Full;

use super::Authorized;
use crate::{
    clock::SharedClock,
    kvs::{Error, sign},
};

#[derive(Debug, Clone)]
pub struct SignLayer {
    clock: SharedClock,
}

#[derive(Debug, Clone)]
pub struct Sign<S> {
    inner: S,
    clock: SharedClock,
}

// === impl SignLayer ===

impl SignLayer {
    pub fn new(clock: SharedClock) -> Self {
        Self { clock }
    }
}

impl<S> tower::Layer<S> for SignLayer {
    type Service = Sign<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sign {
            inner,
            clock: self.clock.clone(),
        }
    }
}

// === impl Sign ===

impl<S> tower::Service<Authorized> for Sign<S>
where
    S: tower::Service<http::Request<Full<Bytes>>, Error = Error>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Authorized) -> Self::Future {
        let Authorized {
            request,
            credentials,
        } = req;
        let signed = request.to_http().and_then(|mut http| {
            sign::sign(
                &mut http,
                &credentials,
                &request.region,
                sign::SERVICE,
                self.clock.now(),
            )?;
            Ok(http)
        });
        match signed {
            Ok(http) => Box::pin(self.inner.call(http.map(Full::new))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
