//! The accept loop: the connection cap, accept errors, and the port's drain.

use std::{io, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::watch,
    task::JoinHandle,
};

use super::{Cap, Settings, connection, throttle::Throttle};
use crate::instruments::{ACCEPT_ERRORS, CONNECTIONS, CONNECTIONS_REFUSED};

/// What it takes to make an accepted connection speak HTTP: nothing for
/// plain TCP, a TLS handshake for TLS. Run on the connection's own task,
/// under the handshake timeout, so a slow peer holds up no one else.
pub(crate) type Handshake<IO> = Pin<Box<dyn Future<Output = io::Result<IO>> + Send>>;

/// A listening socket.
pub(crate) trait Listen: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&mut self) -> impl Future<Output = io::Result<Handshake<Self::Io>>> + Send;
}

/// A running port; resolves once its listener is closed and its last
/// connection has ended.
pub(crate) type Server = JoinHandle<()>;

/// Serves `router` on `listener` until `drain` turns true: then stops
/// accepting (the socket closes) and lets each connection end as
/// [`connection::run`] says.
pub(crate) fn serve<L: Listen>(
    mut listener: L,
    router: axum::Router,
    settings: Settings,
    cap: Cap,
    mut drain: watch::Receiver<bool>,
) -> Server {
    let builder = Arc::new(settings.builder());
    let settings = Arc::new(settings);
    let full = Throttle::new(Duration::from_secs(10));
    let failing = Throttle::new(Duration::from_secs(10));
    tokio::spawn(async move {
        let port = settings.port;
        metrics::gauge!(CONNECTIONS, "port" => port).set(0.0);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = drain.wait_for(|draining| *draining) => break,
            };
            let handshake = match accepted {
                Ok(handshake) => handshake,
                Err(error) => {
                    accept_failed(port, &error, &failing).await;
                    continue;
                }
            };
            // Over the cap, the connection is closed at once: queueing it
            // would keep its descriptor and hide the overload from the peer.
            let Ok(permit) = cap.permits.clone().try_acquire_owned() else {
                metrics::counter!(CONNECTIONS_REFUSED, "port" => port).increment(1);
                if let Some(suppressed) = full.admit() {
                    tracing::warn!(
                        port,
                        limit = cap.size,
                        refused_since_last_warning = suppressed,
                        "connection limit reached; closing new connections"
                    );
                }
                continue;
            };
            let (builder, router, settings) = (builder.clone(), router.clone(), settings.clone());
            let drain = drain.clone();
            tokio::spawn(async move {
                let open = metrics::gauge!(CONNECTIONS, "port" => port);
                open.increment(1.0);
                connection::run(handshake, &builder, router, &settings, drain).await;
                open.decrement(1.0);
                drop(permit);
            });
        }
        drop(listener);
        // Every connection holds a permit of the cap: all of them back means
        // all connections of the port have ended.
        let _ = cap.permits.acquire_many(cap.size as u32).await;
    })
}

/// Logs a failed accept (at most once per period) and, when the process is
/// out of descriptors or memory, pauses before the next one: accept would
/// fail again at once, and spinning on it would starve the connections that
/// are being served.
async fn accept_failed(port: &'static str, error: &io::Error, throttle: &Throttle) {
    metrics::counter!(ACCEPT_ERRORS, "port" => port).increment(1);
    if let Some(suppressed) = throttle.admit() {
        tracing::warn!(port, %error, failed_since_last_warning = suppressed, "accept failed; still serving open connections");
    }
    if is_resource_error(error) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of
/// something; unlike ECONNABORTED, retrying at once will fail again.
fn is_resource_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// gRPC answers are small writes a caller waits on: without TCP_NODELAY,
/// Nagle holds one back until the caller's delayed ACK, 40 ms later (seen as
/// the benchmark's p99 before this was set). For the TLS listener too.
pub(crate) fn no_delay(tcp: &mut TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}

/// A plain TCP port; `no_delay` for gRPC, whose small answers a caller waits
/// on would otherwise sit in Nagle's buffer until the caller's delayed ACK.
pub(crate) struct Tcp {
    pub listener: TcpListener,
    pub no_delay: bool,
}

impl Listen for Tcp {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<Handshake<TcpStream>> {
        let (mut stream, _) = self.listener.accept().await?;
        if self.no_delay {
            no_delay(&mut stream);
        }
        Ok(Box::pin(std::future::ready(Ok(stream))))
    }
}

/// The Unix socket beside the gRPC port.
pub(crate) struct Unix {
    pub listener: UnixListener,
    pub path: PathBuf,
}

impl Listen for Unix {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<Handshake<UnixStream>> {
        let (stream, _) = self.listener.accept().await?;
        Ok(Box::pin(std::future::ready(Ok(stream))))
    }
}

impl Drop for Unix {
    fn drop(&mut self) {
        // Closed for good: the next run binds a fresh socket.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_is_a_resource_error() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
