//! Assembles the sidecar from its configuration, serves it, and drains it.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aws_config::{BehaviorVersion, Region, sts::AssumeRoleProvider};
use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
};
use tonic_health::server::HealthReporter;

use crate::{
    BoxError,
    admin::{self, Readiness},
    allow_list::ChannelPolicy,
    aws_env::{self, AwsEnv},
    clock::SystemClock,
    config::{AwsArgs, Config, EmulatorArgs},
    emulator::{Emulator, EmulatorCredentials},
    grpc::{
        self, WebRtcStorage, buffer_request::BufferRequestLayer, observe::ObserveLayer,
        request_deadline::RequestDeadlineLayer, require_http2::RequireHttp2Layer,
    },
    idempotency::JoinLedger,
    kvs::{
        KvsClient,
        credentials::Identities,
        data_endpoint::{self, DataPlane},
        endpoint::EndpointSettings,
        transport::{BuildError, Network},
    },
    pb::{self, web_rtc_storage_service_server::WebRtcStorageServiceServer},
    readiness::{self, StorageReadiness},
    recording::{self, Recording},
    serve::{self, Cap, Settings, Tcp, Unix},
    session::Sessions,
    signaling::Signaling,
    store::{SharedStore, StoreError},
    tls::{self, TlsError, TlsListener},
};

/// Largest grpc.health.v1 request: a service name.
const HEALTH_MAX_REQUEST: usize = 1024;
/// Largest reflection request: a symbol or file name.
const REFLECTION_MAX_REQUEST: usize = 8 * 1024;
/// HTTP/2 streams per admin connection: a probe or a scrape needs one.
const ADMIN_MAX_STREAMS: u32 = 16;

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
    fn listen(
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

/// A sidecar bound to its ports, ready to serve.
pub struct Sidecar {
    listeners: Listeners,
    app: App,
}

/// The sockets, bound.
struct Listeners {
    grpc: GrpcListener,
    /// The optional Unix socket beside the TCP port.
    unix: Option<Unix>,
    admin: TcpListener,
}

/// Everything but the sockets: the services behind each port, how their
/// connections are served, and what the drain needs.
struct App {
    grpc_router: axum::Router,
    admin_router: axum::Router,
    grpc_settings: Settings,
    admin_settings: Settings,
    /// Shared by the gRPC port's TCP (or TLS) listener and its Unix socket.
    grpc_cap: Cap,
    admin_cap: Cap,
    health: HealthReporter,
    ready: Readiness,
    sessions: Arc<Sessions>,
    grace: Duration,
    identities: Arc<Identities>,
    /// For the background sweep of its endpoint cache.
    client: Arc<KvsClient>,
    /// For the exporter's periodic upkeep.
    metrics: Option<PrometheusHandle>,
    emulating: bool,
    ready_file: Option<PathBuf>,
}

impl Sidecar {
    /// Assembles the sidecar (the AWS configuration, the KVS client, the
    /// services behind each port) and binds its listeners. Nothing runs
    /// until [`Sidecar::serve`].
    pub async fn bind(
        config: &Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartupError> {
        let app = App::assemble(config, metrics).await?;
        let listeners = Listeners::bind(config).await?;
        Ok(Self { listeners, app })
    }
}

// === impl App ===

impl App {
    async fn assemble(
        config: &Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, StartupError> {
        let aws = if config.emulator.emulate {
            emulated_kvs(&config.emulator)
                .await
                .map_err(StartupError::Emulator)?
        } else {
            aws_env::load(config.aws.env_flags())
                .await
                .map_err(StartupError::Aws)?
        };
        let roles = assumed_roles(&config.aws, &aws.sdk).await;
        let (client, identities, clock) = KvsClient::build(
            config.upstream.client(aws.endpoints, aws.network),
            aws.credentials,
            roles,
            Arc::new(SystemClock),
        )?;
        let client = Arc::new(client);

        // Every service has a decode limit sized to its requests: tonic's
        // 4 MiB default let a few unfinished health messages hold hundreds
        // of MiB (issue 13).
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service = health_service.max_decoding_message_size(HEALTH_MAX_REQUEST);
        let signaling = Signaling::new(
            client.clone(),
            identities.clone(),
            clock.clone(),
            config.calls.signaling_url_expiry,
        );
        let readiness = StorageReadiness::new(
            client.clone(),
            config.calls.readiness_cache_ttl,
            readiness::CAPACITY,
        );
        let store = config
            .state
            .state_store
            .as_deref()
            .map(|url| SharedStore::open(url, config.state.state_store_timeout).map(Arc::new))
            .transpose()?;
        let sessions = Sessions::new(
            config.state.max_maintained_sessions,
            store
                .clone()
                .map(|store| (store, config.state.session_lease)),
        );
        let ledger = match store.clone() {
            // A claimed key outlives any call that could record it.
            Some(store) => JoinLedger::shared(
                store,
                config.state.idempotency_window,
                config.calls.max_call_duration + Duration::from_secs(5),
            ),
            None => JoinLedger::new(
                config.state.idempotency_window,
                config.state.idempotency_keys,
            ),
        };
        // Recording status: the streams' fragments, through their data
        // endpoints, on KVS's clock as far as we know it.
        let recording = Recording::new(
            readiness.clone(),
            Arc::new(DataPlane::new(
                client.clone(),
                data_endpoint::TTL,
                data_endpoint::CAPACITY,
            )),
            clock.clone(),
            recording::Settings {
                max_streams: config.calls.max_recording_streams,
                ..recording::Settings::default()
            },
            store.clone(),
        );
        let storage = WebRtcStorageServiceServer::new(
            WebRtcStorage::new(
                client.clone(),
                signaling,
                readiness,
                ChannelPolicy::new(config.calls.allowed_channels.clone()),
                ledger,
                sessions.clone(),
                recording,
                config.calls.limits(),
            )
            .allow_storage_changes(config.calls.allow_storage_changes),
        )
        // The largest valid request is ~1.3 KiB; tonic's 4 MiB default
        // would let one caller make us buffer megabytes.
        .max_decoding_message_size(config.calls.max_request_bytes);
        // The admin port answers grpc.health.v1 too, so kubelet's native gRPC
        // probes work while the main gRPC port stays on loopback.
        let admin_health = axum::Router::new()
            .route_service("/grpc.health.v1.Health/{*method}", health_service.clone())
            .layer(RequestDeadlineLayer::new(config.calls.max_call_duration));
        let mut routes = tonic::service::Routes::new(health_service).add_service(storage);
        if config.calls.reflection {
            routes = routes
                .add_service(
                    reflection()
                        .build_v1()?
                        .max_decoding_message_size(REFLECTION_MAX_REQUEST),
                )
                .add_service(
                    reflection()
                        .build_v1alpha()?
                        .max_decoding_message_size(REFLECTION_MAX_REQUEST),
                );
        }
        let grpc_router = routes
            .prepare()
            .into_axum_router()
            .layer(RequireHttp2Layer)
            // Storage calls are read whole, under their deadline, before
            // tonic decodes them and the handler takes a call slot.
            .layer(BufferRequestLayer::new(
                grpc::is_unary_storage_call,
                config.calls.max_request_bytes,
            ))
            .layer(RequestDeadlineLayer::new(config.calls.max_call_duration))
            // Outermost: what every layer below logs belongs to the call,
            // and every answer (refusals included) is counted.
            .layer(ObserveLayer);

        let ready = Readiness::default();
        let admin_router = admin::router(ready.clone(), metrics.clone()).merge(admin_health);

        let grpc_settings = Settings {
            port: "grpc",
            // Room for the unary calls and every session at once; calls
            // other than sessions are held to their own per-connection limit.
            max_streams: config
                .connections
                .max_calls_per_connection
                .saturating_add(
                    u32::try_from(config.state.max_maintained_sessions).unwrap_or(u32::MAX),
                )
                .min(MAX_STREAMS_PER_CONNECTION),
            max_calls: config.connections.max_calls_per_connection,
            long_lived: grpc::LONG_LIVED,
            drain_streams: DRAIN_STREAMS.min(config.shutdown_grace),
            deadline: grpc::deadline::timeout,
            max_wait: config.calls.max_call_duration,
            handshake_timeout: config.connections.handshake_timeout,
            keepalive_interval: config.connections.keepalive_interval,
            keepalive_timeout: config.connections.keepalive_timeout,
            idle_timeout: config.connections.idle_timeout,
        };
        let admin_settings = Settings {
            port: "admin",
            max_streams: ADMIN_MAX_STREAMS,
            max_calls: ADMIN_MAX_STREAMS,
            long_lived: &[],
            ..grpc_settings.clone()
        };
        Ok(Self {
            grpc_router,
            admin_router,
            grpc_cap: grpc_cap(config),
            admin_cap: Cap::new(config.connections.admin_max_connections),
            grpc_settings,
            admin_settings,
            health,
            ready,
            sessions,
            grace: config.shutdown_grace,
            identities,
            client,
            metrics,
            emulating: config.emulator.emulate,
            ready_file: config.listen.ready_file.clone(),
        })
    }

    /// The sidecar's own upkeep, started with serving.
    fn spawn_background(&self) {
        // moka drops expired entries as a side effect of later lookups; a
        // timer frees them on an idle sidecar too and keeps the gauge fresh.
        let sweeper = self.client.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                sweeper.endpoints().sweep().await;
            }
        });
        if let Some(handle) = self.metrics.clone() {
            // Histograms and summaries need periodic upkeep when no exporter
            // HTTP listener does it for us.
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            });
        }
        // Credentials start loading now: a missing credential source shows
        // up as UNAVAILABLE answers and a warning, not as a crash loop.
        for credentials in self.identities.all() {
            let credentials = credentials.clone();
            tokio::spawn(async move {
                if let Err(error) = credentials.get().await {
                    let role = credentials.role();
                    tracing::warn!(%error, role, "no AWS credentials yet; calls signed with them will fail until the provider succeeds");
                }
            });
        }
    }
}

// === impl Listeners ===

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, StartupError> {
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

// === impl Sidecar ===

impl Sidecar {
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listeners.grpc {
            GrpcListener::Plain(l) => l.local_addr(),
            GrpcListener::Tls(l) => l.local_addr(),
        }
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains: readiness and health
    /// turn NOT_SERVING, the gRPC listeners close, connections with no call
    /// in flight close at once and in-flight calls get up to the grace
    /// period to finish; the admin port closes last, within the same grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let grpc_addr = self.grpc_addr()?;
        let admin_addr = self.admin_addr()?;
        let Self { listeners, app } = self;
        app.spawn_background();
        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_admin_tx, stop_admin_rx) = watch::channel(false);

        let (router, settings, cap) = (&app.grpc_router, &app.grpc_settings, &app.grpc_cap);
        let unix_path = listeners.unix.as_ref().map(|unix| unix.path.clone());
        let unix = listeners.unix.map(|unix| {
            serve::serve(
                unix,
                router.clone(),
                settings.clone(),
                cap.clone(),
                drain_rx.clone(),
            )
        });
        let mut grpc = match listeners.grpc {
            GrpcListener::Plain(listener) => {
                let tcp = Tcp {
                    listener,
                    no_delay: true,
                };
                serve::serve(tcp, router.clone(), settings.clone(), cap.clone(), drain_rx)
            }
            GrpcListener::Tls(tls) => {
                serve::serve(tls, router.clone(), settings.clone(), cap.clone(), drain_rx)
            }
        };
        let admin = Tcp {
            listener: listeners.admin,
            no_delay: false,
        };
        let admin = serve::serve(
            admin,
            app.admin_router,
            app.admin_settings,
            app.admin_cap,
            stop_admin_rx,
        );

        app.health
            .set_serving::<WebRtcStorageServiceServer<WebRtcStorage>>()
            .await;
        app.ready.set(true);
        if let Some(path) = &app.ready_file {
            let ready = crate::ready_file::Ready {
                pid: std::process::id(),
                grpc: grpc_addr,
                admin: admin_addr,
                unix: unix_path,
            };
            ready
                .write(path)
                .map_err(|e| format!("cannot write --ready-file {}: {e}", path.display()))?;
        }
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "serving");
        if app.emulating {
            tracing::info!(
                "try: grpcurl -plaintext -d '{{\"channel_arn\":\"{DEMO_ARN}\"}}' {grpc_addr} kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession"
            );
        }

        tokio::select! {
            () = shutdown => {}
            ended = &mut grpc => {
                ended?;
                return Err("the gRPC server stopped unexpectedly".into());
            }
        }

        tracing::info!(grace = ?app.grace, "draining");
        app.ready.set(false);
        if let Some(path) = &app.ready_file {
            let _ = std::fs::remove_file(path);
        }
        // Maintained sessions end now with a final event, so their callers'
        // other replicas can take over while this one drains.
        app.sessions.drain();
        app.health
            .set_not_serving::<WebRtcStorageServiceServer<WebRtcStorage>>()
            .await;
        app.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = drain_tx.send(true);
        let until = tokio::time::Instant::now() + app.grace;
        let drained = async {
            grpc.await?;
            if let Some(unix) = unix {
                unix.await?;
            }
            Ok::<_, BoxError>(())
        };
        match tokio::time::timeout_at(until, drained).await {
            Ok(ended) => ended?,
            Err(_) => tracing::warn!("grace period over; ending calls still in flight"),
        }
        // Probes and scrapes answered until now; the admin port gets what is
        // left of the grace, so the exit never waits on one of its clients.
        let _ = stop_admin_tx.send(true);
        if tokio::time::timeout_at(until, admin).await.is_err() {
            tracing::debug!("admin connections still open at the end of the grace period");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// One AssumeRole provider per mapped account, on top of the default chain
/// (aws-config's provider; the credential cache in front of it refreshes
/// ahead of expiry): (account, role ARN, provider).
async fn assumed_roles(
    config: &AwsArgs,
    sdk: &aws_config::SdkConfig,
) -> Vec<(String, String, SharedCredentialsProvider)> {
    let mut roles = Vec::new();
    for role in &config.assume_roles {
        let mut builder = AssumeRoleProvider::builder(&role.role_arn)
            .session_name(&config.assume_role_session_name)
            .configure(sdk);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id);
        }
        let provider = SharedCredentialsProvider::new(builder.build().await);
        roles.push((role.account.clone(), role.role_arn.clone(), provider));
    }
    roles
}

/// A KVS emulator on loopback and the throwaway keys it accepts; the
/// emulator answers STS too.
async fn emulated_kvs(config: &EmulatorArgs) -> Result<AwsEnv, BoxError> {
    let emulator = Emulator::start(EmulatorCredentials::generate()).await?;
    emulator.set_session_lifetime(config.emulate_session_lifetime);
    emulator.drop_first_offers(config.emulate_drop_offers);
    let keys = emulator.credentials();
    let credentials = Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "kvs-sidecar-emulator",
    );
    tracing::info!(
        kvs = %emulator.url(),
        session_lifetime = ?config.emulate_session_lifetime,
        drop_offers = config.emulate_drop_offers,
        "emulating KVS on loopback: no AWS account is used"
    );
    // STS (`--assume-role`) goes to the emulator too.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(emulator.url())
        .credentials_provider(credentials.clone())
        .load()
        .await;
    Ok(AwsEnv {
        sdk,
        credentials: SharedCredentialsProvider::new(credentials),
        endpoints: EndpointSettings {
            override_url: Some(emulator.url().parse()?),
            ..EndpointSettings::default()
        },
        // The emulator is on loopback: no proxy, and plain http.
        network: Network::direct(),
    })
}

/// The most HTTP/2 streams one connection may have open, whatever
/// `--max-maintained-sessions` says.
const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;

/// In a drain, how long session streams get to take their final event
/// (`gave_up DRAINING`) before their connection closes.
const DRAIN_STREAMS: Duration = Duration::from_secs(2);

/// A channel ARN for the emulator demo.
const DEMO_ARN: &str = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/demo/1700000000000";

/// The gRPC port: plain h2c, or TLS / mutual TLS when configured.
enum GrpcListener {
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

/// Server reflection over the storage and health services.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The gRPC port's connection cap, lowered if need be so that the admin
/// port and the KVS connection pool keep their descriptors.
fn grpc_cap(config: &Config) -> Cap {
    let limit = serve::descriptors::raise_limit();
    let cap = serve::descriptors::grpc_cap(
        config.connections.max_connections,
        config.connections.admin_max_connections,
        config.upstream.max_upstream_concurrency,
        limit,
    );
    if cap < config.connections.max_connections {
        tracing::warn!(
            max_connections = config.connections.max_connections,
            lowered_to = cap,
            descriptor_limit = limit,
            "--max-connections does not fit the descriptor limit beside the admin port and the KVS pool; lowered"
        );
    }
    Cap::new(cap)
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
