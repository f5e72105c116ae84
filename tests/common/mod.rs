//! Shared test harness: a fake KVS, an independent SigV4 verifier, and the
//! sidecar binary under test. Each test binary uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod fake_kvs;
pub mod sidecar;
pub mod sigv4;

use kvs_sidecar::pb::{
    JoinStorageSessionRequest, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tonic::transport::Channel;

pub use fake_kvs::{Dialect, FakeKvs, Reply};
pub use sidecar::Sidecar;

pub const ARN: &str =
    "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/1700000000000";

pub fn arn(name: &str) -> String {
    format!("arn:aws:kinesisvideo:eu-central-1:123456789012:channel/{name}/1700000000000")
}

/// A fake KVS and a sidecar whose endpoint for [`ARN`] is already
/// discovered, so faults scripted on the join path meet only the call under
/// test.
pub async fn warmed(args: &[&str]) -> (FakeKvs, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = FakeKvs::start().await;
    let sidecar = Sidecar::start(&fake.url(), args);
    let mut client = sidecar.client().await;
    client
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: ARN.into(),
        })
        .await
        .expect("warm-up join");
    (fake, sidecar, client)
}
