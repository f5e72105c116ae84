//! Why the sidecar could not start.

use crate::{BoxError, kvs::transport::BuildError, serve::tls::TlsError, store::StoreError};

/// Why the sidecar could not start: reported once by `main`, which exits
/// non-zero. Never the answer to a call.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("AWS configuration: {0}")]
    Aws(BoxError),
    #[error("emulator: {0}")]
    Emulator(BoxError),
    #[error("KVS client: {0}")]
    Client(#[from] BuildError),
    #[error("--state-store: {0}")]
    StateStore(#[from] StoreError),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {what} {at}: {source}")]
    Listen {
        what: &'static str,
        at: String,
        source: std::io::Error,
    },
}

impl StartupError {
    pub(super) fn listen(
        what: &'static str,
        at: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Listen {
            what,
            at: at.to_string(),
            source,
        }
    }
}
