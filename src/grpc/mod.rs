//! The gRPC side: the service, its status mapping, deadlines and metrics.

pub mod buffer_request;
mod call_log;
pub mod call_span;
pub mod deadline;
pub mod load_shed;
pub mod metrics;
pub mod request_deadline;
mod service;
mod session;
pub mod status;

/// The paths of the storage service's calls: the ones that are limited
/// (load shedding) and read whole before they are served.
const STORAGE_PREFIX: &str = "/kvs.webrtcstorage.v1.WebRtcStorageService/";

/// The storage service's streams. One lives as long as its caller keeps it
/// open, so the bounds of a unary call (a deadline on the whole request,
/// reading it whole, a call slot) do not fit it; it has its own
/// (`--max-maintained-sessions`, a deadline on its first message).
const STREAMS: &[&str] = &["/kvs.webrtcstorage.v1.WebRtcStorageService/MaintainStorageSession"];

/// Whether `path` is a unary call of the storage service.
pub fn is_unary_storage_call(path: &str) -> bool {
    path.starts_with(STORAGE_PREFIX) && !STREAMS.contains(&path)
}

/// Whether `path` is a long-lived stream.
pub fn is_stream(path: &str) -> bool {
    STREAMS.contains(&path)
}

/// gRPC is HTTP/2 only; an HTTP/1.x request on the gRPC port is answered
/// 505 instead of being half-served as gRPC.
pub async fn require_http2(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if req.version() != http::Version::HTTP_2 {
        let answer = "kvs-sidecar speaks gRPC, which needs HTTP/2\n";
        return (http::StatusCode::HTTP_VERSION_NOT_SUPPORTED, answer).into_response();
    }
    next.run(req).await
}

pub use self::service::WebRtcStorage;
