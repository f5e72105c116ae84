//! The innermost service: one HTTP exchange with KVS over a pooled hyper
//! client. Non-2xx answers become [`Error::Service`] here, so every layer
//! above sees one error type.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::{
        legacy::{
            Client,
            connect::{Connected, Connection, HttpConnector, proxy::Tunnel},
        },
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::{BoxError, Error, ServiceError, UpstreamResponse, error::request_id};

/// KVS answers are a few hundred bytes; anything far larger is not KVS.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub network: Network,
}

/// How connections leave the host: through the environment's proxies, to
/// servers whose certificates chain to the trusted roots.
#[derive(Debug, Clone)]
pub struct Network {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; `None` when none
    /// is set, so the common case asks nothing per request.
    pub proxies: Option<Arc<Matcher>>,
    /// Roots that KVS's (or a TLS-inspecting proxy's) certificates must
    /// chain to.
    pub roots: Arc<RootCertStore>,
}

impl Network {
    /// Straight to KVS, trusting the bundled Mozilla roots only.
    pub fn direct() -> Self {
        Self {
            proxies: None,
            roots: Arc::new(webpki_roots()),
        }
    }
}

/// The bundled Mozilla roots (`webpki-roots`): what AWS's endpoints chain
/// to, whatever the image ships.
pub fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Why the KVS client could not be built: a startup failure, never the
/// answer to a call.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
}

type Connector = HttpsConnector<ProxyConnector>;

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    proxies: Option<Arc<Matcher>>,
}

// === impl HttpClient ===

impl HttpClient {
    pub fn new(config: HttpConfig) -> Result<Self, BuildError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(BuildError::Tls)?
            .with_root_certificates(config.network.roots.clone())
            .with_no_client_auth();
        let proxies = config.network.proxies;
        // http:// is allowed for local emulators and tests; AWS endpoints
        // (both the control plane and discovered ones) are https://.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(ProxyConnector {
                http,
                proxies: proxies.clone(),
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        Ok(Self { client, proxies })
    }
}

impl tower::Service<http::Request<Full<Bytes>>> for HttpClient {
    type Response = UpstreamResponse;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamResponse, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Full<Bytes>>) -> Self::Future {
        // A plain-http request through a proxy goes to the proxy itself
        // (absolute-form), so its credentials ride on the request; https
        // requests carry them on the CONNECT instead (see ProxyConnector).
        if let Some(auth) = self
            .proxies
            .as_ref()
            .filter(|_| req.uri().scheme() == Some(&http::uri::Scheme::HTTP))
            .and_then(|p| p.intercept(req.uri()))
            .and_then(|i| i.basic_auth().cloned())
        {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        let sent = self.client.request(req);
        Box::pin(async move {
            let response = sent.await.map_err(|e| {
                if e.is_connect() {
                    Error::connect(&e)
                } else {
                    Error::transport(&e)
                }
            })?;
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

/// TCP to the destination, or through the proxy the environment names for
/// it: a CONNECT tunnel for https (TLS then runs end to end inside it), the
/// proxy itself for plain http (hyper then sends absolute-form URIs).
#[derive(Clone, Debug)]
struct ProxyConnector {
    http: HttpConnector,
    proxies: Option<Arc<Matcher>>,
}

impl tower::Service<Uri> for ProxyConnector {
    type Response = ProxiedStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<ProxiedStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let intercept = self.proxies.as_ref().and_then(|p| p.intercept(&dst));
        let http = self.http.clone();
        Box::pin(async move {
            let Some(proxy) = intercept else {
                let io = http.oneshot(dst).await?;
                return Ok(ProxiedStream { io, proxied: false });
            };
            // The matcher strips user:password from the proxy's URI, so
            // this names the proxy without its credentials.
            let name = format!(
                "proxy http://{}",
                proxy.uri().authority().map_or("", |a| a.as_str())
            );
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let target = format!(
                    "{}:{}",
                    dst.host().unwrap_or_default(),
                    dst.port_u16().unwrap_or(443)
                );
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.oneshot(dst).await.map_err(|e| ProxyError {
                    context: format!("CONNECT {target} through {name}"),
                    source: e.into(),
                })?;
                Ok(ProxiedStream { io, proxied: false })
            } else {
                let io = http
                    .oneshot(proxy.uri().clone())
                    .await
                    .map_err(|e| ProxyError {
                        context: format!("through {name}"),
                        source: e.into(),
                    })?;
                Ok(ProxiedStream { io, proxied: true })
            }
        })
    }
}

/// A failure on the way through a proxy: what was tried through which
/// proxy, with the original error kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
struct ProxyError {
    context: String,
    #[source]
    source: BoxError,
}

/// A TCP stream that knows whether it goes to an HTTP proxy, which is how
/// hyper learns to send absolute-form request targets.
#[derive(Debug)]
struct ProxiedStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxiedStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for ProxiedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxiedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
