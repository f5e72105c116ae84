//! The polyglot examples in examples/, run against `kvs-sidecar --emulate`
//! as a backend team would. The Python and Node.js clients run the whole
//! flow (readiness, a presigned signaling connection, a join, the SDP offer
//! on the socket) from their sources; the Go one, a join and the error paths
//! the emulator offers, is compiled first (tests/go/build.sh).

mod common;

use std::process::Command;

use common::{ARN, Sidecar};

/// Runs an example client (`program` with `args`, then the channel ARN) and
/// returns what it printed.
fn run(program: &str, args: &[String], sidecar: &Sidecar, arn: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .arg(arn)
        .env("KVS_SIDECAR_ADDR", sidecar.grpc.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!("run {program} {args:?}: {e} (scripts/test installs what examples need)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The path of a script in examples/.
fn example(script: &str) -> Vec<String> {
    vec![format!("{}/examples/{script}", env!("CARGO_MANIFEST_DIR"))]
}

/// Status code names as grpc-go's `codes.Code` prints them (`NotFound`).
fn go_name(code: &str) -> String {
    code.split('_')
        .map(|word| word[..1].to_owned() + &word[1..].to_lowercase())
        .collect()
}

/// Runs the example for a join that succeeds and for the emulator's error
/// paths; `code` spells a status code as the example's library prints it.
fn check(program: &str, args: &[String], code: fn(&str) -> String) {
    let sidecar = Sidecar::emulated(&[]);
    let joined = run(program, args, &sidecar, ARN);
    let id = joined
        .trim()
        .strip_prefix("joined: KVS request id ")
        .unwrap_or_else(|| panic!("{joined}"));
    assert!(common::is_request_id(id), "{joined}");
    let missing = run(program, args, &sidecar, &common::arn("missing-porch"));
    let refused = |name: &str| format!("refused: {} (", code(name));
    assert!(missing.starts_with(&refused("NOT_FOUND")), "{missing}");
    assert!(
        missing.contains("KVS request id ") && !missing.contains("id none"),
        "{missing}"
    );
    let denied = run(program, args, &sidecar, &common::arn("denied-porch"));
    assert!(
        denied.starts_with(&refused("PERMISSION_DENIED")),
        "{denied}"
    );
    let invalid = run(program, args, &sidecar, "not-an-arn");
    assert!(
        invalid.starts_with(&(refused("INVALID_ARGUMENT") + "channel_arn:")),
        "{invalid}"
    );
}

/// Runs a whole-flow example (Python, Node.js) for a ready channel, one
/// that is not ready, and the error paths.
fn check_flow(program: &str, args: &[String]) {
    let sidecar = Sidecar::emulated(&[]);
    let flow = run(program, args, &sidecar, ARN);
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
    let unready = run(program, args, &sidecar, &common::arn("nostorage-porch"));
    assert!(
        unready.starts_with("not ready: STORAGE_DISABLED: "),
        "{unready}"
    );
    let denied = run(program, args, &sidecar, &common::arn("denied-porch"));
    assert!(denied.starts_with("not ready: ACCESS_DENIED: "), "{denied}");
    let missing = run(program, args, &sidecar, &common::arn("missing-porch"));
    assert!(missing.starts_with("refused: NOT_FOUND ("), "{missing}");
    assert!(
        missing.contains("KVS request id ") && !missing.contains("id none"),
        "{missing}"
    );
    let invalid = run(program, args, &sidecar, "not-an-arn");
    assert!(
        invalid.starts_with("refused: INVALID_ARGUMENT (channel_arn:"),
        "{invalid}"
    );
}

#[test]
fn the_python_example_runs_the_whole_flow_and_handles_errors() {
    check_flow(&common::python(), &example("python/client.py"));
}

#[test]
fn the_node_example_runs_the_whole_flow_and_handles_errors() {
    check_flow("node", &example("node/client.js"));
}

/// Built by tests/go/build.sh with Debian's Go toolchain and grpc-go, in
/// GOPATH mode, into the target directory; the generated code stays there.
#[test]
fn the_go_example_joins_and_handles_errors() {
    let out = concat!(env!("CARGO_TARGET_TMPDIR"), "/go");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/build.sh");
    let built = Command::new("bash")
        .arg(script)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        built.status.success(),
        "{script} failed (.ci/run installs Debian's Go packages):\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    check(&format!("{out}/kvs-sidecar-go-example"), &[], go_name);
}
