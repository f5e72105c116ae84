//! Metric names, their help text, and the Prometheus recorder.
//!
//! The gRPC server metrics follow the go-grpc-prometheus family
//! (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`), which existing Grafana dashboards and
//! alerts already understand. Upstream metrics are `kvs_*`.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const CALLS_SHED: &str = "kvs_sidecar_calls_shed_total";
pub const SESSIONS_MAINTAINED: &str = "kvs_sidecar_sessions_maintained";
pub const SESSION_JOINS: &str = "kvs_sidecar_session_joins_total";
pub const SESSION_OFFER_SECONDS: &str = "kvs_sidecar_session_offer_seconds";
pub const SESSIONS_GIVEN_UP: &str = "kvs_sidecar_sessions_given_up_total";
pub const STATE_STORE_ERRORS: &str = "kvs_sidecar_state_store_errors_total";
pub const IDEMPOTENT_REPLAYS: &str = "kvs_sidecar_idempotent_replays_total";
pub const UPSTREAM_ATTEMPTS: &str = "kvs_upstream_attempts_total";
pub const UPSTREAM_ATTEMPT_SECONDS: &str = "kvs_upstream_attempt_duration_seconds";
pub const UPSTREAM_RETRIES: &str = "kvs_upstream_retries_total";
pub const RETRY_QUOTA: &str = "kvs_retry_quota_tokens";
pub const RETRY_QUOTA_EXHAUSTED: &str = "kvs_retry_quota_exhausted_total";
pub const RATE_LIMITED: &str = "kvs_rate_limited_total";
pub const RATE_LIMIT: &str = "kvs_rate_limit_per_second";
pub const RATE_LIMIT_REFUSED: &str = "kvs_rate_limit_refused_total";
pub const CLOCK_SKEW: &str = "kvs_clock_skew_seconds";
pub const ENDPOINT_CACHE: &str = "kvs_endpoint_cache_lookups_total";
pub const ENDPOINT_CACHE_ENTRIES: &str = "kvs_endpoint_cache_entries";
pub const ENDPOINT_CACHE_EVICTIONS: &str = "kvs_endpoint_cache_evictions_total";
pub const CREDENTIAL_REFRESHES: &str = "kvs_credential_refreshes_total";
pub const CONNECTIONS: &str = "kvs_sidecar_connections";
pub const CONNECTIONS_REFUSED: &str = "kvs_sidecar_connections_refused_total";
pub const ACCEPT_ERRORS: &str = "kvs_sidecar_accept_errors_total";

/// Latency buckets from 1 ms to 30 s: sidecar overhead is sub-millisecond,
/// KVS answers in tens of milliseconds, retries and deadlines run to seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(GRPC_STARTED, "gRPC calls started, by service and method.");
    describe_counter!(
        GRPC_HANDLED,
        "gRPC calls completed, by service, method and status code."
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Time to handle a gRPC call, by service and method."
    );
    describe_counter!(
        UPSTREAM_ATTEMPTS,
        "Requests sent to KVS, by operation and outcome."
    );
    describe_histogram!(
        UPSTREAM_ATTEMPT_SECONDS,
        Unit::Seconds,
        "Latency of each request sent to KVS, by operation."
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Retries of KVS requests, by operation and reason."
    );
    describe_gauge!(
        CLOCK_SKEW,
        Unit::Seconds,
        "Offset from our clock to KVS's, learned from a skew rejection."
    );
    describe_counter!(
        RATE_LIMITED,
        "KVS requests delayed locally by the client-side rate limit, by operation."
    );
    describe_gauge!(
        SESSIONS_MAINTAINED,
        "Storage sessions maintained by MaintainStorageSession streams."
    );
    describe_counter!(
        SESSION_JOINS,
        "Joins made by session supervisors, by reason (initial, no_offer, session_limit, disconnected, requested)."
    );
    describe_histogram!(
        SESSION_OFFER_SECONDS,
        Unit::Seconds,
        "Time from a supervisor's join to the caller's OFFER_RECEIVED report."
    );
    describe_counter!(
        SESSIONS_GIVEN_UP,
        "Maintained sessions that stopped, by reason (failure_budget, final_error, draining)."
    );
    describe_counter!(
        STATE_STORE_ERRORS,
        "Operations on the shared state store (Redis) that failed, by purpose (idempotency, lease)."
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Joins answered from the idempotency ledger (a repeated key): nothing sent to KVS."
    );
    describe_counter!(
        RATE_LIMIT_REFUSED,
        "KVS requests refused locally because the client-side rate had no token before their deadline, by operation."
    );
    describe_gauge!(
        ENDPOINT_CACHE_ENTRIES,
        "WEBRTC endpoints cached (channel and role pairs)."
    );
    describe_counter!(
        ENDPOINT_CACHE_EVICTIONS,
        "WEBRTC endpoints dropped from the cache, by cause (expired, size, invalidated)."
    );
    describe_gauge!(
        RATE_LIMIT,
        "Current client-side rate limit, by operation; drops when KVS throttles."
    );
    describe_gauge!(RETRY_QUOTA, "Tokens left in the process-wide retry quota.");
    describe_counter!(
        RETRY_QUOTA_EXHAUSTED,
        "Retries not made because the retry quota was empty, by operation."
    );
    describe_counter!(
        ENDPOINT_CACHE,
        "WEBRTC endpoint cache lookups, by result (hit or miss)."
    );
    describe_counter!(
        CREDENTIAL_REFRESHES,
        "Loads of AWS credentials from the provider chain, by outcome."
    );
    describe_gauge!(CONNECTIONS, "Open connections, by port (grpc, admin).");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed on arrival because the port was at its connection limit, by port."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts (out of file descriptors and the like), by port."
    );
}

pub fn grpc_started(service: &'static str, method: &'static str) {
    counter!(GRPC_STARTED, "grpc_service" => service, "grpc_method" => method, "grpc_type" => "unary")
        .increment(1);
}

pub fn grpc_handled(
    service: &'static str,
    method: &'static str,
    code: tonic::Code,
    elapsed: Duration,
) {
    counter!(
        GRPC_HANDLED,
        "grpc_service" => service,
        "grpc_method" => method,
        "grpc_type" => "unary",
        "grpc_code" => code_name(code),
    )
    .increment(1);
    histogram!(GRPC_HANDLING_SECONDS, "grpc_service" => service, "grpc_method" => method, "grpc_type" => "unary")
        .record(elapsed.as_secs_f64());
}

pub fn upstream_attempt(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(UPSTREAM_ATTEMPTS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(UPSTREAM_ATTEMPT_SECONDS, "operation" => operation).record(elapsed.as_secs_f64());
}

pub fn retry(operation: &'static str, reason: &'static str) {
    counter!(UPSTREAM_RETRIES, "operation" => operation, "reason" => reason).increment(1);
}

pub fn retry_quota(tokens: u32) {
    gauge!(RETRY_QUOTA).set(tokens);
}

pub fn retry_quota_exhausted(operation: &'static str) {
    counter!(RETRY_QUOTA_EXHAUSTED, "operation" => operation).increment(1);
}

pub fn rate_limited(operation: &'static str) {
    counter!(RATE_LIMITED, "operation" => operation).increment(1);
}

pub fn sessions_maintained(sessions: usize) {
    gauge!(SESSIONS_MAINTAINED).set(sessions as f64);
}

pub fn session_join(reason: &'static str) {
    counter!(SESSION_JOINS, "reason" => reason).increment(1);
}

pub fn session_offer_latency(elapsed: Duration) {
    histogram!(SESSION_OFFER_SECONDS).record(elapsed.as_secs_f64());
}

pub fn session_gave_up(reason: &'static str) {
    counter!(SESSIONS_GIVEN_UP, "reason" => reason).increment(1);
}

pub fn state_store_error(purpose: &'static str) {
    counter!(STATE_STORE_ERRORS, "purpose" => purpose).increment(1);
}

pub fn idempotent_replay() {
    counter!(IDEMPOTENT_REPLAYS).increment(1);
}

pub fn rate_limit_refused(operation: &'static str) {
    counter!(RATE_LIMIT_REFUSED, "operation" => operation).increment(1);
}

pub fn endpoint_cache_entries(entries: u64) {
    gauge!(ENDPOINT_CACHE_ENTRIES).set(entries as f64);
}

pub fn endpoint_cache_eviction(cause: &'static str) {
    counter!(ENDPOINT_CACHE_EVICTIONS, "cause" => cause).increment(1);
}

pub fn rate_limit(operation: &'static str, per_second: f64) {
    gauge!(RATE_LIMIT, "operation" => operation).set(per_second);
}

pub fn clock_skew(seconds: f64) {
    gauge!(CLOCK_SKEW).set(seconds);
}

pub fn endpoint_cache(hit: bool) {
    counter!(ENDPOINT_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

/// `role` is `default` (the default chain) or a configured role ARN, so the
/// label set is bounded by the configuration.
pub fn credential_refresh(ok: bool, role: &str) {
    let outcome = if ok { "success" } else { "error" };
    counter!(CREDENTIAL_REFRESHES, "outcome" => outcome, "role" => role.to_owned()).increment(1);
}

/// The canonical upper-case names used by grpc-go's metrics.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
