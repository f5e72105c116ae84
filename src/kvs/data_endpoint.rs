//! A stream's data-plane endpoints: `GetDataEndpoint` on the control plane
//! names, per stream and API, the host that serves `ListFragments` or the
//! playback-URL APIs for that stream. They are not the signaling endpoints
//! (`endpoint_cache.rs` keeps those, per channel and role), so they have
//! their own cache, keyed by (stream ARN, API).
//!
//! The cache is keyed by what callers name (streams of any valid channel),
//! so it is bounded: at most [`CAPACITY`] entries (moka's TinyLFU admission
//! and LRU eviction), each dropped [`TTL`] after it was found. Concurrent
//! misses for one key share one `GetDataEndpoint` (single flight); a failed
//! lookup caches nothing; an endpoint is dropped as soon as a request sent
//! to it fails, so the next one asks KVS again.
//!
//! [`DataPlane::send`] is the one way to a data endpoint: it finds the
//! endpoint, sends the request paced per stream and API (`stack/pace.rs`),
//! and drops the endpoint after a failure.

use std::{sync::Arc, time::Duration};

use http::Uri;
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use super::{
    Call, Error, ErrorKind, KvsClient, Operation, UpstreamResponse, arn::ChannelArn,
    stack::pace::PaceKey,
};

/// Most (stream, API) endpoints kept.
pub const CAPACITY: u64 = 10_000;
/// How long an endpoint is trusted without a failure.
pub const TTL: Duration = Duration::from_secs(15 * 60);

/// The data-plane APIs the sidecar calls (botocore's `APIName` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiName {
    ListFragments,
    GetHlsStreamingSessionUrl,
    GetDashStreamingSessionUrl,
}

impl ApiName {
    /// The value `GetDataEndpoint` takes as `APIName`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiName::ListFragments => "LIST_FRAGMENTS",
            ApiName::GetHlsStreamingSessionUrl => "GET_HLS_STREAMING_SESSION_URL",
            ApiName::GetDashStreamingSessionUrl => "GET_DASH_STREAMING_SESSION_URL",
        }
    }
}

type Key = (ChannelArn, ApiName);

/// The data endpoints and the way to them.
pub struct DataPlane {
    client: Arc<KvsClient>,
    endpoints: Cache<Key, Uri>,
}

impl DataPlane {
    pub fn new(client: Arc<KvsClient>, ttl: Duration, capacity: u64) -> Self {
        Self {
            client,
            endpoints: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// `operation` with `body` on the stream's endpoint for `api`, signed
    /// for the stream's region, every attempt paced per stream and API,
    /// within the call's deadline. The endpoint is dropped if it fails.
    pub async fn send(
        &self,
        call: &Call,
        stream: &ChannelArn,
        api: ApiName,
        operation: Operation,
        body: bytes::Bytes,
    ) -> Result<UpstreamResponse, Error> {
        let work = async {
            let endpoint = self.endpoint(call, stream, api).await?;
            let pace = PaceKey {
                stream: stream.as_str().into(),
                api: api.as_str(),
            };
            let answer = self
                .client
                .send_paced(call, operation, endpoint, stream, body, Some(pace))
                .await;
            if answer.as_ref().is_err_and(reached_the_endpoint) {
                self.endpoints.invalidate(&(stream.clone(), api)).await;
            }
            answer
        };
        call.bound(work).await
    }

    /// The stream's endpoint for `api`, cached or asked of KVS.
    pub async fn endpoint(
        &self,
        call: &Call,
        stream: &ChannelArn,
        api: ApiName,
    ) -> Result<Uri, Error> {
        let key = (stream.clone(), api);
        if let Some(found) = self.endpoints.get(&key).await {
            return Ok(found);
        }
        let work = self
            .endpoints
            .entry(key)
            .or_try_insert_with(self.get_data_endpoint(call, stream, api));
        call.bound(async {
            work.await
                .map(|entry| entry.into_value())
                // Callers that waited on the same lookup share its error.
                .map_err(|shared| (*shared).clone())
        })
        .await
    }

    /// Forgets the stream's endpoint for `api`.
    pub async fn invalidate(&self, stream: &ChannelArn, api: ApiName) {
        self.endpoints.invalidate(&(stream.clone(), api)).await;
    }

    /// Endpoints held, after pending evictions are applied.
    pub async fn len(&self) -> u64 {
        self.endpoints.run_pending_tasks().await;
        self.endpoints.entry_count()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// `POST /getDataEndpoint {StreamARN, APIName}` on the control plane.
    async fn get_data_endpoint(
        &self,
        call: &Call,
        stream: &ChannelArn,
        api: ApiName,
    ) -> Result<Uri, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
            #[serde(rename = "APIName")]
            api_name: &'a str,
        }
        let body = Body {
            stream_arn: stream.as_str(),
            api_name: api.as_str(),
        };
        let answer = self
            .client
            .describe(call, stream, Operation::GetDataEndpoint, &body)
            .await?;
        let clear_text_allowed = self.client.control_plane(stream)?.scheme_str() == Some("http");
        parse_data_endpoint(&answer, clear_text_allowed)
    }
}

/// Whether a failure says something about the endpoint: KVS answered from
/// it (an error other than throttling) or it could not be reached. Local
/// refusals (pace, rate, deadline) sent nothing to it.
fn reached_the_endpoint(err: &Error) -> bool {
    match err {
        Error::Service(e) => e.kind != ErrorKind::Throttling,
        Error::Transport(_) | Error::Connect(_) | Error::AttemptTimeout(_) => true,
        Error::RetryQuotaExhausted(last) => reached_the_endpoint(last),
        _ => false,
    }
}

/// The endpoint in a `GetDataEndpoint` answer: an https URL with a host (or
/// http when the control plane itself is, a local emulator), since the
/// requests sent to it are signed with the session token.
fn parse_data_endpoint(body: &[u8], clear_text_allowed: bool) -> Result<Uri, Error> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "DataEndpoint")]
        data_endpoint: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| Error::MalformedResponse(format!("GetDataEndpoint: {e}")))?;
    let raw = answer
        .data_endpoint
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::MalformedResponse("GetDataEndpoint answered no endpoint".into()))?;
    let shown = super::redact::redact(&raw);
    let uri: Uri = raw
        .parse()
        .map_err(|e| Error::MalformedResponse(format!("data endpoint {shown:?}: {e}")))?;
    let scheme_ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => clear_text_allowed,
        _ => false,
    };
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(Error::MalformedResponse(format!(
            "data endpoint {shown:?} is not an https URL with a host"
        )));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{
        UpstreamRequest, credentials::Identities, endpoint::EndpointSettings,
        endpoint_cache::EndpointCache,
    };
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::time::Instant;

    fn stream(name: &str) -> ChannelArn {
        ChannelArn::parse(&format!(
            "arn:aws:kinesisvideo:us-west-2:123456789012:stream/{name}/1"
        ))
        .unwrap()
    }

    /// A KVS whose GetDataEndpoint answers a numbered endpoint after a
    /// pause, and whose ListFragments fails with `fail` while it is set.
    type Sent = Arc<Mutex<Vec<(Operation, String, Option<PaceKey>)>>>;

    struct Fake {
        lookups: Arc<AtomicUsize>,
        sent: Sent,
        plane: DataPlane,
    }

    fn fake(fail: Arc<Mutex<Option<Error>>>) -> Fake {
        let lookups = Arc::new(AtomicUsize::new(0));
        let sent: Sent = Arc::default();
        let upstream = {
            let (lookups, sent) = (lookups.clone(), sent.clone());
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: UpstreamRequest| {
                let (lookups, sent, fail) = (lookups.clone(), sent.clone(), fail.clone());
                async move {
                    sent.lock().unwrap().push((
                        req.operation,
                        req.endpoint.to_string(),
                        req.pace.clone(),
                    ));
                    let body = match req.operation {
                        Operation::GetDataEndpoint => {
                            let n = lookups.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            format!(r#"{{"DataEndpoint":"https://data-{n}.example"}}"#)
                        }
                        _ => {
                            if let Some(e) = fail.lock().unwrap().clone() {
                                return Err(e);
                            }
                            "{}".into()
                        }
                    };
                    Ok(UpstreamResponse {
                        status: http::StatusCode::OK,
                        request_id: None,
                        body: body.into(),
                    })
                }
            }))
        };
        let client = Arc::new(KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 10),
            EndpointSettings::default(),
            Identities::for_tests(),
        ));
        Fake {
            lookups,
            sent,
            plane: DataPlane::new(client, TTL, 100),
        }
    }

    fn call() -> Call {
        Call::new(Instant::now() + Duration::from_secs(5))
    }

    #[tokio::test]
    async fn one_lookup_serves_concurrent_callers_and_apis_are_apart() {
        let f = Arc::new(fake(Arc::default()));
        let s = stream("cam");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(async move {
                    f.plane
                        .endpoint(&call(), &s, ApiName::ListFragments)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().to_string(), "https://data-0.example/");
        }
        assert_eq!(f.lookups.load(Ordering::SeqCst), 1);
        let hls = f
            .plane
            .endpoint(&call(), &s, ApiName::GetHlsStreamingSessionUrl)
            .await
            .unwrap();
        assert_eq!(hls.to_string(), "https://data-1.example/");
        let sent = f.sent.lock().unwrap().clone();
        assert!(
            sent.iter()
                .all(|(op, _, pace)| { *op == Operation::GetDataEndpoint && pace.is_none() })
        );
    }

    #[tokio::test]
    async fn requests_are_paced_by_stream_and_a_failure_drops_the_endpoint() {
        let fail = Arc::new(Mutex::new(None));
        let f = fake(fail.clone());
        let s = stream("cam");
        let send = || async {
            f.plane
                .send(
                    &call(),
                    &s,
                    ApiName::ListFragments,
                    Operation::ListFragments,
                    "{}".into(),
                )
                .await
        };
        send().await.unwrap();
        send().await.unwrap();
        assert_eq!(f.lookups.load(Ordering::SeqCst), 1, "cached");
        let (op, endpoint, pace) = f.sent.lock().unwrap().last().cloned().unwrap();
        assert_eq!(op, Operation::ListFragments);
        assert_eq!(endpoint, "https://data-0.example/");
        assert_eq!(
            pace,
            Some(PaceKey {
                stream: s.as_str().into(),
                api: ApiName::ListFragments.as_str()
            })
        );
        // Throttling says nothing about the endpoint; a server error does.
        let throttled = Error::Service(crate::kvs::ServiceError::from_response(
            400,
            &http::HeaderMap::from_iter([(
                http::HeaderName::from_static("x-amzn-errortype"),
                http::HeaderValue::from_static("ClientLimitExceededException"),
            )]),
            b"",
        ));
        *fail.lock().unwrap() = Some(throttled);
        send().await.unwrap_err();
        send().await.unwrap_err();
        assert_eq!(f.lookups.load(Ordering::SeqCst), 1);
        *fail.lock().unwrap() = Some(Error::Connect("refused".into()));
        send().await.unwrap_err();
        *fail.lock().unwrap() = None;
        send().await.unwrap();
        assert_eq!(f.lookups.load(Ordering::SeqCst), 2, "asked again");
        let (_, endpoint, _) = f.sent.lock().unwrap().last().cloned().unwrap();
        assert_eq!(endpoint, "https://data-1.example/");
    }

    #[tokio::test(start_paused = true)]
    async fn holds_at_most_its_capacity() {
        let f = fake(Arc::default());
        for i in 0..2_000 {
            f.plane
                .endpoint(
                    &call(),
                    &stream(&format!("cam-{i}")),
                    ApiName::ListFragments,
                )
                .await
                .unwrap();
        }
        assert!(f.plane.len().await <= 100, "{}", f.plane.len().await);
    }

    #[test]
    fn refuses_endpoints_that_would_carry_signed_requests_in_clear_text() {
        let ok = parse_data_endpoint(br#"{"DataEndpoint":"https://b-1.example"}"#, false);
        assert_eq!(ok.unwrap().host(), Some("b-1.example"));
        for (body, clear_text_allowed) in [
            (&br#"{"DataEndpoint":"http://b-1.example"}"#[..], false),
            (br#"{"DataEndpoint":"ftp://b-1.example"}"#, true),
            (br#"{"DataEndpoint":""}"#, true),
            (br#"{}"#, true),
            (b"nope", true),
        ] {
            assert!(matches!(
                parse_data_endpoint(body, clear_text_allowed),
                Err(Error::MalformedResponse(_))
            ));
        }
        assert!(parse_data_endpoint(br#"{"DataEndpoint":"http://127.0.0.1:1"}"#, true).is_ok());
    }
}
