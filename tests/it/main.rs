//! The integration tests: the real binary on ephemeral loopback ports
//! against the KVS emulator, called by real clients. One test crate with a
//! module per theme, so the library and its dependencies are linked once
//! (linkerd2-proxy and tonic keep theirs the same way); `common` is the
//! shared harness.

mod common;

mod calls;
mod cross_account;
mod endpoint_rules;
mod examples;
mod fleet;
mod flow;
mod hostile;
mod lifecycle;
mod network;
mod playback;
mod prometheus;
mod readiness;
mod recording;
mod serving;
mod sessions;
mod soak;
mod state_store;
mod storage;
mod tls;
mod traces;
