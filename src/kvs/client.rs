//! The two joins, each preceded (once per channel and role) by endpoint
//! discovery.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http::Uri;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::ServiceExt;

use super::{
    Error, ErrorKind, Operation, UpstreamRequest, UpstreamResponse,
    arn::ChannelArn,
    credentials::CredentialCache,
    endpoint::{self, EndpointSettings, Role},
    endpoint_cache::EndpointCache,
    stack::{self, StackConfig, Upstream},
};
use crate::clock::SharedClock;

/// One gRPC call's budget and bookkeeping, shared by its discovery and join.
#[derive(Debug, Clone)]
pub struct Call {
    deadline: Instant,
    attempts: Arc<AtomicU32>,
}

impl Call {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            attempts: Arc::default(),
        }
    }

    /// Requests sent to KVS so far, discovery and retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// A join KVS accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub request_id: String,
}

/// Everything the client is built from, as plain values: the composition
/// root fills it from the command line and the AWS environment.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub stack: StackConfig,
    pub endpoints: EndpointSettings,
    pub endpoint_cache_ttl: Duration,
    pub endpoint_cache_capacity: u64,
    pub credentials_timeout: Duration,
}

pub struct KvsClient {
    upstream: Upstream,
    endpoints: EndpointCache,
    endpoint_settings: EndpointSettings,
}

// === impl KvsClient ===

impl KvsClient {
    pub fn new(
        upstream: Upstream,
        endpoints: EndpointCache,
        endpoint_settings: EndpointSettings,
    ) -> Self {
        Self {
            upstream,
            endpoints,
            endpoint_settings,
        }
    }

    /// The client `settings` describe: its tower stack signing with what
    /// `provider` gives (through the returned cache, which the caller may
    /// warm), and an empty endpoint cache.
    pub fn build(
        settings: ClientSettings,
        provider: SharedCredentialsProvider,
        clock: SharedClock,
    ) -> Result<(Self, Arc<CredentialCache>), Error> {
        let credentials = Arc::new(CredentialCache::new(
            provider,
            clock.clone(),
            settings.credentials_timeout,
        ));
        let upstream = stack::build(&settings.stack, credentials.clone(), clock)?;
        let endpoints = EndpointCache::new(
            settings.endpoint_cache_ttl,
            settings.endpoint_cache_capacity,
        );
        Ok((
            Self::new(upstream, endpoints, settings.endpoints),
            credentials,
        ))
    }

    pub async fn join_storage_session(
        &self,
        call: &Call,
        arn: &ChannelArn,
    ) -> Result<Joined, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            channel_arn: &'a str,
        }
        let body = json(&Body {
            channel_arn: arn.as_str(),
        });
        self.join(call, arn, Role::Master, Operation::JoinStorageSession, body)
            .await
    }

    pub async fn join_storage_session_as_viewer(
        &self,
        call: &Call,
        arn: &ChannelArn,
        client_id: &str,
    ) -> Result<Joined, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            channel_arn: &'a str,
            client_id: &'a str,
        }
        let body = json(&Body {
            channel_arn: arn.as_str(),
            client_id,
        });
        self.join(
            call,
            arn,
            Role::Viewer,
            Operation::JoinStorageSessionAsViewer,
            body,
        )
        .await
    }

    pub fn endpoints(&self) -> &EndpointCache {
        &self.endpoints
    }

    async fn join(
        &self,
        call: &Call,
        arn: &ChannelArn,
        role: Role,
        operation: Operation,
        body: Bytes,
    ) -> Result<Joined, Error> {
        let work = async {
            let endpoint = self
                .endpoints
                .get_or_discover(arn, role, || self.discover(call, arn, role))
                .await?;
            let answer = self.send(call, operation, endpoint, arn, body).await;
            if answer.as_ref().is_err_and(endpoint_is_stale) {
                self.endpoints.invalidate(arn, role).await;
            }
            let answer = answer?;
            Ok(Joined {
                request_id: answer.request_id.unwrap_or_default(),
            })
        };
        // The deadline covers discovery, waiting on another call's discovery,
        // every attempt and every backoff.
        tokio::time::timeout_at(call.deadline, work)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded))
    }

    async fn discover(&self, call: &Call, arn: &ChannelArn, role: Role) -> Result<Uri, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Config<'a> {
            protocols: [&'a str; 1],
            role: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            #[serde(rename = "ChannelARN")]
            channel_arn: &'a str,
            single_master_channel_endpoint_configuration: Config<'a>,
        }
        let body = json(&Body {
            channel_arn: arn.as_str(),
            single_master_channel_endpoint_configuration: Config {
                protocols: ["WEBRTC"],
                role: role.as_str(),
            },
        });
        let control_plane = endpoint::control_plane(arn, &self.endpoint_settings)?;
        let answer = self
            .send(
                call,
                Operation::GetSignalingChannelEndpoint,
                control_plane.clone(),
                arn,
                body,
            )
            .await?;
        webrtc_endpoint(&answer.body, &control_plane)
    }

    async fn send(
        &self,
        call: &Call,
        operation: Operation,
        endpoint: Uri,
        arn: &ChannelArn,
        body: Bytes,
    ) -> Result<UpstreamResponse, Error> {
        let request = UpstreamRequest {
            operation,
            endpoint,
            region: arn.region().into(),
            body,
            deadline: call.deadline,
            attempts: call.attempts.clone(),
        };
        self.upstream.clone().oneshot(request).await
    }
}

/// Whether a failed join means the cached endpoint should be rediscovered:
/// KVS no longer knows the channel there, or the endpoint stopped answering
/// (connection failures or 5xx through every retry).
fn endpoint_is_stale(err: &Error) -> bool {
    match err {
        Error::Service(e) => matches!(e.kind, ErrorKind::NotFound | ErrorKind::Transient),
        Error::Transport(_) => true,
        _ => false,
    }
}

/// The WEBRTC endpoint in a `GetSignalingChannelEndpoint` answer. Joins are
/// signed with the session token, so an endpoint that would take them in
/// clear text is refused unless the control plane itself is plain http (a
/// local emulator).
fn webrtc_endpoint(body: &[u8], control_plane: &Uri) -> Result<Uri, Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        resource_endpoint_list: Vec<Endpoint>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Endpoint {
        protocol: Option<String>,
        resource_endpoint: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| Error::MalformedResponse(format!("GetSignalingChannelEndpoint: {e}")))?;
    let raw = answer
        .resource_endpoint_list
        .into_iter()
        .find(|e| e.protocol.as_deref() == Some("WEBRTC"))
        .and_then(|e| e.resource_endpoint)
        .ok_or_else(|| {
            Error::MalformedResponse(
                "GetSignalingChannelEndpoint answered no WEBRTC endpoint".into(),
            )
        })?;
    let uri: Uri = raw
        .parse()
        .map_err(|e| Error::MalformedResponse(format!("WEBRTC endpoint {raw:?}: {e}")))?;
    let raw = super::redact::redact(&raw);
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), _) if control_plane.scheme_str() != Some("http") => {
            Err(Error::MalformedResponse(format!(
                "WEBRTC endpoint {raw:?} is plain http while the control plane is https; refusing to send signed requests in clear text"
            )))
        }
        (Some("https" | "http"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(Error::MalformedResponse(format!(
            "WEBRTC endpoint {raw:?} is not an http(s) URL with a host"
        ))),
    }
}

fn json(value: &impl Serialize) -> Bytes {
    // Serializing these plain string structs cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_webrtc_endpoint() {
        let body = br#"{"ResourceEndpointList":[
            {"Protocol":"WSS","ResourceEndpoint":"wss://m-1.kinesisvideo.us-west-2.amazonaws.com"},
            {"Protocol":"WEBRTC","ResourceEndpoint":"https://w-1.kinesisvideo.us-west-2.amazonaws.com"}]}"#;
        assert_eq!(
            webrtc_endpoint(body, &https()).unwrap().host(),
            Some("w-1.kinesisvideo.us-west-2.amazonaws.com")
        );
    }

    fn https() -> Uri {
        "https://kinesisvideo.us-west-2.amazonaws.com"
            .parse()
            .unwrap()
    }

    #[test]
    fn refuses_a_plain_http_endpoint_behind_an_https_control_plane() {
        let body = br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"http://w-1.example"}]}"#;
        assert!(matches!(
            webrtc_endpoint(body, &https()),
            Err(Error::MalformedResponse(m)) if m.contains("clear text")
        ));
        let emulator: Uri = "http://127.0.0.1:4566".parse().unwrap();
        assert!(webrtc_endpoint(body, &emulator).is_ok());
    }

    #[test]
    fn refuses_answers_without_a_usable_endpoint() {
        for body in [
            &br#"{"ResourceEndpointList":[]}"#[..],
            br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"wss://x"}]}"#,
            br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"ftp://x"}]}"#,
            br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"/relative"}]}"#,
            b"not json",
        ] {
            assert!(matches!(
                webrtc_endpoint(body, &https()),
                Err(Error::MalformedResponse(_))
            ));
        }
    }
}
