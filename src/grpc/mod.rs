//! The gRPC side: the service, its status mapping, deadlines and metrics.

pub mod buffer_request;
mod call_log;
pub mod deadline;
pub mod load_shed;
pub mod metrics;
pub mod request_deadline;
mod service;
pub mod status;

/// The paths of the storage service's calls: the ones that are limited
/// (load shedding) and read whole before they are served.
pub const STORAGE_PREFIX: &str = "/kvs.webrtcstorage.v1.WebRtcStorageService/";

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
