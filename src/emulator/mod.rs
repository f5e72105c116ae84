//! A local KVS emulator: `kvs-sidecar --emulate` runs the sidecar against it,
//! and the project's tests use it as their one fake KVS.
//!
//! It listens on 127.0.0.1 only and answers the way KVS does:
//! `GetSignalingChannelEndpoint` with WSS, HTTPS and WEBRTC endpoints (all
//! itself, WEBRTC unless told otherwise), `GetIceServerConfig` with a TURN
//! server and fresh credentials, both joins with an empty 200 and an
//! `x-amzn-RequestId`, and errors in KVS's restJson form. It verifies every
//! SigV4 signature against the credentials it was given, with its own
//! verifier ([`sigv4`]), presigned signaling URLs included: it serves the
//! signaling WebSocket too, and sends the connected master (or viewer) an
//! SDP offer each time its join succeeds (see `signaling.rs`). It answers
//! STS `AssumeRole` (`POST /`, see `sts.rs`) and then accepts the keys it
//! handed out as well as its own.
//!
//! Each successful join starts a storage session that the next join of the
//! same master or viewer replaces and that otherwise ends after its
//! lifetime ([`Emulator::set_session_lifetime`], 1 hour as in KVS unless
//! set); offers can be dropped on purpose ([`Emulator::drop_offers`]).
//! [`Emulator::storage_session`] tells what happened (see `sessions.rs`).
//!
//! Any well-formed channel ARN exists, except channel names that begin with
//! `missing-` (ResourceNotFoundException) or `denied-`
//! (AccessDeniedException), so clients can see the error paths. The
//! Describe* answers follow more prefixes (`inactive-`, `fullmesh-`,
//! `nostorage-`, `nostream-`, `creatingstream-`, `noretention-`,
//! `denystream-`; see `handler.rs` and the README), one per readiness
//! problem.
//!
//! After each master join the emulator records fragments into the
//! channel's stream (`nomedia-` channels record none, `stalls-` ones stop
//! after 10 s), and serves `GetDataEndpoint` (itself, for every API) and
//! `ListFragments` over them, paged, unordered, listed a second after they
//! end and limited to 5 requests a second per stream (see `fragments.rs`).
//!
//! Tests and demos can also script faults per path ([`Emulator::script`])
//! and read back what was received ([`Emulator::received`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kvs_sidecar::emulator::{Emulator, EmulatorCredentials, Reply};
//!
//! let kvs = Emulator::start(EmulatorCredentials::generate()).await?;
//! kvs.script("/joinStorageSession", [Reply::error(503, "ServiceUnavailable")]);
//! println!("KVS control plane at {}", kvs.url());
//! # Ok(()) }
//! ```

mod fragments;
mod handler;
mod playback;
mod sessions;
mod signaling;
pub mod sigv4;
mod storage;
mod sts;

pub use self::{
    fragments::{FRAGMENT_LENGTH, Fragment, FragmentRequests, LISTING_DELAY, MEDIA_STARTUP},
    playback::{SESSIONS_KEPT, SESSIONS_PER_STREAM},
    sessions::{MAX_SESSION_LIFETIME, StorageSession},
    storage::{ACCOUNT, MAX_LINKS, MAX_STREAMS},
    sts::AssumedRole,
};

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The keys the emulator accepts. Debug never shows the secret or token.
#[derive(Clone, PartialEq, Eq)]
pub struct EmulatorCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl EmulatorCredentials {
    /// Fresh random keys, shaped like AWS's.
    pub fn generate() -> Self {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let pick = |set: &[u8], n: usize| -> String {
            (0..n)
                .map(|_| set[fastrand::usize(..set.len())] as char)
                .collect()
        };
        Self {
            access_key_id: format!("ASIAEMU{}", pick(UPPER, 13)),
            secret_access_key: pick(SECRET, 40),
            session_token: Some(pick(SECRET, 64)),
        }
    }
}

impl fmt::Debug for EmulatorCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// How a scripted error names itself; KVS itself uses [`Dialect::Header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `x-amzn-ErrorType: Code:http://internal.amazon.com/...` and a JSON
    /// `message`.
    Header,
    /// `{"__type": "namespace#Code", "Message": ...}`
    Type,
    /// `{"code": "Code", "message": ...}`
    Code,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer as KVS would.
    Ok,
    Error {
        status: u16,
        code: &'static str,
        dialect: Dialect,
    },
    /// Answer after a pause.
    Slow(Duration, Box<Reply>),
    /// Drop the connection without answering.
    Reset,
    /// Answer exactly this, for tests of a broken or hostile upstream
    /// (oversized request ids, error codes or endpoint lists).
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
}

impl Reply {
    pub fn error(status: u16, code: &'static str) -> Self {
        Reply::Error {
            status,
            code,
            dialect: Dialect::Header,
        }
    }
}

/// A request the emulator received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The verified credential scope, or why the signature failed.
    pub signature: Result<sigv4::Scope, String>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Where the emulator also serves container credentials, the way the EKS
/// Pod Identity agent and ECS do (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
pub const CONTAINER_CREDENTIALS_PATH: &str = "/container-credentials";

/// How many received requests are kept: enough for any test, and a bound on
/// memory when `--emulate` serves a long demo or a load test.
const RECEIVED_KEPT: usize = 1024;

#[derive(Default)]
struct State {
    received: VecDeque<Received>,
    script: HashMap<String, VecDeque<Reply>>,
    /// Paths answering `ClientLimitExceededException` until an instant.
    throttled: HashMap<String, std::time::Instant>,
    webrtc_endpoint: Option<String>,
    credential_loads: usize,
    /// TCP connections accepted, to see whether callers reuse them.
    connections: usize,
    /// How far the emulated AWS clock is ahead of ours (negative: behind).
    clock_offset_secs: i64,
    /// Open signaling WebSockets, by master or viewer.
    signaling: signaling::Peers,
    /// Roles assumed through the emulated STS, with the keys handed out.
    assumed: VecDeque<AssumedRole>,
    /// Storage sessions and offers, by master or viewer.
    sessions: sessions::Sessions,
    /// Streams and channels' media storage (see `storage.rs`).
    storage: storage::Storage,
    /// Playback sessions (see `playback.rs`).
    playback: playback::Playback,
    /// The media the masters' sessions recorded, by stream.
    recordings: fragments::Recordings,
}

#[derive(Clone)]
pub struct Emulator {
    addr: SocketAddr,
    /// Serving https (see [`Emulator::start_tls`]) rather than plain http.
    tls: bool,
    credentials: Arc<EmulatorCredentials>,
    state: Arc<Mutex<State>>,
    /// Wakes the task that ends storage sessions after each join, so it
    /// sleeps until the earliest expiry there is now.
    sessions_changed: Arc<tokio::sync::Notify>,
}

// === impl Emulator ===

impl Emulator {
    /// Starts on an ephemeral port of 127.0.0.1. The server runs until the
    /// runtime stops.
    pub async fn start(credentials: EmulatorCredentials) -> std::io::Result<Self> {
        Self::serve(credentials, None).await
    }

    /// As [`Emulator::start`], over TLS with this PEM certificate chain and
    /// key, so tests can check which CAs the client trusts (the certificate
    /// needs an IP address SAN of 127.0.0.1).
    pub async fn start_tls(
        credentials: EmulatorCredentials,
        cert_pem: &str,
        key_pem: &str,
    ) -> std::io::Result<Self> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let invalid = |e: &dyn fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(&e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::serve(credentials, Some(acceptor)).await
    }

    async fn serve(
        credentials: EmulatorCredentials,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let emulator = Self {
            addr: listener.local_addr()?,
            tls: tls.is_some(),
            credentials: Arc::new(credentials),
            state: Arc::default(),
            sessions_changed: Arc::default(),
        };
        tokio::spawn(emulator.clone().reap_sessions());
        let server = emulator.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                server.lock().connections += 1;
                let emulator = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let emulator = emulator.clone();
                        async move { emulator.handle(req).await }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        // Upgrades: the signaling WebSocket.
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        // A client that does not trust the certificate
                        // ends the handshake; nothing to serve then.
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Ok(emulator)
    }

    /// The control-plane URL, `http://127.0.0.1:PORT` (`https://` when
    /// started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> &EmulatorCredentials {
        &self.credentials
    }

    /// The WEBRTC endpoint discovery answers; this emulator unless set.
    pub fn set_webrtc_endpoint(&self, url: &str) {
        self.lock().webrtc_endpoint = Some(url.to_owned());
    }

    /// Queues answers for a path (`/joinStorageSession`, ...), used in order
    /// by the next requests to it; then the path answers normally again.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.lock()
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Throttles every request to `path` for `duration`, as KVS does when
    /// the account's quota for an operation is used up (other pods sharing
    /// it, say): HTTP 400 `ClientLimitExceededException`. Scripted answers
    /// still come first.
    pub fn throttle(&self, path: &str, duration: Duration) {
        self.lock()
            .throttled
            .insert(path.to_owned(), std::time::Instant::now() + duration);
    }

    /// Scripted answers for `path` not used yet.
    pub fn scripted_left(&self, path: &str) -> usize {
        self.lock().script.get(path).map_or(0, VecDeque::len)
    }

    /// The most recent requests received (up to 1024), oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.iter().cloned().collect()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.lock()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Moves the emulator's clock, to emulate a host whose clock is off
    /// (requests signed more than 5 minutes from it are refused).
    pub fn set_clock_offset_secs(&self, offset: i64) {
        self.lock().clock_offset_secs = offset;
    }

    fn now(&self) -> std::time::SystemTime {
        let offset = self.lock().clock_offset_secs;
        let now = std::time::SystemTime::now();
        let by = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 { now + by } else { now - by }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// How often the container credentials endpoint was asked.
    pub fn credential_loads(&self) -> usize {
        self.lock().credential_loads
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A random UUID, the form of KVS's request ids.
fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
            .collect()
    };
    format!("{}-{}-4{}-a{}-{}", hex(8), hex(4), hex(3), hex(3), hex(12))
}
