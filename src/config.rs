//! Every setting: a flag and an environment variable each, with defaults
//! that are safe for a sidecar. [`Config`] is made of one group per part
//! of the sidecar (each with its own heading in `--help`), and a group
//! turns itself into its component's settings. The flags and variables are
//! a compatibility contract (docs/configuration.md): moving a setting
//! between groups changes neither its name nor its variable, and a test
//! below holds the whole list.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};
use http::Uri;

use crate::{
    allow_list::ArnPattern,
    aws_env,
    grpc::CallLimits,
    kvs::{
        ClientSettings,
        endpoint::EndpointSettings,
        retry::Backoff,
        stack::{RateLimits, StackConfig},
        transport::{HttpConfig, Network},
    },
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kvs-sidecar",
    version,
    about = "gRPC sidecar for the Amazon Kinesis Video Streams WebRTC Storage API"
)]
pub struct Config {
    #[command(flatten)]
    pub emulator: EmulatorArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub logs: LogArgs,

    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub upstream: UpstreamArgs,

    #[command(flatten)]
    pub calls: CallArgs,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    // The process as a whole: read by main, not by one component.
    /// Tokio worker threads. By default one per CPU the process may use,
    /// which follows the container's CPU limit (cgroup quota) rather than
    /// the node's core count.
    #[arg(long, env = "KVS_SIDECAR_WORKER_THREADS", help_heading = "Process")]
    pub worker_threads: Option<NonZeroUsize>,

    /// After SIGTERM/SIGINT, how long in-flight calls may take to finish.
    /// Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(
        long,
        env = "KVS_SIDECAR_SHUTDOWN_GRACE",
        default_value = "20s",
        value_parser = humantime::parse_duration,
        help_heading = "Process"
    )]
    pub shutdown_grace: Duration,
}

/// The built-in KVS emulator (`--emulate`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Emulator")]
pub struct EmulatorArgs {
    /// Run against a KVS emulator on loopback instead of AWS: no account or
    /// credentials needed. Channel names starting with `missing-` or
    /// `denied-` answer NOT_FOUND and PERMISSION_DENIED.
    #[arg(long, env = "KVS_SIDECAR_EMULATE")]
    pub emulate: bool,

    /// With --emulate: how long an emulated storage session lasts after its
    /// join unless joined again (KVS ends them after at most 1 hour). Shorten
    /// it to watch MaintainStorageSession re-join ahead of the limit (the
    /// emulator logs each session that expires). 1s to 1h.
    #[arg(
        long,
        env = "KVS_SIDECAR_EMULATE_SESSION_LIFETIME",
        default_value = "1h",
        value_parser = session_lifetime,
        requires = "emulate"
    )]
    pub emulate_session_lifetime: Duration,

    /// With --emulate: drop the first N SDP offers of each channel's master
    /// and of each viewer. Their joins answer 200 but no offer arrives on
    /// the signaling WebSocket, as sometimes happens with KVS, so
    /// MaintainStorageSession's re-join when no offer arrives can be seen.
    /// 0 to 1000.
    #[arg(
        long,
        env = "KVS_SIDECAR_EMULATE_DROP_OFFERS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=1000),
        requires = "emulate"
    )]
    pub emulate_drop_offers: u32,
}

/// Where the sidecar listens, and where it says so.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners")]
pub struct ListenArgs {
    /// gRPC listen address. Loopback by default: the sidecar acts with the
    /// pod's AWS role, so only its pod should reach it.
    #[arg(
        long,
        env = "KVS_SIDECAR_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_listen: SocketAddr,

    /// Also serve gRPC on this Unix socket (mode 0600), e.g. on an emptyDir
    /// volume shared with the app container.
    #[arg(long, env = "KVS_SIDECAR_GRPC_LISTEN_UNIX")]
    pub grpc_listen_unix: Option<PathBuf>,

    /// Admin HTTP listen address (/metrics, /readyz, /livez).
    #[arg(
        long,
        env = "KVS_SIDECAR_ADMIN_LISTEN",
        default_value = "127.0.0.1:9901"
    )]
    pub admin_listen: SocketAddr,

    /// Once serving, write the bound addresses to this file as JSON
    /// (`{"pid", "grpc", "admin", "unix"}`), replaced whole, and remove it
    /// when draining starts: for supervisors, tests and benchmarks that
    /// start the sidecar on ephemeral ports (`127.0.0.1:0`).
    #[arg(long, env = "KVS_SIDECAR_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// TLS on the gRPC port.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain: serve the gRPC port over TLS (with --tls-key).
    #[arg(long, env = "KVS_SIDECAR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KVS_SIDECAR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require client certificates signed by them
    /// (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "KVS_SIDECAR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The log lines (traces are configured by the `OTEL_*` variables).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs")]
pub struct LogArgs {
    /// Log format: text for a terminal, json (one object a line) for log
    /// pipelines.
    #[arg(long, env = "KVS_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or tracing-subscriber filter; RUST_LOG, when set, wins.
    #[arg(long, env = "KVS_SIDECAR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Where KVS is and whose credentials sign for it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AWS")]
pub struct AwsArgs {
    /// Control-plane endpoint override. Without it the AWS SDKs' settings
    /// apply (AWS_ENDPOINT_URL_KINESIS_VIDEO, AWS_ENDPOINT_URL, the profile's
    /// services section, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS); this flag is
    /// explicit configuration, which those leave alone. Joins always go to
    /// the endpoint discovery returns.
    #[arg(long)]
    pub kvs_endpoint_url: Option<Uri>,

    /// PEM CA certificates to trust for KVS on top of the bundled Mozilla
    /// roots, the platform's store (SSL_CERT_FILE / SSL_CERT_DIR) and
    /// AWS_CA_BUNDLE: a TLS-inspecting proxy's CA, or a private endpoint's.
    #[arg(long, env = "KVS_SIDECAR_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// Cross-account channels: `ACCOUNT=ROLE_ARN[,external-id=ID]`,
    /// repeatable (`;`-separated in the environment). Every call for a
    /// channel of ACCOUNT signs with credentials from STS AssumeRole of
    /// ROLE_ARN, on top of the default chain; other accounts use the
    /// default chain.
    #[arg(long = "assume-role", env = "KVS_SIDECAR_ASSUME_ROLE", value_delimiter = ';', value_parser = assume_role)]
    pub assume_roles: Vec<AssumeRole>,

    /// RoleSessionName of the AssumeRole calls (CloudTrail shows it).
    #[arg(
        long,
        env = "KVS_SIDECAR_ASSUME_ROLE_SESSION_NAME",
        default_value = "kvs-sidecar"
    )]
    pub assume_role_session_name: String,
}

/// The KVS client: attempts, retries, client-side rates, timeouts, the connection pool and the endpoint cache.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "KVS requests and retries")]
pub struct UpstreamArgs {
    /// Attempts per KVS request, the first included (AWS standard mode: 3).
    #[arg(long, env = "KVS_SIDECAR_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub max_attempts: u32,

    /// Never retry a join that may have reached KVS: each join that reaches
    /// it makes KVS send the master an SDP offer, so such a retry can mean
    /// a second offer. Joins refused before KVS acted (connect failures,
    /// throttling, credential or signature refusals) are still retried.
    #[arg(long, env = "KVS_SIDECAR_NO_JOIN_RETRY_AFTER_SEND")]
    pub no_join_retry_after_send: bool,

    /// Tokens in the process-wide retry quota (AWS standard mode: 500; a
    /// retry costs 5, a retry after a timeout 10, a success pays back).
    #[arg(long, env = "KVS_SIDECAR_RETRY_QUOTA", default_value_t = 500)]
    pub retry_quota: u32,

    /// Client-side limit on GetSignalingChannelEndpoint requests per second
    /// (KVS allows 300 per account; lower it when several pods share one).
    /// Adapts down when KVS throttles. 0 turns it off.
    #[arg(long, env = "KVS_SIDECAR_DISCOVERY_RATE", default_value_t = 300.0, value_parser = rate)]
    pub discovery_rate: f64,

    /// Client-side limit on join requests per second; 0 (the default) turns
    /// it off. Adapts down when KVS throttles.
    #[arg(long, env = "KVS_SIDECAR_JOIN_RATE", default_value_t = 0.0, value_parser = rate)]
    pub join_rate: f64,

    /// Client-side limit on the readiness checks' Describe* requests per
    /// second, one bucket for the three (DescribeMediaStorageConfiguration
    /// allows 50 per account). Adapts down when KVS throttles. 0 turns it
    /// off.
    #[arg(long, env = "KVS_SIDECAR_DESCRIBE_RATE", default_value_t = 50.0, value_parser = rate)]
    pub describe_rate: f64,

    /// Backoff base for retries of server errors, resets and timeouts.
    #[arg(long, env = "KVS_SIDECAR_RETRY_BASE_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_base_delay: Duration,

    /// Backoff base for retries of throttled requests.
    #[arg(long, env = "KVS_SIDECAR_RETRY_THROTTLING_BASE_DELAY", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_throttling_base_delay: Duration,

    /// Longest wait between two attempts.
    #[arg(long, env = "KVS_SIDECAR_RETRY_MAX_BACKOFF", default_value = "20s", value_parser = positive_duration)]
    pub retry_max_backoff: Duration,

    /// Timeout of one attempt (connect, send, answer).
    #[arg(long, env = "KVS_SIDECAR_ATTEMPT_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub attempt_timeout: Duration,

    /// TCP connect timeout to KVS.
    #[arg(long, env = "KVS_SIDECAR_CONNECT_TIMEOUT", default_value = "2s", value_parser = positive_duration)]
    pub connect_timeout: Duration,

    /// Requests to KVS in flight at once; further ones wait for a slot
    /// within their deadline.
    #[arg(
        long,
        env = "KVS_SIDECAR_MAX_UPSTREAM_CONCURRENCY",
        default_value_t = 256,
        value_parser = count
    )]
    pub max_upstream_concurrency: usize,

    /// How long an idle pooled connection to KVS is kept.
    #[arg(long, env = "KVS_SIDECAR_POOL_IDLE_TIMEOUT", default_value = "90s", value_parser = positive_duration)]
    pub pool_idle_timeout: Duration,

    /// Idle pooled connections kept per KVS host; by default as many as
    /// --max-upstream-concurrency lets be busy, so a burst's connections
    /// are reused rather than closed and reopened (a TLS handshake each).
    #[arg(long, env = "KVS_SIDECAR_POOL_MAX_IDLE_PER_HOST")]
    pub pool_max_idle_per_host: Option<usize>,

    /// How long a discovered WEBRTC endpoint is reused (the KVS WebRTC C SDK
    /// keeps them 10 hours).
    #[arg(long, env = "KVS_SIDECAR_ENDPOINT_CACHE_TTL", default_value = "10h", value_parser = positive_duration)]
    pub endpoint_cache_ttl: Duration,

    /// Most channel endpoints cached (per channel and role, about 1 KiB
    /// each); the least recently used go first.
    #[arg(
        long,
        env = "KVS_SIDECAR_ENDPOINT_CACHE_CAPACITY",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000)
    )]
    pub endpoint_cache_capacity: u64,

    /// Longest wait for the credential provider chain.
    #[arg(long, env = "KVS_SIDECAR_CREDENTIALS_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub credentials_timeout: Duration,
}

/// What a call may do and hold: deadlines, limits, the allow-list, the services offered.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Calls")]
pub struct CallArgs {
    /// Deadline of a call whose caller set none (or a longer one).
    #[arg(long, env = "KVS_SIDECAR_MAX_CALL_DURATION", default_value = "30s", value_parser = positive_duration)]
    pub max_call_duration: Duration,

    /// Calls in flight at once; past it, calls are refused at once with
    /// RESOURCE_EXHAUSTED rather than queued.
    #[arg(long, env = "KVS_SIDECAR_MAX_CONCURRENT_CALLS", default_value_t = 1024, value_parser = count)]
    pub max_concurrent_calls: usize,

    /// Largest request message accepted, in bytes. A valid request is at
    /// most ~1.3 KiB (a 1024-character ARN and a 256-character client id).
    #[arg(long, env = "KVS_SIDECAR_MAX_REQUEST_BYTES", default_value_t = 4096, value_parser = request_bytes)]
    pub max_request_bytes: usize,

    /// Channels this sidecar may act on: comma-separated ARN patterns with
    /// `*` globs per field, e.g.
    /// `arn:aws:kinesisvideo:*:123456789012:channel/recorder-*/*`. Empty
    /// allows every channel the AWS role can reach.
    #[arg(long, env = "KVS_SIDECAR_ALLOWED_CHANNELS", value_delimiter = ',')]
    pub allowed_channels: Vec<ArnPattern>,

    /// Lets EnsureStorage write to the AWS account (CreateStream,
    /// UpdateDataRetention, UpdateMediaStorageConfiguration). Off by
    /// default: without it EnsureStorage is PERMISSION_DENIED and sends
    /// nothing.
    #[arg(long, env = "KVS_SIDECAR_ALLOW_STORAGE_CHANGES")]
    pub allow_storage_changes: bool,

    /// Serve gRPC server reflection (grpcurl needs it; `false` turns it off).
    #[arg(long, env = "KVS_SIDECAR_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,

    /// How long a presigned signaling URL (GetSignalingConnection) is
    /// accepted: X-Amz-Expires, 1 s to 300 s (KVS's maximum).
    #[arg(long, env = "KVS_SIDECAR_SIGNALING_URL_EXPIRY", default_value = "300s", value_parser = signaling_url_expiry)]
    pub signaling_url_expiry: Duration,

    /// How long a CheckStorageReadiness answer is reused for its channel
    /// (DescribeMediaStorageConfiguration allows 5 requests a second per
    /// channel); concurrent checks of a channel share one either way.
    #[arg(long, env = "KVS_SIDECAR_READINESS_CACHE_TTL", default_value = "5s", value_parser = positive_duration)]
    pub readiness_cache_ttl: Duration,

    /// Most streams whose fragments are polled at once for
    /// GetRecordingStatus, WatchRecording and sessions with no_media_after;
    /// a call for one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KVS_SIDECAR_MAX_RECORDING_STREAMS", default_value_t = 1000, value_parser = count)]
    pub max_recording_streams: usize,
}

/// Maintained sessions and idempotency keys, in memory or shared by replicas through Redis.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sessions, idempotency and state store")]
pub struct StateArgs {
    /// Most sessions maintained at once by MaintainStorageSession streams;
    /// more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KVS_SIDECAR_MAX_MAINTAINED_SESSIONS", default_value_t = 1000, value_parser = count)]
    pub max_maintained_sessions: usize,

    /// How long a join's idempotency key answers repeats with the first
    /// call's outcome.
    #[arg(long, env = "KVS_SIDECAR_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = positive_duration)]
    pub idempotency_window: Duration,

    /// Most idempotency keys remembered (each under 1.5 KiB, about 0.3 KiB
    /// for a typical ARN); the least recently used go first.
    #[arg(
        long,
        env = "KVS_SIDECAR_IDEMPOTENCY_KEYS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000)
    )]
    pub idempotency_keys: u64,

    /// Redis shared by the replicas of a gateway, e.g.
    /// `redis://kvs-state:6379/0`: idempotency keys and session ownership
    /// then hold across replicas. Unset: each sidecar keeps them in memory.
    #[arg(long, env = "KVS_SIDECAR_STATE_STORE")]
    pub state_store: Option<String>,

    /// Longest wait for one state-store operation.
    #[arg(long, env = "KVS_SIDECAR_STATE_STORE_TIMEOUT", default_value = "500ms", value_parser = positive_duration)]
    pub state_store_timeout: Duration,

    /// How long a maintained session's lease in the state store lasts
    /// unless renewed (every third of it): how soon another replica can
    /// take over a session whose replica died.
    #[arg(long, env = "KVS_SIDECAR_SESSION_LEASE", default_value = "15s", value_parser = positive_duration)]
    pub session_lease: Duration,
}

/// What a connection can make the sidecar hold (issue 13).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionArgs {
    /// Open connections to the gRPC port (TCP, TLS and Unix socket
    /// together); further connections are closed at once.
    #[arg(long, env = "KVS_SIDECAR_MAX_CONNECTIONS", default_value_t = 1000, value_parser = count)]
    pub max_connections: usize,

    /// Open connections to the admin port; kept apart from --max-connections
    /// so probes still get through when the gRPC port is full.
    #[arg(long, env = "KVS_SIDECAR_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = count)]
    pub admin_max_connections: usize,

    /// Calls in flight on one HTTP/2 connection (its MAX_CONCURRENT_STREAMS),
    /// so one connection cannot take every --max-concurrent-calls slot.
    #[arg(
        long,
        env = "KVS_SIDECAR_MAX_CALLS_PER_CONNECTION",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_calls_per_connection: u32,

    /// Time a new connection has to finish its TLS handshake, and then to
    /// send the HTTP/2 preface or an HTTP/1.1 request head.
    #[arg(long, env = "KVS_SIDECAR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// HTTP/2 keep-alive: a PING after this long without frames from the peer.
    #[arg(long, env = "KVS_SIDECAR_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// HTTP/2 keep-alive: a peer that does not answer a PING within this
    /// long is disconnected.
    #[arg(long, env = "KVS_SIDECAR_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// A connection with no call in flight for this long is closed (GOAWAY
    /// first; gRPC clients reconnect on their next call).
    #[arg(long, env = "KVS_SIDECAR_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A rate in requests per second: 0 (off) or a finite positive number no
/// larger than any KVS quota could make useful.
fn rate(s: &str) -> Result<f64, String> {
    const MAX: f64 = 100_000.0;
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if !rate.is_finite() || !(0.0..=MAX).contains(&rate) {
        return Err(format!(
            "{s:?} is not a rate from 0 (off) to {MAX} requests per second"
        ));
    }
    Ok(rate)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

/// One account's role, from `--assume-role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub account: String,
    pub role_arn: String,
    pub external_id: Option<String>,
}

fn assume_role(s: &str) -> Result<AssumeRole, String> {
    let usage = || format!("{s:?} is not ACCOUNT=ROLE_ARN[,external-id=ID]");
    let (account, rest) = s.trim().split_once('=').ok_or_else(usage)?;
    let (role_arn, options) = rest.split_once(',').unwrap_or((rest, ""));
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{}: the account must be 12 digits", usage()));
    }
    if !role_arn.starts_with("arn:") || !role_arn.contains(":role/") {
        return Err(format!("{}: {role_arn:?} is not a role ARN", usage()));
    }
    let external_id = match options {
        "" => None,
        o => Some(
            o.strip_prefix("external-id=")
                .filter(|id| !id.is_empty())
                .ok_or_else(usage)?
                .to_owned(),
        ),
    };
    Ok(AssumeRole {
        account: account.to_owned(),
        role_arn: role_arn.to_owned(),
        external_id,
    })
}

/// An emulated storage session's lifetime: whole seconds (KVS counts no
/// finer), from 1 s to KVS's 1 hour.
fn session_lifetime(s: &str) -> Result<Duration, String> {
    let d = positive_duration(s)?;
    let max = crate::emulator::MAX_SESSION_LIFETIME;
    if d < Duration::from_secs(1) || d > max || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds from 1s to {}s (KVS's longest session)",
            max.as_secs()
        ));
    }
    Ok(d)
}

/// X-Amz-Expires of a presigned signaling URL: whole seconds, at most
/// KVS's 300.
fn signaling_url_expiry(s: &str) -> Result<Duration, String> {
    let d = positive_duration(s)?;
    let max = crate::kvs::presign::MAX_EXPIRY;
    if d < Duration::from_secs(1) || d > max || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds from 1s to {}s (KVS's maximum)",
            max.as_secs()
        ));
    }
    Ok(d)
}

/// A count of things in flight or kept: at least one, at most a million.
fn count(s: &str) -> Result<usize, String> {
    const MAX: usize = 1_000_000;
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from 1 to {MAX}")),
    }
}

/// The largest request message: big enough for the largest valid request
/// (~1.3 KiB), small enough that it bounds what a caller makes us buffer.
fn request_bytes(s: &str) -> Result<usize, String> {
    const RANGE: std::ops::RangeInclusive<usize> = 2048..=1024 * 1024;
    match s.parse::<usize>() {
        Ok(n) if RANGE.contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a size from {} to {} bytes",
            RANGE.start(),
            RANGE.end()
        )),
    }
}

// === impl AwsArgs ===

impl AwsArgs {
    /// What the flags add to the AWS environment the SDKs read.
    pub(crate) fn env_flags(&self) -> aws_env::Flags<'_> {
        aws_env::Flags {
            endpoint_url: self.kvs_endpoint_url.as_ref(),
            ca_bundle: self.ca_bundle.as_deref(),
        }
    }
}

// === impl CallArgs ===

impl CallArgs {
    /// The call skeleton's deadline and slots.
    pub(crate) fn limits(&self) -> CallLimits {
        CallLimits {
            max_call_duration: self.max_call_duration,
            max_concurrent_calls: self.max_concurrent_calls,
        }
    }
}

// === impl UpstreamArgs ===

impl UpstreamArgs {
    /// The KVS client's settings: this configuration, with the endpoint
    /// choice and network the AWS environment gave.
    pub fn client(&self, endpoints: EndpointSettings, network: Network) -> ClientSettings {
        ClientSettings {
            stack: self.stack(network),
            endpoints,
            endpoint_cache_ttl: self.endpoint_cache_ttl,
            endpoint_cache_capacity: self.endpoint_cache_capacity,
            credentials_timeout: self.credentials_timeout,
        }
    }

    pub fn stack(&self, network: Network) -> StackConfig {
        StackConfig {
            max_attempts: self.max_attempts,
            retry_sent_joins: !self.no_join_retry_after_send,
            backoff: Backoff {
                base: self.retry_base_delay,
                throttling_base: self.retry_throttling_base_delay,
                max: self.retry_max_backoff,
            },
            retry_quota: self.retry_quota,
            rate_limits: RateLimits {
                discovery: (self.discovery_rate > 0.0).then_some(self.discovery_rate),
                join: (self.join_rate > 0.0).then_some(self.join_rate),
                describe: (self.describe_rate > 0.0).then_some(self.describe_rate),
            },
            attempt_timeout: self.attempt_timeout,
            max_concurrency: self.max_upstream_concurrency,
            http: HttpConfig {
                connect_timeout: self.connect_timeout,
                pool_idle_timeout: self.pool_idle_timeout,
                pool_max_idle_per_host: self
                    .pool_max_idle_per_host
                    .unwrap_or(self.max_upstream_concurrency),
                network,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_standard_retries() {
        let c = Config::try_parse_from(["kvs-sidecar"]).unwrap();
        assert!(c.listen.grpc_listen.ip().is_loopback());
        assert!(c.listen.admin_listen.ip().is_loopback());
        assert_eq!(c.upstream.max_attempts, 3);
        assert_eq!(c.upstream.endpoint_cache_ttl, Duration::from_secs(36_000));
    }

    #[test]
    fn flags_parse_durations_and_bound_attempts() {
        let c = Config::try_parse_from([
            "kvs-sidecar",
            "--attempt-timeout",
            "250ms",
            "--max-attempts",
            "5",
        ])
        .unwrap();
        assert_eq!(c.upstream.attempt_timeout, Duration::from_millis(250));
        assert_eq!(c.upstream.stack(Network::direct()).max_attempts, 5);
        assert!(Config::try_parse_from(["kvs-sidecar", "--max-attempts", "0"]).is_err());
        let roles = Config::try_parse_from([
            "kvs-sidecar",
            "--assume-role",
            "111122223333=arn:aws:iam::111122223333:role/kvs-recorder",
            "--assume-role",
            "444455556666=arn:aws:iam::444455556666:role/r,external-id=x-1",
        ])
        .unwrap()
        .aws
        .assume_roles;
        assert_eq!(roles.len(), 2);
        assert_eq!(roles[0].account, "111122223333");
        assert_eq!(roles[0].external_id, None);
        assert_eq!(roles[1].external_id.as_deref(), Some("x-1"));
        for refused in [
            "1111=arn:aws:iam::1111:role/r",
            "111122223333=arn:aws:iam::111122223333:user/u",
            "111122223333",
            "111122223333=arn:aws:iam::111122223333:role/r,session=x",
        ] {
            assert!(
                Config::try_parse_from(["kvs-sidecar", "--assume-role", refused]).is_err(),
                "{refused}"
            );
        }
        let expiry = |v: &str| {
            Config::try_parse_from(["kvs-sidecar", "--signaling-url-expiry", v])
                .map(|c| c.calls.signaling_url_expiry)
        };
        assert_eq!(expiry("60s").unwrap(), Duration::from_secs(60));
        for refused in ["301s", "0s", "1500ms", "10m"] {
            assert!(expiry(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn emulator_flags_are_bounded_and_need_emulate() {
        let c = Config::try_parse_from(["kvs-sidecar", "--emulate"]).unwrap();
        assert_eq!(
            c.emulator.emulate_session_lifetime,
            Duration::from_secs(3600)
        );
        assert_eq!(c.emulator.emulate_drop_offers, 0);
        let c = Config::try_parse_from([
            "kvs-sidecar",
            "--emulate",
            "--emulate-session-lifetime",
            "5s",
            "--emulate-drop-offers",
            "2",
        ])
        .unwrap();
        assert_eq!(c.emulator.emulate_session_lifetime, Duration::from_secs(5));
        assert_eq!(c.emulator.emulate_drop_offers, 2);
        for refused in ["0s", "500ms", "1500ms", "61m", "2h"] {
            let err = Config::try_parse_from([
                "kvs-sidecar",
                "--emulate",
                "--emulate-session-lifetime",
                refused,
            ])
            .expect_err(refused)
            .to_string();
            assert!(
                err.contains("--emulate-session-lifetime"),
                "{refused}: {err}"
            );
        }
        assert!(
            Config::try_parse_from(["kvs-sidecar", "--emulate", "--emulate-drop-offers", "1001"])
                .is_err()
        );
        for without in [
            ["kvs-sidecar", "--emulate-drop-offers", "1"],
            ["kvs-sidecar", "--emulate-session-lifetime", "5s"],
        ] {
            let err = Config::try_parse_from(without).expect_err("needs --emulate");
            assert!(err.to_string().contains("--emulate"), "{err}");
        }
    }

    #[test]
    fn refuses_negative_nan_zero_and_absurd_values_with_a_reason() {
        for (flag, value, reason) in [
            ("--discovery-rate", "-1", "not a rate"),
            ("--discovery-rate", "NaN", "not a rate"),
            ("--join-rate", "inf", "not a rate"),
            ("--join-rate", "1e12", "not a rate"),
            ("--attempt-timeout", "0s", "longer than 0"),
            ("--max-call-duration", "0ms", "longer than 0"),
            ("--endpoint-cache-ttl", "0s", "longer than 0"),
            ("--max-upstream-concurrency", "0", "from 1 to"),
            ("--max-concurrent-calls", "-5", "from 1 to"),
            ("--max-request-bytes", "10", "from 2048"),
            ("--endpoint-cache-capacity", "0", "0"),
        ] {
            let err = Config::try_parse_from(["kvs-sidecar", &format!("{flag}={value}")])
                .expect_err(&format!("{flag} {value}"))
                .to_string();
            assert!(
                err.contains(flag) && err.contains(reason),
                "{flag} {value}: {err}"
            );
        }
        let ok =
            Config::try_parse_from(["kvs-sidecar", "--discovery-rate", "0", "--join-rate", "2.5"])
                .unwrap();
        assert!(
            ok.upstream
                .stack(Network::direct())
                .rate_limits
                .discovery
                .is_none()
        );
        assert_eq!(
            ok.upstream.stack(Network::direct()).rate_limits.join,
            Some(2.5)
        );
    }

    /// Every flag, its variable and its default, as they were when the
    /// flags were one flat struct: the compatibility contract of
    /// docs/configuration.md. Grouping may reorder `--help`, never rename
    /// a flag, drop a variable or change a default.
    #[test]
    fn no_flag_variable_or_default_changed() {
        use clap::CommandFactory;
        #[rustfmt::skip]
        const EXPECTED: &[(&str, Option<&str>, &[&str])] = &[
            ("emulate", Some("KVS_SIDECAR_EMULATE"), &[]),
            ("emulate-session-lifetime", Some("KVS_SIDECAR_EMULATE_SESSION_LIFETIME"), &["1h"]),
            ("emulate-drop-offers", Some("KVS_SIDECAR_EMULATE_DROP_OFFERS"), &["0"]),
            ("grpc-listen", Some("KVS_SIDECAR_GRPC_LISTEN"), &["127.0.0.1:50051"]),
            ("grpc-listen-unix", Some("KVS_SIDECAR_GRPC_LISTEN_UNIX"), &[]),
            ("tls-cert", Some("KVS_SIDECAR_TLS_CERT"), &[]),
            ("tls-key", Some("KVS_SIDECAR_TLS_KEY"), &[]),
            ("tls-client-ca", Some("KVS_SIDECAR_TLS_CLIENT_CA"), &[]),
            ("admin-listen", Some("KVS_SIDECAR_ADMIN_LISTEN"), &["127.0.0.1:9901"]),
            ("ready-file", Some("KVS_SIDECAR_READY_FILE"), &[]),
            ("log-format", Some("KVS_SIDECAR_LOG_FORMAT"), &["text"]),
            ("log-level", Some("KVS_SIDECAR_LOG_LEVEL"), &["info"]),
            ("kvs-endpoint-url", None, &[]),
            ("ca-bundle", Some("KVS_SIDECAR_CA_BUNDLE"), &[]),
            ("max-attempts", Some("KVS_SIDECAR_MAX_ATTEMPTS"), &["3"]),
            ("no-join-retry-after-send", Some("KVS_SIDECAR_NO_JOIN_RETRY_AFTER_SEND"), &[]),
            ("idempotency-window", Some("KVS_SIDECAR_IDEMPOTENCY_WINDOW"), &["10m"]),
            ("idempotency-keys", Some("KVS_SIDECAR_IDEMPOTENCY_KEYS"), &["10000"]),
            ("max-maintained-sessions", Some("KVS_SIDECAR_MAX_MAINTAINED_SESSIONS"), &["1000"]),
            ("max-recording-streams", Some("KVS_SIDECAR_MAX_RECORDING_STREAMS"), &["1000"]),
            ("state-store", Some("KVS_SIDECAR_STATE_STORE"), &[]),
            ("state-store-timeout", Some("KVS_SIDECAR_STATE_STORE_TIMEOUT"), &["500ms"]),
            ("session-lease", Some("KVS_SIDECAR_SESSION_LEASE"), &["15s"]),
            ("retry-quota", Some("KVS_SIDECAR_RETRY_QUOTA"), &["500"]),
            ("discovery-rate", Some("KVS_SIDECAR_DISCOVERY_RATE"), &["300"]),
            ("join-rate", Some("KVS_SIDECAR_JOIN_RATE"), &["0"]),
            ("describe-rate", Some("KVS_SIDECAR_DESCRIBE_RATE"), &["50"]),
            ("readiness-cache-ttl", Some("KVS_SIDECAR_READINESS_CACHE_TTL"), &["5s"]),
            ("allow-storage-changes", Some("KVS_SIDECAR_ALLOW_STORAGE_CHANGES"), &[]),
            ("retry-base-delay", Some("KVS_SIDECAR_RETRY_BASE_DELAY"), &["100ms"]),
            ("retry-throttling-base-delay", Some("KVS_SIDECAR_RETRY_THROTTLING_BASE_DELAY"), &["500ms"]),
            ("retry-max-backoff", Some("KVS_SIDECAR_RETRY_MAX_BACKOFF"), &["20s"]),
            ("attempt-timeout", Some("KVS_SIDECAR_ATTEMPT_TIMEOUT"), &["5s"]),
            ("connect-timeout", Some("KVS_SIDECAR_CONNECT_TIMEOUT"), &["2s"]),
            ("max-call-duration", Some("KVS_SIDECAR_MAX_CALL_DURATION"), &["30s"]),
            ("max-upstream-concurrency", Some("KVS_SIDECAR_MAX_UPSTREAM_CONCURRENCY"), &["256"]),
            ("pool-idle-timeout", Some("KVS_SIDECAR_POOL_IDLE_TIMEOUT"), &["90s"]),
            ("pool-max-idle-per-host", Some("KVS_SIDECAR_POOL_MAX_IDLE_PER_HOST"), &[]),
            ("endpoint-cache-ttl", Some("KVS_SIDECAR_ENDPOINT_CACHE_TTL"), &["10h"]),
            ("endpoint-cache-capacity", Some("KVS_SIDECAR_ENDPOINT_CACHE_CAPACITY"), &["10000"]),
            ("signaling-url-expiry", Some("KVS_SIDECAR_SIGNALING_URL_EXPIRY"), &["300s"]),
            ("credentials-timeout", Some("KVS_SIDECAR_CREDENTIALS_TIMEOUT"), &["5s"]),
            ("allowed-channels", Some("KVS_SIDECAR_ALLOWED_CHANNELS"), &[]),
            ("assume-role", Some("KVS_SIDECAR_ASSUME_ROLE"), &[]),
            ("assume-role-session-name", Some("KVS_SIDECAR_ASSUME_ROLE_SESSION_NAME"), &["kvs-sidecar"]),
            ("max-concurrent-calls", Some("KVS_SIDECAR_MAX_CONCURRENT_CALLS"), &["1024"]),
            ("max-request-bytes", Some("KVS_SIDECAR_MAX_REQUEST_BYTES"), &["4096"]),
            ("shutdown-grace", Some("KVS_SIDECAR_SHUTDOWN_GRACE"), &["20s"]),
            ("worker-threads", Some("KVS_SIDECAR_WORKER_THREADS"), &[]),
            ("reflection", Some("KVS_SIDECAR_REFLECTION"), &["true"]),
            ("max-connections", Some("KVS_SIDECAR_MAX_CONNECTIONS"), &["1000"]),
            ("admin-max-connections", Some("KVS_SIDECAR_ADMIN_MAX_CONNECTIONS"), &["64"]),
            ("max-calls-per-connection", Some("KVS_SIDECAR_MAX_CALLS_PER_CONNECTION"), &["256"]),
            ("handshake-timeout", Some("KVS_SIDECAR_HANDSHAKE_TIMEOUT"), &["10s"]),
            ("keepalive-interval", Some("KVS_SIDECAR_KEEPALIVE_INTERVAL"), &["30s"]),
            ("keepalive-timeout", Some("KVS_SIDECAR_KEEPALIVE_TIMEOUT"), &["10s"]),
            ("idle-timeout", Some("KVS_SIDECAR_IDLE_TIMEOUT"), &["5m"]),
        ];
        let command = Config::command();
        let mut actual: Vec<(String, Option<String>, Vec<String>)> = command
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?.to_owned();
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                let defaults = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                Some((long, env, defaults))
            })
            .collect();
        let mut expected: Vec<(String, Option<String>, Vec<String>)> = EXPECTED
            .iter()
            .map(|(long, env, defaults)| {
                (
                    (*long).to_owned(),
                    env.map(str::to_owned),
                    defaults.iter().map(|d| (*d).to_owned()).collect(),
                )
            })
            .collect();
        actual.sort();
        expected.sort();
        let was: Vec<_> = expected.iter().filter(|e| !actual.contains(e)).collect();
        let now: Vec<_> = actual.iter().filter(|a| !expected.contains(a)).collect();
        assert!(
            was.is_empty() && now.is_empty(),
            "flags changed: {was:?} became {now:?}"
        );
        // Every flag has a help text and sits under a heading of its group.
        for arg in command.get_arguments() {
            let long = arg.get_long().unwrap_or_default();
            assert!(arg.get_help().is_some(), "--{long} has no help");
            assert!(arg.get_help_heading().is_some(), "--{long} has no heading");
        }
    }
}
