//! The upstream side: from a validated channel to a signed KVS call and back.
//!
//! [`KvsClient`] discovers each channel's WEBRTC endpoint once and sends the
//! joins; every request to KVS, discovery included, goes through the tower
//! stack built in [`stack::build`].

pub mod arn;
mod client;
pub mod credentials;
pub mod data_endpoint;
pub mod endpoint;
pub mod endpoint_cache;
mod error;
pub mod fragments;
pub mod partition;
pub mod playback;
pub mod presign;
mod redact;
pub mod retry;
pub mod sign;
pub mod stack;
pub mod streams;
pub mod transport;

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use bytes::Bytes;
use tokio::time::Instant;

pub(crate) use self::error::is_request_id;
pub use self::{
    client::{Call, ClientSettings, Joined, KvsClient, TurnServer},
    error::{BoxError, Error, ErrorKind, ServiceError},
};

/// Identifies the sidecar to AWS (CloudTrail's userAgent field).
const USER_AGENT: &str = concat!("kvs-sidecar/", env!("CARGO_PKG_VERSION"));

/// The KVS operations the sidecar calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetSignalingChannelEndpoint,
    JoinStorageSession,
    JoinStorageSessionAsViewer,
    /// TURN servers for a signaling connection, on the channel's HTTPS
    /// endpoint.
    GetIceServerConfig,
    /// The readiness checks' control-plane reads.
    DescribeSignalingChannel,
    DescribeMediaStorageConfiguration,
    DescribeStream,
    /// EnsureStorage's control-plane reads and writes (`streams.rs`).
    DescribeMappedResourceConfiguration,
    CreateStream,
    UpdateDataRetention,
    UpdateMediaStorageConfiguration,
    /// A stream's data-plane endpoint for one API (`data_endpoint.rs`).
    GetDataEndpoint,
    /// A page of a stream's fragments, on its LIST_FRAGMENTS data endpoint.
    ListFragments,
    /// A new playback session's URL, on the stream's data endpoint for
    /// the API (`playback/`).
    GetHlsStreamingSessionUrl,
    GetDashStreamingSessionUrl,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetSignalingChannelEndpoint => "GetSignalingChannelEndpoint",
            Operation::JoinStorageSession => "JoinStorageSession",
            Operation::JoinStorageSessionAsViewer => "JoinStorageSessionAsViewer",
            Operation::GetIceServerConfig => "GetIceServerConfig",
            Operation::DescribeSignalingChannel => "DescribeSignalingChannel",
            Operation::DescribeMediaStorageConfiguration => "DescribeMediaStorageConfiguration",
            Operation::DescribeStream => "DescribeStream",
            Operation::DescribeMappedResourceConfiguration => "DescribeMappedResourceConfiguration",
            Operation::CreateStream => "CreateStream",
            Operation::UpdateDataRetention => "UpdateDataRetention",
            Operation::UpdateMediaStorageConfiguration => "UpdateMediaStorageConfiguration",
            Operation::GetDataEndpoint => "GetDataEndpoint",
            Operation::ListFragments => "ListFragments",
            Operation::GetHlsStreamingSessionUrl => "GetHLSStreamingSessionURL",
            Operation::GetDashStreamingSessionUrl => "GetDASHStreamingSessionURL",
        }
    }

    /// Whether each call makes KVS send an SDP offer to the master: not
    /// idempotent.
    pub fn is_join(self) -> bool {
        matches!(
            self,
            Operation::JoinStorageSession | Operation::JoinStorageSessionAsViewer
        )
    }

    /// Whether each call opens a playback session: KVS keeps at most 10
    /// per stream and ends the oldest, so an extra one is not harmless.
    pub fn opens_session(self) -> bool {
        matches!(
            self,
            Operation::GetHlsStreamingSessionUrl | Operation::GetDashStreamingSessionUrl
        )
    }

    /// The REST path of the operation (restJson1, always POST).
    pub fn path(self) -> &'static str {
        match self {
            Operation::GetSignalingChannelEndpoint => "/getSignalingChannelEndpoint",
            Operation::JoinStorageSession => "/joinStorageSession",
            Operation::JoinStorageSessionAsViewer => "/joinStorageSessionAsViewer",
            Operation::GetIceServerConfig => "/v1/get-ice-server-config",
            Operation::DescribeSignalingChannel => "/describeSignalingChannel",
            Operation::DescribeMediaStorageConfiguration => "/describeMediaStorageConfiguration",
            Operation::DescribeStream => "/describeStream",
            Operation::DescribeMappedResourceConfiguration => {
                "/describeMappedResourceConfiguration"
            }
            Operation::CreateStream => "/createStream",
            Operation::UpdateDataRetention => "/updateDataRetention",
            Operation::UpdateMediaStorageConfiguration => "/updateMediaStorageConfiguration",
            Operation::GetDataEndpoint => "/getDataEndpoint",
            Operation::ListFragments => "/listFragments",
            Operation::GetHlsStreamingSessionUrl => "/getHLSStreamingSessionURL",
            Operation::GetDashStreamingSessionUrl => "/getDASHStreamingSessionURL",
        }
    }
}

/// One KVS call as it enters the stack. Cloned for each retry, so it holds
/// only cheap handles.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub operation: Operation,
    /// Scheme and authority (and an optional base path) of the endpoint.
    pub endpoint: ::http::Uri,
    /// The region the request is signed for: the channel's, never ours.
    pub region: Arc<str>,
    pub body: Bytes,
    /// No attempt starts after this instant.
    pub deadline: Instant,
    /// Counts the attempts of the whole gRPC call, for its log line.
    pub attempts: Arc<AtomicU32>,
    /// Which attempt of this request this is, from 1: the retry policy
    /// counts it up, for the attempt's span.
    pub attempt: u32,
    /// Why this attempt is a retry: the previous attempt's failure, as the
    /// retry policy classified it.
    pub retry_reason: Option<&'static str>,
    /// What signs it: the channel's account's credentials.
    pub credentials: Arc<credentials::CredentialCache>,
    /// The per-stream pace every attempt of a data-plane request keeps
    /// (`stack/pace.rs`); `None` for the control plane and the signaling
    /// APIs, which KVS limits per account or channel instead.
    pub pace: Option<stack::pace::PaceKey>,
}

impl UpstreamRequest {
    /// A request for unit tests of the stack's layers: test credentials,
    /// a placeholder endpoint, no body.
    #[cfg(test)]
    pub(crate) fn for_tests(operation: Operation, deadline: Instant) -> Self {
        Self {
            operation,
            endpoint: "https://kvs.example".parse().expect("a valid URI"),
            region: "us-west-2".into(),
            body: Bytes::new(),
            deadline,
            attempts: Arc::default(),
            attempt: 1,
            retry_reason: None,
            pace: None,
            credentials: credentials::Identities::for_tests()
                .all()
                .next()
                .expect("the default chain's cache")
                .clone(),
        }
    }

    /// The HTTP request of one attempt, before signing.
    pub fn to_http(&self) -> Result<::http::Request<Bytes>, Error> {
        let base = self.endpoint.path().trim_end_matches('/');
        let uri = ::http::Uri::builder()
            .scheme(self.endpoint.scheme_str().unwrap_or("https"))
            .authority(
                self.endpoint
                    .authority()
                    .map(|a| a.as_str())
                    .unwrap_or_default(),
            )
            .path_and_query(format!("{base}{}", self.operation.path()))
            .build()
            .map_err(|e| Error::Signing(format!("bad endpoint {}: {e}", self.endpoint)))?;
        ::http::Request::post(uri)
            .header(::http::header::CONTENT_TYPE, "application/json")
            .header(::http::header::USER_AGENT, USER_AGENT)
            .body(self.body.clone())
            .map_err(|e| Error::Signing(e.to_string()))
    }

    fn count_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A successful KVS answer.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: ::http::StatusCode,
    pub request_id: Option<String>,
    pub body: Bytes,
}
