//! The polyglot examples in examples/, run against `kvs-sidecar --emulate`
//! as a backend team would. The Python and Node.js clients run the whole
//! flow (readiness, a presigned signaling connection, a join, the SDP offer
//! on the socket) from their sources; the Go one, a join and the error paths
//! the emulator offers, is compiled first (tests/go/build.sh).

use crate::common;
use std::process::Command;

use crate::common::{ARN, Sidecar};

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

/// Runs a provision-record-play example (Python, Node.js): a channel
/// without storage is provisioned, joined, watched until it records (from
/// the fragments KVS lists) and played back; a second run
/// changes nothing; a sidecar without --allow-storage-changes refuses.
fn check_playback(program: &str, args: &[String]) {
    let sidecar = Sidecar::emulated(&["--allow-storage-changes"]);
    let channel = common::arn("nostorage-porch");
    let first = run(program, args, &sidecar, &channel);
    let lines: Vec<&str> = first.lines().collect();
    let [storage, joined, recording, playlist] = lines[..] else {
        panic!("{first}");
    };
    assert_eq!(
        storage, "storage: STORAGE_CHANGE_STREAM_CREATED, STORAGE_CHANGE_STORAGE_ENABLED",
        "{first}"
    );
    assert!(joined.starts_with("joined: KVS request id "), "{first}");
    assert_eq!(recording, "recording: RECORDING_STATE_RECORDING", "{first}");
    assert_eq!(playlist, "playlist: #EXTM3U", "{first}");
    assert!(!first.contains("SessionToken"), "the URL is never printed");
    let again = run(program, args, &sidecar, &channel);
    assert!(again.starts_with("storage: in place\n"), "{again}");

    let locked = Sidecar::emulated(&[]);
    let refused = run(program, args, &locked, &channel);
    assert!(
        refused.starts_with("refused: PERMISSION_DENIED (")
            && refused.contains("--allow-storage-changes"),
        "{refused}"
    );
}

#[test]
fn the_python_playback_example_provisions_records_and_plays_back() {
    check_playback(&common::python(), &example("python/playback.py"));
}

#[test]
fn the_node_playback_example_provisions_records_and_plays_back() {
    check_playback("node", &example("node/playback.js"));
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

/// The `key=value` fields of an example's event line, up to its message
/// (the last field, JSON-quoted, which may hold spaces and `=`).
fn fields(line: &str) -> std::collections::HashMap<&str, &str> {
    let line = line.split(" message=").next().unwrap_or_default();
    line.split(' ')
        .filter_map(|field| field.split_once('='))
        .collect()
}

/// The example that maintains a session (examples/python/maintain.py),
/// against `--emulate` with each channel's first offer dropped and 5 s
/// sessions: it joins, joins again when the offer does not come, reports
/// the offer that does (and CONNECTED), and joins again ahead of the
/// (shortened) session limit; after its third join it ends its stream and
/// the sidecar ends it with OK. Then the error paths: a channel KVS does
/// not know, and a session whose every offer is dropped.
#[test]
fn the_python_maintain_example_rejoins_without_an_offer_and_ahead_of_the_limit() {
    let sidecar = Sidecar::emulated(&[
        "--emulate-drop-offers",
        "1",
        "--emulate-session-lifetime",
        "5s",
    ]);
    let mut args = example("python/maintain.py");
    args.extend(["--joins", "3", "--offer-wait", "1", "--rejoin-after", "1"].map(String::from));
    let out = run(&common::python(), &args, &sidecar, ARN);
    let lines: Vec<&str> = out.lines().collect();
    let joins: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("joined "))
        .map(|l| fields(l))
        .collect();
    let reasons: Vec<&str> = joins.iter().map(|f| f["reason"]).collect();
    assert_eq!(reasons, ["initial", "no_offer", "session_limit"], "{out}");
    for (n, join) in joins.iter().enumerate() {
        assert_eq!(join["attempt"], (n + 1).to_string(), "{out}");
        let id = join["aws_request_id"].trim_matches('"');
        assert!(common::is_request_id(id), "{out}");
    }
    // The first offer was dropped; the second join's arrived (and the
    // third's may have before the stream ended).
    let offers = lines
        .iter()
        .filter(|l| l.starts_with("offer sender=\"storage-session-"))
        .count();
    assert!((1..=2).contains(&offers), "{out}");
    assert!(lines.contains(&"reported OFFER_RECEIVED"), "{out}");
    assert!(lines.contains(&"reported CONNECTED"), "{out}");
    assert_eq!(lines.last(), Some(&"ended status=OK"), "{out}");
    // The last session, no longer maintained, ends 5 s after its join: the
    // emulator logs it, once, the earlier ones having been replaced.
    let expired = |sidecar: &Sidecar| {
        sidecar
            .output()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("emulated storage session expired"))
            })
            .filter(|v| v["channel_arn"] == ARN)
            .count()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while expired(&sidecar) == 0 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(expired(&sidecar), 1, "{:#?}", sidecar.output());

    let missing = run(
        &common::python(),
        &args,
        &sidecar,
        &common::arn("missing-porch"),
    );
    assert!(missing.starts_with("refused: NOT_FOUND ("), "{missing}");

    // Every offer dropped: two joins without one use up a budget of two.
    let sidecar = Sidecar::emulated(&["--emulate-drop-offers", "1000"]);
    let mut args = example("python/maintain.py");
    args.extend(["--joins", "5", "--offer-wait", "1", "--failure-budget", "2"].map(String::from));
    let out = run(&common::python(), &args, &sidecar, ARN);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("joined", rest)) => format!("joined {}", fields(rest)["reason"]),
            Some(("gave_up", rest)) => format!("gave_up {}", fields(rest)["reason"]),
            Some(("ended", rest)) => format!("ended {}", fields(rest)["status"]),
            _ => l.to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "joined initial",
            "joined no_offer",
            "gave_up failure_budget",
            "ended UNAVAILABLE"
        ],
        "{out}"
    );
}

/// The example that maintains a session with no_media_after while watching
/// its recording (examples/python/watch_recording.py), against `--emulate`:
/// on a channel that records, the watch goes from no media to recording
/// and the session is never joined again (no report comes, the fragments
/// prove it); on a `nomedia-` channel, the session joins again for want of
/// media and the watch says why.
#[test]
fn the_python_watch_recording_example_sees_media_and_rejoins_without_it() {
    let sidecar = Sidecar::emulated(&[]);
    let args = example("python/watch_recording.py");
    let out = run(&common::python(), &args, &sidecar, ARN);
    let lines: Vec<&str> = out.lines().collect();
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| match l.split_once(' ') {
            Some(("joined", rest)) => format!("joined {}", fields(rest)["reason"]),
            Some(("recording", rest)) => format!("recording {}", fields(rest)["state"]),
            Some(("ended", rest)) => format!("ended {}", fields(rest)["status"]),
            _ => l.to_string(),
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("joined initial"),
        "{out}"
    );
    assert_eq!(
        kinds.iter().filter(|k| k.starts_with("joined")).count(),
        1,
        "{out}"
    );
    assert!(kinds.contains(&"recording recording".to_owned()), "{out}");
    assert_eq!(kinds.last().map(String::as_str), Some("ended OK"), "{out}");
    let recording = lines
        .iter()
        .find(|l| l.starts_with("recording state=recording"))
        .unwrap();
    let stream = fields(recording)["stream"].trim_matches('"').to_owned();
    assert_eq!(stream, ARN.replace(":channel/", ":stream/"), "{out}");

    let mut args = example("python/watch_recording.py");
    args.extend(["--no-media-after", "2", "--joins", "2"].map(String::from));
    let out = run(
        &common::python(),
        &args,
        &sidecar,
        &common::arn("nomedia-porch"),
    );
    let kinds: Vec<String> = out
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("joined", rest)) => format!("joined {}", fields(rest)["reason"]),
            Some(("recording", rest)) => format!("recording {}", fields(rest)["state"]),
            Some(("ended", rest)) => format!("ended {}", fields(rest)["status"]),
            _ => l.to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "joined initial",
            "recording no_media",
            "joined no_media",
            "ended OK"
        ],
        "{out}"
    );
}
