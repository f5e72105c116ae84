//! What the emulator answers: authentication first, then the scripted fault
//! if any, then the operation as KVS performs it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, body::Incoming};
use serde::Deserialize;

use super::{CONTAINER_CREDENTIALS_PATH, Dialect, Emulator, Received, Reply, sigv4, sts};
use crate::kvs::arn::{ChannelArn, validate_client_id};

pub(super) type Answer = Response<Full<Bytes>>;

const MAX_BODY: usize = 64 * 1024;

impl Emulator {
    pub(super) async fn handle(&self, req: Request<Incoming>) -> Result<Answer, std::io::Error> {
        if Self::is_websocket(&req) {
            return Ok(self.signaling_handshake(req));
        }
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_owned();
        if path == CONTAINER_CREDENTIALS_PATH {
            return Ok(self.container_credentials(&parts.headers));
        }
        // Playback sessions' playlists: the token in the URL is the
        // credential, there is no signature (`playback.rs`).
        if parts.method == http::Method::GET
            && let Some(answer) = self.playback_get(&path, parts.uri.query())
        {
            return Ok(answer);
        }
        // Signed by the emulator's keys or by keys its STS handed out.
        let secret = access_key(&parts.headers)
            .and_then(|key| self.keys(key))
            .map(|keys| keys.secret_access_key)
            .unwrap_or_else(|| self.credentials.secret_access_key.clone());
        let signature = sigv4::verify(parts.method.as_str(), &path, &parts.headers, &body, &secret);
        let sts = path == "/" && parts.method == http::Method::POST;
        let scripted = {
            let mut state = self.lock();
            if state.received.len() == super::RECEIVED_KEPT {
                state.received.pop_front();
            }
            state.received.push_back(Received {
                path: path.clone(),
                headers: parts.headers.clone(),
                body: body.clone(),
                signature: signature.clone(),
            });
            let throttled = state
                .throttled
                .get(&path)
                .is_some_and(|until| std::time::Instant::now() < *until);
            state
                .script
                .get_mut(&path)
                .and_then(|q| q.pop_front())
                .or_else(|| throttled.then(|| Reply::error(400, "ClientLimitExceededException")))
        };
        let mut scripted = scripted;
        while let Some(Reply::Slow(pause, then)) = scripted {
            tokio::time::sleep(pause).await;
            scripted = Some(*then);
        }
        let service = if sts { "sts" } else { "kinesisvideo" };
        let mut answer = match self.authenticate(&parts.headers, signature, service) {
            Ok(_) if sts => sts::sts_error_or(scripted, || self.sts(&body)),
            Ok(scope) => {
                self.answer(scripted.unwrap_or(Reply::Ok), &path, &body, &scope)
                    .await?
            }
            Err((code, message)) if sts => sts::sts_error(403, code, &message),
            Err((code, message)) => error(403, code, &message, Dialect::Header),
        };
        // Like AWS, every answer says what time the server thinks it is.
        if let Ok(date) = http::HeaderValue::from_str(&httpdate::fmt_http_date(self.now())) {
            answer.headers_mut().insert(http::header::DATE, date);
        }
        Ok(answer)
    }

    async fn answer(
        &self,
        mut reply: Reply,
        path: &str,
        body: &[u8],
        scope: &sigv4::Scope,
    ) -> Result<Answer, std::io::Error> {
        loop {
            return match reply {
                Reply::Slow(pause, then) => {
                    tokio::time::sleep(pause).await;
                    reply = *then;
                    continue;
                }
                Reply::Reset => Err(std::io::Error::other("scripted connection reset")),
                Reply::Error {
                    status,
                    code,
                    dialect,
                } => Ok(error(status, code, &format!("emulated {code}"), dialect)),
                Reply::Ok => Ok(self.operation(path, body, scope)),
                Reply::Raw {
                    status,
                    headers,
                    body,
                } => {
                    let mut answer = Response::builder().status(status);
                    for (name, value) in headers {
                        answer = answer.header(name, value);
                    }
                    Ok(answer.body(Full::new(body)).unwrap_or_default())
                }
            };
        }
    }

    /// AWS checks who is calling before what they ask; a refusal is the
    /// error code and message of a 403.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        signature: Result<sigv4::Scope, String>,
        service: &str,
    ) -> Result<sigv4::Scope, (&'static str, String)> {
        let deny = |code, message: &str| Err((code, message.to_owned()));
        if !headers.contains_key("authorization") {
            return deny(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            );
        }
        // As in AWS: who is calling (access key and token) is checked
        // before the signature.
        let keys = access_key(headers).and_then(|key| self.keys(key));
        let token = headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok());
        if keys.is_none_or(|keys| token != keys.session_token.as_deref()) {
            return deny(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        if let Some(refusal) = self.check_time(headers) {
            return Err(("InvalidSignatureException", refusal));
        }
        match signature {
            Ok(scope) if scope.service != service => Err((
                "InvalidSignatureException",
                format!("Credential should be scoped to correct service: '{service}'."),
            )),
            Ok(scope) => Ok(scope),
            // A well-formed signature that does not verify gets AWS's long
            // answer, canonical request and string to sign included.
            Err(reason) if reason.starts_with(sigv4::MISMATCH) => {
                Err(("InvalidSignatureException", reason))
            }
            Err(_) => deny("InvalidSignatureException", sigv4::MISMATCH),
        }
    }

    /// AWS refuses a signature dated more than 5 minutes from its own time.
    fn check_time(&self, headers: &http::HeaderMap) -> Option<String> {
        const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);
        let amz = headers.get("x-amz-date")?.to_str().ok()?;
        let signed = sigv4::parse_amz_date(amz)?;
        let now = self.now();
        if signed + WINDOW < now {
            let limit = amz_date(now - WINDOW);
            Some(format!(
                "Signature expired: {amz} is now earlier than {limit} ({} - 5 min.)",
                amz_date(now)
            ))
        } else if signed > now + WINDOW {
            let limit = amz_date(now + WINDOW);
            Some(format!(
                "Signature not yet current: {amz} is still later than {limit} ({} + 5 min.)",
                amz_date(now)
            ))
        } else {
            None
        }
    }

    fn operation(&self, path: &str, body: &[u8], scope: &sigv4::Scope) -> Answer {
        // Streams and media storage have state of their own (storage.rs).
        if let Some(answer) = self.storage_operation(path, body, scope) {
            return answer;
        }
        if let Some(answer) = self.playback_operation(path, body, scope) {
            return answer;
        }
        #[derive(Deserialize)]
        struct Discover {
            #[serde(rename = "ChannelARN")]
            channel_arn: String,
            #[serde(rename = "SingleMasterChannelEndpointConfiguration")]
            config: Option<DiscoverConfig>,
        }
        #[derive(Deserialize)]
        struct DiscoverConfig {
            #[serde(rename = "Role")]
            role: Option<String>,
            #[serde(rename = "Protocols", default)]
            protocols: Vec<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct IceConfig {
            #[serde(rename = "ChannelARN")]
            channel_arn: String,
            client_id: Option<String>,
            service: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Join {
            channel_arn: String,
            client_id: Option<String>,
        }

        let (arn, operation) = match path {
            // Streams, not channels: their own checks (`fragments.rs`).
            "/getDataEndpoint" => return self.get_data_endpoint(body, scope),
            "/listFragments" => return self.list_fragments(body, scope),
            "/getSignalingChannelEndpoint" => {
                let Ok(req) = serde_json::from_slice::<Discover>(body) else {
                    return invalid("the request body is not a GetSignalingChannelEndpoint input");
                };
                let (role, protocols) = req
                    .config
                    .map(|c| (c.role, c.protocols))
                    .unwrap_or_default();
                if !matches!(role.as_deref(), None | Some("MASTER" | "VIEWER")) {
                    return invalid("Role must be MASTER or VIEWER");
                }
                if protocols
                    .iter()
                    .any(|p| !matches!(p.as_str(), "WSS" | "HTTPS" | "WEBRTC"))
                {
                    return invalid("Protocols must be WSS, HTTPS or WEBRTC");
                }
                (req.channel_arn, "GetSignalingChannelEndpoint")
            }
            "/v1/get-ice-server-config" => {
                let Ok(req) = serde_json::from_slice::<IceConfig>(body) else {
                    return invalid("the request body is not a GetIceServerConfig input");
                };
                if !matches!(req.service.as_deref(), None | Some("TURN")) {
                    return invalid("Service must be TURN");
                }
                if req
                    .client_id
                    .as_deref()
                    .is_some_and(|id| validate_client_id(id).is_err())
                {
                    return invalid("Value at 'clientId' failed to satisfy constraint");
                }
                (req.channel_arn, "GetIceServerConfig")
            }
            "/describeSignalingChannel" => {
                #[derive(Deserialize)]
                struct Describe {
                    #[serde(rename = "ChannelARN")]
                    channel_arn: String,
                }
                let Ok(req) = serde_json::from_slice::<Describe>(body) else {
                    return invalid("ChannelARN is required");
                };
                (req.channel_arn, "DescribeSignalingChannel")
            }
            "/joinStorageSession" | "/joinStorageSessionAsViewer" => {
                let viewer = path == "/joinStorageSessionAsViewer";
                let Ok(req) = serde_json::from_slice::<Join>(body) else {
                    return invalid("the request body is not a join input");
                };
                match (viewer, req.client_id.as_deref()) {
                    (true, Some(id)) if validate_client_id(id).is_ok() => {}
                    (false, None) => {}
                    _ => return invalid("clientId is required for viewers, and only for them"),
                }
                let op = if viewer {
                    "JoinStorageSessionAsViewer"
                } else {
                    "JoinStorageSession"
                };
                (req.channel_arn, op)
            }
            _ => {
                return error(
                    404,
                    "UnknownOperationException",
                    "no such operation",
                    Dialect::Header,
                );
            }
        };

        let Ok(arn) = ChannelArn::parse(&arn) else {
            return invalid("Value at 'channelARN' failed to satisfy constraint");
        };
        if scope.region != arn.region() {
            return error(
                403,
                "InvalidSignatureException",
                &format!(
                    "Credential should be scoped to a valid region, not '{}'.",
                    scope.region
                ),
                Dialect::Header,
            );
        }
        if arn.name().starts_with("missing-") {
            return error(
                404,
                "ResourceNotFoundException",
                "The requested channel is not found or not active.",
                Dialect::Header,
            );
        }
        if arn.name().starts_with("denied-") {
            let message = format!(
                "User: arn:aws:sts::{}:assumed-role/emulated is not authorized to perform: kinesisvideo:{operation} on resource: {arn}",
                "000000000000"
            );
            return error(403, "AccessDeniedException", &message, Dialect::Header);
        }
        let body = match operation {
            "GetSignalingChannelEndpoint" => {
                let webrtc = self
                    .lock()
                    .webrtc_endpoint
                    .clone()
                    .unwrap_or_else(|| self.url());
                serde_json::json!({"ResourceEndpointList": [
                    // wss:// when the emulator serves TLS, as KVS's is.
                    {"Protocol": "WSS", "ResourceEndpoint": self.url().replacen("http", "ws", 1)},
                    {"Protocol": "HTTPS", "ResourceEndpoint": self.url()},
                    {"Protocol": "WEBRTC", "ResourceEndpoint": webrtc},
                ]})
                .to_string()
            }
            "GetIceServerConfig" => ice_server_config(&arn, self.now()),
            "DescribeSignalingChannel" => describe_signaling_channel(&arn),
            "JoinStorageSession" => {
                self.start_storage_session(arn.as_str(), None);
                String::new()
            }
            "JoinStorageSessionAsViewer" => {
                let client_id = serde_json::from_slice::<Join>(body)
                    .ok()
                    .and_then(|j| j.client_id);
                self.start_storage_session(arn.as_str(), client_id.as_deref());
                String::new()
            }
            _ => String::new(),
        };
        respond(200)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }

    fn container_credentials(&self, headers: &http::HeaderMap) -> Answer {
        self.lock().credential_loads += 1;
        let expected = format!("emulator-{}", self.credentials.access_key_id);
        if headers
            .get("authorization")
            .is_none_or(|v| v.as_bytes() != expected.as_bytes())
        {
            return Response::builder()
                .status(401)
                .body(Full::default())
                .unwrap_or_default();
        }
        let expiry = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let body = serde_json::json!({
            "AccessKeyId": self.credentials.access_key_id,
            "SecretAccessKey": self.credentials.secret_access_key,
            "Token": self.credentials.session_token,
            "Expiration": humantime::format_rfc3339_seconds(expiry).to_string(),
        });
        Response::new(Full::new(Bytes::from(body.to_string())))
    }

    /// The `Authorization` value the container credentials endpoint wants
    /// (`AWS_CONTAINER_AUTHORIZATION_TOKEN`).
    pub fn container_authorization_token(&self) -> String {
        format!("emulator-{}", self.credentials.access_key_id)
    }
}

/// A time as SigV4 writes it: `20261125T113800Z`.
fn amz_date(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

// Readiness by channel name (the README lists these): `inactive-*` is still
// CREATING, `fullmesh-*` is FULL_MESH; storage and streams (`nostorage-*`
// and the stream prefixes) are in storage.rs.

fn describe_signaling_channel(arn: &ChannelArn) -> String {
    let name = arn.name();
    serde_json::json!({"ChannelInfo": {
        "ChannelARN": arn.as_str(),
        "ChannelName": name,
        "ChannelStatus": if name.starts_with("inactive-") { "CREATING" } else { "ACTIVE" },
        "ChannelType": if name.starts_with("fullmesh-") { "FULL_MESH" } else { "SINGLE_MASTER" },
        "CreationTime": 1_700_000_000.0,
        "SingleMasterConfiguration": {"MessageTtlSeconds": 60},
        "Version": "1",
    }})
    .to_string()
}

/// A TURN server with credentials valid for 5 minutes, as KVS answers
/// (the user name is the expiry and an opaque id; the password is fresh).
fn ice_server_config(arn: &ChannelArn, now: std::time::SystemTime) -> String {
    const TTL: u64 = 300;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let expiry = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + TTL)
        .unwrap_or_default();
    let password: String = (0..43)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect();
    let user = format!(
        "{expiry}:{}",
        hex::encode(&arn.as_str().as_bytes()[..arn.as_str().len().min(24)])
    );
    serde_json::json!({"IceServerList": [{
        "Password": format!("{password}="),
        "Ttl": TTL,
        "Uris": [
            "turn:127.0.0.1:3478?transport=udp",
            "turns:127.0.0.1:443?transport=tcp",
        ],
        "Username": user,
    }]})
    .to_string()
}

pub(super) fn respond(status: u16) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("x-amzn-RequestId", super::request_id())
        .header("content-type", "application/json")
}

/// A 200 with this JSON body.
pub(super) fn ok(body: serde_json::Value) -> Answer {
    respond(200)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

pub(super) fn invalid(message: &str) -> Answer {
    error(400, "InvalidArgumentException", message, Dialect::Header)
}

pub(super) fn error(status: u16, code: &str, message: &str, dialect: Dialect) -> Answer {
    let mut builder = respond(status);
    let body = match dialect {
        Dialect::Header => {
            builder = builder.header(
                "x-amzn-ErrorType",
                format!("{code}:http://internal.amazon.com/coral/com.amazonaws.kinesisvideo/"),
            );
            serde_json::json!({ "message": message })
        }
        Dialect::Type => serde_json::json!({
            "__type": format!("com.amazonaws.kinesisvideo.v20170930#{code}"),
            "Message": message,
        }),
        Dialect::Code => serde_json::json!({ "code": code, "message": message }),
    };
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// The access key id of a header-signed request.
fn access_key(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
}
