//! A fake KVS on 127.0.0.1 with an ephemeral port: it answers discovery and
//! both joins like KVS, verifies every signature with the independent
//! verifier, records what it received, and follows a script of faults.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::sigv4;

pub const ACCESS_KEY: &str = "AKIAFAKEKVSSIDECAR01";
pub const SECRET_KEY: &str = "fakeSecretKey+doNotLeak/0123456789abcdefXYZ";
pub const SESSION_TOKEN: &str = "FakeSessionToken//doNotLeak+0123456789==";
/// Where the fake also serves ECS/EKS-style container credentials.
pub const CONTAINER_CREDENTIALS_PATH: &str = "/container-credentials";
pub const CONTAINER_AUTH_TOKEN: &str = "container-auth-token";

/// How an error names itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `x-amzn-ErrorType: Code:http://internal.amazon.com/...`
    Header,
    /// `{"__type": "com.amazonaws.kinesisvideo#Code"}`
    Type,
    /// `{"code": "Code"}`
    Code,
}

#[derive(Debug, Clone)]
pub enum Reply {
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
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    script: HashMap<String, VecDeque<Reply>>,
    webrtc_endpoint: Option<String>,
    credential_loads: usize,
}

#[derive(Clone)]
pub struct FakeKvs {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    ids: Arc<AtomicU64>,
}

impl FakeKvs {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            ids: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let fake = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let fake = fake.clone();
                        async move { fake.handle(req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where discovery sends joins: this fake unless told otherwise.
    pub fn set_webrtc_endpoint(&self, url: &str) {
        self.state.lock().unwrap().webrtc_endpoint = Some(url.to_owned());
    }

    /// Queues answers for a path (`/joinStorageSession`, ...); once they
    /// run out the path answers normally again.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .unwrap()
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
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
            SECRET_KEY,
        );
        let reply = {
            let mut state = self.state.lock().unwrap();
            state.received.push(Received {
                path: path.clone(),
                headers: parts.headers.clone(),
                body: body.clone(),
                signature: signature.clone(),
            });
            state
                .script
                .get_mut(&path)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Reply::Ok)
        };
        if signature.is_err() {
            return Ok(self.error(403, "InvalidSignatureException", Dialect::Header));
        }
        self.answer(&path, reply).await
    }

    async fn answer(
        &self,
        path: &str,
        mut reply: Reply,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        loop {
            return match reply {
                Reply::Slow(pause, then) => {
                    tokio::time::sleep(pause).await;
                    reply = *then;
                    continue;
                }
                Reply::Reset => Err(std::io::Error::other("scripted reset")),
                Reply::Error {
                    status,
                    code,
                    dialect,
                } => Ok(self.error(status, code, dialect)),
                Reply::Ok => Ok(self.ok(path)),
            };
        }
    }

    /// The container credentials endpoint (the one EKS Pod Identity and ECS
    /// task roles use), serving the same keys with a one-hour expiry.
    fn container_credentials(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        self.state.lock().unwrap().credential_loads += 1;
        if headers
            .get("authorization")
            .is_none_or(|v| v != CONTAINER_AUTH_TOKEN)
        {
            return Response::builder()
                .status(401)
                .body(Full::default())
                .unwrap();
        }
        let expiry = std::time::SystemTime::now() + Duration::from_secs(3600);
        let expiry = humantime::format_rfc3339_seconds(expiry).to_string();
        let body = serde_json::json!({
            "AccessKeyId": ACCESS_KEY,
            "SecretAccessKey": SECRET_KEY,
            "Token": SESSION_TOKEN,
            "Expiration": expiry,
        });
        Response::new(Full::new(Bytes::from(body.to_string())))
    }

    pub fn credential_loads(&self) -> usize {
        self.state.lock().unwrap().credential_loads
    }

    fn request_id(&self) -> String {
        format!("fake-req-{}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    fn ok(&self, path: &str) -> Response<Full<Bytes>> {
        let body = match path {
            "/getSignalingChannelEndpoint" => {
                let webrtc = self
                    .state
                    .lock()
                    .unwrap()
                    .webrtc_endpoint
                    .clone()
                    .unwrap_or_else(|| self.url());
                serde_json::json!({"ResourceEndpointList": [
                    {"Protocol": "WSS", "ResourceEndpoint": "wss://m-fake.kinesisvideo.invalid"},
                    {"Protocol": "WEBRTC", "ResourceEndpoint": webrtc},
                ]})
                .to_string()
            }
            _ => String::new(),
        };
        Response::builder()
            .header("x-amzn-RequestId", self.request_id())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    fn error(&self, status: u16, code: &str, dialect: Dialect) -> Response<Full<Bytes>> {
        let message = format!("fake says {code}");
        let mut builder = Response::builder()
            .status(status)
            .header("x-amzn-RequestId", self.request_id())
            .header("content-type", "application/json");
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
            .unwrap()
    }
}
