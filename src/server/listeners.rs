//! The sidecar's sockets: the gRPC port (plain or TLS), its optional Unix
//! socket, and the admin port.

use std::{path::Path, sync::Arc};

use tokio::net::{TcpListener, UnixListener};

use super::error::StartupError;
use crate::{
    config::Config,
    serve::Unix,
    serve::tls::{self, TlsListener},
};

/// The sockets, bound.
pub(super) struct Listeners {
    pub(super) grpc: GrpcListener,
    /// The optional Unix socket beside the TCP port.
    pub(super) unix: Option<Unix>,
    pub(super) admin: TcpListener,
}

// === impl Listeners ===

impl Listeners {
    pub(super) async fn bind(config: &Config) -> Result<Self, StartupError> {
        Ok(Self {
            grpc: GrpcListener::bind(config).await?,
            unix: config
                .listen
                .grpc_listen_unix
                .as_deref()
                .map(bind_unix)
                .transpose()?,
            admin: TcpListener::bind(config.listen.admin_listen)
                .await
                .map_err(StartupError::listen(
                    "--admin-listen",
                    config.listen.admin_listen,
                ))?,
        })
    }
}

/// The gRPC port: plain h2c, or TLS / mutual TLS when configured.
pub(super) enum GrpcListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl GrpcListener {
    async fn bind(config: &Config) -> Result<Self, StartupError> {
        let tcp =
            TcpListener::bind(config.listen.grpc_listen)
                .await
                .map_err(StartupError::listen(
                    "--grpc-listen",
                    config.listen.grpc_listen,
                ))?;
        let (Some(cert), Some(key)) = (&config.tls.tls_cert, &config.tls.tls_key) else {
            return Ok(Self::Plain(tcp));
        };
        let tls = tls::server_config(cert, key, config.tls.tls_client_ca.as_deref())?;
        Ok(Self::Tls(TlsListener::new(tcp, Arc::new(tls))))
    }
}
/// Binds the Unix socket at `path`, readable and writable by this user only
/// (mode 0600), so in a pod only containers running as the same user, with
/// the socket's volume mounted, can call.
fn bind_unix(path: &Path) -> Result<Unix, StartupError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = || StartupError::listen("--grpc-listen-unix", path.display());
    // A socket left by a previous run would make bind fail.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed()(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(failed())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed())?;
    Ok(Unix {
        listener,
        path: path.to_owned(),
    })
}
