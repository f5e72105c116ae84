//! The two joins and `GetIceServerConfig`, each preceded (once per channel
//! and role) by endpoint discovery.

use std::{
    fmt,
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
    credentials::{CredentialCache, Identities},
    endpoint::{self, EndpointSettings, Endpoints, Peer, Protocol, Role},
    endpoint_cache::EndpointCache,
    stack::{self, StackConfig, Upstream},
    transport::BuildError,
};
use crate::clock::{SharedClock, SkewCorrectedClock};

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

    /// No attempt starts after this instant.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Requests sent to KVS so far, discovery and retries included.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// `work`, ended with `DeadlineExceeded` if the call's deadline passes
    /// first: how every wait of a call (discovery, another caller's
    /// discovery, attempts, backoffs, a shared check) honours it.
    pub async fn bound<T, E: From<Error>>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .unwrap_or_else(|_| Err(Error::DeadlineExceeded.into()))
    }
}

/// A TURN server from `GetIceServerConfig`. Debug never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub uris: Vec<String>,
    pub username: String,
    pub password: String,
    /// How long the username and password are valid from the answer.
    pub ttl: Duration,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("uris", &self.uris)
            .field("username", &self.username)
            .field("password", &"** redacted **")
            .field("ttl", &self.ttl)
            .finish()
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
    identities: Arc<Identities>,
    /// KVS's time as far as the stack knows it (it corrects the skew KVS
    /// reports): requests and presigned URLs are signed with it.
    clock: Arc<SkewCorrectedClock>,
}

// === impl KvsClient ===

impl KvsClient {
    /// A client over `upstream`, for tests and benchmarks: presigned URLs
    /// are signed with this host's clock.
    pub fn new(
        upstream: Upstream,
        endpoints: EndpointCache,
        endpoint_settings: EndpointSettings,
        identities: Arc<Identities>,
    ) -> Self {
        Self {
            upstream,
            endpoints,
            endpoint_settings,
            identities,
            clock: Arc::new(SkewCorrectedClock::new(Arc::new(crate::clock::SystemClock))),
        }
    }

    /// The client `settings` describe: its tower stack, signing with what
    /// `provider` gives, or for a channel of a mapped account with what
    /// that account's `roles` provider gives (account id, role ARN,
    /// provider); and an empty endpoint cache.
    pub fn build(
        settings: ClientSettings,
        provider: SharedCredentialsProvider,
        roles: Vec<(String, String, SharedCredentialsProvider)>,
        clock: SharedClock,
    ) -> Result<Self, BuildError> {
        let cache =
            |provider| CredentialCache::new(provider, clock.clone(), settings.credentials_timeout);
        let mut identities = Identities::new(Arc::new(cache(provider)));
        for (account, role, provider) in roles {
            identities = identities.with_role(&account, Arc::new(cache(provider).with_role(&role)));
        }
        let clock = Arc::new(SkewCorrectedClock::new(clock));
        let upstream = stack::build(&settings.stack, clock.clone())?;
        let endpoints = EndpointCache::new(
            settings.endpoint_cache_ttl,
            settings.endpoint_cache_capacity,
        );
        Ok(Self {
            clock,
            ..Self::new(
                upstream,
                endpoints,
                settings.endpoints,
                Arc::new(identities),
            )
        })
    }

    /// The credential caches requests are signed with (the composition
    /// root warms them at start and reports their state).
    pub fn identities(&self) -> &Arc<Identities> {
        &self.identities
    }

    /// KVS's time as far as the client knows it.
    pub fn clock(&self) -> &Arc<SkewCorrectedClock> {
        &self.clock
    }

    /// `JoinStorageSession` for the master, `JoinStorageSessionAsViewer`
    /// for a viewer: KVS sends the peer an SDP offer on its signaling
    /// connection. Each join makes a new offer (the latest wins): a join is
    /// not idempotent.
    pub async fn join(
        &self,
        call: &Call,
        arn: &ChannelArn,
        peer: Peer<'_>,
    ) -> Result<Joined, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            channel_arn: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            client_id: Option<&'a str>,
        }
        let body = json(&Body {
            channel_arn: arn.as_str(),
            client_id: peer.client_id(),
        });
        let operation = match peer {
            Peer::Master => Operation::JoinStorageSession,
            Peer::Viewer(_) => Operation::JoinStorageSessionAsViewer,
        };
        let role = peer.role();
        let work = async {
            let endpoints = self
                .endpoints
                .get_or_discover(arn, role, || self.discover(call, arn, role))
                .await?;
            let endpoint = endpoints.get(Protocol::Webrtc)?.clone();
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
        call.bound(work).await
    }

    /// The client's periodic upkeep: moka drops expired entries only as a
    /// side effect of later lookups, so an idle sidecar would keep its
    /// expired endpoints (and a stale gauge) without it.
    pub async fn upkeep(&self) {
        self.endpoints.sweep().await;
    }

    /// The channel's endpoints for `role`, from the cache or discovered
    /// (one discovery serves the joins and signaling alike).
    pub async fn discover_endpoints(
        &self,
        call: &Call,
        arn: &ChannelArn,
        role: Role,
    ) -> Result<Arc<Endpoints>, Error> {
        let work = self
            .endpoints
            .get_or_discover(arn, role, || self.discover(call, arn, role));
        call.bound(work).await
    }

    /// A control-plane read about the channel (the readiness checks'
    /// Describe* requests): signed for the channel's region, through the
    /// stack, within the call's deadline. Answers KVS's body.
    pub(super) async fn describe(
        &self,
        call: &Call,
        arn: &ChannelArn,
        operation: Operation,
        body: &impl Serialize,
    ) -> Result<Bytes, Error> {
        let control_plane = endpoint::control_plane(arn, &self.endpoint_settings)?;
        let work = self.send(call, operation, control_plane, arn, json(body));
        call.bound(work).await.map(|answer| answer.body)
    }

    /// The control-plane endpoint for `arn`'s region under the configured
    /// FIPS / dual-stack settings.
    pub(crate) fn control_plane(&self, arn: &ChannelArn) -> Result<Uri, Error> {
        endpoint::control_plane(arn, &self.endpoint_settings)
    }

    /// The TURN servers for a connection to the channel, from
    /// `GetIceServerConfig` on the channel's HTTPS endpoint for `role`.
    /// `client_id` is the viewer's; a master sends none.
    pub async fn ice_server_config(
        &self,
        call: &Call,
        arn: &ChannelArn,
        peer: Peer<'_>,
    ) -> Result<Vec<TurnServer>, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            #[serde(rename = "ChannelARN")]
            channel_arn: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            client_id: Option<&'a str>,
            service: &'a str,
        }
        let body = json(&Body {
            channel_arn: arn.as_str(),
            client_id: peer.client_id(),
            service: "TURN",
        });
        let role = peer.role();
        let work = async {
            let endpoints = self.discover_endpoints(call, arn, role).await?;
            let https = endpoints.get(Protocol::Https)?.clone();
            let answer = self
                .send(call, Operation::GetIceServerConfig, https, arn, body)
                .await;
            if answer.as_ref().is_err_and(endpoint_is_stale) {
                self.endpoints.invalidate(arn, role).await;
            }
            turn_servers(&answer?.body)
        };
        call.bound(work).await
    }

    /// Asks for every protocol at once, so a channel used for both signaling
    /// and joins is discovered once per role.
    async fn discover(
        &self,
        call: &Call,
        arn: &ChannelArn,
        role: Role,
    ) -> Result<Arc<Endpoints>, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Config<'a> {
            protocols: [&'a str; 3],
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
                protocols: Protocol::ALL.map(Protocol::as_str),
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
        parse_endpoints(&answer.body, &control_plane).map(Arc::new)
    }

    async fn send(
        &self,
        call: &Call,
        operation: Operation,
        endpoint: Uri,
        arn: &ChannelArn,
        body: Bytes,
    ) -> Result<UpstreamResponse, Error> {
        self.send_paced(call, operation, endpoint, arn, body, None)
            .await
    }

    /// A request to `endpoint` about `arn` (a channel or a stream: signed
    /// for its region with its account's credentials), each attempt keeping
    /// `pace` when given. The data-plane operations (`data_endpoint.rs`)
    /// send through this.
    pub(crate) async fn send_paced(
        &self,
        call: &Call,
        operation: Operation,
        endpoint: Uri,
        arn: &ChannelArn,
        body: Bytes,
        pace: Option<super::stack::pace::PaceKey>,
    ) -> Result<UpstreamResponse, Error> {
        let request = UpstreamRequest {
            operation,
            endpoint,
            region: arn.region().into(),
            body,
            deadline: call.deadline,
            attempts: call.attempts.clone(),
            attempt: 1,
            retry_reason: None,
            credentials: self.identities.for_channel(arn).clone(),
            pace,
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
        Error::Transport(_) | Error::Connect(_) => true,
        _ => false,
    }
}

/// The endpoints in a `GetSignalingChannelEndpoint` answer. Joins and
/// `GetIceServerConfig` are signed with the session token and the WebSocket
/// URL carries it, so an endpoint that would take them in clear text (http,
/// ws) is refused unless the control plane itself is plain http (a local
/// emulator). A listed endpoint that is unusable fails the whole discovery;
/// one not listed is left `None`.
fn parse_endpoints(body: &[u8], control_plane: &Uri) -> Result<Endpoints, Error> {
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
    let clear_text_allowed = control_plane.scheme_str() == Some("http");
    let mut found = Endpoints::default();
    for entry in answer.resource_endpoint_list {
        let (Some(protocol), Some(raw)) = (entry.protocol, entry.resource_endpoint) else {
            continue;
        };
        let (slot, secure, plain) = match protocol.as_str() {
            "WEBRTC" => (&mut found.webrtc, "https", "http"),
            "HTTPS" => (&mut found.https, "https", "http"),
            "WSS" => (&mut found.wss, "wss", "ws"),
            _ => continue,
        };
        *slot = Some(checked_endpoint(
            &protocol,
            &raw,
            secure,
            plain,
            clear_text_allowed,
        )?);
    }
    if found == Endpoints::default() {
        return Err(Error::MalformedResponse(
            "GetSignalingChannelEndpoint answered no endpoint".into(),
        ));
    }
    Ok(found)
}

/// Longest endpoint URL accepted from `GetSignalingChannelEndpoint`.
const MAX_ENDPOINT_LEN: usize = 512;

fn checked_endpoint(
    protocol: &str,
    raw: &str,
    secure: &str,
    plain: &str,
    clear_text_allowed: bool,
) -> Result<Uri, Error> {
    // KVS's endpoints are under 100 bytes; they are cached for every
    // channel, so a broken or hostile upstream must not choose their size.
    if raw.len() > MAX_ENDPOINT_LEN {
        return Err(Error::MalformedResponse(format!(
            "{protocol} endpoint of {} bytes, past the {MAX_ENDPOINT_LEN} an endpoint URL may have",
            raw.len()
        )));
    }
    let shown = super::redact::redact(raw);
    let uri: Uri = raw
        .parse()
        .map_err(|e| Error::MalformedResponse(format!("{protocol} endpoint {shown:?}: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if scheme == plain && !clear_text_allowed {
        return Err(Error::MalformedResponse(format!(
            "{protocol} endpoint {shown:?} is plain {plain} while the control plane is https; refusing to send signed requests in clear text"
        )));
    }
    match uri.host() {
        Some(host) if !host.is_empty() && (scheme == secure || scheme == plain) => Ok(uri),
        _ => Err(Error::MalformedResponse(format!(
            "{protocol} endpoint {shown:?} is not a {secure} URL with a host"
        ))),
    }
}

/// The TURN servers in a `GetIceServerConfig` answer.
fn turn_servers(body: &[u8]) -> Result<Vec<TurnServer>, Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        ice_server_list: Vec<IceServer>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct IceServer {
        #[serde(default)]
        uris: Vec<String>,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        ttl: u64,
    }
    // The error names the field only: serde's message could quote a value,
    // and the password is one.
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        Error::MalformedResponse(format!(
            "GetIceServerConfig answer is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(answer
        .ice_server_list
        .into_iter()
        .map(|s| TurnServer {
            uris: s.uris,
            username: s.username,
            password: s.password,
            ttl: Duration::from_secs(s.ttl),
        })
        .collect())
}

pub(super) fn json(value: &impl Serialize) -> Bytes {
    // Serializing these plain string structs cannot fail.
    Bytes::from(
        serde_json::to_vec(value).expect("request bodies are plain structs of strings and numbers"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_endpoint_of_one_discovery() {
        let body = br#"{"ResourceEndpointList":[
            {"Protocol":"WSS","ResourceEndpoint":"wss://m-1.kinesisvideo.us-west-2.amazonaws.com"},
            {"Protocol":"HTTPS","ResourceEndpoint":"https://h-1.kinesisvideo.us-west-2.amazonaws.com"},
            {"Protocol":"WEBRTC","ResourceEndpoint":"https://w-1.kinesisvideo.us-west-2.amazonaws.com"}]}"#;
        let found = parse_endpoints(body, &https()).unwrap();
        let host = |p| found.get(p).unwrap().host().unwrap().to_owned();
        assert_eq!(
            host(Protocol::Webrtc),
            "w-1.kinesisvideo.us-west-2.amazonaws.com"
        );
        assert_eq!(
            host(Protocol::Wss),
            "m-1.kinesisvideo.us-west-2.amazonaws.com"
        );
        assert_eq!(
            host(Protocol::Https),
            "h-1.kinesisvideo.us-west-2.amazonaws.com"
        );
    }

    fn https() -> Uri {
        "https://kinesisvideo.us-west-2.amazonaws.com"
            .parse()
            .unwrap()
    }

    #[test]
    fn refuses_clear_text_endpoints_behind_an_https_control_plane() {
        let emulator: Uri = "http://127.0.0.1:4566".parse().unwrap();
        for body in [
            &br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"http://w-1.example"}]}"#[..],
            br#"{"ResourceEndpointList":[{"Protocol":"HTTPS","ResourceEndpoint":"http://h-1.example"}]}"#,
            br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"ws://m-1.example"}]}"#,
        ] {
            assert!(matches!(
                parse_endpoints(body, &https()),
                Err(Error::MalformedResponse(m)) if m.contains("clear text")
            ));
            assert!(parse_endpoints(body, &emulator).is_ok());
        }
    }

    #[test]
    fn refuses_answers_without_a_usable_endpoint() {
        for body in [
            &br#"{"ResourceEndpointList":[]}"#[..],
            br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"ftp://x"}]}"#,
            br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"https://x"}]}"#,
            br#"{"ResourceEndpointList":[{"Protocol":"WEBRTC","ResourceEndpoint":"/relative"}]}"#,
            b"not json",
        ] {
            assert!(matches!(
                parse_endpoints(body, &https()),
                Err(Error::MalformedResponse(_))
            ));
        }
        // One missing protocol fails only the call that needs it.
        let wss_only =
            br#"{"ResourceEndpointList":[{"Protocol":"WSS","ResourceEndpoint":"wss://x"}]}"#;
        let found = parse_endpoints(wss_only, &https()).unwrap();
        assert!(found.get(Protocol::Wss).is_ok());
        assert!(matches!(
            found.get(Protocol::Webrtc),
            Err(Error::MalformedResponse(m)) if m.contains("no WEBRTC endpoint")
        ));
    }

    #[test]
    fn reads_turn_servers_and_never_shows_their_password() {
        let body = br#"{"IceServerList":[{"Password":"pw-secret","Ttl":300,
            "Uris":["turn:1.2.3.4:443?transport=udp","turns:x:443?transport=tcp"],"Username":"1700000300:djE6"}]}"#;
        let servers = turn_servers(body).unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].ttl, Duration::from_secs(300));
        assert_eq!(servers[0].uris.len(), 2);
        assert_eq!(servers[0].password, "pw-secret");
        assert!(!format!("{servers:?}").contains("pw-secret"));
        let broken = br#"{"IceServerList":[{"Password":"pw-secret","Ttl":"x"}]}"#;
        let err = turn_servers(broken).unwrap_err().to_string();
        assert!(!err.contains("pw-secret"), "{err}");
    }
}
