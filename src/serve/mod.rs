//! Serving HTTP connections ourselves instead of through `axum::serve`,
//! which has no connection limit, no handshake or idle timeout, no HTTP/2
//! keep-alive and no bound on its drain: every one of those let a client on
//! the pod network hold the sidecar's memory, descriptors or shutdown
//! (issue 13).
//!
//! - [`accept`]: the accept loop, the connection cap and accept errors;
//! - [`connection`]: one connection, from handshake to close, and its drain;
//! - [`first_bytes`]: the deadline for a connection's first request bytes;
//! - [`activity`]: calls in flight per connection, for idle and drain;
//! - [`descriptors`]: the process's descriptor budget, so the admin port
//!   keeps a reserve.

mod accept;
mod activity;
mod connection;
pub(crate) mod descriptors;
mod first_bytes;
mod throttle;

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};

pub(crate) use self::accept::no_delay;
pub(crate) use self::accept::{Handshake, Listen, Tcp, Unix, serve};

/// How connections on one port are served.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The port's name in logs and metrics (`grpc`, `admin`).
    pub port: &'static str,
    /// HTTP/2 streams in flight per connection.
    pub max_streams: u32,
    /// TLS handshake, then HTTP/2 preface or HTTP/1.1 request head.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle_timeout: Duration,
}

impl Settings {
    /// hyper's HTTP/1.1 and HTTP/2 server, with every timer armed.
    pub(crate) fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // A client trickling a request head (slowloris) is cut off.
            .header_read_timeout(self.handshake_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_streams)
            // Requests are at most a few KiB; hyper's 16 MiB default list
            // would let one HEADERS block pin that much.
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout);
        builder
    }
}

/// The connection cap of one port, shared by its listeners (the gRPC port's
/// TCP or TLS listener and its Unix socket count together).
#[derive(Debug, Clone)]
pub(crate) struct Cap {
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl Cap {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        }
    }
}
