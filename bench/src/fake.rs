//! A fast fake KVS: plain HTTP/1.1 with keep-alive on loopback, answering
//! discovery with its own address as the WEBRTC endpoint and every join with
//! 200 and a request id. It checks nothing, so what the benchmark measures
//! is the caller, not the fake.

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

async fn answer(
    req: Request<Incoming>,
    discovery: Bytes,
    ids: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    // Read the body so the connection can carry the next request.
    req.into_body().collect().await?;
    let (status, body) = match path.as_str() {
        "/getSignalingChannelEndpoint" => (StatusCode::OK, discovery),
        "/joinStorageSession" | "/joinStorageSessionAsViewer" => (StatusCode::OK, Bytes::new()),
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
