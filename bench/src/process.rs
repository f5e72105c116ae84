//! The child processes of a run: the fake KVS and the sidecar binary.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use kvs_sidecar_harness::{self as ready, Launched};

use crate::targets::{ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};

/// A child process killed when dropped.
pub struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` and returns what `ready` picks from its output, reading every
/// line (stdout and stderr) on threads so the pipes never fill.
fn spawn<T: Send + 'static>(
    mut cmd: Command,
    what: &str,
    ready: impl Fn(&str) -> Option<T> + Send + Sync + Clone + 'static,
) -> (Process, T) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let (tx, rx) = mpsc::channel();
    let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [out, err] {
        let (tx, ready) = (tx.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                match ready(&line) {
                    Some(found) => {
                        let _ = tx.send(Ok(found));
                    }
                    None if line.contains(r#""level":"ERROR""#) => {
                        let _ = tx.send(Err(line));
                    }
                    None => {}
                }
            }
        });
    }
    drop(tx);
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(found)) => (Process { child }, found),
        Ok(Err(line)) => panic!("{what} failed: {line}"),
        Err(_) => panic!("{what} exited or did not start within 30 s"),
    }
}

/// Starts this program's `fake` subcommand; returns it and its URL.
pub fn fake() -> (Process, String) {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("fake");
    spawn(cmd, "the fake KVS", |line| {
        line.strip_prefix("listening ").map(str::to_owned)
    })
}

/// A started sidecar: its process, gRPC URL, and how long it took from
/// spawn to its ready file.
pub struct Sidecar {
    pub process: Launched,
    pub grpc_url: String,
    pub started_in: Duration,
}

/// Starts the release binary as a deployment would: credentials from the
/// environment, KVS at `fake`, JSON logs at the default level; `env` on
/// top. Ready as the tests see it: when it writes its `--ready-file`.
pub fn sidecar(binary: &Path, fake: &str, env: &[(String, String)], args: &[&str]) -> Sidecar {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/kvs-bench")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kvs-bench")
        .env("AWS_ENDPOINT_URL_KINESIS_VIDEO", fake)
        .env("KVS_SIDECAR_GRPC_LISTEN", "127.0.0.1:0")
        .env("KVS_SIDECAR_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KVS_SIDECAR_LOG_FORMAT", "json")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let process = ready::launch(cmd, Duration::from_secs(30))
        .unwrap_or_else(|output| panic!("kvs-sidecar did not start: {output:#?}"));
    Sidecar {
        grpc_url: format!("http://{}", process.ready.grpc),
        started_in: started.elapsed(),
        process,
    }
}

/// Asks the sidecar's grpc.health.v1 whether it serves.
pub async fn serving(url: &str) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    let Ok(channel) = channel.connect().await else {
        return false;
    };
    let mut health = HealthClient::new(channel);
    health
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}
