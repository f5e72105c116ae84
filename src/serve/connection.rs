//! One connection, from its handshake to its close.

use std::{io, time::Duration};

use hyper_util::{rt::TokioIo, server::conn::auto};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

use super::{Settings, activity::Activity, first_bytes::FirstBytes};

/// After GOAWAY, how long a connection with nothing left in flight may take
/// to flush its last frames before it is closed from our side.
const LINGER: Duration = Duration::from_millis(250);

/// Serves one accepted connection: finishes its handshake within the
/// handshake timeout, serves it until it closes, goes idle or a drain
/// starts, and then closes it as soon as no call is left in flight.
pub(super) async fn run<IO>(
    handshake: impl Future<Output = io::Result<IO>>,
    builder: &auto::Builder<hyper_util::rt::TokioExecutor>,
    router: axum::Router,
    settings: &Settings,
    mut drain: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let port = settings.port;
    let io = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Ok(Ok(io)) => io,
        Ok(Err(error)) => return tracing::debug!(port, %error, "handshake failed"),
        Err(_) => return tracing::debug!(port, "handshake timed out"),
    };
    let io = FirstBytes::new(io, settings.handshake_timeout);
    let activity = Activity::new();
    let conn =
        builder.serve_connection(TokioIo::new(io), activity.track(router, settings.limits()));
    tokio::pin!(conn);

    tokio::select! {
        ended = conn.as_mut() => {
            if let Err(error) = ended {
                tracing::debug!(port, %error, "connection ended with an error");
            }
            return;
        }
        _ = drain.wait_for(|draining| *draining) => {}
        () = activity.idle(settings.idle_timeout) => {
            tracing::debug!(port, "closing an idle connection");
        }
    }

    // GOAWAY (HTTP/2) or close after the current response (HTTP/1.1); calls
    // in flight go on. Then close as soon as none is left: hyper itself
    // would wait for the peer to acknowledge the GOAWAY's PING, and a peer
    // that never does would hold the connection, and the drain, forever.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = activity.quiet(settings.drain_streams) => {
            let _ = tokio::time::timeout(LINGER, conn.as_mut()).await;
        }
    }
}
