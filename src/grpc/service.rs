//! The `WebRtcStorageService` implementation: validate, call KVS, answer.

use std::{future::Future, sync::Arc, time::Duration};

use prost_types::Timestamp;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::{call_log::log_call, deadline::deadline, status::to_status};
use crate::{
    idempotency::{JoinLedger, JoinTarget},
    kvs::{
        Call, Error, Joined, KvsClient,
        arn::{ChannelArn, ValidationError, validate_client_id, validate_idempotency_key},
        endpoint::Role,
    },
    pb::{
        CheckStorageReadinessRequest, CheckStorageReadinessResponse, GetSignalingConnectionRequest,
        GetSignalingConnectionResponse, IceServer, JoinStorageSessionAsViewerRequest,
        JoinStorageSessionAsViewerResponse, JoinStorageSessionRequest, JoinStorageSessionResponse,
        MaintainStorageSessionRequest, ReadinessProblem, SignalingRole,
        maintain_storage_session_request::Kind,
        web_rtc_storage_service_server::WebRtcStorageService,
    },
    policy::ChannelPolicy,
    readiness::StorageReadiness,
    session::Sessions,
    signaling::{Connection, Signaling},
};

pub struct WebRtcStorage {
    client: Arc<KvsClient>,
    signaling: Signaling,
    readiness: StorageReadiness,
    policy: ChannelPolicy,
    ledger: JoinLedger,
    sessions: Arc<Sessions>,
    max_call_duration: Duration,
}

// === impl WebRtcStorage ===

impl WebRtcStorage {
    pub fn new(
        client: Arc<KvsClient>,
        signaling: Signaling,
        readiness: StorageReadiness,
        policy: ChannelPolicy,
        ledger: JoinLedger,
        sessions: Arc<Sessions>,
        max_call_duration: Duration,
    ) -> Self {
        Self {
            client,
            signaling,
            readiness,
            policy,
            ledger,
            sessions,
            max_call_duration,
        }
    }

    /// Runs `join`, or, when the caller gave an idempotency key, answers
    /// the outcome of the first join made with it.
    async fn idempotent(
        &self,
        key: &str,
        target: JoinTarget,
        call: &Call,
        join: impl Future<Output = Result<Joined, Error>>,
    ) -> Result<Joined, Error> {
        if key.is_empty() {
            return join.await;
        }
        validate_idempotency_key(key).map_err(|reason| Error::InvalidRequest {
            field: "idempotency_key",
            reason,
        })?;
        self.ledger.join(key, target, call.deadline(), join).await
    }

    /// A valid ARN of a channel this sidecar may act on.
    fn channel(&self, raw: &str) -> Result<ChannelArn, Error> {
        let arn = ChannelArn::parse(raw).map_err(|reason| Error::InvalidRequest {
            field: "channel_arn",
            reason,
        })?;
        if !self.policy.allows(&arn) {
            return Err(Error::ChannelNotAllowed(arn.to_string()));
        }
        // On the call's span (`call_span`), now that it is known valid.
        tracing::Span::current().record("channel", arn.as_str());
        Ok(arn)
    }

    /// The role and client id of a signaling request: a viewer needs a valid
    /// client id, a master must send none.
    fn signaling_role<'a>(
        &self,
        msg: &'a GetSignalingConnectionRequest,
    ) -> Result<(Role, Option<&'a str>), Error> {
        let invalid = |field, reason| Error::InvalidRequest { field, reason };
        match SignalingRole::try_from(msg.role) {
            Ok(SignalingRole::Master) if msg.client_id.is_empty() => Ok((Role::Master, None)),
            Ok(SignalingRole::Master) => {
                Err(invalid("client_id", ValidationError::NotEmptyForMaster))
            }
            Ok(SignalingRole::Viewer) => {
                validate_client_id(&msg.client_id).map_err(|r| invalid("client_id", r))?;
                Ok((Role::Viewer, Some(msg.client_id.as_str())))
            }
            Ok(SignalingRole::Unspecified) | Err(_) => {
                Err(invalid("role", ValidationError::UnspecifiedRole))
            }
        }
    }

    fn call<T>(&self, req: &Request<T>) -> Call {
        Call::new(deadline(
            req.metadata().as_ref(),
            Instant::now(),
            self.max_call_duration,
        ))
    }
}

#[tonic::async_trait]
impl WebRtcStorageService for WebRtcStorage {
    async fn join_storage_session(
        &self,
        req: Request<JoinStorageSessionRequest>,
    ) -> Result<Response<JoinStorageSessionResponse>, Status> {
        let call = self.call(&req);
        let msg = req.into_inner();
        let started = Instant::now();
        let result = async {
            let arn = self.channel(&msg.channel_arn)?;
            let target = JoinTarget {
                channel: arn.clone(),
                role: Role::Master,
                client_id: "".into(),
            };
            let join = self.client.join_storage_session(&call, &arn);
            self.idempotent(&msg.idempotency_key, target, &call, join)
                .await
        }
        .await;
        log_call(
            "JoinStorageSession",
            &msg.channel_arn,
            &call,
            started,
            result.as_ref().map(|j| j.request_id.as_str()),
        );
        let Joined { request_id } = result.map_err(|e| to_status(&e))?;
        Ok(Response::new(JoinStorageSessionResponse {
            aws_request_id: request_id,
        }))
    }

    async fn join_storage_session_as_viewer(
        &self,
        req: Request<JoinStorageSessionAsViewerRequest>,
    ) -> Result<Response<JoinStorageSessionAsViewerResponse>, Status> {
        let call = self.call(&req);
        let msg = req.into_inner();
        let started = Instant::now();
        let result = async {
            let arn = self.channel(&msg.channel_arn)?;
            validate_client_id(&msg.client_id).map_err(|reason| Error::InvalidRequest {
                field: "client_id",
                reason,
            })?;
            let target = JoinTarget {
                channel: arn.clone(),
                role: Role::Viewer,
                client_id: msg.client_id.as_str().into(),
            };
            let join = self
                .client
                .join_storage_session_as_viewer(&call, &arn, &msg.client_id);
            self.idempotent(&msg.idempotency_key, target, &call, join)
                .await
        }
        .await;
        log_call(
            "JoinStorageSessionAsViewer",
            &msg.channel_arn,
            &call,
            started,
            result.as_ref().map(|j| j.request_id.as_str()),
        );
        let Joined { request_id } = result.map_err(|e| to_status(&e))?;
        Ok(Response::new(JoinStorageSessionAsViewerResponse {
            aws_request_id: request_id,
        }))
    }

    type MaintainStorageSessionStream = super::session::EventStream;

    async fn maintain_storage_session(
        &self,
        req: Request<Streaming<MaintainStorageSessionRequest>>,
    ) -> Result<Response<Self::MaintainStorageSessionStream>, Status> {
        let mut inbound = req.into_inner();
        // The stream has no call deadline, but its first message has one: a
        // caller that opens streams and sends nothing holds nothing long.
        let first = tokio::time::timeout(self.max_call_duration, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("start: no first message within --max-call-duration")
            })??;
        let Some(MaintainStorageSessionRequest {
            kind: Some(Kind::Start(start)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "start: the first message must be `start`",
            ));
        };
        let channel = self
            .channel(&start.channel_arn)
            .map_err(|e| to_status(&e))?;
        if !start.client_id.is_empty() {
            validate_client_id(&start.client_id).map_err(|reason| {
                to_status(&Error::InvalidRequest {
                    field: "client_id",
                    reason,
                })
            })?;
        }
        let events = super::session::maintain(
            self.client.clone(),
            &self.sessions,
            channel,
            &start,
            self.max_call_duration,
            inbound,
        )
        .await?;
        Ok(Response::new(events))
    }

    async fn get_signaling_connection(
        &self,
        req: Request<GetSignalingConnectionRequest>,
    ) -> Result<Response<GetSignalingConnectionResponse>, Status> {
        let call = self.call(&req);
        let msg = req.into_inner();
        let started = Instant::now();
        let result = async {
            let arn = self.channel(&msg.channel_arn)?;
            let (role, client_id) = self.signaling_role(&msg)?;
            self.signaling
                .connection(&call, &arn, role, client_id)
                .await
        }
        .await;
        // The log line never holds the URL or the TURN credentials.
        log_call(
            "GetSignalingConnection",
            &msg.channel_arn,
            &call,
            started,
            result.as_ref().map(|_| ""),
        );
        let connection = result.map_err(|e| to_status(&e))?;
        Ok(Response::new(signaling_response(connection)))
    }

    async fn check_storage_readiness(
        &self,
        req: Request<CheckStorageReadinessRequest>,
    ) -> Result<Response<CheckStorageReadinessResponse>, Status> {
        let call = self.call(&req);
        let msg = req.into_inner();
        let started = Instant::now();
        let result = async {
            let arn = self.channel(&msg.channel_arn)?;
            self.readiness.check(&call, &arn).await
        }
        .await;
        log_call(
            "CheckStorageReadiness",
            &msg.channel_arn,
            &call,
            started,
            result.as_ref().map(|_| ""),
        );
        let report = result.map_err(|e| to_status(&e))?;
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
    use crate::{
        clock::SkewCorrectedClock,
        kvs::{
            KvsClient, credentials::Identities, endpoint::EndpointSettings,
            endpoint_cache::EndpointCache,
        },
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
        let identities = Identities::for_tests();
        let client = Arc::new(KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 100),
            EndpointSettings::default(),
            identities.clone(),
        ));
        let signaling = Signaling::new(
            client.clone(),
            identities,
            Arc::new(SkewCorrectedClock::new(Arc::new(crate::clock::SystemClock))),
            Duration::from_secs(300),
        );
        let readiness = StorageReadiness::new(client.clone(), Duration::from_secs(5), 10);
        WebRtcStorage::new(
            client,
            signaling,
            readiness,
            ChannelPolicy::default(),
            JoinLedger::new(Duration::from_secs(60), 100),
            Sessions::new(10, None),
            Duration::from_secs(1),
        )
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
            svc.signaling_role(&request(role, client_id))
                .unwrap_err()
                .to_string()
        };
        let (master, viewer) = (SignalingRole::Master as i32, SignalingRole::Viewer as i32);
        assert_eq!(
            svc.signaling_role(&request(master, "")).unwrap(),
            (Role::Master, None)
        );
        assert_eq!(
            svc.signaling_role(&request(viewer, "v-1")).unwrap(),
            (Role::Viewer, Some("v-1"))
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
                && let Err(e) = svc.signaling_role(&msg)
            {
                let e = e.to_string();
                prop_assert!(e.starts_with("role: ") || e.starts_with("client_id: "));
            }
        }
    }
}
