//! Starting, stopping and misbehaving callers: the process drains cleanly
//! under load, restarts on the same ports, and shrugs off protocol abuse.

use crate::common;
use std::time::Duration;

use crate::common::{ARN, Reply, Sidecar, join};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::Code;

#[tokio::test]
async fn sigterm_with_100_calls_in_flight_completes_them_all_and_exits_zero() {
    let (fake, mut sidecar, client) = common::warmed(&[]).await;
    let before = fake.received_on("/joinStorageSession").len();
    let calls = common::slow_joins(&fake, &client, 100, Duration::from_millis(800));
    common::joins_arrived(&fake, before + 100).await;
    sidecar.signal("TERM");
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => panic!("an in-flight call ended with {status:?}"),
        }
    }
    assert_eq!(ok, 100);
    drop(client);
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn fifty_starts_and_stops_reuse_the_same_ports() {
    let free = || format!("127.0.0.1:{}", common::unused_port());
    let grpc = free();
    let admin = std::iter::repeat_with(free).find(|a| *a != grpc).unwrap();
    for round in 0..50 {
        let mut sidecar = Sidecar::emulated(&["--grpc-listen", &grpc, "--admin-listen", &admin]);
        assert_eq!(sidecar.grpc.to_string(), grpc);
        assert_eq!(sidecar.admin_get("/readyz").0, 200, "round {round}");
        sidecar.signal("TERM");
        assert_eq!(
            sidecar.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0),
            "round {round}"
        );
    }
    // Nothing is left holding the ports.
    std::net::TcpListener::bind(&grpc).expect("gRPC port released");
    std::net::TcpListener::bind(&admin).expect("admin port released");
}

/// A raw HTTP/2 request to the gRPC port: (HTTP status, grpc-status).
async fn raw_h2(sidecar: &Sidecar, path: &str, content_type: &str) -> (u16, Option<String>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{}{path}", sidecar.grpc))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = client.request(req).await.unwrap();
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let collected = response.into_body().collect().await.unwrap();
    let trailer = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    (status, header.or(trailer))
}

#[tokio::test]
async fn protocol_abuse_gets_errors_and_the_server_keeps_serving() {
    let sidecar = Sidecar::emulated(&[]);
    let service = "/kvs.webrtcstorage.v1.WebRtcStorageService";

    // An unknown method of a known service, and an unknown service.
    for path in [
        format!("{service}/Nope"),
        "/no.such.Service/Call".to_owned(),
    ] {
        let (_, grpc_status) = raw_h2(&sidecar, &path, "application/grpc").await;
        assert_eq!(grpc_status.as_deref(), Some("12"), "{path}: UNIMPLEMENTED");
    }
    // A real method with a non-gRPC content type is not served as gRPC.
    let (http_status, grpc_status) = raw_h2(
        &sidecar,
        &format!("{service}/JoinStorageSession"),
        "application/json",
    )
    .await;
    assert!(
        http_status == 415 || grpc_status.as_deref().is_some_and(|s| s != "0"),
        "wrong content type: HTTP {http_status}, grpc-status {grpc_status:?}"
    );
    // An HTTP/1.1 client on the gRPC port gets an HTTP answer, not a hang.
    let (status, _) =
        common::sidecar::http_get(sidecar.grpc, &format!("{service}/JoinStorageSession"));
    assert_eq!(status, 505, "gRPC needs HTTP/2");
    // Garbage bytes on the port: the connection is dropped, nothing else.
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(sidecar.grpc).unwrap();
        raw.write_all(b"\x16\x03\x01 not http at all \r\n\r\n")
            .unwrap();
    }

    let answer = sidecar
        .client()
        .await
        .join_storage_session(join(ARN))
        .await
        .unwrap();
    assert!(common::is_request_id(&answer.into_inner().aws_request_id));
    common::assert_refused(
        sidecar
            .client()
            .await
            .join_storage_session(join("bad"))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_10000_concurrent_calls_is_answered_with_bounded_memory() {
    // The fake KVS answers in this test's process, beside its 10,000
    // callers: on a loaded machine it can take longer than the default
    // 5 s attempt timeout, which this test is not about.
    let (fake, sidecar, client) =
        common::warmed(&["--max-concurrent-calls", "256", "--attempt-timeout", "30s"]).await;
    fake.script(
        "/joinStorageSession",
        vec![Reply::Slow(Duration::from_millis(200), Box::new(Reply::Ok)); 512],
    );
    let pid = sidecar.pid();
    let rss = move || common::rss_kib(pid);
    let before = rss();
    // Several connections, as many callers would open.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(sidecar.client().await);
    }
    let calls: Vec<_> = (0..10_000)
        .map(|i| {
            let mut client = channels[i % channels.len()].clone();
            tokio::spawn(async move {
                client
                    .join_storage_session(join(ARN))
                    .await
                    .map_err(|s| s.code())
            })
        })
        .collect();
    let mut peak = before;
    let (mut ok, mut shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Code::ResourceExhausted) => shed += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        peak = peak.max(rss());
    }
    drop(client);
    println!("flood: {ok} served, {shed} shed, RSS {before} KiB before, peak {peak} KiB");
    assert_eq!(ok + shed, 10_000, "every call is answered");
    assert!(ok >= 256, "the admitted calls are served");
    assert!(peak < 128 * 1024, "RSS stays bounded: peak {peak} KiB");
    assert_eq!(sidecar.admin_get("/readyz").0, 200);
}
