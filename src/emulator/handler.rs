//! What the emulator answers: authentication first, then the scripted fault
//! if any, then the operation as KVS performs it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, body::Incoming};
use serde::Deserialize;

use super::{CONTAINER_CREDENTIALS_PATH, Dialect, Emulator, Received, Reply, sigv4};
use crate::kvs::arn::{ChannelArn, validate_client_id};

type Answer = Response<Full<Bytes>>;

const MAX_BODY: usize = 64 * 1024;

impl Emulator {
    pub(super) async fn handle(&self, req: Request<Incoming>) -> Result<Answer, std::io::Error> {
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
        let signature = sigv4::verify(
            parts.method.as_str(),
            &path,
            &parts.headers,
            &body,
            &self.credentials.secret_access_key,
        );
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
        let mut answer = match self.authenticate(&parts.headers, signature) {
            Ok(scope) => {
                self.answer(scripted.unwrap_or(Reply::Ok), &path, &body, &scope)
                    .await?
            }
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
            };
        }
    }

    /// AWS checks who is calling before what they ask; a refusal is the
    /// error code and message of a 403.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        signature: Result<sigv4::Scope, String>,
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
        let access_key = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split("Credential=").nth(1))
            .and_then(|v| v.split('/').next());
        let token = headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok());
        if access_key != Some(self.credentials.access_key_id.as_str())
            || token != self.credentials.session_token.as_deref()
        {
            return deny(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        if let Some(refusal) = self.check_time(headers) {
            return Err(("InvalidSignatureException", refusal));
        }
        match signature {
            Ok(scope) if scope.service != "kinesisvideo" => deny(
                "InvalidSignatureException",
                "Credential should be scoped to correct service: 'kinesisvideo'.",
            ),
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
        let signed = parse_amz_date(amz)?;
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
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Join {
            channel_arn: String,
            client_id: Option<String>,
        }

        let (arn, operation) = match path {
            "/getSignalingChannelEndpoint" => {
                let Ok(req) = serde_json::from_slice::<Discover>(body) else {
                    return invalid("the request body is not a GetSignalingChannelEndpoint input");
                };
                let role = req.config.and_then(|c| c.role);
                if !matches!(role.as_deref(), None | Some("MASTER" | "VIEWER")) {
                    return invalid("Role must be MASTER or VIEWER");
                }
                (req.channel_arn, "GetSignalingChannelEndpoint")
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
                    {"Protocol": "WSS", "ResourceEndpoint": format!("wss://{}", self.addr)},
                    {"Protocol": "WEBRTC", "ResourceEndpoint": webrtc},
                ]})
                .to_string()
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

/// `20261125T113800Z` → a time.
fn parse_amz_date(amz: &str) -> Option<std::time::SystemTime> {
    let b = amz.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &amz[0..4],
        &amz[4..6],
        &amz[6..8],
        &amz[9..11],
        &amz[11..13],
        &amz[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// A time as SigV4 writes it: `20261125T113800Z`.
fn amz_date(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

fn respond(status: u16) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header("x-amzn-RequestId", request_id())
        .header("content-type", "application/json")
}

fn invalid(message: &str) -> Answer {
    error(400, "InvalidArgumentException", message, Dialect::Header)
}

fn error(status: u16, code: &str, message: &str, dialect: Dialect) -> Answer {
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

/// A random UUID, the form of KVS's request ids.
fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
            .collect()
    };
    format!("{}-{}-4{}-a{}-{}", hex(8), hex(4), hex(3), hex(3), hex(12))
}
