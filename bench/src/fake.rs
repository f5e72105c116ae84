//! A fast fake KVS: plain HTTP/1.1 with keep-alive on loopback, answering
//! discovery with its own address as the WEBRTC endpoint and every join with
//! 200 and a request id; for the recording status, the Describe* reads of a
//! ready channel, GetDataEndpoint (itself) and ListFragments (one fragment
//! that started a second ago: every watched stream is RECORDING). It
//! checks nothing, so what the benchmark measures is the caller, not the
//! fake.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let discovery = Bytes::from(discovery_answer(addr));
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (discovery, ids) = (discovery.clone(), ids.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, discovery.clone(), ids.clone()));
            // Errors here are callers hanging up, which the benchmark does
            // at the end of every phase.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn discovery_answer(addr: SocketAddr) -> String {
    format!(
        r#"{{"ResourceEndpointList":[{{"Protocol":"WEBRTC","ResourceEndpoint":"http://{addr}"}}]}}"#
    )
}

/// This fake's own address, as GetDataEndpoint answers it.
fn data_endpoint(discovery: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(discovery);
    let url = text
        .split("\"ResourceEndpoint\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    Bytes::from(format!(r#"{{"DataEndpoint":"{url}"}}"#))
}

/// Storage enabled, into the stream named after the channel: one stream
/// (and one poller) per watched channel.
fn storage(sent: &[u8]) -> Bytes {
    let channel = serde_json::from_slice::<serde_json::Value>(sent)
        .ok()
        .and_then(|v| v["ChannelARN"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let stream = channel.replacen(":channel/", ":stream/", 1);
    Bytes::from(
        serde_json::json!({"MediaStorageConfiguration": {"Status": "ENABLED", "StreamARN": stream}})
            .to_string(),
    )
}

/// One fragment, started a second ago.
fn fragments() -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let start = now - 1000;
    Bytes::from(format!(
        r#"{{"Fragments":[{{"FragmentNumber":"9134385233318{start:020}","FragmentSizeInBytes":150000,"ServerTimestamp":{}.{:03},"ProducerTimestamp":{}.{:03},"FragmentLengthInMilliseconds":1000}}]}}"#,
        start / 1000,
        start % 1000,
        start / 1000,
        start % 1000
    ))
}

async fn answer(
    req: Request<Incoming>,
    discovery: Bytes,
    ids: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    // Read the body so the connection can carry the next request.
    let sent = req.into_body().collect().await?.to_bytes();
    let (status, body) = match path.as_str() {
        "/getSignalingChannelEndpoint" => (StatusCode::OK, discovery),
        "/joinStorageSession" | "/joinStorageSessionAsViewer" => (StatusCode::OK, Bytes::new()),
        "/describeSignalingChannel" => (
            StatusCode::OK,
            Bytes::from_static(
                br#"{"ChannelInfo":{"ChannelStatus":"ACTIVE","ChannelType":"SINGLE_MASTER"}}"#,
            ),
        ),
        "/describeMediaStorageConfiguration" => (StatusCode::OK, storage(&sent)),
        "/describeStream" => (
            StatusCode::OK,
            Bytes::from_static(br#"{"StreamInfo":{"Status":"ACTIVE","DataRetentionInHours":24}}"#),
        ),
        "/getDataEndpoint" => (StatusCode::OK, data_endpoint(&discovery)),
        "/listFragments" => (StatusCode::OK, fragments()),
        _ => (StatusCode::NOT_FOUND, Bytes::new()),
    };
    let id = ids.fetch_add(1, Ordering::Relaxed);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", format!("bench-{id:016x}"))
        .body(Full::new(body))
        .expect("static response parts are valid"))
}
