//! Serving concerns: health, reflection, admin endpoints, metrics, secrets,
//! graceful shutdown, and a client in another language.

use crate::common;
use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::common::{ARN, Reply, Sidecar, join};
use kvs_sidecar::pb::{
    GetPlaybackUrlRequest, GetSignalingConnectionRequest, PlaybackProtocol, SignalingRole,
};
use tokio_stream::StreamExt;
use tonic::Code;

const JOIN: &str = "/joinStorageSession";

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let mut health = HealthClient::new(sidecar.channel().await);
    for service in ["", "kvs.webrtcstorage.v1.WebRtcStorageService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    // The admin port answers the same health service, for kubelet's probes.
    let admin = tonic::transport::Channel::from_shared(format!("http://{}", sidecar.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let on_admin = HealthClient::new(admin)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_admin.status(), ServingStatus::Serving);
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_and_describes_the_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let channel = sidecar.channel().await;

    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = tokio_stream::iter([
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "kvs.webrtcstorage.v1.WebRtcStorageService".into(),
                ),
            ),
        },
    ]);
    let mut answers = v1_client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "kvs.webrtcstorage.v1.WebRtcStorageService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
        &files.file_descriptor_proto[0][..],
    )
    .unwrap();
    assert_eq!(file.package(), "kvs.webrtcstorage.v1");
    let methods: Vec<_> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "JoinStorageSession",
            "JoinStorageSessionAsViewer",
            "MaintainStorageSession",
            "GetSignalingConnection",
            "CheckStorageReadiness",
            "GetRecordingStatus",
            "WatchRecording",
            "EnsureStorage",
            "GetPlaybackUrl"
        ]
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "kvs.webrtcstorage.v1.WebRtcStorageService")
    );
}

#[tokio::test]
async fn admin_serves_metrics_readyz_and_livez() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    assert_eq!(sidecar.admin_get("/readyz"), (200, "ready\n".into()));
    assert_eq!(sidecar.admin_get("/livez"), (200, "ok\n".into()));
    assert_eq!(sidecar.admin_get("/nope").0, 404);

    let mut client = sidecar.client().await;
    client.join_storage_session(join(ARN)).await.unwrap();
    client.join_storage_session(join(ARN)).await.unwrap();
    client.join_storage_session(join("bad")).await.unwrap_err();
    let (status, metrics) = sidecar.admin_get("/metrics");
    assert_eq!(status, 200);
    let svc = ("grpc_service", "kvs.webrtcstorage.v1.WebRtcStorageService");
    let method = ("grpc_method", "JoinStorageSession");
    assert_eq!(
        sample(&metrics, "grpc_server_started_total", &[svc, method]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "grpc_server_handled_total",
            &[svc, method, ("grpc_code", "OK")]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "grpc_server_handled_total",
            &[svc, method, ("grpc_code", "InvalidArgument")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "grpc_server_handling_seconds_count",
            &[svc, method]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "grpc_server_handling_seconds_bucket",
            &[svc, method, ("le", "+Inf")]
        ),
        Some(3.0)
    );
    let attempts = |op| {
        sample(
            &metrics,
            "kvs_upstream_attempts_total",
            &[("operation", op), ("outcome", "success")],
        )
    };
    assert_eq!(attempts("GetSignalingChannelEndpoint"), Some(1.0));
    assert_eq!(attempts("JoinStorageSession"), Some(2.0));
    assert!(metrics.contains("# HELP grpc_server_handled_total"));
    assert!(metrics.contains("# TYPE kvs_upstream_attempt_duration_seconds histogram"));
}

#[tokio::test]
async fn secrets_never_reach_logs_or_metrics_even_at_trace_level() {
    let fake = common::kvs().await;
    // Media recorded and listed at once, for playback URLs.
    fake.set_fragment_length(Duration::from_millis(100));
    fake.set_listing_delay(Duration::ZERO);
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--log-level", "trace"],
        &[("RUST_LOG", "trace,aws_sigv4=trace")],
    );
    let mut client = sidecar.client().await;
    client.join_storage_session(join(ARN)).await.unwrap();
    fake.script(
        JOIN,
        [
            Reply::error(403, "ExpiredTokenException"),
            Reply::error(403, "AccessDeniedException"),
        ],
    );
    client.join_storage_session(join(ARN)).await.unwrap_err();
    fake.script(JOIN, [Reply::Reset, Reply::error(500, "")]);
    client.join_storage_session(join(ARN)).await.unwrap();
    // Signaling connections: the presigned URL's signature and the TURN
    // passwords are secrets too (the token in the URL is scanned above).
    let mut signaling_secrets = Vec::new();
    for (role, client_id) in [(SignalingRole::Master, ""), (SignalingRole::Viewer, "v-1")] {
        let answer = client
            .get_signaling_connection(GetSignalingConnectionRequest {
                channel_arn: ARN.into(),
                role: role as i32,
                client_id: client_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let signature = answer
            .websocket_url
            .split("X-Amz-Signature=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .expect("a presigned URL")
            .to_owned();
        signaling_secrets.push(signature);
        for server in answer
            .ice_servers
            .iter()
            .filter(|s| !s.credential.is_empty())
        {
            signaling_secrets.push(server.credential.clone());
        }
    }
    assert_eq!(
        signaling_secrets.len(),
        4,
        "two signatures, two TURN passwords"
    );
    // Playback URLs: their session token is a credential for the stream.
    common::wait_for(|| (!fake.recorded_fragments(ARN).is_empty()).then_some(())).await;
    for protocol in [PlaybackProtocol::Hls, PlaybackProtocol::Dash] {
        let answer = client
            .get_playback_url(GetPlaybackUrlRequest {
                channel_arn: ARN.into(),
                protocol: protocol as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let token = answer.url.split("SessionToken=").nth(1).expect("a token");
        signaling_secrets.push(token.to_owned());
    }
    let (_, metrics) = sidecar.admin_get("/metrics");
    // A rejected call logs one line at INFO; once it is out, every line
    // written before it has been read too.
    client
        .join_storage_session(join("arn:nope"))
        .await
        .unwrap_err();
    common::wait_for(|| {
        sidecar
            .call_logs()
            .iter()
            .any(|l| l["status"] == "InvalidArgument")
            .then_some(())
    })
    .await;

    let output = sidecar.output();
    assert!(
        output.len() > 50,
        "trace logging is on: {} lines",
        output.len()
    );
    let keys = fake.credentials();
    for secret in [
        &keys.secret_access_key,
        keys.session_token.as_ref().unwrap(),
    ]
    .into_iter()
    .chain(&signaling_secrets)
    {
        for line in output.iter().chain([&metrics]) {
            assert!(!line.contains(secret), "a secret leaked: {line}");
        }
    }
}

/// AWS answers a signature that does not verify with the canonical request
/// it expected, every signed header included (the session token among
/// them); the emulator does the same. None of it may reach the caller, a log
/// line at any level, or the metrics.
#[tokio::test]
async fn kvs_text_echoing_the_session_token_reaches_no_caller_log_or_metric() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--log-level", "trace"],
        &[
            ("RUST_LOG", "trace"),
            // The right key id and token with the wrong secret: KVS knows
            // who is calling, but the signature does not verify.
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY",
            ),
        ],
    );
    let mut client = sidecar.client().await;
    let token = fake.credentials().session_token.clone().unwrap();
    let status = client.join_storage_session(join(ARN)).await.unwrap_err();
    let answered = fake.received();
    let refusal = answered
        .last()
        .and_then(|r| r.signature.clone().err())
        .expect("the emulator refused the signature");
    assert!(
        refusal.contains(&token) && refusal.contains("Canonical String"),
        "the emulator's answer echoes the token, as AWS's does: {refusal}"
    );

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("InvalidSignatureException"),
        "{status:?}"
    );
    let (_, metrics) = sidecar.admin_get("/metrics");
    // The call's own line comes last; once it is read, so is the rest.
    common::wait_for(|| {
        sidecar
            .call_logs()
            .iter()
            .any(|l| l["status"] == "Unavailable")
            .then_some(())
    })
    .await;
    let output = sidecar.output();
    let details = String::from_utf8_lossy(status.details()).into_owned();
    let metadata = format!("{:?}", status.metadata());
    for (place, text) in [
        ("status message", status.message()),
        ("status details", details.as_str()),
        ("status metadata", metadata.as_str()),
        ("metrics", metrics.as_str()),
    ]
    .into_iter()
    .chain(output.iter().map(|l| ("log", l.as_str())))
    {
        assert!(
            !text.contains(&token),
            "the session token reached the {place}: {text}"
        );
        assert!(
            !text.contains("Canonical String"),
            "KVS's canonical request reached the {place}: {text}"
        );
    }
}

/// A caller that sends bad or refused requests as fast as it can gets a few
/// log lines a second, none of them echoing its input.
#[tokio::test]
async fn rejected_and_refused_calls_cannot_amplify_the_log() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(
        &fake,
        &[
            "--allowed-channels",
            "arn:aws:kinesisvideo:*:123456789012:channel/allowed-*/*",
        ],
    );
    let mut client = sidecar.client().await;
    let marker = "RejectedInputMarker";
    let started = Instant::now();
    for i in 0..300 {
        let bad = format!("arn:aws:kinesisvideo:eu-central-1:123456789012:channel/{marker}!{i}/1");
        common::assert_refused(
            client.join_storage_session(join(&bad)).await,
            Code::InvalidArgument,
        );
        let refused = common::arn(&format!("refused-{i}"));
        common::assert_refused(
            client.join_storage_session(join(&refused)).await,
            Code::PermissionDenied,
        );
    }
    let seconds = started.elapsed().as_secs() + 1;
    // The last call's line (refused, at WARN) is the marker that the rest
    // has been read; the budget may have left it out, so a last rejected
    // call a second later makes sure one line comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .join_storage_session(join(&common::arn("refused-last")))
        .await
        .unwrap_err();
    common::wait_for(|| {
        sidecar
            .output()
            .iter()
            .any(|l| l.contains("refused-last"))
            .then_some(())
    })
    .await;
    let seconds = seconds + 1;
    let output = sidecar.output();
    assert!(
        output.iter().all(|l| !l.contains(marker)),
        "a rejected value was logged"
    );
    let rejected: Vec<_> = output
        .iter()
        .filter(|l| l.contains(r#""reason":"bad_channel_name""#))
        .collect();
    let refused: Vec<_> = output.iter().filter(|l| l.contains("refused-")).collect();
    println!(
        "600 bad calls in {seconds} s: {} lines for rejected input, {} for refused channels",
        rejected.len(),
        refused.len()
    );
    for (kind, lines) in [("rejected", &rejected), ("refused", &refused)] {
        assert!(!lines.is_empty(), "no {kind} line at all");
        assert!(
            lines.len() as u64 <= 6 * seconds,
            "{} {kind} lines in {seconds} s",
            lines.len()
        );
    }
    for line in refused {
        assert_eq!(line.matches("refused-").count(), 1, "logged twice: {line}");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let (fake, mut sidecar, client) = common::warmed(&[]).await;

    let before = fake.received_on(JOIN).len();
    let in_flight = common::slow_joins(&fake, &client, 1, Duration::from_millis(1500))
        .pop()
        .unwrap();
    // The join is in flight once the emulator has it.
    common::joins_arrived(&fake, before + 1).await;
    sidecar.signal("TERM");

    let until = Instant::now() + Duration::from_secs(1);
    while sidecar.admin_get("/readyz").0 != 503 {
        assert!(Instant::now() < until, "readyz did not turn 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections are refused once draining has begun.
    let grpc = sidecar.grpc;
    let refused = tokio::time::timeout(Duration::from_secs(2), async move {
        loop {
            if tokio::net::TcpStream::connect(grpc).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the gRPC port still accepts connections while draining"
    );

    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert!(common::is_request_id(&answer.into_inner().aws_request_id));
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    // Output is read on other threads; give them time to catch up.
    common::wait_for(|| {
        sidecar
            .output()
            .iter()
            .any(|l| l.contains("\"stopped\""))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_with_calls_past_the_grace_period_still_exits_zero_in_time() {
    let (fake, mut sidecar, mut client) = common::warmed(&["--shutdown-grace", "500ms"]).await;
    fake.script(
        JOIN,
        [Reply::Slow(Duration::from_secs(20), Box::new(Reply::Ok))],
    );
    let before = fake.received_on(JOIN).len();
    let stuck = tokio::spawn(async move { client.join_storage_session(join(ARN)).await });
    common::joins_arrived(&fake, before + 1).await;
    let started = Instant::now();
    sidecar.signal("INT");
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        stuck.await.unwrap().is_err(),
        "the cut-off call gets an error, not a hang"
    );
}

#[tokio::test]
async fn a_python_grpcio_backend_can_call_the_sidecar() {
    let python = common::python();
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    // Join 1 (OK), join 2 (slow: the client's 300 ms deadline), join 3 (404).
    fake.script(
        JOIN,
        [
            Reply::Ok,
            Reply::Slow(Duration::from_secs(3), Box::new(Reply::Ok)),
            Reply::error(404, "ResourceNotFoundException"),
        ],
    );
    let grpc = sidecar.grpc.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/client.py"
            ))
            .args([grpc.as_str(), ARN])
            .output()
            .unwrap_or_else(|e| panic!("run {python}: {e} (run scripts/test, which sets up .venv)"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
    assert_eq!(fake.received_on(JOIN).len(), 3);
    assert_eq!(fake.received_on("/joinStorageSessionAsViewer").len(), 1);
}

#[tokio::test]
async fn a_python_grpcio_backend_can_call_over_the_unix_socket() {
    let python = common::python();
    let dir = std::env::temp_dir().join(format!("kvs-sidecar-py-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kvs.sock").display().to_string();
    let fake = common::kvs().await;
    let _sidecar = Sidecar::start(&fake, &["--grpc-listen-unix", &path]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/unix_socket.py"
            ))
            .args([path.as_str(), ARN])
            .output()
            .unwrap_or_else(|e| panic!("run {python}: {e} (run scripts/test, which sets up .venv)"))
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python unix socket client: ok"));
    assert_eq!(fake.received_on(JOIN).len(), 1);
}

#[tokio::test]
async fn emulate_mode_needs_no_aws_account_and_shows_the_error_paths() {
    let sidecar = Sidecar::emulated(&[]);
    let mut client = sidecar.client().await;
    let ok = client
        .join_storage_session(join(ARN))
        .await
        .unwrap()
        .into_inner();
    assert!(common::is_request_id(&ok.aws_request_id));
    let viewer = kvs_sidecar::pb::JoinStorageSessionAsViewerRequest {
        channel_arn: ARN.into(),
        client_id: "demo-viewer".into(),
        ..Default::default()
    };
    client.join_storage_session_as_viewer(viewer).await.unwrap();
    let missing = client
        .join_storage_session(join(&common::arn("missing-cam")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let denied = client
        .join_storage_session(join(&common::arn("denied-cam")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("not authorized"),
        "{}",
        denied.message()
    );
    // Output is read on other threads; give them time to catch up.
    common::wait_for(|| {
        sidecar
            .output()
            .iter()
            .any(|l| l.contains("try: grpcurl"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_shed_at_once_and_health_still_answers() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let (fake, sidecar, client) = common::warmed(&["--max-concurrent-calls", "2"]).await;
    let before = fake.received_on(JOIN).len();
    let slow = common::slow_joins(&fake, &client, 2, Duration::from_secs(4));
    common::joins_arrived(&fake, before + 2).await;

    // Shed, not queued: a queued call would be served (OK) once a slow
    // one ended, so a refusal is the proof; no stopwatch needed.
    for _ in 0..20 {
        let err = common::assert_refused(
            client.clone().join_storage_session(join(ARN)).await,
            Code::ResourceExhausted,
        );
        assert!(
            err.message().contains("limit of 2 calls"),
            "{}",
            err.message()
        );
    }
    let health = HealthClient::new(sidecar.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    for call in slow {
        call.await.unwrap().expect("admitted calls complete");
    }
    client
        .clone()
        .join_storage_session(join(ARN))
        .await
        .expect("slots free up again");
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        metrics.contains("kvs_sidecar_calls_shed_total 20"),
        "{metrics}"
    );
}

#[tokio::test]
async fn serves_grpc_on_a_private_unix_socket_too() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kvs-sidecar-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kvs.sock");
    let path_arg = path.display().to_string();
    let mut sidecar = Sidecar::emulated(&["--grpc-listen-unix", &path_arg]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only the sidecar's user may connect");

    let socket = path.clone();
    let channel = tonic::transport::Endpoint::from_static("http://unix.socket")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let answer =
        kvs_sidecar::pb::web_rtc_storage_service_client::WebRtcStorageServiceClient::new(channel)
            .join_storage_session(join(ARN))
            .await
            .unwrap();
    assert!(common::is_request_id(&answer.into_inner().aws_request_id));

    sidecar.signal("TERM");
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    assert!(!path.exists(), "the socket is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}
