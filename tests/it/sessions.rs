//! MaintainStorageSession against the emulator, over a real gRPC stream:
//! each re-join rule, giving up, the caller going away, one session per
//! channel, and draining on SIGTERM; and, with a real signaling WebSocket
//! held by the test, the offers the emulator drops and the storage
//! sessions it ends when their lifetime passes.

use crate::common;
use std::time::Duration;

use crate::common::{ARN, Emulator, Reply, Sidecar, Socket};
use kvs_sidecar::pb::{
    GetSignalingConnectionRequest, GiveUpReason, JoinReason, MaintainStorageSessionRequest,
    MaintainStorageSessionResponse, SessionReport, SessionReportKind, SessionStart, SignalingRole,
    maintain_storage_session_request::Kind, maintain_storage_session_response::Event,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::connect_async;
use tonic::{Code, Streaming, transport::Channel};

const JOIN: &str = "/joinStorageSession";

/// One maintained session as a caller holds it: its reports going in, its
/// events coming out.
struct Session {
    reports: mpsc::Sender<MaintainStorageSessionRequest>,
    events: Streaming<MaintainStorageSessionResponse>,
}

impl Session {
    async fn start(
        client: &WebRtcStorageServiceClient<Channel>,
        start: SessionStart,
    ) -> Result<Self, tonic::Status> {
        let (reports, rx) = mpsc::channel(8);
        reports
            .send(MaintainStorageSessionRequest {
                kind: Some(Kind::Start(start)),
            })
            .await
            .unwrap();
        let events = client
            .clone()
            .maintain_storage_session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { reports, events })
    }

    async fn report(&self, kind: SessionReportKind) {
        self.reports
            .send(MaintainStorageSessionRequest {
                kind: Some(Kind::Report(SessionReport { kind: kind.into() })),
            })
            .await
            .unwrap();
    }

    /// The next event, within 10 s.
    async fn next(&mut self) -> Result<Event, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), self.events.message())
            .await
            .expect("an event within 10 s")?
            .expect("the stream goes on");
        assert!(message.time.is_some(), "every event carries its time");
        Ok(message.event.expect("an event"))
    }

    async fn joined(&mut self, reason: JoinReason) -> String {
        match self.next().await {
            Ok(Event::Joined(j)) if j.reason() == reason => j.aws_request_id,
            other => panic!("expected a join for {reason:?}, got {other:?}"),
        }
    }
}

/// The master's signaling WebSocket of `channel`, opened as a backend
/// opens it: with the presigned URL GetSignalingConnection gives.
async fn signaling(client: &WebRtcStorageServiceClient<Channel>, channel: &str) -> Socket {
    let url = client
        .clone()
        .get_signaling_connection(GetSignalingConnectionRequest {
            channel_arn: channel.into(),
            role: SignalingRole::Master.into(),
            client_id: String::new(),
        })
        .await
        .expect("GetSignalingConnection")
        .into_inner()
        .websocket_url;
    let (socket, _) = tokio::time::timeout(Duration::from_secs(5), connect_async(url.as_str()))
        .await
        .expect("handshake within 5 s")
        .expect("the emulator accepts the presigned URL");
    socket
}

/// Reads the next message on the socket, within 5 s, and checks it is an
/// SDP offer.
async fn offer(socket: &mut Socket) {
    let message = common::next_message(socket).await;
    assert_eq!(message["messageType"], "SDP_OFFER", "{message}");
}

fn start(arn: &str) -> SessionStart {
    SessionStart {
        channel_arn: arn.into(),
        offer_wait: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

async fn setup(args: &[&str]) -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    common::warmed(args).await
}

#[tokio::test]
async fn joins_again_without_an_offer_ahead_of_the_limit_after_disconnection_and_on_request() {
    let (fake, _sidecar, client) = setup(&[]).await;
    let before = fake.received_on(JOIN).len();
    let mut session = Session::start(
        &client,
        SessionStart {
            rejoin_after: secs(2),
            ..start(ARN)
        },
    )
    .await
    .unwrap();
    let first = session.joined(JoinReason::Initial).await;
    assert!(common::is_request_id(&first));
    // No offer reported within the offer wait (1 s + jitter): join again.
    session.joined(JoinReason::NoOffer).await;
    // Offer and media: the next join comes ahead of the (shortened) limit.
    session.report(SessionReportKind::OfferReceived).await;
    session.report(SessionReportKind::Connected).await;
    session.joined(JoinReason::SessionLimit).await;
    session.report(SessionReportKind::OfferReceived).await;
    session.report(SessionReportKind::Connected).await;
    session.report(SessionReportKind::Disconnected).await;
    session.joined(JoinReason::Disconnected).await;
    session.report(SessionReportKind::OfferReceived).await;
    session.report(SessionReportKind::RejoinRequested).await;
    session.joined(JoinReason::Requested).await;
    assert_eq!(
        fake.received_on(JOIN).len() - before,
        5,
        "one KVS join per event"
    );
}

#[tokio::test]
async fn gives_up_after_the_failure_budget_and_at_once_on_a_final_error() {
    let (fake, sidecar, client) = setup(&["--max-attempts", "1"]).await;
    fake.script(JOIN, vec![Reply::error(503, "ServiceUnavailable"); 2]);
    let mut session = Session::start(
        &client,
        SessionStart {
            failure_budget: 2,
            ..start(ARN)
        },
    )
    .await
    .unwrap();
    match session.next().await {
        Ok(Event::JoinFailed(f)) => {
            assert_eq!(f.code, Code::Unavailable as i32);
            assert!(f.next_attempt_in.is_some(), "{f:?}");
        }
        other => panic!("{other:?}"),
    }
    match session.next().await {
        Ok(Event::JoinFailed(f)) => assert!(f.next_attempt_in.is_none(), "{f:?}"),
        other => panic!("{other:?}"),
    }
    match session.next().await {
        Ok(Event::GaveUp(g)) => assert_eq!(g.reason(), GiveUpReason::FailureBudget),
        other => panic!("{other:?}"),
    }
    assert_eq!(session.next().await.unwrap_err().code(), Code::Unavailable);

    // A channel KVS does not know: no second join.
    let mut session = Session::start(&client, start(&common::arn("missing-cam")))
        .await
        .unwrap();
    assert!(matches!(session.next().await, Ok(Event::JoinFailed(_))));
    match session.next().await {
        Ok(Event::GaveUp(g)) => {
            assert_eq!(g.reason(), GiveUpReason::FinalError);
            assert_eq!(g.code, Code::NotFound as i32);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.next().await.unwrap_err().code(), Code::NotFound);
    let (_, metrics) = sidecar.admin_get("/metrics");
    for series in [
        r#"kvs_sidecar_sessions_given_up_total{reason="failure_budget"} 1"#,
        r#"kvs_sidecar_sessions_given_up_total{reason="final_error"} 1"#,
        // A bidirectional stream is labelled as one (issue 20).
        r#"grpc_server_handled_total{grpc_service="kvs.webrtcstorage.v1.WebRtcStorageService",grpc_method="MaintainStorageSession",grpc_type="bidi_stream",grpc_code="NotFound"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
}

#[tokio::test]
async fn the_caller_going_away_stops_joins_and_frees_the_channel() {
    let (fake, _sidecar, client) = setup(&[]).await;
    let mut session = Session::start(&client, start(ARN)).await.unwrap();
    session.joined(JoinReason::Initial).await;

    // One session per channel.
    let second = Session::start(&client, start(ARN)).await;
    let err = second.err().expect("a second start is refused");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(ARN), "{err:?}");

    // The caller goes away. A witness started after it, with twice its
    // offer wait (more than its 1 s plus a quarter of jitter), re-joins
    // only after the cancelled session would have: once the emulator
    // has the witness's second join, a join after the cancel would be
    // there too.
    drop(session);
    let joins = fake.storage_session(ARN, None).unwrap().started;
    let witness_arn = common::arn("cancel-witness");
    let mut witness = Session::start(
        &client,
        SessionStart {
            offer_wait: secs(2),
            ..start(&witness_arn)
        },
    )
    .await
    .unwrap();
    witness.joined(JoinReason::Initial).await;
    witness.joined(JoinReason::NoOffer).await;
    assert_eq!(
        fake.storage_session(ARN, None).unwrap().started,
        joins,
        "no join after the cancel"
    );

    // And the channel can be maintained again.
    let mut again = Session::start(&client, start(ARN)).await.unwrap();
    again.joined(JoinReason::Initial).await;
}

#[tokio::test]
async fn a_bad_start_is_refused_naming_the_field_with_nothing_sent() {
    let (fake, _sidecar, client) = setup(&[]).await;
    let joins = fake.received_on(JOIN).len();
    for (start, field) in [
        (start("arn:nope"), "channel_arn"),
        (
            SessionStart {
                client_id: "bad id!".into(),
                ..start(ARN)
            },
            "client_id",
        ),
        (
            SessionStart {
                offer_wait: secs(3600),
                ..start(ARN)
            },
            "start.offer_wait",
        ),
        (
            SessionStart {
                failure_budget: 1000,
                ..start(ARN)
            },
            "start.failure_budget",
        ),
    ] {
        let err = Session::start(&client, start).await.err().expect("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    // A report first, or a second start, is refused too.
    let (tx, rx) = mpsc::channel(2);
    tx.send(MaintainStorageSessionRequest {
        kind: Some(Kind::Report(SessionReport {
            kind: SessionReportKind::Connected.into(),
        })),
    })
    .await
    .unwrap();
    let err = client
        .clone()
        .maintain_storage_session(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut session = Session::start(&client, start(ARN)).await.unwrap();
    session.joined(JoinReason::Initial).await;
    session
        .reports
        .send(MaintainStorageSessionRequest {
            kind: Some(Kind::Start(start(ARN))),
        })
        .await
        .unwrap();
    let err = session.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("start"), "{err:?}");
    assert_eq!(
        fake.received_on(JOIN).len(),
        joins + 1,
        "only the valid session joined"
    );

    // A report without a kind ends the session the same way, and frees
    // the channel: its supervisor stopped.
    let mut session = started_again(&client).await;
    session.joined(JoinReason::Initial).await;
    session.report(SessionReportKind::Unspecified).await;
    let err = session.next().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("report.kind"), "{err:?}");
    started_again(&client)
        .await
        .joined(JoinReason::Initial)
        .await;
}

/// A session on `ARN` once the one before it let the channel go: its
/// supervisor stops just after the caller is told, so a start can find the
/// channel still held for a moment (bounded: 5 s).
async fn started_again(client: &WebRtcStorageServiceClient<Channel>) -> Session {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Session::start(client, start(ARN)).await {
            Ok(session) => return session,
            Err(e) if e.code() == Code::AlreadyExists && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the channel was not let go: {e:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_ends_every_maintained_session_with_a_final_event() {
    let (_fake, mut sidecar, client) = setup(&[]).await;
    let mut sessions = Vec::new();
    for name in ["a", "b", "c"] {
        let mut session = Session::start(&client, start(&common::arn(name)))
            .await
            .unwrap();
        session.joined(JoinReason::Initial).await;
        session.report(SessionReportKind::OfferReceived).await;
        sessions.push(session);
    }
    sidecar.signal("TERM");
    for session in &mut sessions {
        match session.next().await {
            Ok(Event::GaveUp(g)) => assert_eq!(g.reason(), GiveUpReason::Draining),
            other => panic!("{other:?}"),
        }
        let end = session.next().await.unwrap_err();
        assert_eq!(end.code(), Code::Unavailable);
        assert!(end.message().contains("draining"), "{end:?}");
    }
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// A join KVS answers 200 whose offer never arrives (the emulator drops
/// it): the supervisor joins again for no_offer, and that join's offer
/// arrives on the master's real signaling WebSocket.
#[tokio::test]
async fn a_dropped_offer_is_joined_again_and_the_next_offer_arrives_on_the_socket() {
    let (fake, _sidecar, client) = setup(&[]).await;
    let channel = common::arn("dropped-offer");
    let mut socket = signaling(&client, &channel).await;
    fake.drop_offers(&channel, None, 1);
    let mut session = Session::start(
        &client,
        SessionStart {
            rejoin_after: secs(1),
            ..start(&channel)
        },
    )
    .await
    .unwrap();
    session.joined(JoinReason::Initial).await;
    let record = fake.storage_session(&channel, None).expect("a record");
    assert_eq!(
        (record.started, record.offers_dropped, record.offers_sent),
        (1, 1, 0),
        "joined, and its offer dropped"
    );
    session.joined(JoinReason::NoOffer).await;
    offer(&mut socket).await;
    session.report(SessionReportKind::OfferReceived).await;
    session.report(SessionReportKind::Connected).await;
    // The reports took: the next join is the one ahead of the (shortened)
    // session limit, not another for want of an offer, and its offer
    // arrives too.
    session.joined(JoinReason::SessionLimit).await;
    offer(&mut socket).await;
    let record = fake.storage_session(&channel, None).unwrap();
    assert_eq!(
        (
            record.started,
            record.offers_dropped,
            record.offers_sent,
            record.offers_missed
        ),
        (3, 1, 2, 0),
        "the two offers read are all the socket was sent: {record:?}"
    );
}

/// Maintains `session` as a backend does: for each join, waits for the
/// offer on `socket`, reports OFFER_RECEIVED and CONNECTED (media would
/// flow), until `stop`. Returns the reasons of the joins after the first.
async fn keep(
    mut session: Session,
    mut socket: Socket,
    mut stop: watch::Receiver<bool>,
) -> Vec<JoinReason> {
    let mut reasons = Vec::new();
    loop {
        offer(&mut socket).await;
        session.report(SessionReportKind::OfferReceived).await;
        session.report(SessionReportKind::Connected).await;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return reasons,
            event = session.next() => match event {
                Ok(Event::Joined(j)) => reasons.push(j.reason()),
                other => panic!("{other:?}"),
            },
        }
    }
}

/// The emulator ends a storage session when its lifetime passes without a
/// re-join. A session re-joined ahead of it (rejoin_after 1 s, lifetime
/// 4 s) is never ended; the control, maintained the same way but told to
/// re-join only after 10 minutes, is.
#[tokio::test]
async fn rejoining_ahead_of_the_session_limit_keeps_the_emulated_session() {
    let (fake, _sidecar, client) = setup(&[]).await;
    fake.set_session_lifetime(Duration::from_secs(4));
    let (kept_arn, lapsed_arn) = (common::arn("kept"), common::arn("lapsed"));
    let kept_socket = signaling(&client, &kept_arn).await;
    let mut lapsed_socket = signaling(&client, &lapsed_arn).await;

    // Kept starts first, so its first session would end before the
    // control's does.
    let mut kept = Session::start(
        &client,
        SessionStart {
            rejoin_after: secs(1),
            ..start(&kept_arn)
        },
    )
    .await
    .unwrap();
    kept.joined(JoinReason::Initial).await;
    let (stop, stopped) = watch::channel(false);
    let keeper = tokio::spawn(keep(kept, kept_socket, stopped));

    let mut lapsed = Session::start(
        &client,
        SessionStart {
            rejoin_after: secs(600),
            ..start(&lapsed_arn)
        },
    )
    .await
    .unwrap();
    lapsed.joined(JoinReason::Initial).await;
    offer(&mut lapsed_socket).await;
    lapsed.report(SessionReportKind::OfferReceived).await;
    lapsed.report(SessionReportKind::Connected).await;

    // The control's session ends when its lifetime passes; the emulator
    // ends sessions in order of expiry, so by then the kept one's first
    // session had ended too, had it not been replaced.
    let ended = common::wait_for(|| {
        fake.storage_session(&lapsed_arn, None)
            .filter(|r| r.expired > 0)
    })
    .await;
    assert_eq!(
        (
            ended.started,
            ended.replaced,
            ended.expired,
            ended.current_since
        ),
        (1, 0, 1, None),
        "{ended:?}"
    );
    let record = fake.storage_session(&kept_arn, None).unwrap();
    stop.send_replace(true);
    let reasons = keeper.await.unwrap();
    assert_eq!(
        record.expired, 0,
        "re-joined ahead of the limit: {record:?}"
    );
    assert!(
        record.replaced >= 1 && record.current_since.is_some(),
        "{record:?}"
    );
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| *r == JoinReason::SessionLimit),
        "{reasons:?}"
    );
}
