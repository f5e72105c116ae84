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
pub(crate) mod tls;

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};

pub(crate) use self::accept::no_delay;
pub(crate) use self::accept::{Handshake, Listen, Tcp, Unix, serve};

/// HTTP/2 flow-control windows the server grants its callers. A stream's
/// is small (requests are a few KiB). The connection's stays hyper's 1 MiB:
/// h2 closes a connection (ENHANCE_YOUR_CALM) once the small DATA frames it
/// holds unread cost more than half this window, and a burst of a thousand
/// small calls on one connection, which a client with its sessions on it
/// may send, needs that room.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How connections on one port are served.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The port's name in logs and metrics (`grpc`, `admin`).
    pub port: &'static str,
    /// HTTP/2 streams in flight per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// Calls in flight per connection other than `long_lived` streams; one
    /// past it is refused at once with RESOURCE_EXHAUSTED. Session streams
    /// live for hours and are bounded by their own limit, so one client
    /// (grpc-core shares one connection per target) can keep its sessions
    /// and still make calls.
    pub max_calls: u32,
    /// Paths of the streams that live as long as the caller wants
    /// (`MaintainStorageSession`): outside `max_calls`, and bounded in a
    /// drain by `drain_streams`.
    pub long_lived: &'static [&'static str],
    /// In a drain, how long a connection with only long-lived streams left
    /// waits for them (their final events) before it is closed: a caller
    /// that reads nothing must not hold the shutdown for the whole grace.
    pub drain_streams: Duration,
    /// The timeout a request's headers set, if any (`grpc-timeout`), and
    /// the longest a call waits for one of its connection's call slots
    /// (`--max-call-duration`).
    pub deadline: fn(&http::HeaderMap) -> Option<Duration>,
    pub max_wait: Duration,
    /// TLS handshake, then HTTP/2 preface or HTTP/1.1 request head.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle_timeout: Duration,
}

impl Settings {
    fn limits(&self) -> activity::Limits {
        activity::Limits {
            max_calls: self.max_calls as usize,
            long_lived: self.long_lived,
            deadline: self.deadline,
            max_wait: self.max_wait,
        }
    }

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
            // See STREAM_WINDOW and CONNECTION_WINDOW.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
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
