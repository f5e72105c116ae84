//! The gRPC side: the service, its status mapping, deadlines and metrics.

pub mod buffer_request;
mod call_log;
pub mod deadline;
pub mod load_shed;
pub mod metrics;
pub mod request_deadline;
pub mod require_http2;
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

pub use self::service::WebRtcStorage;
