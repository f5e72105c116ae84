//! Assembles the sidecar from its configuration (this file), on AWS or on
//! the emulator (`aws`), binds its listeners (`listeners`), serves it and
//! drains it (`drain`); `error` says why it could not start.

mod aws;
mod drain;
mod error;
mod listeners;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use metrics_exporter_prometheus::PrometheusHandle;
use tonic_health::server::HealthReporter;

pub use self::error::StartupError;
use self::{
    aws::{assumed_roles, emulated_kvs},
    listeners::{GrpcListener, Listeners},
};
use crate::{
    admin::{self, Readiness},
    allow_list::ChannelPolicy,
    aws_env,
    clock::SystemClock,
    config::Config,
    grpc::{
        self, WebRtcStorage, buffer_request::BufferRequestLayer, observe::ObserveLayer,
        request_deadline::RequestDeadlineLayer, require_http2::RequireHttp2Layer,
    },
    idempotency::JoinLedger,
    kvs::{
        KvsClient,
        credentials::Identities,
        data_endpoint::{self, DataPlane},
    },
    pb::{self, web_rtc_storage_service_server::WebRtcStorageServiceServer},
    readiness::{self, StorageReadiness},
    recording::{self, Recording},
    serve::{self, Cap, Settings},
    session::Sessions,
    signaling::Signaling,
    store::SharedStore,
};

/// Largest grpc.health.v1 request: a service name.
const HEALTH_MAX_REQUEST: usize = 1024;
/// Largest reflection request: a symbol or file name.
const REFLECTION_MAX_REQUEST: usize = 8 * 1024;
/// HTTP/2 streams per admin connection: a probe or a scrape needs one.
const ADMIN_MAX_STREAMS: u32 = 16;

/// A sidecar bound to its ports, ready to serve.
pub struct Sidecar {
    listeners: Listeners,
    app: App,
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
        let client = KvsClient::build(
            config.upstream.client(aws.endpoints, aws.network),
            aws.credentials,
            roles,
            Arc::new(SystemClock),
        )?;
        let client = Arc::new(client);
        let (identities, clock) = (client.identities().clone(), client.clock().clone());

        // Every service has a decode limit sized to its requests: tonic's
        // 4 MiB default let a few unfinished health messages hold hundreds
        // of MiB (issue 13).
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service = health_service.max_decoding_message_size(HEALTH_MAX_REQUEST);
        let signaling = Signaling::new(client.clone(), config.calls.signaling_url_expiry);
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
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                client.upkeep().await;
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

/// The most HTTP/2 streams one connection may have open, whatever
/// `--max-maintained-sessions` says.
const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;

/// In a drain, how long session streams get to take their final event
/// (`gave_up DRAINING`) before their connection closes.
const DRAIN_STREAMS: Duration = Duration::from_secs(2);

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
