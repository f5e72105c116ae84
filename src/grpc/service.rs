//! The `WebRtcStorageService` implementation: validate, call KVS, answer.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::{call_log::log_call, deadline::deadline, status::to_status};
use crate::{
    idempotency::{JoinLedger, JoinTarget},
    kvs::{
        Call, Error, Joined, KvsClient,
        arn::{ChannelArn, validate_client_id, validate_idempotency_key},
        endpoint::Role,
    },
    pb::{
        JoinStorageSessionAsViewerRequest, JoinStorageSessionAsViewerResponse,
        JoinStorageSessionRequest, JoinStorageSessionResponse, MaintainStorageSessionRequest,
        maintain_storage_session_request::Kind,
        web_rtc_storage_service_server::WebRtcStorageService,
    },
    policy::ChannelPolicy,
    session::Sessions,
};

pub struct WebRtcStorage {
    client: Arc<KvsClient>,
    policy: ChannelPolicy,
    ledger: JoinLedger,
    sessions: Arc<Sessions>,
    max_call_duration: Duration,
}

impl WebRtcStorage {
    pub fn new(
        client: Arc<KvsClient>,
        policy: ChannelPolicy,
        ledger: JoinLedger,
        sessions: Arc<Sessions>,
        max_call_duration: Duration,
    ) -> Self {
        Self {
            client,
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
        Ok(arn)
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
            &result,
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
            &result,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{KvsClient, endpoint::EndpointSettings, endpoint_cache::EndpointCache};
    use proptest::prelude::*;

    /// A service whose upstream would fail if reached: these tests only
    /// exercise what happens before anything is sent.
    fn service() -> WebRtcStorage {
        let upstream = tower::util::BoxCloneSyncService::new(tower::service_fn(
            |_: crate::kvs::UpstreamRequest| async {
                Err(Error::Transport("unreachable in this test".into()))
            },
        ));
        let client = KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 100),
            EndpointSettings::default(),
        );
        WebRtcStorage::new(
            Arc::new(client),
            ChannelPolicy::default(),
            JoinLedger::new(Duration::from_secs(60), 100),
            Sessions::new(10, None),
            Duration::from_secs(1),
        )
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
        }
    }
}
