//! The real `kvs-sidecar` binary, started on ephemeral loopback ports with
//! credentials that only the fake KVS knows.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use kvs_sidecar::pb::web_rtc_storage_service_client::WebRtcStorageServiceClient;
use tonic::transport::Channel;

use kvs_sidecar::emulator::{Emulator, EmulatorCredentials};
use kvs_sidecar_harness::{self as ready, Launched};

pub(crate) type RawH2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

pub(crate) struct Sidecar {
    launched: Launched,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts the sidecar with `kvs` as its control plane and `args`
    /// on top of the defaults. Backoffs are short (set through the environment,
    /// so a flag can override them) so retry tests are quick.
    pub(crate) fn start(kvs: &Emulator, args: &[&str]) -> Self {
        Self::start_with_env(kvs, args, &[])
    }

    /// As `start`, with extra environment; an empty value unsets a variable.
    pub(crate) fn start_with_env(kvs: &Emulator, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(&kvs.url(), kvs.credentials(), args, env)
    }

    /// Starts `kvs-sidecar --emulate`, with no AWS settings at all.
    pub(crate) fn emulated(args: &[&str]) -> Self {
        let mut all = vec!["--emulate"];
        all.extend_from_slice(args);
        let unset = [
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", ""),
        ];
        Self::launch("", &EmulatorCredentials::generate(), &all, &unset)
    }

    /// Starts the sidecar with its control plane at `kvs_url`, holding `keys`.
    pub(crate) fn launch(
        kvs_url: &str,
        keys: &EmulatorCredentials,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let set: Vec<_> = env.iter().filter(|(_, v)| !v.is_empty()).copied().collect();
        let unset: Vec<_> = env
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        Self::try_launch(kvs_url, keys, args, &set, &unset)
            .unwrap_or_else(|output| panic!("sidecar did not start: {output:#?}"))
    }

    /// As `launch`, but `env` is set exactly as given (an empty value stays
    /// set, and empty), `unset` is removed, and a sidecar that does not
    /// start gives back everything it printed.
    pub(crate) fn try_launch(
        kvs_url: &str,
        keys: &EmulatorCredentials,
        args: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Result<Self, Vec<String>> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvs-sidecar"));
        // Defaults through the environment, so a test's flags override them.
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KVS_SIDECAR_GRPC_LISTEN", "127.0.0.1:0")
            .env("KVS_SIDECAR_ADMIN_LISTEN", "127.0.0.1:0")
            .env("KVS_SIDECAR_LOG_FORMAT", "json")
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env(
                "AWS_SESSION_TOKEN",
                keys.session_token.as_deref().unwrap_or_default(),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/kvs-sidecar-test")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/kvs-sidecar-test",
            )
            .env("AWS_ENDPOINT_URL_KINESIS_VIDEO", kvs_url)
            .env("KVS_SIDECAR_RETRY_BASE_DELAY", "10ms")
            .env("KVS_SIDECAR_RETRY_THROTTLING_BASE_DELAY", "20ms")
            .envs(env.iter().copied());
        for k in unset {
            cmd.env_remove(k);
        }
        // Ready when the sidecar writes its --ready-file (kvs_sidecar_harness).
        let launched = ready::launch(cmd, Duration::from_secs(20))?;
        Ok(Self {
            grpc: launched.ready.grpc,
            admin: launched.ready.admin,
            launched,
        })
    }

    pub(crate) async fn client(&self) -> WebRtcStorageServiceClient<Channel> {
        WebRtcStorageServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to the sidecar")
    }

    /// A client that sends `grpc-timeout` but does not enforce it, so the
    /// status seen is the sidecar's own (tonic's Channel would cancel the
    /// call locally at the same instant).
    pub(crate) fn unenforced_client(&self) -> WebRtcStorageServiceClient<RawH2> {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let origin = format!("http://{}", self.grpc).parse().unwrap();
        WebRtcStorageServiceClient::with_origin(http, origin)
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.launched.child.id()
    }

    /// Everything the process printed so far, stdout and stderr.
    pub(crate) fn output(&self) -> Vec<String> {
        self.launched.output.lock().unwrap().clone()
    }

    /// The call log lines (`"message":"call"`), parsed.
    pub(crate) fn call_logs(&self) -> Vec<serde_json::Value> {
        self.output()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "call")
            .collect()
    }

    /// GET on the admin port: (status, body).
    pub(crate) fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit. Async, so the test's own connections
    /// keep running and can answer the server's GOAWAY while it drains.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.launched.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "sidecar still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// GET over HTTP/1.0 (no chunking, the server closes): (status, body).
pub(crate) fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
