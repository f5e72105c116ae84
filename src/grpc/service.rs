//! The `WebRtcStorageService` implementation: validate, call KVS, answer.

use std::{future::Future, sync::Arc, time::Duration};

use prost_types::Timestamp;
use tokio::{sync::Semaphore, time::Instant};
use tonic::{Request, Response, Status, Streaming};

use super::{
    call_log::log_call,
    error::{CallError, Late, Shed},
    request_deadline::CallDeadline,
    status::to_status,
};
use crate::{
    allow_list::ChannelPolicy,
    idempotency::{JoinLedger, JoinTarget},
    kvs::{
        Call, Error, Joined, KvsClient,
        arn::{ChannelArn, ValidationError, validate_client_id, validate_idempotency_key},
        endpoint::Peer,
    },
    pb::{
        CheckStorageReadinessRequest, CheckStorageReadinessResponse, EnsureStorageRequest,
        EnsureStorageResponse, GetPlaybackUrlRequest, GetPlaybackUrlResponse,
        GetRecordingStatusRequest, GetRecordingStatusResponse, GetSignalingConnectionRequest,
        GetSignalingConnectionResponse, IceServer, JoinStorageSessionAsViewerRequest,
        JoinStorageSessionAsViewerResponse, JoinStorageSessionRequest, JoinStorageSessionResponse,
        MaintainStorageSessionRequest, ReadinessProblem, SignalingRole, StorageChange,
        WatchRecordingRequest, maintain_storage_session_request::Kind,
        web_rtc_storage_service_server::WebRtcStorageService,
    },
    playback::{Playback, parse_request},
    readiness::StorageReadiness,
    recording::Recording,
    session::Sessions,
    signaling::{Connection, Signaling},
    storage::{Change, EnsureError, Storage, Wanted},
};

pub(crate) struct WebRtcStorage {
    client: Arc<KvsClient>,
    signaling: Signaling,
    readiness: StorageReadiness,
    policy: ChannelPolicy,
    ledger: JoinLedger,
    sessions: Arc<Sessions>,
    /// EnsureStorage; refuses every call unless [`WebRtcStorage::allow_storage_changes`].
    storage: Storage,
    /// GetPlaybackUrl.
    playback: Playback,
    recording: Arc<Recording>,
    /// WatchRecording streams being served.
    watchers: Arc<Semaphore>,
    limits: CallLimits,
    /// Unary calls being served; one is taken per call, none queued.
    slots: Semaphore,
    /// Session streams waiting for their first message.
    starts: Semaphore,
}

/// How long a `MaintainStorageSession` stream may take to send `start`
/// (at most `--max-call-duration`): a client sends it with the stream.
const START_WAIT: Duration = Duration::from_secs(10);

/// Most `MaintainStorageSession` streams waiting for `start` at once.
const PENDING_STARTS: usize = 256;

/// The bounds every call of the service is served within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// The deadline of calls that set none (`--max-call-duration`).
    pub max_call_duration: Duration,
    /// Unary calls served at once (`--max-concurrent-calls`); more are
    /// refused with RESOURCE_EXHAUSTED instead of queued, so a flood is
    /// answered in microseconds and memory stays flat.
    pub max_concurrent_calls: usize,
}

// === impl WebRtcStorage ===

impl WebRtcStorage {
    // One argument per capability the service serves: a builder would only
    // move the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Arc<KvsClient>,
        signaling: Signaling,
        readiness: StorageReadiness,
        policy: ChannelPolicy,
        ledger: JoinLedger,
        sessions: Arc<Sessions>,
        recording: Arc<Recording>,
        limits: CallLimits,
    ) -> Self {
        let slots = limits.max_concurrent_calls.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            storage: Storage::new(client.clone(), false),
            // One data plane (endpoint cache) for playback and recording.
            playback: Playback::new(recording.data_plane()),
            client,
            signaling,
            readiness,
            policy,
            ledger,
            sessions,
            recording,
            watchers: Arc::new(Semaphore::new(super::recording::MAX_WATCHERS)),
            limits,
            slots: Semaphore::new(slots),
            starts: Semaphore::new(PENDING_STARTS),
        }
    }

    /// Lets EnsureStorage write to the account (`--allow-storage-changes`).
    pub(crate) fn allow_storage_changes(mut self, allowed: bool) -> Self {
        self.storage = Storage::new(self.client.clone(), allowed);
        self
    }

    /// The skeleton of every unary call: a call slot (none free:
    /// RESOURCE_EXHAUSTED at once), the call's deadline, `work` on the
    /// decoded message, the call's one log line, and its error's status.
    /// The slot is taken here, once tonic has decoded the whole message, so
    /// only a call actually being served holds one; health checks and
    /// reflection never take one, so a busy sidecar is not taken for dead.
    async fn unary<M, T>(
        &self,
        rpc: &'static str,
        req: Request<M>,
        channel_arn: fn(&M) -> &str,
        work: impl AsyncFnOnce(&M, &Call) -> Result<T, CallError>,
        request_id: fn(&T) -> &str,
    ) -> Result<T, Status> {
        let _slot = self.slot()?;
        let call = self.call(&req);
        let msg = req.into_inner();
        let started = Instant::now();
        let result = work(&msg, &call).await;
        log_call(
            rpc,
            channel_arn(&msg),
            &call,
            started,
            result.as_ref().map(request_id),
        );
        result.map_err(|e| to_status(&e))
    }

    /// Runs `join`, or, when the caller gave an idempotency key, answers
    /// the outcome of the first join made with it.
    ///
    /// The keyed path is boxed: its future holds the join's future and the
    /// ledger's (Redis included), several KiB that every call without a key
    /// would otherwise carry and copy when tonic boxes the handler (measured
    /// with callgrind: 20k instructions a call, most of the serving path's
    /// cost over the previous release).
    async fn idempotent<F>(
        &self,
        key: &str,
        target: impl FnOnce() -> JoinTarget,
        call: &Call,
        join: impl Fn() -> F + Send + Sync,
    ) -> Result<Joined, CallError>
    where
        F: Future<Output = Result<Joined, Error>> + Send,
    {
        if key.is_empty() {
            return Ok(join().await?);
        }
        validate_idempotency_key(key).map_err(|reason| reason.of("idempotency_key"))?;
        // A join per real attempt: after a passing failure the ledger keeps
        // nothing, and a retry with the key joins again.
        Ok(Box::pin(self.ledger.join(key, target(), call, join)).await?)
    }

    /// One of the unary calls' slots; none free: RESOURCE_EXHAUSTED at once.
    fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.slots.try_acquire().map_err(|_| {
            metrics::counter!(crate::instruments::CALLS_SHED).increment(1);
            to_status(&Shed::Calls(self.limits.max_concurrent_calls).into())
        })
    }

    /// A valid ARN of a channel this sidecar may act on.
    fn channel(&self, raw: &str) -> Result<ChannelArn, CallError> {
        let arn = ChannelArn::parse(raw).map_err(|reason| reason.of("channel_arn"))?;
        if !self.policy.allows(&arn) {
            return Err(CallError::NotAllowed(arn));
        }
        // On the call's span (`observe`), now that it is known valid.
        tracing::Span::current().record("channel", arn.as_str());
        Ok(arn)
    }

    /// The role and client id of a signaling request: a viewer needs a valid
    /// client id, a master must send none.
    fn signaling_peer<'a>(
        &self,
        msg: &'a GetSignalingConnectionRequest,
    ) -> Result<Peer<'a>, CallError> {
        let invalid = |field, reason: ValidationError| CallError::Invalid(reason.of(field));
        match SignalingRole::try_from(msg.role) {
            Ok(SignalingRole::Master) if msg.client_id.is_empty() => Ok(Peer::Master),
            Ok(SignalingRole::Master) => Err(invalid(
                "client_id",
                ValidationError::Constraint("must be empty for SIGNALING_ROLE_MASTER"),
            )),
            Ok(SignalingRole::Viewer) => {
                validate_client_id(&msg.client_id).map_err(|r| invalid("client_id", r))?;
                Ok(Peer::Viewer(&msg.client_id))
            }
            Ok(SignalingRole::Unspecified) | Err(_) => Err(invalid(
                "role",
                ValidationError::Constraint(
                    "must be SIGNALING_ROLE_MASTER or SIGNALING_ROLE_VIEWER",
                ),
            )),
        }
    }

    /// The call's deadline, as `request_deadline` parsed it from
    /// `grpc-timeout` when the request arrived (once, for every layer);
    /// `--max-call-duration` from now for a request that did not pass it.
    fn call<T>(&self, req: &Request<T>) -> Call {
        let deadline = req
            .extensions()
            .get::<CallDeadline>()
            .map_or_else(|| Instant::now() + self.limits.max_call_duration, |d| d.0);
        Call::new(deadline)
    }
}

#[tonic::async_trait]
impl WebRtcStorageService for WebRtcStorage {
    async fn join_storage_session(
        &self,
        req: Request<JoinStorageSessionRequest>,
    ) -> Result<Response<JoinStorageSessionResponse>, Status> {
        let work = async |msg: &JoinStorageSessionRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            let join = || self.client.join(call, &arn, Peer::Master);
            let target = || JoinTarget::new(&arn, Peer::Master);
            let joined = self
                .idempotent(&msg.idempotency_key, target, call, join)
                .await?;
            // The default window of the channel's recording status.
            self.recording.master_joined(&arn);
            Ok(joined)
        };
        let Joined { request_id } = self
            .unary(
                "JoinStorageSession",
                req,
                |m| &m.channel_arn,
                work,
                |j| &j.request_id,
            )
            .await?;
        Ok(Response::new(JoinStorageSessionResponse {
            aws_request_id: request_id,
        }))
    }

    async fn join_storage_session_as_viewer(
        &self,
        req: Request<JoinStorageSessionAsViewerRequest>,
    ) -> Result<Response<JoinStorageSessionAsViewerResponse>, Status> {
        let work = async |msg: &JoinStorageSessionAsViewerRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            validate_client_id(&msg.client_id).map_err(|reason| reason.of("client_id"))?;
            let peer = Peer::Viewer(&msg.client_id);
            let join = || self.client.join(call, &arn, peer);
            let target = || JoinTarget::new(&arn, peer);
            self.idempotent(&msg.idempotency_key, target, call, join)
                .await
        };
        let Joined { request_id } = self
            .unary(
                "JoinStorageSessionAsViewer",
                req,
                |m| &m.channel_arn,
                work,
                |j| &j.request_id,
            )
            .await?;
        Ok(Response::new(JoinStorageSessionAsViewerResponse {
            aws_request_id: request_id,
        }))
    }

    type MaintainStorageSessionStream = super::session::EventStream;

    async fn maintain_storage_session(
        &self,
        req: Request<Streaming<MaintainStorageSessionRequest>>,
    ) -> Result<Response<Self::MaintainStorageSessionStream>, Status> {
        // Waiting for `start` takes one of PENDING_STARTS slots: streams that
        // never send it are bounded (refused at once past it, without
        // touching the unary calls' slots), wait at most START_WAIT, and end
        // when the sidecar drains. Once started, the session holds a
        // session slot instead.
        let Ok(slot) = self.starts.try_acquire() else {
            metrics::counter!(crate::instruments::CALLS_SHED).increment(1);
            return Err(to_status(&Shed::PendingStarts(PENDING_STARTS).into()));
        };
        let mut inbound = req.into_inner();
        let wait = START_WAIT.min(self.limits.max_call_duration);
        let first = tokio::select! {
            first = tokio::time::timeout(wait, inbound.message()) => first
                .map_err(|_| to_status(&Late::Start(wait).into()))??,
            () = self.sessions.draining() => {
                return Err(to_status(&CallError::Draining));
            }
        };
        drop(slot);
        let Some(MaintainStorageSessionRequest {
            kind: Some(Kind::Start(start)),
        }) = first
        else {
            return Err(to_status(
                &ValidationError::Constraint("the first message must be `start`")
                    .of("start")
                    .into(),
            ));
        };
        let channel = self
            .channel(&start.channel_arn)
            .map_err(|e| to_status(&e))?;
        if !start.client_id.is_empty() {
            validate_client_id(&start.client_id)
                .map_err(|reason| to_status(&reason.of("client_id").into()))?;
        }
        let events = super::session::maintain(
            self.client.clone(),
            &self.sessions,
            &self.recording,
            channel,
            &start,
            self.limits.max_call_duration,
            inbound,
        )
        .await?;
        Ok(Response::new(events))
    }

    async fn get_signaling_connection(
        &self,
        req: Request<GetSignalingConnectionRequest>,
    ) -> Result<Response<GetSignalingConnectionResponse>, Status> {
        let work = async |msg: &GetSignalingConnectionRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            let peer = self.signaling_peer(msg)?;
            Ok(self.signaling.connection(call, &arn, peer).await?)
        };
        // The log line never holds the URL or the TURN credentials.
        let connection = self
            .unary(
                "GetSignalingConnection",
                req,
                |m| &m.channel_arn,
                work,
                |_| "",
            )
            .await?;
        Ok(Response::new(signaling_response(connection)))
    }

    async fn check_storage_readiness(
        &self,
        req: Request<CheckStorageReadinessRequest>,
    ) -> Result<Response<CheckStorageReadinessResponse>, Status> {
        let work = async |msg: &CheckStorageReadinessRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            Ok(self.readiness.check(call, &arn).await?)
        };
        let report = self
            .unary(
                "CheckStorageReadiness",
                req,
                |m| &m.channel_arn,
                work,
                |_| "",
            )
            .await?;
        Ok(Response::new(CheckStorageReadinessResponse {
            ready: report.ready(),
            channel_type: report.channel_type.clone(),
            channel_status: report.channel_status.clone(),
            media_storage_status: report.media_storage_status.clone(),
            stream_arn: report.stream_arn.clone(),
            stream_status: report.stream_status.clone(),
            data_retention_hours: report.data_retention_hours,
            problems: report
                .problems
                .iter()
                .map(|p| ReadinessProblem {
                    code: p.code.to_owned(),
                    message: p.message.clone(),
                })
                .collect(),
        }))
    }

    async fn ensure_storage(
        &self,
        req: Request<EnsureStorageRequest>,
    ) -> Result<Response<EnsureStorageResponse>, Status> {
        let work = async |msg: &EnsureStorageRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            let wanted = Wanted::parse(&msg.stream_name, msg.retention_hours)?;
            let ensured = self.storage.ensure(call, &arn, &wanted).await;
            // Whatever it changed, even if it failed later, the next
            // readiness check must see.
            if !matches!(ensured, Err(EnsureError::Disabled)) {
                self.readiness.forget(&arn).await;
            }
            Ok(ensured?)
        };
        let ensured = self
            .unary("EnsureStorage", req, |m| &m.channel_arn, work, |_| "")
            .await?;
        Ok(Response::new(EnsureStorageResponse {
            stream_arn: ensured.stream_arn,
            changes: ensured
                .changes
                .iter()
                .map(|c| {
                    (match c {
                        Change::StreamCreated => StorageChange::StreamCreated,
                        Change::RetentionIncreased => StorageChange::RetentionIncreased,
                        Change::StorageEnabled => StorageChange::StorageEnabled,
                    }) as i32
                })
                .collect(),
        }))
    }

    async fn get_playback_url(
        &self,
        req: Request<GetPlaybackUrlRequest>,
    ) -> Result<Response<GetPlaybackUrlResponse>, Status> {
        let work = async |msg: &GetPlaybackUrlRequest, call: &Call| {
            let arn = self.channel(&msg.channel_arn)?;
            let request = parse_request(msg)?;
            Ok(self
                .playback
                .url(call, &self.readiness, &arn, &request)
                .await?)
        };
        // The log line never holds the URL.
        let playback = self
            .unary("GetPlaybackUrl", req, |m| &m.channel_arn, work, |_| "")
            .await?;
        Ok(Response::new(GetPlaybackUrlResponse {
            url: playback.url,
            expires_at: Some(Timestamp::from(playback.expires_at)),
        }))
    }

    async fn get_recording_status(
        &self,
        req: Request<GetRecordingStatusRequest>,
    ) -> Result<Response<GetRecordingStatusResponse>, Status> {
        let _slot = self.slot()?;
        let call = self.call(&req);
        let msg = req.into_inner();
        let status = async {
            let channel = self.channel(&msg.channel_arn)?;
            let window =
                super::recording::window(&self.recording, &channel, msg.since, msg.stalled_after)
                    .await?;
            super::recording::status(&self.recording, &call, &channel, window).await
        };
        Ok(Response::new(GetRecordingStatusResponse {
            status: Some(status.await.map_err(|e| to_status(&e))?),
        }))
    }

    type WatchRecordingStream = super::recording::WatchStream;

    async fn watch_recording(
        &self,
        req: Request<WatchRecordingRequest>,
    ) -> Result<Response<Self::WatchRecordingStream>, Status> {
        // The deadline bounds finding the stream; the watch itself lasts
        // as long as the caller keeps it.
        let call = self.call(&req);
        let msg = req.into_inner();
        let stream = async {
            let channel = self.channel(&msg.channel_arn)?;
            let window =
                super::recording::window(&self.recording, &channel, msg.since, msg.stalled_after)
                    .await?;
            super::recording::watch(&self.recording, &self.watchers, &call, &channel, window).await
        };
        Ok(Response::new(stream.await.map_err(|e| to_status(&e))?))
    }
}

fn signaling_response(c: Connection) -> GetSignalingConnectionResponse {
    let stun = IceServer {
        urls: vec![c.stun],
        ..IceServer::default()
    };
    let turn = c.turn.into_iter().map(|t| IceServer {
        urls: t.uris,
        username: t.username,
        credential: t.password,
        ttl: Some(prost_types::Duration {
            seconds: i64::try_from(t.ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    });
    GetSignalingConnectionResponse {
        websocket_url: c.websocket_url.into_string(),
        expires_at: Some(Timestamp::from(c.expires_at)),
        ice_servers: std::iter::once(stun).chain(turn).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{
        KvsClient, credentials::Identities, endpoint::EndpointSettings,
        endpoint_cache::EndpointCache,
    };
    use proptest::prelude::*;

    /// A service whose upstream would fail if reached: these tests only
    /// exercise what happens before anything is sent.
    fn service() -> WebRtcStorage {
        let upstream = tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_: crate::kvs::UpstreamRequest| async {
                Err(Error::Transport("unreachable in this test".into()))
            },
        ));
        service_over(upstream, 10)
    }

    fn service_over(
        upstream: crate::kvs::stack::Upstream,
        max_concurrent_calls: usize,
    ) -> WebRtcStorage {
        let identities = Identities::for_tests();
        let client = Arc::new(KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 100),
            EndpointSettings::default(),
            identities,
        ));
        let signaling = Signaling::new(client.clone(), Duration::from_secs(300));
        let readiness = StorageReadiness::new(client.clone(), Duration::from_secs(5), 10);
        let recording = Recording::new(
            readiness.clone(),
            Arc::new(crate::kvs::data_endpoint::DataPlane::new(
                client.clone(),
                Duration::from_secs(60),
                10,
            )),
            Arc::new(crate::clock::SystemClock),
            crate::recording::Settings::default(),
            None,
        );
        WebRtcStorage::new(
            client,
            signaling,
            readiness,
            ChannelPolicy::default(),
            JoinLedger::new(Duration::from_secs(60), 100),
            Sessions::new(10, None),
            recording,
            CallLimits {
                max_call_duration: Duration::from_secs(1),
                max_concurrent_calls,
            },
        )
    }

    #[tokio::test]
    async fn a_call_beyond_the_limit_is_refused_at_once_and_its_slot_frees() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Each request reaching KVS waits for the gate, then fails.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let upstream = {
            let (gate, sent) = (gate.clone(), sent.clone());
            tower::util::BoxCloneSyncService::new(tower::service_fn(
                move |_: crate::kvs::UpstreamRequest| {
                    let (gate, sent) = (gate.clone(), sent.clone());
                    async move {
                        sent.fetch_add(1, Ordering::SeqCst);
                        let _pass = gate.acquire().await;
                        Err(Error::Transport("refused in this test".into()))
                    }
                },
            ))
        };
        let svc = Arc::new(service_over(upstream, 1));
        let join = |svc: Arc<WebRtcStorage>| async move {
            let req = Request::new(JoinStorageSessionRequest {
                channel_arn: "arn:aws:kinesisvideo:us-west-2:123456789012:channel/porch/1".into(),
                ..Default::default()
            });
            svc.join_storage_session(req).await
        };
        let first = tokio::spawn(join(svc.clone()));
        while sent.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(5), join(svc.clone()))
            .await
            .expect("refused at once, not queued")
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("limit of 1 calls"),
            "{refused:?}"
        );
        assert_eq!(
            sent.load(Ordering::SeqCst),
            1,
            "the refused call sent nothing"
        );
        gate.add_permits(100);
        first.await.unwrap().unwrap_err();
        join(svc).await.unwrap_err();
        assert_eq!(sent.load(Ordering::SeqCst), 2, "the slot was free again");
    }

    #[test]
    fn signaling_roles_and_client_ids_are_checked_before_anything_is_sent() {
        let svc = service();
        let request = |role: i32, client_id: &str| GetSignalingConnectionRequest {
            channel_arn: String::new(),
            role,
            client_id: client_id.into(),
        };
        let refused = |role, client_id| {
            svc.signaling_peer(&request(role, client_id))
                .unwrap_err()
                .to_string()
        };
        let (master, viewer) = (SignalingRole::Master as i32, SignalingRole::Viewer as i32);
        assert_eq!(
            svc.signaling_peer(&request(master, "")).unwrap(),
            Peer::Master
        );
        assert_eq!(
            svc.signaling_peer(&request(viewer, "v-1")).unwrap(),
            Peer::Viewer("v-1")
        );
        assert_eq!(
            refused(master, "v-1"),
            "client_id: must be empty for SIGNALING_ROLE_MASTER"
        );
        assert_eq!(refused(viewer, ""), "client_id: is empty");
        assert!(refused(viewer, "a b").starts_with("client_id: contains a character"));
        for role in [0, 7, -1] {
            assert_eq!(
                refused(role, ""),
                "role: must be SIGNALING_ROLE_MASTER or SIGNALING_ROLE_VIEWER"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes, decoded as each request message the way tonic
        /// decodes them, never panic validation: they decode to an error or
        /// to a message that validation accepts or refuses with
        /// INVALID_ARGUMENT naming the field.
        #[test]
        fn arbitrary_request_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            use prost::Message;
            let svc = service();
            if let Ok(msg) = JoinStorageSessionAsViewerRequest::decode(&bytes[..]) {
                match svc.channel(&msg.channel_arn) {
                    Ok(_) => {}
                    Err(e) => prop_assert!(e.to_string().starts_with("channel_arn: ")),
                }
                if let Err(reason) = validate_client_id(&msg.client_id) {
                    prop_assert!(!reason.to_string().is_empty());
                }
            }
            if let Ok(msg) = JoinStorageSessionRequest::decode(&bytes[..]) {
                let _ = svc.channel(&msg.channel_arn);
            }
            if let Ok(msg) = GetSignalingConnectionRequest::decode(&bytes[..])
                && let Err(e) = svc.signaling_peer(&msg)
            {
                let e = e.to_string();
                prop_assert!(e.starts_with("role: ") || e.starts_with("client_id: "));
            }
            if let Ok(msg) = EnsureStorageRequest::decode(&bytes[..])
                && let Err(e) = Wanted::parse(&msg.stream_name, msg.retention_hours)
            {
                let e = e.to_string();
                prop_assert!(e.starts_with("stream_name: ") || e.starts_with("retention_hours: "));
            }
            if let Ok(msg) = GetPlaybackUrlRequest::decode(&bytes[..])
                && let Err(e) = parse_request(&msg)
            {
                let e = e.to_string();
                let fields = ["protocol: ", "mode: ", "start: ", "end: ", "expires: "];
                prop_assert!(fields.iter().any(|f| e.starts_with(f)), "{}", e);
            }
        }
    }
}
