//! kvs-sidecar: a gRPC front for the Amazon Kinesis Video Streams WebRTC
//! Storage API that signs, discovers, retries and measures on behalf of
//! backends in any language.

mod admin;
pub mod alloc;
mod allow_list;
mod aws_env;
pub mod clock;
pub mod config;
pub mod emulator;
mod grpc;
mod idempotency;
pub mod instruments;
pub mod kvs;
mod playback;
mod readiness;
pub mod ready_file;
mod recording;
mod serve;
pub mod server;
mod session;
pub mod signaling;
mod storage;
mod store;
pub mod telemetry;

/// The type-erased error, for what tower, hyper, the AWS SDK and the
/// OpenTelemetry exporter hand over boxed (and for a failed serve);
/// everything the sidecar classifies has an enum of its own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The generated contract, and its descriptor set for server reflection.
pub mod pb {
    tonic::include_proto!("kvs.webrtcstorage.v1");

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kvs_descriptor.bin"));
}
