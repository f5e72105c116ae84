//! The sidecar end to end: a tonic client calls the real binary, which
//! calls a fake KVS over loopback.

use crate::common;
use std::time::{Duration, Instant};

use crate::common::{ARN, Dialect, Emulator, EmulatorCredentials, Reply, Sidecar, arn, join};
use kvs_sidecar::pb::{JoinStorageSessionAsViewerRequest, JoinStorageSessionRequest};
use tonic::{Code, Request};
use tonic_types::StatusExt;

const DISCOVER: &str = "/getSignalingChannelEndpoint";
const JOIN: &str = "/joinStorageSession";
const VIEWER: &str = "/joinStorageSessionAsViewer";

fn viewer(arn: &str, client_id: &str) -> JoinStorageSessionAsViewerRequest {
    JoinStorageSessionAsViewerRequest {
        channel_arn: arn.to_owned(),
        client_id: client_id.to_owned(),
        ..Default::default()
    }
}

/// A refusal with `code` whose message names `field` first.
#[track_caller]
fn refused_naming<T: std::fmt::Debug>(answer: Result<T, tonic::Status>, code: Code, field: &str) {
    let status = common::assert_refused(answer, code);
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{}",
        status.message()
    );
}

/// Control plane and WEBRTC endpoint on different ports, as in AWS.
async fn two_fakes() -> (Emulator, Emulator) {
    let control = common::kvs().await;
    let webrtc = Emulator::start(control.credentials().clone())
        .await
        .unwrap();
    control.set_webrtc_endpoint(&webrtc.url());
    (control, webrtc)
}

#[tokio::test]
async fn join_sends_exact_signed_requests_for_the_channels_region() {
    let (control, webrtc) = two_fakes().await;
    // Successful calls are logged at DEBUG.
    let sidecar = Sidecar::start(&control, &["--log-level", "debug"]);
    let answer = sidecar
        .client()
        .await
        .join_storage_session(join(ARN))
        .await
        .unwrap()
        .into_inner();

    let discovery = control.received_on(DISCOVER);
    assert_eq!(discovery.len(), 1);
    assert_eq!(
        discovery[0].json(),
        serde_json::json!({
            "ChannelARN": ARN,
            "SingleMasterChannelEndpointConfiguration": {"Protocols": ["WSS", "HTTPS", "WEBRTC"], "Role": "MASTER"}
        })
    );
    let joins = webrtc.received_on(JOIN);
    assert_eq!(joins.len(), 1, "the join goes to the discovered endpoint");
    assert!(control.received_on(JOIN).is_empty());
    let j = &joins[0];
    assert_eq!(j.body, format!(r#"{{"channelArn":"{ARN}"}}"#));
    assert_eq!(j.headers["content-type"], "application/json");
    assert!(
        j.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("kvs-sidecar/")
    );
    assert_eq!(
        j.headers["x-amz-security-token"],
        control.credentials().session_token.as_deref().unwrap()
    );

    for r in discovery.iter().chain(&joins) {
        let scope = r
            .signature
            .as_ref()
            .expect("signature verifies independently");
        // The sidecar runs in us-east-1; the channel is in eu-central-1.
        assert_eq!(scope.region, "eu-central-1");
        assert_eq!(scope.service, "kinesisvideo");
        assert_eq!(scope.access_key, control.credentials().access_key_id);
    }
    let request_id = answer.aws_request_id;
    assert!(common::is_request_id(&request_id), "{request_id}");
    // The line is read from the child's output on another thread.
    let log = common::wait_for(|| sidecar.call_logs().pop()).await;
    assert_eq!(log["rpc"], "JoinStorageSession");
    assert_eq!(log["status"], "OK");
    assert_eq!(log["attempts"], 2);
    assert_eq!(log["request_id"], request_id.as_str());
    assert_eq!(log["channel"], ARN);
}

#[tokio::test]
async fn viewer_join_sends_client_id_and_discovers_as_viewer() {
    let (control, webrtc) = two_fakes().await;
    let sidecar = Sidecar::start(&control, &[]);
    sidecar
        .client()
        .await
        .join_storage_session_as_viewer(viewer(ARN, "viewer-7.a_b"))
        .await
        .unwrap();
    // A rejected request logs at INFO; once its line is out, the success
    // before it would have been too, had it logged at INFO.
    let mut client = sidecar.client().await;
    let rejected = client.join_storage_session(join("arn:nope")).await;
    assert_eq!(rejected.unwrap_err().code(), Code::InvalidArgument);
    let logs = common::wait_for(|| Some(sidecar.call_logs()).filter(|l| !l.is_empty())).await;
    assert_eq!(
        logs.len(),
        1,
        "at the default level a successful call writes no log line: {logs:?}"
    );
    assert_eq!(logs[0]["status"], "InvalidArgument");
    let discovery = control.received_on(DISCOVER);
    assert_eq!(
        discovery[0].json()["SingleMasterChannelEndpointConfiguration"]["Role"],
        "VIEWER"
    );
    let joins = webrtc.received_on(VIEWER);
    assert_eq!(joins.len(), 1);
    assert_eq!(
        joins[0].body,
        format!(r#"{{"channelArn":"{ARN}","clientId":"viewer-7.a_b"}}"#)
    );
    assert!(joins[0].signature.is_ok());
}

#[tokio::test]
async fn discovers_once_per_channel_even_for_concurrent_first_calls() {
    let (control, webrtc) = two_fakes().await;
    let sidecar = Sidecar::start(&control, &[]);
    let client = sidecar.client().await;

    for _ in 0..3 {
        client
            .clone()
            .join_storage_session(join(ARN))
            .await
            .unwrap();
    }
    assert_eq!(control.received_on(DISCOVER).len(), 1);
    assert_eq!(webrtc.received_on(JOIN).len(), 3);

    // A slow discovery, so the 50 first calls for a new channel overlap it.
    let fresh = arn("busy-lobby");
    control.script(
        DISCOVER,
        [Reply::Slow(Duration::from_millis(300), Box::new(Reply::Ok))],
    );
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            let fresh = fresh.clone();
            tokio::spawn(async move { client.join_storage_session(join(&fresh)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every concurrent call succeeds");
    }
    let discoveries: Vec<_> = control
        .received_on(DISCOVER)
        .into_iter()
        .filter(|r| r.json()["ChannelARN"] == fresh.as_str())
        .collect();
    assert_eq!(
        discoveries.len(),
        1,
        "one discovery for 50 concurrent first calls"
    );
    assert_eq!(webrtc.received_on(JOIN).len(), 53);
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        metrics.contains(r#"kvs_endpoint_cache_lookups_total{result="miss"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kvs_endpoint_cache_lookups_total{result="hit"} 51"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn maps_every_kvs_error_in_every_dialect_without_retrying_client_faults() {
    let (fake, _sidecar, client) = common::warmed(&[]).await;

    let cases = [
        (404, "ResourceNotFoundException", Code::NotFound),
        (403, "AccessDeniedException", Code::PermissionDenied),
        (400, "InvalidArgumentException", Code::InvalidArgument),
    ];
    for dialect in [Dialect::Header, Dialect::Type, Dialect::Code] {
        for (status, kvs_code, want) in cases {
            let before = fake.received_on(JOIN).len();
            fake.script(
                JOIN,
                [Reply::Error {
                    status,
                    code: kvs_code,
                    dialect,
                }],
            );
            let err = client
                .clone()
                .join_storage_session(join(ARN))
                .await
                .unwrap_err();
            assert_eq!(err.code(), want, "{kvs_code} in {dialect:?}: {err:?}");
            assert!(
                err.message().contains(&format!("emulated {kvs_code}")),
                "{}",
                err.message()
            );
            let request_id = err
                .metadata()
                .get("x-amzn-requestid")
                .expect("request id metadata");
            let details = err.get_error_details();
            assert_eq!(
                details.request_info().unwrap().request_id,
                request_id.to_str().unwrap()
            );
            assert_eq!(details.error_info().unwrap().reason, kvs_code);
            assert_eq!(
                fake.received_on(JOIN).len(),
                before + 1,
                "{kvs_code} is not retried"
            );
        }
    }
}

#[tokio::test]
async fn retries_transient_faults_up_to_the_attempt_limit() {
    let (fake, sidecar, client) = common::warmed(&["--attempt-timeout", "300ms"]).await;

    let slow_ok = || Reply::Slow(Duration::from_secs(3), Box::new(Reply::Ok));
    let cases: Vec<(Vec<Reply>, Result<(), Code>, usize)> = vec![
        // Two failures, then success on the third and last attempt.
        (
            vec![
                Reply::error(503, "ServiceUnavailable"),
                Reply::error(500, "InternalFailure"),
            ],
            Ok(()),
            3,
        ),
        (vec![Reply::Reset, Reply::error(502, "")], Ok(()), 3),
        (vec![slow_ok()], Ok(()), 2),
        (vec![Reply::error(429, "")], Ok(()), 2),
        // Three failures: the limit is reached. (The 429 above and these
        // three throttles are the 4 attempts counted as `throttling`.)
        (vec![Reply::error(504, ""); 3], Err(Code::Unavailable), 3),
        (
            vec![Reply::error(400, "ClientLimitExceededException"); 3],
            Err(Code::ResourceExhausted),
            3,
        ),
        (
            vec![Reply::Reset, Reply::Reset, Reply::Reset],
            Err(Code::Unavailable),
            3,
        ),
        (
            vec![slow_ok(), slow_ok(), slow_ok()],
            Err(Code::Unavailable),
            3,
        ),
        // 501 is not transient.
        (vec![Reply::error(501, "")], Err(Code::Unavailable), 1),
    ];
    for (replies, want, attempts) in cases {
        let label = format!("{replies:?}");
        let before = fake.received_on(JOIN).len();
        fake.script(JOIN, replies);
        let got = client.clone().join_storage_session(join(ARN)).await;
        assert_eq!(got.map(drop).map_err(|s| s.code()), want, "{label}");
        assert_eq!(fake.received_on(JOIN).len() - before, attempts, "{label}");
        // Every scripted answer was used: none leaks into the next case.
        assert_eq!(fake.scripted_left(JOIN), 0, "{label}");
    }
    let (_, metrics) = sidecar.admin_get("/metrics");
    for line in [
        r#"kvs_upstream_retries_total{operation="JoinStorageSession",reason="server_error"}"#,
        r#"kvs_upstream_retries_total{operation="JoinStorageSession",reason="throttling"}"#,
        r#"kvs_upstream_retries_total{operation="JoinStorageSession",reason="transport"}"#,
        r#"kvs_upstream_retries_total{operation="JoinStorageSession",reason="timeout"}"#,
        r#"kvs_upstream_attempts_total{operation="JoinStorageSession",outcome="throttling"} 4"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test]
async fn attempt_limit_is_configurable() {
    let (fake, _sidecar, client) = common::warmed(&["--max-attempts", "5"]).await;
    fake.script(JOIN, vec![Reply::error(503, ""); 6]);
    common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert_eq!(fake.received_on(JOIN).len(), 1 + 5);
}

#[tokio::test]
async fn discovery_faults_are_retried_and_not_cached() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let client = sidecar.client().await;
    fake.script(DISCOVER, vec![Reply::error(500, ""); 3]);
    common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert_eq!(fake.received_on(DISCOVER).len(), 3);
    assert!(fake.received_on(JOIN).is_empty());
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DISCOVER).len(), 4);
    // A channel KVS no longer knows is rediscovered on the next call.
    fake.script(JOIN, [Reply::error(404, "ResourceNotFoundException")]);
    common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::NotFound,
    );
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DISCOVER).len(), 5);
    // So is one whose endpoint kept failing through every retry.
    fake.script(JOIN, vec![Reply::error(503, ""); 3]);
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap_err();
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DISCOVER).len(), 6);
}

#[tokio::test]
async fn expired_token_forces_one_refresh_and_one_retry() {
    let (fake, sidecar, client) = common::warmed(&[]).await;

    fake.script(JOIN, [Reply::error(403, "ExpiredTokenException")]);
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .expect("retried after refresh");
    assert_eq!(fake.received_on(JOIN).len(), 3);

    // Still expired after the refresh: one retry only, then UNAVAILABLE.
    fake.script(JOIN, vec![Reply::error(403, "ExpiredTokenException"); 2]);
    common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert_eq!(fake.received_on(JOIN).len(), 5);
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        metrics.contains(r#"kvs_credential_refreshes_total{outcome="success",role="default"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_whole_call() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--attempt-timeout", "10s"]);
    let client = sidecar.unenforced_client();
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();

    fake.script(
        JOIN,
        [Reply::Slow(Duration::from_secs(5), Box::new(Reply::Ok))],
    );
    let mut req = Request::new(join(ARN));
    req.metadata_mut()
        .insert("grpc-timeout", "400m".parse().unwrap());
    let started = Instant::now();
    let err = client.clone().join_storage_session(req).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(took >= Duration::from_millis(390), "ended early: {took:?}");
    assert!(took < Duration::from_millis(2500), "ended late: {took:?}");

    // No attempt starts after the deadline: backoffs of up to 5 s cannot fit
    // in 300 ms, so only the attempts that fit are made.
    let sidecar = Sidecar::start(
        &fake,
        &["--retry-base-delay", "5s", "--retry-max-backoff", "5s"],
    );
    let client = sidecar.unenforced_client();
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    let before = fake.received_on(JOIN).len();
    fake.script(JOIN, vec![Reply::error(503, ""); 3]);
    let mut req = Request::new(join(ARN));
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let started = Instant::now();
    let err = client.clone().join_storage_session(req).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(2500));
    // A backoff that cannot fit is not waited: the answer is the last
    // error, at once, not the deadline. (Backoffs are 5 s scaled by a
    // random 0-1 jitter, so rarely a second attempt fits.)
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let attempts = fake.received_on(JOIN).len() - before;
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} attempts within a 300 ms deadline"
    );
    assert_eq!(fake.scripted_left(JOIN), 3 - attempts);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_nothing_is_sent() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let client = sidecar.client().await;
    let bad_arns = [
        "",
        "front-door",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/1700000000000\n",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front door/1",
        "arn:aws:kinesis:eu-central-1:123456789012:channel/front-door/1",
        "arn:gcp:kinesisvideo:eu-central-1:123456789012:channel/front-door/1",
        "arn:aws:kinesisvideo:EU-CENTRAL-1:123456789012:channel/front-door/1",
        "arn:aws:kinesisvideo:eu-central-1:12345678901x:channel/front-door/1",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/latest",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/1:extra",
        "arn:aws:kinesisvideo:eu-central-1:123456789012:CHANNEL/front-door/1",
        &format!(
            "arn:aws:kinesisvideo:eu-central-1:1:channel/{}/1",
            "a".repeat(1100)
        ),
    ];
    for bad in bad_arns {
        let master = client.clone().join_storage_session(join(bad)).await;
        refused_naming(master, Code::InvalidArgument, "channel_arn");
        let as_viewer = client
            .clone()
            .join_storage_session_as_viewer(viewer(bad, "v1"))
            .await;
        refused_naming(as_viewer, Code::InvalidArgument, "channel_arn");
    }
    for bad in ["", "has space", "slash/y", "ünïcode", &"x".repeat(257)] {
        let err = client
            .clone()
            .join_storage_session_as_viewer(viewer(ARN, bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            err.message().starts_with("client_id: "),
            "{}",
            err.message()
        );
    }
    assert!(
        fake.received().is_empty(),
        "nothing may reach KVS: {:?}",
        fake.received()
    );
}

#[tokio::test]
async fn a_dead_kvs_is_unavailable_after_retries() {
    // Nothing listens on this port.
    let port = common::unused_port();
    let sidecar = Sidecar::launch(
        &format!("http://127.0.0.1:{port}"),
        &EmulatorCredentials::generate(),
        &[],
        &[],
    );
    let err = common::assert_refused(
        sidecar.client().await.join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert!(
        err.message().contains("could not connect to KVS"),
        "{}",
        err.message()
    );
    let log = common::wait_for(|| sidecar.call_logs().pop()).await;
    assert_eq!(log["attempts"], 3);
}

#[tokio::test]
async fn credentials_come_from_the_container_provider_in_the_chain() {
    let fake = common::kvs().await;
    let creds_url = format!(
        "{}{}",
        fake.url(),
        kvs_sidecar::emulator::CONTAINER_CREDENTIALS_PATH
    );
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds_url),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                &fake.container_authorization_token(),
            ),
        ],
    );
    let client = sidecar.client().await;
    for _ in 0..5 {
        client
            .clone()
            .join_storage_session(join(ARN))
            .await
            .unwrap();
    }
    let joins = fake.received_on(JOIN);
    assert_eq!(
        joins[0].headers["x-amz-security-token"],
        fake.credentials().session_token.as_deref().unwrap()
    );
    assert!(joins.iter().all(|j| j.signature.is_ok()));
    assert_eq!(
        fake.credential_loads(),
        1,
        "credentials are cached, not loaded per call"
    );
}

#[tokio::test]
async fn aws_endpoint_url_also_sets_the_control_plane() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::launch(
        "http://unused.invalid",
        fake.credentials(),
        &[],
        &[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", ""),
            ("AWS_ENDPOINT_URL", &fake.url()),
        ],
    );
    sidecar
        .client()
        .await
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    assert_eq!(fake.received_on(DISCOVER).len(), 1);
}

#[tokio::test]
async fn channels_outside_the_allow_list_are_refused_before_anything_is_sent() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(
        &fake,
        &[
            "--allowed-channels",
            "arn:aws:kinesisvideo:*:999999999999:channel/*/*,arn:aws:kinesisvideo:eu-*:123456789012:channel/front-*/*",
        ],
    );
    let client = sidecar.client().await;
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    let sent = fake.received().len();
    for outside in [
        arn("lobby"),
        ARN.replace("eu-central-1", "us-east-1"),
        ARN.replace("123456789012", "123456789013"),
    ] {
        let master = client.clone().join_storage_session(join(&outside)).await;
        refused_naming(master, Code::PermissionDenied, "channel_arn");
        let as_viewer = client
            .clone()
            .join_storage_session_as_viewer(viewer(&outside, "v"))
            .await;
        common::assert_refused(as_viewer, Code::PermissionDenied);
    }
    assert_eq!(
        fake.received().len(),
        sent,
        "nothing is sent for a refused channel"
    );
}

#[test]
fn a_malformed_allow_list_stops_the_sidecar_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvs-sidecar"))
        .args(["--emulate", "--allowed-channels", "arn:aws:s3:::bucket"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not arn:PARTITION:kinesisvideo"));
}

#[tokio::test]
async fn oversized_requests_are_refused_without_reaching_kvs() {
    let (fake, _sidecar, client) = common::warmed(&["--max-request-bytes", "2048"]).await;
    let sent = fake.received().len();
    let huge = format!(
        "arn:aws:kinesisvideo:eu-central-1:1:channel/{}/1",
        "a".repeat(64 * 1024)
    );
    let err = client
        .clone()
        .join_storage_session(join(&huge))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );
    assert_eq!(fake.received().len(), sent);
    // The connection and the server are fine afterwards.
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_empty_retry_quota_makes_calls_fail_fast_with_unavailable() {
    // 12 tokens: two retries (5 each) drain it below the cost of a third.
    let (fake, sidecar, client) = common::warmed(&["--retry-quota", "12"]).await;
    fake.script(JOIN, vec![Reply::error(503, ""); 3]);
    let err = common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert!(
        !err.message().contains("retry quota"),
        "the first call may still retry"
    );

    let before = fake.received_on(JOIN).len();
    fake.script(JOIN, [Reply::error(503, "")]);
    let err = common::assert_refused(
        client.clone().join_storage_session(join(ARN)).await,
        Code::Unavailable,
    );
    assert!(
        err.message().starts_with("retry quota exhausted"),
        "{}",
        err.message()
    );
    assert_eq!(
        fake.received_on(JOIN).len() - before,
        1,
        "no retry without quota"
    );
    let tokens = |metrics: &str| common::metric(metrics, "kvs_retry_quota_tokens").unwrap();
    let (_, metrics) = sidecar.admin_get("/metrics");
    let drained = tokens(&metrics);
    assert!(drained < 5.0, "{drained} tokens left");
    assert!(
        metrics.contains(r#"kvs_retry_quota_exhausted_total{operation="JoinStorageSession"} 1"#),
        "{metrics}"
    );

    // Successes pay tokens back.
    for _ in 0..3 {
        client
            .clone()
            .join_storage_session(join(ARN))
            .await
            .unwrap();
    }
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(tokens(&metrics) >= drained + 3.0, "{metrics}");
}

#[tokio::test]
async fn the_emulator_rejects_bad_signatures_and_unknown_keys() {
    let kvs = common::kvs().await;
    let mut wrong_secret = kvs.credentials().clone();
    wrong_secret.secret_access_key.push('x');
    let unknown_key = EmulatorCredentials::generate();
    for (keys, code) in [
        (wrong_secret, "InvalidSignatureException"),
        (unknown_key, "UnrecognizedClientException"),
    ] {
        let sidecar = Sidecar::launch(&kvs.url(), &keys, &[], &[]);
        let err = sidecar
            .client()
            .await
            .join_storage_session(join(ARN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{code}");
        assert!(err.message().contains(code), "{}", err.message());
    }
}

#[tokio::test]
async fn a_skewed_clock_is_corrected_from_the_servers_date_and_remembered() {
    for offset in [3600, -900] {
        let fake = common::kvs().await;
        fake.set_clock_offset_secs(offset);
        let sidecar = Sidecar::start(&fake, &[]);
        let client = sidecar.client().await;
        client
            .clone()
            .join_storage_session(join(ARN))
            .await
            .expect("retried with the corrected clock");
        // The discovery was refused once and re-signed; the join that
        // followed already used the corrected clock.
        assert_eq!(fake.received_on(DISCOVER).len(), 2, "offset {offset}");
        assert_eq!(fake.received_on(JOIN).len(), 1, "offset {offset}");
        client
            .clone()
            .join_storage_session(join(ARN))
            .await
            .unwrap();
        assert_eq!(
            fake.received_on(JOIN).len(),
            2,
            "later calls need no correction"
        );
        let (_, metrics) = sidecar.admin_get("/metrics");
        let skew = common::metric(&metrics, "kvs_clock_skew_seconds").unwrap();
        assert!(
            (skew - offset as f64).abs() < 5.0,
            "skew {skew} for offset {offset}"
        );
    }
}

#[tokio::test]
async fn a_skew_that_persists_after_correction_is_not_retried_forever() {
    let (fake, _sidecar, client) = common::warmed(&[]).await;
    // Every answer says the time is off, even after correction.
    fake.script(JOIN, vec![Reply::error(403, "RequestTimeTooSkewed"); 3]);
    let err = client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        fake.received_on(JOIN).len(),
        1 + 2,
        "one corrected retry only"
    );
}

#[tokio::test]
async fn the_client_side_rate_limit_spreads_bursts_refuses_beyond_a_second_and_slows_down() {
    let (fake, sidecar, client) = common::warmed(&["--join-rate", "5"]).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..15)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let answer = client.join_storage_session(join(ARN)).await;
                (answer, Instant::now())
            })
        })
        .collect();
    let (mut joined, mut refused, mut last_join) = (0, 0, started);
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), at) => {
                joined += 1;
                last_join = last_join.max(at);
            }
            (Err(status), at) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("client-side rate"), "{status:?}");
                assert!(at - started < Duration::from_millis(500), "refused at once");
                refused += 1;
            }
        }
    }
    // A burst of 5 (less the warm-up join's token) goes at once, a second's
    // worth more (5) queues, spread over that second; the rest is refused
    // without waiting rather than queued behind it.
    assert!(
        (8..=11).contains(&joined),
        "{joined} joined, {refused} refused"
    );
    assert!(
        last_join - started >= Duration::from_millis(700),
        "{:?}",
        last_join - started
    );
    let (_, metrics) = sidecar.admin_get("/metrics");
    let delayed = common::metric(
        &metrics,
        r#"kvs_rate_limited_total{operation="JoinStorageSession"}"#,
    )
    .unwrap();
    assert!(delayed >= 4.0, "{delayed} calls delayed locally");
    let refused_metric = common::metric(
        &metrics,
        r#"kvs_rate_limit_refused_total{operation="JoinStorageSession"}"#,
    )
    .unwrap();
    assert_eq!(refused_metric, f64::from(refused));
    // Let the bucket fill again before the throttling part.
    tokio::time::sleep(Duration::from_secs(2)).await;

    fake.script(JOIN, [Reply::error(400, "ClientLimitExceededException")]);
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    let (_, metrics) = sidecar.admin_get("/metrics");
    let rate = common::metric(
        &metrics,
        r#"kvs_rate_limit_per_second{operation="JoinStorageSession"}"#,
    )
    .unwrap();
    assert!(rate < 4.0, "the rate adapted down after throttling: {rate}");
}

#[tokio::test]
async fn a_burst_reuses_its_connections_to_kvs() {
    // 150 calls in flight at once need 150 connections; the next burst of
    // the same size finds them all pooled instead of reconnecting (which
    // against AWS is a TLS handshake each).
    let (fake, _sidecar, client) = common::warmed(&[]).await;
    let burst = || {
        let calls = common::slow_joins(&fake, &client, 150, Duration::from_millis(300));
        async move {
            for call in calls {
                call.await.unwrap().expect("a join in the burst");
            }
        }
    };
    burst().await;
    let after_first = fake.connections();
    assert!(
        after_first >= 150,
        "{after_first} connections for 150 calls in flight"
    );
    burst().await;
    let opened = fake.connections() - after_first;
    assert!(
        opened <= 5,
        "the second burst opened {opened} new connections"
    );
}

/// With `--no-join-retry-after-send`, a join that may have reached KVS (and
/// so made it send an offer) is never retried; one that cannot have reached
/// it still is.
#[tokio::test]
async fn joins_that_may_have_sent_an_offer_are_not_retried_when_asked() {
    let (fake, sidecar, client) = common::warmed(&["--no-join-retry-after-send"]).await;
    let cases: Vec<(Vec<Reply>, Result<(), Code>, usize)> = vec![
        // May have reached KVS: one attempt only.
        (
            vec![Reply::error(503, "ServiceUnavailable")],
            Err(Code::Unavailable),
            1,
        ),
        (vec![Reply::Reset], Err(Code::Unavailable), 1),
        // Refused before KVS acted: retried as usual.
        (
            vec![Reply::error(400, "ClientLimitExceededException")],
            Ok(()),
            2,
        ),
    ];
    for (replies, want, attempts) in cases {
        let label = format!("{replies:?}");
        let before = fake.received_on(JOIN).len();
        fake.script(JOIN, replies);
        let got = client.clone().join_storage_session(join(ARN)).await;
        assert_eq!(got.map(drop).map_err(|s| s.code()), want, "{label}");
        assert_eq!(fake.received_on(JOIN).len() - before, attempts, "{label}");
    }
    // A channel whose endpoint refuses connections: nothing was written, so
    // every attempt is made.
    let other = common::arn("refusing");
    fake.set_webrtc_endpoint(&format!("http://127.0.0.1:{}", common::unused_port()));
    let err = client
        .clone()
        .join_storage_session(join(&other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        metrics.contains(
            r#"kvs_upstream_attempts_total{operation="JoinStorageSession",outcome="connect_error"} 3"#
        ),
        "{metrics}"
    );
}

fn keyed(arn: &str, key: &str) -> JoinStorageSessionRequest {
    JoinStorageSessionRequest {
        channel_arn: arn.to_owned(),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test]
async fn an_idempotency_key_makes_a_repeated_join_send_nothing() {
    let (fake, sidecar, client) = common::warmed(&[]).await;
    let joins = || fake.received_on(JOIN).len();
    let before = joins();
    let first = client
        .clone()
        .join_storage_session(keyed(ARN, "order-42"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .clone()
        .join_storage_session(keyed(ARN, "order-42"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.aws_request_id, again.aws_request_id);
    assert_eq!(joins() - before, 1, "one join reached KVS");

    // A repeat while the first is in flight waits for it.
    let before = joins();
    fake.script(
        JOIN,
        [Reply::Slow(Duration::from_millis(400), Box::new(Reply::Ok))],
    );
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.join_storage_session(keyed(ARN, "slow-1")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().unwrap().into_inner().aws_request_id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    assert_eq!(joins() - before, 1, "one join for three calls");

    // The first call's error is the answer too.
    fake.script(JOIN, [Reply::error(404, "ResourceNotFoundException")]);
    let failed = client
        .clone()
        .join_storage_session(keyed(ARN, "gone-1"))
        .await
        .unwrap_err();
    let replayed = client
        .clone()
        .join_storage_session(keyed(ARN, "gone-1"))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::NotFound);
    assert_eq!(replayed.code(), Code::NotFound);
    assert_eq!(failed.message(), replayed.message());

    // The same key for another channel, and a malformed key, are refused
    // with nothing sent.
    let before = joins();
    for (key, channel) in [
        ("order-42", common::arn("elsewhere")),
        ("bad key!", ARN.to_owned()),
    ] {
        let err = client
            .clone()
            .join_storage_session(keyed(&channel, key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("idempotency_key: "), "{err:?}");
    }
    assert_eq!(joins(), before);
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert_eq!(
        common::metric(&metrics, "kvs_sidecar_idempotent_replays_total"),
        Some(4.0)
    );
}

/// Issue 22, finding 7: what a broken or hostile KVS answers is bounded
/// where it is parsed. A 60 KB request id is not kept (nor replayed to
/// every caller of its idempotency key), a 30 KB error code does not reach
/// the caller's trailers, and a 20 KB endpoint URL is refused, not cached.
#[tokio::test]
async fn oversized_request_ids_error_codes_and_endpoints_are_not_kept() {
    let (fake, _sidecar, mut client) = common::warmed(&[]).await;
    let huge = |n: usize| "a".repeat(n);

    fake.script(
        JOIN,
        [Reply::Raw {
            status: 200,
            headers: vec![
                ("x-amzn-RequestId".into(), huge(60_000)),
                ("content-type".into(), "application/json".into()),
            ],
            body: "{}".into(),
        }],
    );
    let keyed = JoinStorageSessionRequest {
        channel_arn: ARN.into(),
        idempotency_key: "huge-request-id".into(),
    };
    let answer = client.join_storage_session(keyed.clone()).await.unwrap();
    assert_eq!(
        answer.into_inner().aws_request_id,
        "",
        "not an AWS request id"
    );
    let replayed = client.join_storage_session(keyed).await.unwrap();
    assert_eq!(replayed.into_inner().aws_request_id, "");

    fake.script(
        JOIN,
        [Reply::Raw {
            status: 400,
            headers: vec![("x-amzn-ErrorType".into(), huge(30_000))],
            body: r#"{"message":"refused"}"#.into(),
        }],
    );
    let refused = client.join_storage_session(join(ARN)).await.unwrap_err();
    let details = format!("{:?}", refused.metadata());
    assert!(
        refused.message().len() < 1_024 && details.len() < 4_096,
        "{} bytes of message, {} of metadata",
        refused.message().len(),
        details.len()
    );
    assert!(!refused.message().contains(&huge(100)), "{refused:?}");

    fake.set_webrtc_endpoint(&format!("http://{}/{}", fake.addr(), huge(20_000)));
    let other = arn("long-endpoint");
    let refused = client.join_storage_session(join(&other)).await.unwrap_err();
    assert!(refused.message().len() < 1_024, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("past the 512 an endpoint URL may have"),
        "{refused:?}"
    );
    // Nothing was cached: with a sane endpoint the channel is discovered
    // again and joined.
    fake.set_webrtc_endpoint(&fake.url());
    let discoveries = fake.received_on(DISCOVER).len();
    client.join_storage_session(join(&other)).await.unwrap();
    assert_eq!(fake.received_on(DISCOVER).len(), discoveries + 1);
}
