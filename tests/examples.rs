//! The polyglot examples in examples/, run against `kvs-sidecar --emulate`
//! as a backend team would: the whole flow (readiness, a presigned signaling
//! connection, a join, the SDP offer on the socket), a channel that is not
//! ready, and the error paths the emulator offers.

mod common;

use std::process::Command;

use common::{ARN, Sidecar};

/// Runs an example client and returns what it printed.
fn run(program: &str, script: &str, sidecar: &Sidecar, arn: &str) -> String {
    let script = format!("{}/examples/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(program)
        .arg(&script)
        .arg(arn)
        .env("KVS_SIDECAR_ADDR", sidecar.grpc.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!("run {program} {script}: {e} (scripts/test installs what examples need)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn check(program: &str, script: &str) {
    let sidecar = Sidecar::emulated(&[]);
    let flow = run(program, script, &sidecar, ARN);
    let lines: Vec<&str> = flow.lines().collect();
    let [ice, joined, offer] = lines[..] else {
        panic!("{flow}");
    };
    assert_eq!(ice, "ice servers: 2", "{flow}");
    let id = joined
        .strip_prefix("joined: KVS request id ")
        .unwrap_or_else(|| panic!("{flow}"));
    assert!(common::is_request_id(id), "{flow}");
    assert!(
        offer.starts_with("offer: offer from storage-session-"),
        "{flow}"
    );
    let unready = run(program, script, &sidecar, &common::arn("nostorage-porch"));
    assert!(
        unready.starts_with("not ready: STORAGE_DISABLED: "),
        "{unready}"
    );
    let missing = run(program, script, &sidecar, &common::arn("missing-porch"));
    assert!(missing.starts_with("refused: NOT_FOUND"), "{missing}");
    assert!(
        missing.contains("KVS request id ") && !missing.contains("id none"),
        "{missing}"
    );
    let denied = run(program, script, &sidecar, &common::arn("denied-porch"));
    assert!(denied.starts_with("not ready: ACCESS_DENIED: "), "{denied}");
    let invalid = run(program, script, &sidecar, "not-an-arn");
    assert!(
        invalid.starts_with("refused: INVALID_ARGUMENT (channel_arn:"),
        "{invalid}"
    );
}

#[test]
fn the_python_example_runs_the_whole_flow_and_handles_errors() {
    check(&common::python(), "python/client.py");
}

#[test]
fn the_node_example_runs_the_whole_flow_and_handles_errors() {
    check("node", "node/client.js");
}
