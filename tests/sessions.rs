//! MaintainStorageSession against the emulator, over a real gRPC stream:
//! each re-join rule, giving up, the caller going away, one session per
//! channel, and draining on SIGTERM.

mod common;

use std::time::Duration;

use common::{ARN, Emulator, Reply, Sidecar};
use kvs_sidecar::pb::{
    GiveUpReason, JoinReason, MaintainStorageSessionRequest, MaintainStorageSessionResponse,
    SessionReport, SessionReportKind, SessionStart, maintain_storage_session_request::Kind,
    maintain_storage_session_response::Event,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
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

    // The caller goes away; well past the offer wait, no join followed.
    drop(session);
    let joins = fake.received_on(JOIN).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fake.received_on(JOIN).len(),
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
    assert_eq!(
        session.next().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        fake.received_on(JOIN).len(),
        joins + 1,
        "only the valid session joined"
    );
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
