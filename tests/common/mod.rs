//! Shared test harness: a fake KVS, an independent SigV4 verifier, and the
//! sidecar binary under test. Each test binary uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod fake_kvs;
pub mod sidecar;
pub mod sigv4;

pub use fake_kvs::{Dialect, FakeKvs, Reply};
pub use sidecar::Sidecar;

pub const ARN: &str =
    "arn:aws:kinesisvideo:eu-central-1:123456789012:channel/front-door/1700000000000";

pub fn arn(name: &str) -> String {
    format!("arn:aws:kinesisvideo:eu-central-1:123456789012:channel/{name}/1700000000000")
}
