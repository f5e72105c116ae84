//! The polyglot examples in examples/, run against `kvs-sidecar --emulate`
//! as a backend team would: a join that succeeds, and the error paths the
//! emulator offers.

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
    let joined = run(program, script, &sidecar, ARN);
    let id = joined
        .trim()
        .strip_prefix("joined: KVS request id ")
        .unwrap_or_else(|| panic!("{joined}"));
    assert!(common::is_request_id(id), "{joined}");
    let missing = run(program, script, &sidecar, &common::arn("missing-porch"));
    assert!(missing.starts_with("refused: NOT_FOUND"), "{missing}");
    assert!(
        missing.contains("KVS request id ") && !missing.contains("id none"),
        "{missing}"
    );
    let denied = run(program, script, &sidecar, &common::arn("denied-porch"));
    assert!(denied.starts_with("refused: PERMISSION_DENIED"), "{denied}");
    let invalid = run(program, script, &sidecar, "not-an-arn");
    assert!(
        invalid.starts_with("refused: INVALID_ARGUMENT (channel_arn:"),
        "{invalid}"
    );
}

#[test]
fn the_python_example_joins_and_handles_errors() {
    check(&common::python(), "python/client.py");
}

#[test]
fn the_node_example_joins_and_handles_errors() {
    check("node", "node/client.js");
}
