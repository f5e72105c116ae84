//! The innermost service: one HTTP exchange with KVS over a pooled hyper
//! client. Non-2xx answers become [`Error::Service`] here, so every layer
//! above sees one error type.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{Error, ServiceError, UpstreamResponse, error::request_id};

/// KVS answers are a few hundred bytes; anything far larger is not KVS.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

// === impl HttpClient ===

impl HttpClient {
    pub fn new(config: HttpConfig) -> Result<Self, Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        // http:// is allowed for local emulators and tests; AWS endpoints
        // (both the control plane and discovered ones) are https://.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| Error::Signing(format!("TLS setup: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Ok(Self { client })
    }
}

impl tower::Service<http::Request<Full<Bytes>>> for HttpClient {
    type Response = UpstreamResponse;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamResponse, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
        let sent = self.client.request(req);
        Box::pin(async move {
            let response = sent.await.map_err(|e| Error::transport(&e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| Error::transport(&*e))?
                .to_bytes();
            if !parts.status.is_success() {
                return Err(Error::Service(ServiceError::from_response(
                    parts.status.as_u16(),
                    &parts.headers,
                    &body,
                )));
            }
            Ok(UpstreamResponse {
                status: parts.status,
                request_id: request_id(&parts.headers),
                body,
            })
        })
    }
}
