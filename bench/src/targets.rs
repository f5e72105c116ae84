//! The four ways to make a join: through the sidecar over gRPC, the
//! sidecar's upstream stack in-process, the official AWS SDK in-process, and
//! a bare HTTP request to the fake (the floor for added latency); and a
//! health check, the sidecar's gRPC hop with no work behind it.

use std::{sync::Arc, time::Duration};

use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};
use aws_sdk_kinesisvideowebrtcstorage as sdk;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use kvs_sidecar::{
    clock::SystemClock,
    config::Config,
    kvs::{
        Call, KvsClient,
        arn::ChannelArn,
        endpoint::{EndpointSettings, Peer},
        transport::Network,
    },
    pb::{
        JoinStorageSessionAsViewerRequest, JoinStorageSessionRequest,
        web_rtc_storage_service_client::WebRtcStorageServiceClient,
    },
};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::load::Target;

/// Throwaway keys: the fake checks no signatures, but every caller signs.
pub const ACCESS_KEY_ID: &str = "AKIDKVSBENCHMARK0001";
pub const SECRET_ACCESS_KEY: &str = "kvs-bench-secret-key-not-a-real-one-0000";
pub const REGION: &str = "us-west-2";

/// The channels a phase spreads its calls over, and what each call sends.
#[derive(Debug, Clone)]
pub struct Workload {
    pub arns: Arc<[String]>,
    /// `Some` sends JoinStorageSessionAsViewer with this client id.
    pub client_id: Option<Arc<str>>,
}

impl Workload {
    pub fn new(arns: Vec<String>, client_id: Option<String>) -> Self {
        Self {
            arns: arns.into(),
            client_id: client_id.map(Into::into),
        }
    }

    fn arn(&self, n: u64) -> &str {
        &self.arns[(n % self.arns.len() as u64) as usize]
    }
}

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "kvs-bench")
}

// === impl Sidecar ===

/// The sidecar binary over gRPC, as a backend in another language calls it.
pub struct Sidecar {
    clients: Vec<WebRtcStorageServiceClient<Channel>>,
    work: Workload,
}

impl Sidecar {
    /// One HTTP/2 connection per 64 callers, as a pooled gRPC client would
    /// open.
    pub async fn connect(url: &str, concurrency: usize, work: Workload) -> Self {
        let channels = channels(url, concurrency).await;
        let clients = channels.into_iter().map(WebRtcStorageServiceClient::new);
        Self {
            clients: clients.collect(),
            work,
        }
    }
}

/// One HTTP/2 connection to the sidecar per 64 callers.
async fn channels(url: &str, concurrency: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(64).max(1) {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .expect("a valid URL")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect to the sidecar");
        channels.push(channel);
    }
    channels
}

impl Target for Sidecar {
    async fn call(&self, n: u64) -> Result<(), String> {
        let mut client = self.clients[(n % self.clients.len() as u64) as usize].clone();
        let channel_arn = self.work.arn(n).to_owned();
        let result = match &self.work.client_id {
            None => client
                .join_storage_session(JoinStorageSessionRequest {
                    channel_arn,
                    ..Default::default()
                })
                .await
                .map(drop),
            Some(id) => client
                .join_storage_session_as_viewer(JoinStorageSessionAsViewerRequest {
                    channel_arn,
                    client_id: id.to_string(),
                    ..Default::default()
                })
                .await
                .map(drop),
        };
        result.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

// === impl Stack ===

/// The sidecar's KVS client (validation, discovery cache, retry, signing,
/// pooled HTTP) driven in-process, without gRPC.
pub struct Stack {
    client: KvsClient,
    work: Workload,
    budget: Duration,
}

impl Stack {
    pub fn new(fake: &str, max_attempts: u32, work: Workload) -> Self {
        let attempts = max_attempts.to_string();
        let config = Config::try_parse_from([
            "kvs-sidecar",
            "--max-attempts",
            &attempts,
            "--discovery-rate",
            "0",
        ])
        .expect("valid flags");
        let endpoints = EndpointSettings {
            override_url: Some(fake.parse().expect("a valid URL")),
            ..EndpointSettings::default()
        };
        let client = KvsClient::build(
            config.upstream.client(endpoints, Network::direct()),
            SharedCredentialsProvider::new(credentials()),
            Vec::new(),
            Arc::new(SystemClock),
        )
        .expect("build the KVS client");
        Self {
            client,
            work,
            budget: config.calls.max_call_duration,
        }
    }
}

impl Target for Stack {
    async fn call(&self, n: u64) -> Result<(), String> {
        let arn = ChannelArn::parse(self.work.arn(n)).map_err(|e| e.to_string())?;
        let call = Call::new(Instant::now() + self.budget);
        let peer = match &self.work.client_id {
            None => Peer::Master,
            Some(id) => {
                kvs_sidecar::kvs::arn::validate_client_id(id).map_err(|e| e.to_string())?;
                Peer::Viewer(id)
            }
        };
        let joined = self.client.join(&call, &arn, peer).await;
        joined.map(drop).map_err(|e| e.to_string())
    }
}

// === impl Sdk ===

/// `aws-sdk-kinesisvideowebrtcstorage` as a Rust service would use it
/// without the sidecar: one client, standard retries, the endpoint given.
pub struct Sdk {
    client: sdk::Client,
    work: Workload,
}

impl Sdk {
    pub fn new(fake: &str, max_attempts: u32, work: Workload) -> Self {
        let config = sdk::Config::builder()
            .behavior_version(sdk::config::BehaviorVersion::latest())
            .region(sdk::config::Region::new(REGION))
            .credentials_provider(credentials())
            .endpoint_url(fake)
            .retry_config(
                sdk::config::retry::RetryConfig::standard().with_max_attempts(max_attempts),
            )
            .timeout_config(
                sdk::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build();
        Self {
            client: sdk::Client::from_conf(config),
            work,
        }
    }
}

impl Target for Sdk {
    async fn call(&self, n: u64) -> Result<(), String> {
        let arn = self.work.arn(n);
        match &self.work.client_id {
            None => self
                .client
                .join_storage_session()
                .channel_arn(arn)
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk::error::DisplayErrorContext(e).to_string()),
            Some(id) => self
                .client
                .join_storage_session_as_viewer()
                .channel_arn(arn)
                .client_id(id.as_ref())
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk::error::DisplayErrorContext(e).to_string()),
        }
    }
}

// === impl Health ===

/// A grpc.health.v1 check of the sidecar: what one gRPC call to it costs
/// with nothing behind it (the load generator's tonic client, loopback both
/// ways, the sidecar's HTTP/2 server and its layers), on the same HTTP/2
/// connections as the joins.
pub struct Health {
    clients: Vec<HealthClient<Channel>>,
}

impl Health {
    /// On connections made as [`Sidecar::connect`] makes them.
    pub async fn connect(url: &str, concurrency: usize) -> Self {
        let channels = channels(url, concurrency).await;
        let clients = channels.into_iter().map(HealthClient::new);
        Self {
            clients: clients.collect(),
        }
    }
}

impl Target for Health {
    async fn call(&self, n: u64) -> Result<(), String> {
        let mut client = self.clients[(n % self.clients.len() as u64) as usize].clone();
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(drop)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
}

// === impl Direct ===

/// An unsigned POST straight to the fake: loopback plus the fake's own
/// time, the floor every other path is measured against.
pub struct Direct {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    body: Bytes,
}

impl Direct {
    pub fn new(fake: &str, work: &Workload) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url: format!("{fake}/joinStorageSession")
                .parse()
                .expect("a valid URL"),
            body: Bytes::from(format!(r#"{{"channelArn":"{}"}}"#, work.arn(0))),
        }
    }
}

impl Target for Direct {
    async fn call(&self, _n: u64) -> Result<(), String> {
        let req = http::Request::post(self.url.clone())
            .header("content-type", "application/x-amz-json-1.0")
            .body(Full::new(self.body.clone()))
            .expect("valid request parts");
        let response = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("fake answered {status}"))
        }
    }
}
