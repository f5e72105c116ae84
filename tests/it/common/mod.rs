//! Shared test harness: the sidecar binary under test, and the project's KVS
//! emulator as its upstream. Each test binary uses a different part of it.
#![allow(dead_code, unused_imports)]

pub(crate) mod sidecar;

use kvs_sidecar::pb::{
    JoinStorageSessionRequest, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tonic::transport::Channel;

pub(crate) use kvs_sidecar::emulator::{Dialect, Emulator, EmulatorCredentials, Reply};
pub(crate) use sidecar::Sidecar;

/// A master join of `arn`, the request most tests send.
pub(crate) fn join(arn: &str) -> JoinStorageSessionRequest {
    JoinStorageSessionRequest {
        channel_arn: arn.to_owned(),
        ..Default::default()
    }
}

/// The status a call was refused with, after checking its code.
#[track_caller]
pub(crate) fn assert_refused<T: std::fmt::Debug>(
    answer: Result<T, tonic::Status>,
    code: tonic::Code,
) -> tonic::Status {
    let status = answer.expect_err("the call was refused");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

pub(crate) const ARN: &str =
    "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/1700000000000";

pub(crate) fn arn(name: &str) -> String {
    format!("arn:aws:kinesisvideo:eu-central-1:123456789012:channel/{name}/1700000000000")
}

/// A fake KVS and a sidecar whose endpoint for [`ARN`] is already
/// discovered, so faults scripted on the join path meet only the call under
/// test.
pub(crate) async fn warmed(
    args: &[&str],
) -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = kvs().await;
    let sidecar = Sidecar::start(&fake, args);
    let mut client = sidecar.client().await;
    client
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: ARN.into(),
            ..Default::default()
        })
        .await
        .expect("warm-up join");
    (fake, sidecar, client)
}

/// A KVS emulator with fresh keys.
pub(crate) async fn kvs() -> Emulator {
    Emulator::start(EmulatorCredentials::generate())
        .await
        .expect("start the KVS emulator")
}

/// Whether `id` looks like a KVS request id (a UUID), as the emulator sends.
pub(crate) fn is_request_id(id: &str) -> bool {
    id.len() == 36 && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
}

/// The Python with grpcio that scripts/test prepares (`.venv`), or
/// `$KVS_SIDECAR_PYTHON`.
pub(crate) fn python() -> String {
    std::env::var("KVS_SIDECAR_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        if std::path::Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    })
}

/// The value of the metric sample written exactly as `series` (name and
/// labels as rendered) in a Prometheus text exposition.
pub(crate) fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A loopback port that nothing listens on and that the kernel will not hand
/// out on its own: it lies below the ephemeral range, so a parallel test's
/// `bind(":0")` or outgoing connection cannot take it between our check and
/// its use (a port merely bound and released can be).
pub(crate) fn unused_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low / 2);
    loop {
        let port = fastrand::u16(floor..low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` every 10 ms until it yields, for at most 10 s.
pub(crate) async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until KVS has received `n` joins in all, so the calls a test
/// started are in flight (the emulator records a request when it arrives,
/// before a scripted slow answer).
pub(crate) async fn joins_arrived(fake: &Emulator, n: usize) {
    wait_for(|| (fake.received_on("/joinStorageSession").len() >= n).then_some(())).await;
}

pub(crate) type JoinResult =
    Result<tonic::Response<kvs_sidecar::pb::JoinStorageSessionResponse>, tonic::Status>;

/// Scripts `n` joins that KVS answers after `delay`, and starts `n` joins of
/// [`ARN`] at once, each on its own task.
pub(crate) fn slow_joins(
    fake: &Emulator,
    client: &WebRtcStorageServiceClient<Channel>,
    n: usize,
    delay: std::time::Duration,
) -> Vec<tokio::task::JoinHandle<JoinResult>> {
    fake.script(
        "/joinStorageSession",
        vec![Reply::Slow(delay, Box::new(Reply::Ok)); n],
    );
    (0..n)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .join_storage_session(JoinStorageSessionRequest {
                        channel_arn: ARN.into(),
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect()
}

/// A signaling WebSocket as the tests hold it.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message on a signaling socket, as JSON, within 5 s.
pub(crate) async fn next_message(socket: &mut Socket) -> serde_json::Value {
    use tokio_stream::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
            .await
            .expect("a message within 5 s")
            .expect("the socket is open")
            .expect("a well-formed frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A process's peak resident memory so far (VmHWM), in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Replays requests the sidecar sent (service, operation, the request as
/// the emulator received it) with boto3 (tests/boto3_replay.py) against
/// `fake`, and asserts boto3 sent the same: the path, the JSON body (which
/// boto3 first validated against botocore's model), the signing service and
/// region, and the content type.
pub(crate) async fn assert_boto3_sends_the_same(
    fake: &Emulator,
    region: &str,
    ours: &[(&str, &str, kvs_sidecar::emulator::Received)],
) {
    let lines: String = ours
        .iter()
        .map(|(service, operation, request)| {
            serde_json::json!({"service": service, "operation": operation, "params": request.json()})
                .to_string()
                + "\n"
        })
        .collect();
    let before = fake.received().len();
    let keys = fake.credentials().clone();
    let (url, region) = (fake.url(), region.to_owned());
    // Off the runtime: the emulator answering boto3 runs on it.
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/boto3_replay.py"
            ))
            .args([url, region])
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env("AWS_SESSION_TOKEN", keys.session_token.as_deref().unwrap())
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_MAX_ATTEMPTS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python with boto3 (tests/requirements.txt)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<_> = fake.received().split_off(before);
    assert_eq!(theirs.len(), ours.len(), "one request each: {printed}");
    for ((_, operation, ours), theirs) in ours.iter().zip(&theirs) {
        assert_eq!(ours.path, theirs.path, "{operation}");
        assert_eq!(ours.json(), theirs.json(), "{operation}: {printed}");
        let (a, b) = (
            ours.signature.as_ref().unwrap(),
            theirs.signature.as_ref().unwrap(),
        );
        assert_eq!(
            (&a.service, &a.region),
            (&b.service, &b.region),
            "{operation}"
        );
        let content_type =
            |r: &kvs_sidecar::emulator::Received| r.headers.get("content-type").cloned();
        assert_eq!(content_type(ours), content_type(theirs), "{operation}");
    }
}
