//! Hostile clients on the pod network (issue 13), played with raw HTTP/2
//! frames (Rust's `h2`) and raw sockets against the real binary, on
//! loopback only. Each attack is bounded in connections, streams, bytes and
//! time; each test checks that legitimate calls are served while it runs and
//! that the sidecar's memory stays under the sidecar overlay's limit.
//!
//! Settings are passed through the environment rather than flags, so the
//! same tests can be pointed at an older binary, which ignores variables it
//! does not know.

use crate::common;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::common::{ARN, Emulator, Reply, Sidecar};
use bytes::Bytes;
use kvs_sidecar::pb::{
    JoinStorageSessionRequest, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};
use tonic::transport::Channel;

/// `resources.limits.memory` of the sidecar container in
/// `deploy/overlays/sidecar/deployment.yaml` (96Mi).
const MEMORY_LIMIT_KIB: u64 = 96 * 1024;

const STORAGE_JOIN: &str = "/kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The HTTP/2 preface and an empty SETTINGS frame: all a client must send
/// before the server considers the connection open.
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A fake KVS and a sidecar with `env` on top of the harness defaults, and
/// a client whose connection is open and whose channel is discovered.
async fn sidecar(env: &[(&str, &str)]) -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(&fake, &[], env);
    let client = sidecar.client().await;
    legitimate_join(&client).await;
    (fake, sidecar, client)
}

/// A join that must succeed, and within 5 s.
async fn legitimate_join(client: &WebRtcStorageServiceClient<Channel>) {
    let mut client = client.clone();
    let call = client.join_storage_session(JoinStorageSessionRequest {
        channel_arn: ARN.into(),
        ..Default::default()
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("a legitimate join answered within 5 s")
        .expect("a legitimate join succeeded");
    assert!(common::is_request_id(&answer.into_inner().aws_request_id));
}

/// /readyz and /livez on the admin port both answer 200.
async fn probes_answer(sidecar: &Sidecar) {
    let admin = sidecar.admin;
    let (ready, live) = tokio::task::spawn_blocking(move || {
        (
            common::sidecar::try_http_get(admin, "/readyz"),
            common::sidecar::try_http_get(admin, "/livez"),
        )
    })
    .await
    .unwrap();
    assert_eq!(ready.expect("GET /readyz").0, 200);
    assert_eq!(live.expect("GET /livez").0, 200);
}

/// The sidecar's open connections, as its metrics count them.
fn connections(sidecar: &Sidecar) -> Vec<String> {
    let (_, metrics) = sidecar.admin_get("/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("kvs_sidecar_connections{"))
        .map(str::to_owned)
        .collect()
}

fn assert_under_memory_limit(sidecar: &Sidecar) {
    let peak = common::peak_rss_kib(sidecar.pid());
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    eprintln!("{test}: peak RSS {:.1} MiB", peak as f64 / 1024.0);
    assert!(
        peak < MEMORY_LIMIT_KIB,
        "peak RSS {} MiB, past the sidecar overlay's 96 MiB limit",
        peak / 1024
    );
}

/// An HTTP/2 connection driven by `h2`, its frames handled on a task of
/// `tasks`: shutting them down closes the connection.
async fn h2_connection(
    addr: SocketAddr,
    tasks: &mut JoinSet<()>,
) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tasks.spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

fn grpc_request(path: &str, timeout: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    request.body(()).unwrap()
}

/// Waits at most `within` for a trailers-only answer and checks its
/// `grpc-status` (`code`, as the header spells it).
async fn answered_with(answer: h2::client::ResponseFuture, within: Duration, code: &str) {
    let answer = tokio::time::timeout(within, answer)
        .await
        .unwrap_or_else(|_| panic!("no answer within {within:?}"))
        .unwrap();
    assert_eq!(
        answer
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some(code),
        "grpc-status"
    );
}

/// Reads (and drops) what the peer sends until it closes the connection.
async fn until_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Waits for every connection in `set` to be closed by the server, for at
/// most `within`; panics naming how many were still open.
async fn all_closed(mut set: JoinSet<()>, within: Duration, what: &str) {
    let total = set.len();
    let until = tokio::time::Instant::now() + within;
    while !set.is_empty() {
        match tokio::time::timeout_at(until, set.join_next()).await {
            Err(_) => panic!(
                "{} of {total} {what} still open after {within:?}",
                set.len()
            ),
            Ok(Some(Err(e))) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
    }
}

/// `streams` unfinished messages of `size` bytes to `path` on each of
/// `connections` connections to `addr`. Each stream sends the length prefix
/// and then the message but its last 64 KiB, as fast as flow control lets
/// it, and stays open until the returned set is shut down.
async fn unfinished_messages(
    addr: SocketAddr,
    path: &'static str,
    connections: usize,
    streams: usize,
    size: u32,
) -> JoinSet<()> {
    const CHUNK: usize = 64 * 1024;
    let mut attack = JoinSet::new();
    for _ in 0..connections {
        let send = h2_connection(addr, &mut attack).await;
        for _ in 0..streams {
            let send = send.clone();
            attack.spawn(async move {
                let Ok(mut send) = send.ready().await else {
                    return;
                };
                let Ok((_answer, mut body)) = send.send_request(grpc_request(path, None), false)
                else {
                    return;
                };
                let mut prefix = vec![0u8];
                prefix.extend_from_slice(&size.to_be_bytes());
                if body.send_data(prefix.into(), false).is_err() {
                    return;
                }
                let chunk = Bytes::from(vec![0u8; CHUNK]);
                for _ in 0..(size as usize / CHUNK).saturating_sub(1) {
                    body.reserve_capacity(chunk.len());
                    match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                    if body.send_data(chunk.clone(), false).is_err() {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            });
        }
    }
    attack
}

#[tokio::test]
async fn unfinished_large_health_messages_keep_memory_under_the_limit() {
    let (_fake, sidecar, client) = sidecar(&[]).await;
    // Finding 1's attack, 25 unfinished 4 MiB health messages a connection,
    // on two connections to each port (both serve grpc.health.v1).
    let mut on_admin = unfinished_messages(sidecar.admin, HEALTH_CHECK, 2, 25, 4 << 20).await;
    let mut on_grpc = unfinished_messages(sidecar.grpc, HEALTH_CHECK, 2, 25, 4 << 20).await;
    let attacked = Instant::now();
    while attacked.elapsed() < Duration::from_secs(3) {
        legitimate_join(&client).await;
        probes_answer(&sidecar).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_under_memory_limit(&sidecar);
    on_admin.shutdown().await;
    on_grpc.shutdown().await;
    legitimate_join(&client).await;
}

#[tokio::test]
async fn memory_goes_back_to_the_system_after_a_spike() {
    // Finding 2. Requests up to 1 MiB are allowed here, so 40 unfinished
    // ones make the sidecar buffer about 38 MiB, as a burst of large
    // messages would; once they are gone, so must the memory be.
    let (_fake, sidecar, client) = sidecar(&[("KVS_SIDECAR_MAX_REQUEST_BYTES", "1048576")]).await;
    let baseline = common::rss_kib(sidecar.pid());
    let mut spike = unfinished_messages(sidecar.grpc, STORAGE_JOIN, 4, 10, 1 << 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    legitimate_join(&client).await;
    let peak = common::rss_kib(sidecar.pid());
    assert_under_memory_limit(&sidecar);
    spike.shutdown().await;
    let grown = peak.saturating_sub(baseline);
    assert!(grown > 20 * 1024, "the spike grew RSS by {grown} KiB only");
    // At least a third of it. Some stays with a worker thread that parked
    // before its pages' purge delay ran out and has not woken since (seen
    // here: from a 48 MiB spike, 1 to 24 MiB stayed, run to run; see
    // docs/security.md). Without purging, all of it stays.
    let fell = Instant::now();
    loop {
        let now = common::rss_kib(sidecar.pid());
        if now.saturating_sub(baseline) < grown * 2 / 3 {
            eprintln!(
                "RSS {} MiB before the spike, {} MiB at its peak, {} MiB {:.1} s after",
                baseline / 1024,
                peak / 1024,
                now / 1024,
                fell.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            fell.elapsed() < Duration::from_secs(15),
            "RSS {} MiB 15 s after the spike (baseline {} MiB, peak {} MiB); {:?}",
            now / 1024,
            baseline / 1024,
            peak / 1024,
            connections(&sidecar)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    legitimate_join(&client).await;
}

#[tokio::test]
async fn headers_only_joins_do_not_starve_legitimate_joins() {
    let (_fake, sidecar, client) = sidecar(&[
        ("KVS_SIDECAR_MAX_CONCURRENT_CALLS", "64"),
        ("KVS_SIDECAR_MAX_CALLS_PER_CONNECTION", "48"),
    ])
    .await;
    // 4 connections × 48 joins that send headers and never a body: three
    // times the call slots. Half set a 1 s deadline, half set none.
    let mut attackers = Vec::new();
    let mut connections = JoinSet::new();
    let mut answers = JoinSet::new();
    let mut advertised = Vec::new();
    for c in 0..4 {
        let send = h2_connection(sidecar.grpc, &mut connections).await;
        // Finding 3's per-connection bound, as the server advertises it
        // (once its SETTINGS frame has arrived).
        let settled = Instant::now();
        while send.current_max_send_streams() == usize::MAX
            && settled.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        advertised.push(send.current_max_send_streams());
        for _ in 0..48 {
            let mut send = send.clone().ready().await.unwrap();
            let timeout = (c % 2 == 0).then_some("1S");
            let (answer, body) = send
                .send_request(grpc_request(STORAGE_JOIN, timeout), false)
                .unwrap();
            attackers.push(body);
            if timeout.is_some() {
                answers.spawn(async move {
                    let answer = answer.await.expect("an answer to the unfinished join");
                    let status = answer
                        .headers()
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let status = match status {
                        Some(status) => Some(status),
                        None => {
                            let mut body = answer.into_body();
                            let trailers = body.trailers().await.ok().flatten();
                            trailers.and_then(|t| {
                                t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned())
                            })
                        }
                    };
                    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
                });
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Calls past the 48 a connection may have in flight wait for a slot
    // within their deadline (as a client would wait for a stream), 48 at
    // most; one more is refused at once (issue 22: the per-connection bound
    // counts calls, not the HTTP/2 streams sessions also use).
    let first = h2_connection(sidecar.grpc, &mut connections).await;
    let mut over = Vec::new();
    for _ in 0..48 {
        let mut send = first.clone().ready().await.unwrap();
        let (_, body) = send
            .send_request(grpc_request(STORAGE_JOIN, None), false)
            .unwrap();
        over.push(body);
    }
    let mut waiting = Vec::new();
    for _ in 0..48 {
        let mut send = first.clone().ready().await.unwrap();
        let (answer, body) = send
            .send_request(grpc_request(STORAGE_JOIN, Some("1S")), false)
            .unwrap();
        waiting.push((answer, body));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut send = first.clone().ready().await.unwrap();
    let (refused, _body) = send
        .send_request(grpc_request(STORAGE_JOIN, None), false)
        .unwrap();
    // RESOURCE_EXHAUSTED at once.
    answered_with(refused, Duration::from_secs(2), "8").await;
    // The waiting ones found no slot within their 1 s: DEADLINE_EXCEEDED.
    for (answer, _body) in waiting {
        answered_with(answer, Duration::from_secs(3), "4").await;
    }
    drop(over);
    // Every legitimate join is served while the attackers' streams are open.
    let mut legitimate = JoinSet::new();
    for _ in 0..30 {
        let client = client.clone();
        legitimate.spawn(async move { legitimate_join(&client).await });
    }
    while let Some(done) = legitimate.join_next().await {
        done.unwrap();
    }
    probes_answer(&sidecar).await;
    // The joins with a deadline were answered DEADLINE_EXCEEDED at it.
    all_closed(
        answers,
        Duration::from_secs(10),
        "unfinished joins with a 1 s deadline",
    )
    .await;
    // 48 calls and the 1,000 sessions (`--max-maintained-sessions`).
    assert_eq!(
        advertised, [1048; 4],
        "MAX_CONCURRENT_STREAMS per connection"
    );
    assert_under_memory_limit(&sidecar);
    drop(attackers);
    connections.shutdown().await;
}

#[tokio::test]
async fn connections_that_never_send_a_request_are_closed_within_the_handshake_timeout() {
    let (_fake, sidecar, client) = sidecar(&[("KVS_SIDECAR_HANDSHAKE_TIMEOUT", "1s")]).await;
    let mut silent = JoinSet::new();
    for i in 0..150 {
        let addr = if i % 3 == 2 {
            sidecar.admin
        } else {
            sidecar.grpc
        };
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        if i % 3 == 1 {
            // Half a preface, then nothing.
            tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        silent.spawn(until_closed(tcp));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    legitimate_join(&client).await;
    probes_answer(&sidecar).await;
    all_closed(silent, Duration::from_secs(6), "silent connections").await;
    legitimate_join(&client).await;
    assert_under_memory_limit(&sidecar);
}

#[tokio::test]
async fn tls_connections_silent_after_the_handshake_are_closed_within_the_timeout() {
    let pki = Pki::new();
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[
            ("KVS_SIDECAR_TLS_CERT", &pki.path("server.pem")),
            ("KVS_SIDECAR_TLS_KEY", &pki.path("server.key")),
            ("KVS_SIDECAR_HANDSHAKE_TIMEOUT", "1s"),
        ],
    );
    let tls = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut silent = JoinSet::new();
    for _ in 0..50 {
        let tcp = TcpStream::connect(sidecar.grpc).await.unwrap();
        let stream = tls.connect(name.clone(), tcp).await.expect("TLS handshake");
        silent.spawn(async move {
            let (mut read, _write) = tokio::io::split(stream);
            let mut buf = [0u8; 4096];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        });
    }
    // A legitimate TLS caller meanwhile.
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        sidecar.grpc.port()
    ))
    .unwrap()
    .tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca))
            .domain_name("localhost"),
    )
    .unwrap()
    .connect()
    .await
    .expect("a TLS client connects");
    legitimate_join(&WebRtcStorageServiceClient::new(channel)).await;
    all_closed(silent, Duration::from_secs(6), "silent TLS connections").await;
    assert_under_memory_limit(&sidecar);
}

#[tokio::test]
async fn the_connection_cap_holds_and_admin_probes_still_answer() {
    let (_fake, sidecar, client) = sidecar(&[("KVS_SIDECAR_MAX_CONNECTIONS", "40")]).await;
    // 200 well-formed, idle HTTP/2 connections; the legitimate client's own
    // connection was opened before them and counts against the cap.
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(sidecar.grpc).await.unwrap();
        tcp.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        attackers.push(tcp);
    }
    // Connections past the cap are closed by the server at once.
    let mut checks = JoinSet::new();
    for mut tcp in attackers {
        checks.spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return None,
                    Ok(Ok(_)) => continue,
                    Err(_) => return Some(tcp),
                }
            }
        });
    }
    let mut still_open = Vec::new();
    while let Some(check) = checks.join_next().await {
        still_open.extend(check.unwrap());
    }
    let open = still_open.len();
    assert!(
        open <= 39,
        "{open} attacking connections open past a cap of 40"
    );
    legitimate_join(&client).await;
    probes_answer(&sidecar).await;
    let (_, metrics) = sidecar.admin_get("/metrics");
    let refused = common::metric(
        &metrics,
        r#"kvs_sidecar_connections_refused_total{port="grpc"}"#,
    )
    .unwrap_or(0.0);
    assert!(refused >= 150.0, "refusals counted: {refused}");
    let warnings = sidecar
        .output()
        .iter()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} log lines for the full connection table: one per 10 s"
    );
    assert_under_memory_limit(&sidecar);
    drop(still_open);
}

#[tokio::test]
async fn slowloris_on_the_admin_port_is_closed() {
    let (_fake, sidecar, client) = sidecar(&[("KVS_SIDECAR_HANDSHAKE_TIMEOUT", "1s")]).await;
    let mut slow = JoinSet::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(sidecar.admin).await.unwrap();
        slow.spawn(async move {
            let _ = tcp
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: sidecar\r\n")
                .await;
            // One more header byte every 200 ms, for at most 10 s.
            let mut buf = [0u8; 1024];
            for _ in 0..50 {
                tokio::select! {
                    read = tcp.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if tcp.write_all(b"X").await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    probes_answer(&sidecar).await;
    legitimate_join(&client).await;
    all_closed(slow, Duration::from_secs(6), "slowloris connections").await;
    assert_under_memory_limit(&sidecar);
}

#[tokio::test]
async fn sigterm_exits_zero_within_the_grace_with_idle_and_goaway_ignoring_connections_open() {
    let (fake, mut sidecar, client) = sidecar(&[]).await;
    // Connections that completed the HTTP/2 handshake and will never read
    // again (so never see, let alone acknowledge, a GOAWAY), on both ports,
    // and an idle HTTP/1.1 keep-alive connection on the admin port.
    let mut idle = Vec::new();
    for addr in [sidecar.grpc, sidecar.admin] {
        for _ in 0..10 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(PREFACE_AND_SETTINGS).await.unwrap();
            idle.push(tcp);
        }
    }
    let mut keep_alive = TcpStream::connect(sidecar.admin).await.unwrap();
    keep_alive
        .write_all(b"GET /livez HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(keep_alive.read(&mut buf).await.unwrap() > 0);
    idle.push(keep_alive);

    // And one call in flight, which must complete.
    let before = fake.received_on("/joinStorageSession").len();
    fake.script(
        "/joinStorageSession",
        [Reply::Slow(Duration::from_millis(800), Box::new(Reply::Ok))],
    );
    let mut caller = client.clone();
    let in_flight = tokio::spawn(async move {
        caller
            .join_storage_session(JoinStorageSessionRequest {
                channel_arn: ARN.into(),
                ..Default::default()
            })
            .await
    });
    common::joins_arrived(&fake, before + 1).await;
    sidecar.signal("TERM");
    in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    drop(client);
    // The grace is 20 s; connections with nothing in flight must not use it.
    let status = sidecar.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0));
    drop(idle);
}

/// A CA and a server certificate for localhost, for the TLS case.
struct Pki {
    dir: std::path::PathBuf,
    ca: String,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("kvs-sidecar-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Self { dir, ca: ca.pem() }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        std::sync::Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === Issue 22: session streams ===

const MAINTAIN: &str = "/kvs.webrtcstorage.v1.WebRtcStorageService/MaintainStorageSession";

/// One gRPC message, length-prefixed.
fn framed(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&body);
    framed.into()
}

fn start(channel_arn: &str) -> Bytes {
    use kvs_sidecar::pb::{
        MaintainStorageSessionRequest, SessionStart, maintain_storage_session_request::Kind,
    };
    framed(&MaintainStorageSessionRequest {
        kind: Some(Kind::Start(SessionStart {
            channel_arn: channel_arn.into(),
            ..Default::default()
        })),
    })
}

/// A `report` padded to ~4 KiB with a field the contract does not have
/// (decoders skip unknown fields), so a flood of them is cheap to send.
fn padded_report() -> Bytes {
    use kvs_sidecar::pb::{
        MaintainStorageSessionRequest, SessionReport, SessionReportKind,
        maintain_storage_session_request::Kind,
    };
    let report = MaintainStorageSessionRequest {
        kind: Some(Kind::Report(SessionReport {
            kind: SessionReportKind::OfferReceived.into(),
        })),
    };
    let mut body = prost::Message::encode_to_vec(&report);
    // Field 15, length-delimited, 4,000 bytes.
    body.extend_from_slice(&[0x7a, 0xa0, 0x1f]);
    body.extend(std::iter::repeat_n(0u8, 4000));
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&body);
    framed.into()
}

/// An HTTP/2 connection that never lets the server send it data (its
/// stream window is 0): a caller that reads nothing.
async fn deaf_connection(
    addr: SocketAddr,
    tasks: &mut JoinSet<()>,
) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(tcp)
        .await
        .unwrap();
    tasks.spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

/// A maintained session on its own connection, for the events a
/// well-behaved caller sees.
async fn legitimate_session(
    sidecar: &Sidecar,
    arn: &str,
) -> (
    tokio::sync::mpsc::Sender<kvs_sidecar::pb::MaintainStorageSessionRequest>,
    tonic::Streaming<kvs_sidecar::pb::MaintainStorageSessionResponse>,
) {
    use kvs_sidecar::pb::{
        MaintainStorageSessionRequest, SessionStart, maintain_storage_session_request::Kind,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(MaintainStorageSessionRequest {
        kind: Some(Kind::Start(SessionStart {
            channel_arn: arn.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = sidecar
        .client()
        .await
        .maintain_storage_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a legitimate session starts")
        .into_inner();
    let joined = events.message().await.unwrap().unwrap();
    assert!(
        matches!(
            joined.event,
            Some(kvs_sidecar::pb::maintain_storage_session_response::Event::Joined(_))
        ),
        "{joined:?}"
    );
    (tx, events)
}

/// Findings 1 and 2: callers that read nothing while flooding reports, and
/// streams that never send `start`, hold neither memory nor the shutdown.
/// 120 connections each start a session, then send reports as fast as
/// flow control lets them while the supervisor is busy with a slow join and
/// reading nothing back; 40 more connections open HEADERS-only session
/// streams. Memory stays under the limit, legitimate calls are served, and
/// SIGTERM exits within a few seconds with every one of them still open,
/// after a well-behaved session got its `gave_up DRAINING`.
#[tokio::test]
async fn deaf_and_silent_session_streams_hold_neither_memory_nor_the_shutdown() {
    let (fake, mut sidecar, client) = sidecar(&[]).await;
    let (_tx, mut legit) = legitimate_session(&sidecar, &common::arn("legit")).await;
    fake.script(
        "/joinStorageSession",
        (0..120).map(|_| Reply::Slow(Duration::from_secs(20), Box::new(Reply::Ok))),
    );
    let mut attack = JoinSet::new();
    for c in 0..120 {
        let send = deaf_connection(sidecar.grpc, &mut attack).await;
        let arn = common::arn(&format!("deaf-{c}"));
        attack.spawn(async move {
            let Ok(mut send) = send.ready().await else {
                return;
            };
            let Ok((_answer, mut body)) = send.send_request(grpc_request(MAINTAIN, None), false)
            else {
                return;
            };
            if body.send_data(start(&arn), false).is_err() {
                return;
            }
            let report = padded_report();
            // At most 2 MiB each, for at most 3 s.
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            for _ in 0..(2 << 20) / report.len() {
                body.reserve_capacity(report.len());
                let capacity = std::future::poll_fn(|cx| body.poll_capacity(cx));
                match tokio::time::timeout_at(until, capacity).await {
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
                if body.send_data(report.clone(), false).is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
    }
    let mut silent = JoinSet::new();
    let mut bodies = Vec::new();
    for _ in 0..40 {
        let send = h2_connection(sidecar.grpc, &mut silent).await;
        for _ in 0..256 {
            let Ok(mut send) = send.clone().ready().await else {
                break;
            };
            if let Ok((_, body)) = send.send_request(grpc_request(MAINTAIN, None), false) {
                bodies.push(body);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every deaf session's join has taken its slow answer before the
    // legitimate join is sent, or on a loaded machine the legitimate join
    // could be the one answered in 20 s.
    let joined = Instant::now();
    while fake.scripted_left("/joinStorageSession") > 0 {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "{} deaf sessions never sent their join",
            fake.scripted_left("/joinStorageSession")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    legitimate_join(&client).await;
    probes_answer(&sidecar).await;
    assert_under_memory_limit(&sidecar);

    let signalled = Instant::now();
    sidecar.signal("TERM");
    // Its final event within 5 s (after any re-join it was making).
    let gave_up = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = legit.message().await.unwrap().unwrap().event;
            if let Some(kvs_sidecar::pb::maintain_storage_session_response::Event::GaveUp(g)) =
                event
            {
                return g;
            }
        }
    })
    .await
    .expect("the legitimate session's final event within 5 s");
    assert_eq!(gave_up.reason(), kvs_sidecar::pb::GiveUpReason::Draining);
    let status = sidecar.wait_exit(Duration::from_secs(8)).await;
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "SIGTERM took {:?} (the grace is 20 s)",
        signalled.elapsed()
    );
    drop(bodies);
    attack.shutdown().await;
    silent.shutdown().await;
}

/// Finding 2: streams that never send `start` are bounded (256 wait at
/// once, the next is refused at once) and ended after their wait.
#[tokio::test]
async fn session_streams_without_start_are_bounded_and_time_out() {
    let (_fake, sidecar, client) = sidecar(&[("KVS_SIDECAR_MAX_CALL_DURATION", "2s")]).await;
    let mut connections = JoinSet::new();
    let send = h2_connection(sidecar.grpc, &mut connections).await;
    let mut waiting = Vec::new();
    for _ in 0..256 {
        let mut send = send.clone().ready().await.unwrap();
        waiting.push(
            send.send_request(grpc_request(MAINTAIN, None), false)
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut send = send.clone().ready().await.unwrap();
    let (refused, _body) = send
        .send_request(grpc_request(MAINTAIN, None), false)
        .unwrap();
    // RESOURCE_EXHAUSTED at once.
    answered_with(refused, Duration::from_secs(1), "8").await;
    // The waiting ones end at their 2 s wait for `start`: DEADLINE_EXCEEDED.
    for (answer, _body) in waiting {
        answered_with(answer, Duration::from_secs(4), "4").await;
    }
    legitimate_join(&client).await;
    connections.shutdown().await;
}

/// Finding 6: grpc-core (like tonic's Channel) shares one connection per
/// target. 300 sessions on one connection (past the 256 calls a connection
/// may have in flight) all start, and a unary join on the same connection
/// is still served.
#[tokio::test]
async fn one_connection_holds_more_sessions_than_calls_and_still_serves_joins() {
    let (_fake, _sidecar, client) = sidecar(&[]).await;
    let mut sessions = Vec::new();
    for i in 0..300 {
        use kvs_sidecar::pb::{
            MaintainStorageSessionRequest, SessionStart, maintain_storage_session_request::Kind,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(MaintainStorageSessionRequest {
            kind: Some(Kind::Start(SessionStart {
                channel_arn: common::arn(&format!("one-conn-{i}")),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut client = client.clone();
        let call = client.maintain_storage_session(tokio_stream::wrappers::ReceiverStream::new(rx));
        let events = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap_or_else(|_| panic!("session {i} did not start within 5 s"))
            .expect("started")
            .into_inner();
        sessions.push((tx, events));
    }
    legitimate_join(&client).await;
    drop(sessions);
}
