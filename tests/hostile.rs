//! Hostile clients on the pod network (issue 13), played with raw HTTP/2
//! frames (Rust's `h2`) and raw sockets against the real binary, on
//! loopback only. Each attack is bounded in connections, streams, bytes and
//! time; each test checks that legitimate calls are served while it runs and
//! that the sidecar's memory stays under the sidecar overlay's limit.
//!
//! Settings are passed through the environment rather than flags, so the
//! same tests can be pointed at an older binary, which ignores variables it
//! does not know.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{ARN, Emulator, Reply, Sidecar};
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

/// The process's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn assert_under_memory_limit(sidecar: &Sidecar) {
    let peak = peak_rss_kib(sidecar.pid());
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
    // here: from a 48 MiB spike, 1 to 24 MiB stayed, run to run; see the
    // README's Security section). Without purging, all of it stays.
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
    assert_eq!(advertised, [48; 4], "MAX_CONCURRENT_STREAMS per connection");
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
