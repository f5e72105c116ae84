//! OpenTelemetry traces, end to end: the real binary against the KVS
//! emulator, exporting over OTLP/gRPC to a real receiver on loopback (the
//! `opentelemetry-proto` package's generated TraceService, in
//! tests/python/otlp_receiver.py).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use crate::common::{ARN, Emulator, Reply, Sidecar, is_request_id, kvs, python, wait_for};
use kvs_sidecar::pb::{GetSignalingConnectionRequest, JoinStorageSessionRequest, SignalingRole};
use serde_json::Value;

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const STATUS_ERROR: i64 = 2;
/// A header for the exporter: it must reach the receiver, and its value
/// must never be printed by the sidecar.
const SECRET: &str = "s3cr3t-exporter-token";

/// The receiver process and the spans it printed.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otlp_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver's first line").unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected receiver line {first:?}"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Self { child, port, spans }
    }

    /// The environment that points a sidecar at this receiver. Batches go
    /// out every 100 ms, so the test waits on spans, not on a timer.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            ("OTEL_SERVICE_NAME".into(), "sidecar-under-test".into()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS".into(),
                format!("x-collector-token={SECRET}"),
            ),
            ("RUST_LOG".into(), "info,kvs_sidecar=debug".into()),
        ]
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_traced(fake: &Emulator, receiver: &Receiver) -> Sidecar {
    start_traced_with(fake, receiver, &[])
}

/// As `start_traced`, with `extra` variables replacing the receiver's.
fn start_traced_with(fake: &Emulator, receiver: &Receiver, extra: &[(&str, &str)]) -> Sidecar {
    let env = receiver.env();
    let mut env: Vec<_> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .collect();
    env.extend_from_slice(extra);
    Sidecar::start_with_env(fake, &[], &env)
}

/// A caller's trace context: (trace id, parent span id).
fn caller_trace() -> (String, String) {
    let hex = |n: usize| {
        (0..n)
            .map(|_| format!("{:x}", fastrand::u8(0..16)))
            .collect::<String>()
    };
    (hex(32), hex(16))
}

/// A join of [`ARN`] sent with the caller's `traceparent` and a
/// `tracestate`.
async fn traced_join(sidecar: &Sidecar, (trace, parent): &(String, String)) -> String {
    let mut client = sidecar.client().await;
    let mut request = tonic::Request::new(JoinStorageSessionRequest {
        channel_arn: ARN.into(),
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    metadata.insert("tracestate", "caller=1".parse().unwrap());
    client
        .join_storage_session(request)
        .await
        .expect("join")
        .into_inner()
        .aws_request_id
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// The spans of one trace once `done` holds for them.
async fn trace_spans(
    receiver: &Receiver,
    trace: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(|| {
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect();
        done(&spans).then_some(spans)
    })
    .await
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// Trace headers the caller sent must never reach KVS: they would be
/// signed into (or break) the SigV4 request.
fn assert_no_trace_headers_reached_kvs(fake: &Emulator) {
    let received = fake.received();
    assert!(!received.is_empty());
    for request in received {
        for header in ["traceparent", "tracestate", "baggage"] {
            assert!(
                !request.headers.contains_key(header),
                "{header} reached KVS on {}",
                request.path
            );
        }
        assert!(request.signature.is_ok(), "{:?}", request.signature);
    }
}

#[tokio::test]
async fn a_call_continues_the_callers_trace_with_discovery_and_attempt_spans() {
    let receiver = Receiver::start();
    let fake = kvs().await;
    let sidecar = start_traced(&fake, &receiver);
    let caller = caller_trace();
    let request_id = traced_join(&sidecar, &caller).await;
    let (trace, parent) = &caller;

    let spans = trace_spans(&receiver, trace, |s| {
        [
            "JoinStorageSession",
            "endpoint_discovery",
            "GetSignalingChannelEndpoint",
        ]
        .iter()
        .all(|name| !named(s, name).is_empty())
            && named(s, "JoinStorageSession").len() == 2
    })
    .await;

    // The server span continues the caller's trace.
    let server = *named(&spans, "JoinStorageSession")
        .iter()
        .find(|s| s["kind"] == SERVER)
        .expect("a server span");
    assert_eq!(&server["parent_span_id"], parent);
    assert_eq!(server["service_name"], "sidecar-under-test");
    assert_eq!(attr(server, "rpc.system"), "grpc");
    assert_eq!(
        attr(server, "rpc.service"),
        "kvs.webrtcstorage.v1.WebRtcStorageService"
    );
    assert_eq!(attr(server, "rpc.method"), "JoinStorageSession");
    assert_eq!(attr(server, "channel"), ARN);
    assert_eq!(attr(server, "rpc.grpc.status_code"), 0);
    let server_id = server["span_id"].as_str().unwrap();

    // Discovery is a child of the call, its one attempt a child of it.
    let discovery = named(&spans, "endpoint_discovery")[0];
    assert_eq!(discovery["parent_span_id"], server_id);
    assert_eq!(attr(discovery, "cache.hit"), false);
    let discover = named(&spans, "GetSignalingChannelEndpoint");
    assert_eq!(discover.len(), 1);
    let discover = discover[0];
    assert_eq!(discover["parent_span_id"], discovery["span_id"]);
    assert_eq!(discover["kind"], CLIENT);
    assert_eq!(attr(discover, "kvs.attempt"), 1);
    assert_eq!(attr(discover, "http.response.status_code"), 200);
    assert!(is_request_id(
        attr(discover, "aws.request_id").as_str().unwrap()
    ));
    assert_eq!(attr(discover, "server.address"), "127.0.0.1");

    // The join's attempt is a child of the call, with KVS's request id.
    let join = *named(&spans, "JoinStorageSession")
        .iter()
        .find(|s| s["kind"] == CLIENT)
        .expect("a join attempt span");
    assert_eq!(join["parent_span_id"], server_id);
    assert_eq!(attr(join, "rpc.method"), "JoinStorageSession");
    assert_eq!(attr(join, "kvs.attempt"), 1);
    assert_eq!(attr(join, "kvs.retry_reason"), &Value::Null);
    assert_eq!(attr(join, "http.response.status_code"), 200);
    assert_eq!(attr(join, "aws.request_id"), &Value::String(request_id));
    assert_eq!(attr(join, "server.address"), "127.0.0.1");

    // A second call finds the endpoint cached: no discovery attempt.
    let second = caller_trace();
    traced_join(&sidecar, &second).await;
    let spans = trace_spans(&receiver, &second.0, |s| {
        named(s, "JoinStorageSession").len() == 2 && !named(s, "endpoint_discovery").is_empty()
    })
    .await;
    assert_eq!(
        attr(named(&spans, "endpoint_discovery")[0], "cache.hit"),
        true
    );
    assert!(named(&spans, "GetSignalingChannelEndpoint").is_empty());

    // The call's log line carries the server span's ids.
    let line = wait_for(|| {
        sidecar
            .call_logs()
            .into_iter()
            .find(|l| l["trace_id"] == *trace)
    })
    .await;
    assert_eq!(line["span_id"], server_id);

    assert_no_trace_headers_reached_kvs(&fake);
    // The exporter sent its header; the sidecar never printed the value.
    assert_eq!(server["metadata"]["x-collector-token"], SECRET);
    let output = sidecar.output();
    assert!(output.iter().any(|l| l.contains("traces on")));
    assert!(!output.iter().any(|l| l.contains(SECRET)));
}

#[tokio::test]
async fn a_retried_call_shows_one_span_per_attempt() {
    let receiver = Receiver::start();
    let fake = kvs().await;
    let sidecar = start_traced(&fake, &receiver);
    fake.script(
        "/joinStorageSession",
        [Reply::error(503, "ServiceUnavailable")],
    );
    let caller = caller_trace();
    let request_id = traced_join(&sidecar, &caller).await;

    let spans = trace_spans(&receiver, &caller.0, |s| {
        named(s, "JoinStorageSession").len() == 3
    })
    .await;
    let server = *named(&spans, "JoinStorageSession")
        .iter()
        .find(|s| s["kind"] == SERVER)
        .unwrap();
    assert_eq!(attr(server, "rpc.grpc.status_code"), 0);
    let mut attempts: Vec<_> = named(&spans, "JoinStorageSession")
        .into_iter()
        .filter(|s| s["kind"] == CLIENT)
        .collect();
    attempts.sort_by_key(|s| attr(s, "kvs.attempt").as_i64());
    let [first, second] = attempts[..] else {
        panic!("two attempts: {attempts:#?}")
    };
    for attempt in [first, second] {
        assert_eq!(attempt["parent_span_id"], server["span_id"]);
    }
    assert_eq!(attr(first, "kvs.attempt"), 1);
    assert_eq!(attr(first, "http.response.status_code"), 503);
    assert_eq!(attr(first, "error.type"), "server_error");
    assert_eq!(first["status_code"], STATUS_ERROR);
    assert!(is_request_id(
        attr(first, "aws.request_id").as_str().unwrap()
    ));
    assert_eq!(attr(second, "kvs.attempt"), 2);
    assert_eq!(attr(second, "kvs.retry_reason"), "server_error");
    assert_eq!(attr(second, "http.response.status_code"), 200);
    assert_eq!(attr(second, "aws.request_id"), &Value::String(request_id));
    assert_no_trace_headers_reached_kvs(&fake);
}

#[tokio::test]
async fn spans_still_buffered_are_sent_on_sigterm() {
    let receiver = Receiver::start();
    let fake = kvs().await;
    // Batches would go out every ten minutes: only the shutdown sends these.
    let mut sidecar = start_traced_with(&fake, &receiver, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    let caller = caller_trace();
    traced_join(&sidecar, &caller).await;
    assert!(receiver.spans().is_empty());
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(std::time::Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    let spans = trace_spans(&receiver, &caller.0, |s| {
        named(s, "JoinStorageSession").len() == 2
    })
    .await;
    assert!(!named(&spans, "GetSignalingChannelEndpoint").is_empty());
}

#[tokio::test]
async fn spans_hold_no_keys_tokens_signatures_or_turn_passwords() {
    let receiver = Receiver::start();
    let fake = kvs().await;
    let sidecar = start_traced(&fake, &receiver);
    let caller = caller_trace();
    traced_join(&sidecar, &caller).await;
    let mut client = sidecar.client().await;
    let mut request = tonic::Request::new(GetSignalingConnectionRequest {
        channel_arn: ARN.into(),
        role: SignalingRole::Master as i32,
        client_id: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{}-{}-01", caller.0, caller.1).parse().unwrap(),
    );
    let connection = client
        .get_signaling_connection(request)
        .await
        .expect("a signaling connection")
        .into_inner();

    let spans = trace_spans(&receiver, &caller.0, |s| {
        !named(s, "GetSignalingConnection").is_empty() && !named(s, "GetIceServerConfig").is_empty()
    })
    .await;
    let signature = connection
        .websocket_url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("X-Amz-Signature="))
        .expect("a presigned URL");
    let keys = fake.credentials();
    let mut secrets = vec![
        keys.secret_access_key.clone(),
        keys.session_token.clone().expect("a session token"),
        signature.to_owned(),
        connection.websocket_url.clone(),
    ];
    secrets.extend(
        connection
            .ice_servers
            .iter()
            .map(|s| s.credential.clone())
            .filter(|c| !c.is_empty()),
    );
    assert!(secrets.len() > 4, "TURN passwords to look for");
    let exported = serde_json::to_string(&spans).unwrap();
    for secret in &secrets {
        assert!(
            !exported.contains(secret.as_str()),
            "a secret in {exported}"
        );
    }
    for marker in ["X-Amz-Signature", "X-Amz-Credential", "Authorization"] {
        assert!(!exported.contains(marker), "{marker} in {exported}");
    }
}

/// Whether the process runs the SDK's batch export thread.
fn has_export_thread(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        // The kernel keeps 15 bytes of "OpenTelemetry.Traces.BatchProcessor".
        .any(|name| name.starts_with("OpenTelemetry"))
}

#[tokio::test]
async fn without_an_endpoint_traces_are_off_and_nothing_is_exported() {
    let receiver = Receiver::start();
    let fake = kvs().await;
    let off = Sidecar::start(&fake, &[]);
    let caller = caller_trace();
    traced_join(&off, &caller).await;
    let output = off.output();
    assert!(
        output.iter().any(|l| l.contains("traces off")),
        "{output:#?}"
    );
    assert!(!has_export_thread(off.pid()));
    assert!(!output.iter().any(|l| l.contains(&caller.0)));
    assert_no_trace_headers_reached_kvs(&fake);

    // The same check sees the exporter of a sidecar with traces on, whose
    // spans arrive, while none of the first sidecar's ever did.
    let on = start_traced(&fake, &receiver);
    assert!(has_export_thread(on.pid()));
    let traced = caller_trace();
    traced_join(&on, &traced).await;
    trace_spans(&receiver, &traced.0, |s| !s.is_empty()).await;
    assert!(receiver.spans().iter().all(|s| s["trace_id"] != caller.0));
}

#[tokio::test]
async fn settings_it_cannot_honour_stop_the_start_without_printing_headers() {
    let fake = kvs().await;
    for (name, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/protobuf",
            "OTLP/gRPC only",
        ),
        ("OTEL_TRACES_SAMPLER", "xray", "OTEL_TRACES_SAMPLER=xray"),
    ] {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=s3cr3t-exporter-token",
            ),
            (name, value),
        ];
        let output = Sidecar::try_launch(&fake.url(), fake.credentials(), &[], &env, &[])
            .err()
            .expect("the sidecar refuses to start");
        assert!(output.iter().any(|l| l.contains(says)), "{output:#?}");
        assert!(!output.iter().any(|l| l.contains(SECRET)), "{output:#?}");
    }
}

/// Issue 22: a collector that accepts connections and never answers does
/// not hold the exit for the whole grace: the last flush gets a bounded
/// share of it.
#[tokio::test]
async fn sigterm_exits_promptly_when_the_collector_never_answers() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    // Accepts and holds every connection, reading nothing.
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in silent.incoming().take(8) {
            match conn {
                Ok(conn) => open.push(conn),
                Err(_) => return,
            }
        }
    });
    let fake = kvs().await;
    let mut sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    traced_join(&sidecar, &caller_trace()).await;
    let signalled = std::time::Instant::now();
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(std::time::Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(5),
        "exit took {:?} (the grace is 20 s)",
        signalled.elapsed()
    );
    drop(held);
}
