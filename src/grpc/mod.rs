//! The gRPC side: the service, its status mapping, deadlines and metrics.

mod call_log;
pub mod deadline;
pub mod load_shed;
pub mod metrics;
mod service;
mod session;
pub mod status;

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
