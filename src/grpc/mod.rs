//! The gRPC side: the service, its status mapping, deadlines and metrics.

pub mod deadline;
pub mod load_shed;
pub mod metrics;
mod service;
pub mod status;

pub use self::service::WebRtcStorage;
