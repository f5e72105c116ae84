//! CheckStorageReadiness against the emulator: every problem code by the
//! emulator's channel-name conventions, NOT_FOUND, the short cache with
//! single flight, and the client-side rate limit of the Describe* requests.

use crate::common;
use std::time::Duration;

use crate::common::{Sidecar, arn};
use kvs_sidecar::pb::{CheckStorageReadinessRequest, CheckStorageReadinessResponse};
use tonic::Code;

const DESCRIBES: [&str; 3] = [
    "/describeSignalingChannel",
    "/describeMediaStorageConfiguration",
    "/describeStream",
];

fn check(channel_arn: &str) -> CheckStorageReadinessRequest {
    CheckStorageReadinessRequest {
        channel_arn: channel_arn.into(),
    }
}

fn codes(answer: &CheckStorageReadinessResponse) -> Vec<&str> {
    answer.problems.iter().map(|p| p.code.as_str()).collect()
}

#[tokio::test]
async fn every_problem_is_reported_with_its_code_and_a_ready_channel_has_none() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let mut client = sidecar.client().await;

    let ready = client
        .check_storage_readiness(check(&arn("front-door")))
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready, "{ready:?}");
    assert!(ready.problems.is_empty());
    assert_eq!(ready.channel_type, "SINGLE_MASTER");
    assert_eq!(ready.channel_status, "ACTIVE");
    assert_eq!(ready.media_storage_status, "ENABLED");
    assert_eq!(
        ready.stream_arn,
        arn("front-door").replace(":channel/", ":stream/")
    );
    assert_eq!(ready.stream_status, "ACTIVE");
    assert_eq!(ready.data_retention_hours, 24);
    let signed = fake.received_on("/describeStream");
    assert!(signed[0].signature.is_ok());
    assert_eq!(signed[0].json()["StreamARN"], ready.stream_arn.as_str());

    let cases = [
        ("inactive-cam", vec!["CHANNEL_NOT_ACTIVE"]),
        ("fullmesh-cam", vec!["CHANNEL_NOT_SINGLE_MASTER"]),
        ("nostorage-cam", vec!["STORAGE_DISABLED"]),
        ("nostream-cam", vec!["STREAM_NOT_FOUND"]),
        ("creatingstream-cam", vec!["STREAM_NOT_ACTIVE"]),
        ("noretention-cam", vec!["STREAM_NO_RETENTION"]),
        ("denystream-cam", vec!["ACCESS_DENIED"]),
        ("denied-cam", vec!["ACCESS_DENIED", "ACCESS_DENIED"]),
    ];
    for (name, want) in cases {
        let answer = client
            .check_storage_readiness(check(&arn(name)))
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"))
            .into_inner();
        assert_eq!(codes(&answer), want, "{name}: {answer:?}");
        assert!(!answer.ready, "{name}");
        assert!(
            answer.problems.iter().all(|p| p.message.len() > 20),
            "{name}"
        );
    }
    let denied = client
        .check_storage_readiness(check(&arn("denystream-cam")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        denied.problems[0]
            .message
            .contains("kinesisvideo:DescribeStream"),
        "{denied:?}"
    );
    // Storage disabled: the stream is not asked about.
    assert!(fake.received_on("/describeStream").iter().all(|r| {
        !r.json()["StreamARN"]
            .as_str()
            .unwrap()
            .contains("nostorage-")
    }));
}

#[tokio::test]
async fn a_missing_channel_is_not_found_and_bad_input_sends_nothing() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--allowed-channels", &arn("*")]);
    let mut client = sidecar.client().await;
    let bad = client
        .check_storage_readiness(check("arn:aws:kinesisvideo:eu-central-1:1:channel/x"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("channel_arn: "), "{bad:?}");
    let outside = client
        .check_storage_readiness(check(
            "arn:aws:kinesisvideo:us-east-1:123456789012:channel/cam/1",
        ))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    assert!(fake.received().is_empty(), "nothing was sent");

    let missing = client
        .check_storage_readiness(check(&arn("missing-cam")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test]
async fn concurrent_checks_share_one_and_answers_are_reused_briefly() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--readiness-cache-ttl", "1s"]);
    let client = sidecar.client().await;
    for path in DESCRIBES {
        fake.script(
            path,
            [common::Reply::Slow(
                Duration::from_millis(200),
                Box::new(common::Reply::Ok),
            )],
        );
    }
    let checks: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .check_storage_readiness(check(&arn("front-door")))
                    .await
            })
        })
        .collect();
    for c in checks {
        assert!(c.await.unwrap().unwrap().into_inner().ready);
    }
    for path in DESCRIBES {
        assert_eq!(fake.received_on(path).len(), 1, "{path}: single flight");
    }
    // Within the TTL the answer is reused; after it, KVS is asked again.
    let mut client = client.clone();
    client
        .check_storage_readiness(check(&arn("front-door")))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DESCRIBES[0]).len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .check_storage_readiness(check(&arn("front-door")))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DESCRIBES[0]).len(), 2);
}

#[tokio::test]
async fn the_describe_rate_limit_refuses_what_cannot_fit_before_the_deadline() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--describe-rate", "1"]);
    let client = sidecar.client().await;
    // At one Describe* a second, checks of five more channels at once (two
    // or three Describe* each) would queue far more than the second of
    // waiting the bucket allows: those past it are refused at once, with
    // the reason, whatever the callers' deadlines.
    let checks: Vec<_> = (2..7)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(check(&arn(&format!("cam-{i}"))));
                request.set_timeout(Duration::from_secs(20));
                client.check_storage_readiness(request).await
            })
        })
        .collect();
    let mut refused = Vec::new();
    for c in checks {
        if let Err(status) = c.await.unwrap() {
            refused.push(status);
        }
    }
    assert!(!refused.is_empty(), "none refused");
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("client-side rate for Describe"),
            "{status:?}"
        );
    }
}

/// Issue 22, finding 5: the shared check runs under its own deadline. With
/// Describe* taking 300 ms, a dashboard polling with a 200 ms deadline
/// keeps starting checks; a caller with 5 s that joins one must get the
/// answer, not the dashboard's DEADLINE_EXCEEDED.
#[tokio::test]
async fn a_short_deadline_caller_does_not_fail_the_patient_ones_sharing_its_check() {
    let fake = common::kvs().await;
    // A cache of 1 ms: every poll starts a new shared check.
    let sidecar = Sidecar::start(&fake, &["--readiness-cache-ttl", "1ms"]);
    let client = sidecar.client().await;
    let slow = || common::Reply::Slow(Duration::from_millis(300), Box::new(common::Reply::Ok));
    for path in DESCRIBES {
        fake.script(path, (0..200).map(|_| slow()));
    }
    let dashboard = tokio::spawn({
        let mut client = client.clone();
        async move {
            for _ in 0..15 {
                let mut request = tonic::Request::new(check(&arn("front-door")));
                request.set_timeout(Duration::from_millis(200));
                let _ = client.check_storage_readiness(request).await;
            }
        }
    });
    let mut answered = 0;
    for _ in 0..5 {
        // Joins the dashboard's check in flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut patient = client.clone();
        let mut request = tonic::Request::new(check(&arn("front-door")));
        request.set_timeout(Duration::from_secs(5));
        let answer = patient.check_storage_readiness(request).await;
        assert!(answer.is_ok(), "a 5 s caller failed: {answer:?}");
        answered += 1;
    }
    assert_eq!(answered, 5);
    dashboard.await.unwrap();
}
