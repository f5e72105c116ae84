//! Metric names, their help text, and the Prometheus recorder.
//!
//! The gRPC server metrics follow the go-grpc-prometheus family
//! (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`), which existing Grafana dashboards and
//! alerts already understand. Upstream metrics are `kvs_*`.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
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
pub const STREAM_PACED_REFUSED: &str = "kvs_stream_paced_refused_total";
pub const RECORDING_STATE_CHANGES: &str = "kvs_sidecar_recording_state_changes_total";
pub const RECORDING_FIRST_FRAGMENT_SECONDS: &str = "kvs_sidecar_recording_first_fragment_seconds";
pub const RECORDING_GAP_SECONDS: &str = "kvs_sidecar_recording_gap_seconds";
pub const RECORDING_STREAMS: &str = "kvs_sidecar_recording_streams_polled";

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
    INSTALLED.store(true, Ordering::Release);
    Ok(handle)
}

// === Handles of the series every call records ===
//
// Finding a series by name and labels costs the recorder thousands of
// instructions (it builds the key, hashes it and compares it whole): about
// 9,000 a join for the five series each one records (callgrind). A handle,
// once registered, costs an atomic add. So the series recorded on every
// call are looked up once per worker thread and kept. Their label values
// are `&'static str`s from fixed lists (methods, codes, operations,
// outcomes), so what is kept is bounded by those lists, whatever callers
// send. Only after `install`: a handle taken before would belong to no
// recorder for good.

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// A series by the addresses and lengths of its name and label values.
type SeriesKey = [usize; 8];

fn series(name: &'static str, values: &[&'static str]) -> SeriesKey {
    let mut key = [name.as_ptr() as usize, name.len(), 0, 0, 0, 0, 0, 0];
    for (i, v) in values.iter().take(3).enumerate() {
        key[2 + 2 * i] = v.as_ptr() as usize;
        key[3 + 2 * i] = v.len();
    }
    key
}

thread_local! {
    static COUNTERS: RefCell<HashMap<SeriesKey, Counter>> = RefCell::new(HashMap::new());
    static HISTOGRAMS: RefCell<HashMap<SeriesKey, Histogram>> = RefCell::new(HashMap::new());
}

fn count(key: SeriesKey, register: impl FnOnce() -> Counter) {
    if !INSTALLED.load(Ordering::Acquire) {
        return register().increment(1);
    }
    COUNTERS.with_borrow_mut(|kept| kept.entry(key).or_insert_with(register).increment(1));
}

fn observe(key: SeriesKey, value: f64, register: impl FnOnce() -> Histogram) {
    if !INSTALLED.load(Ordering::Acquire) {
        return register().record(value);
    }
    HISTOGRAMS.with_borrow_mut(|kept| kept.entry(key).or_insert_with(register).record(value));
}

fn describe() {
    describe_recording();
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

/// `kind` (the `grpc_type` label) follows from the method, so it is not
/// part of a series' key.
pub fn grpc_started(service: &'static str, method: &'static str, kind: &'static str) {
    count(
        series(GRPC_STARTED, &[service, method]),
        || counter!(GRPC_STARTED, "grpc_service" => service, "grpc_method" => method, "grpc_type" => kind),
    );
}

pub fn grpc_handled(
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    code: tonic::Code,
    elapsed: Duration,
) {
    let code = code_name(code);
    count(series(GRPC_HANDLED, &[service, method, code]), || {
        counter!(
            GRPC_HANDLED,
            "grpc_service" => service,
            "grpc_method" => method,
            "grpc_type" => kind,
            "grpc_code" => code,
        )
    });
    observe(
        series(GRPC_HANDLING_SECONDS, &[service, method]),
        elapsed.as_secs_f64(),
        || histogram!(GRPC_HANDLING_SECONDS, "grpc_service" => service, "grpc_method" => method, "grpc_type" => kind),
    );
}

pub fn upstream_attempt(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    count(
        series(UPSTREAM_ATTEMPTS, &[operation, outcome]),
        || counter!(UPSTREAM_ATTEMPTS, "operation" => operation, "outcome" => outcome),
    );
    observe(
        series(UPSTREAM_ATTEMPT_SECONDS, &[operation]),
        elapsed.as_secs_f64(),
        || histogram!(UPSTREAM_ATTEMPT_SECONDS, "operation" => operation),
    );
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
    let result = if hit { "hit" } else { "miss" };
    count(
        series(ENDPOINT_CACHE, &[result]),
        || counter!(ENDPOINT_CACHE, "result" => result),
    );
}

// === Data plane and recording status (issue 17) ===
//
// No series carries a channel or stream: the label values are fixed lists,
// so the series are bounded whatever channels callers watch.

fn describe_recording() {
    describe_counter!(
        STREAM_PACED_REFUSED,
        "Data-plane requests refused locally because the stream's 5-a-second pace had no slot before their deadline, by reason (no_slot, too_many_streams)."
    );
    describe_counter!(
        RECORDING_STATE_CHANGES,
        "Recording states entered by polled streams, by state (recording, no_media, stalled)."
    );
    describe_histogram!(
        RECORDING_FIRST_FRAGMENT_SECONDS,
        Unit::Seconds,
        "Time from a supervised session's join to the first fragment KVS listed after it."
    );
    describe_histogram!(
        RECORDING_GAP_SECONDS,
        Unit::Seconds,
        "Holes between fragments longer than the watchers' stalled_after, as found."
    );
    describe_gauge!(
        RECORDING_STREAMS,
        "Streams whose fragments are being polled now."
    );
}

pub fn stream_paced_refused(reason: &'static str) {
    counter!(STREAM_PACED_REFUSED, "reason" => reason).increment(1);
}

pub fn recording_state_change(state: &'static str) {
    counter!(RECORDING_STATE_CHANGES, "state" => state).increment(1);
}

pub fn recording_first_fragment(elapsed: Duration) {
    histogram!(RECORDING_FIRST_FRAGMENT_SECONDS).record(elapsed.as_secs_f64());
}

pub fn recording_gap(length: Duration) {
    histogram!(RECORDING_GAP_SECONDS).record(length.as_secs_f64());
}

pub fn recording_streams(streams: usize) {
    gauge!(RECORDING_STREAMS).set(streams as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test that installs the process-wide recorder; the others
    /// record into none.
    #[test]
    fn kept_handles_count_into_the_installed_recorder_from_every_thread() {
        let handle = install().expect("the only test installing the recorder");
        let record = || {
            for _ in 0..3 {
                grpc_handled(
                    "test.Service",
                    "Call",
                    "unary",
                    tonic::Code::Ok,
                    Duration::ZERO,
                );
                endpoint_cache(true);
            }
        };
        record();
        std::thread::spawn(record).join().unwrap();
        let text = handle.render();
        let series = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            series(
                r#"grpc_server_handled_total{grpc_service="test.Service",grpc_method="Call",grpc_type="unary",grpc_code="OK"}"#
            ),
            "6"
        );
        assert_eq!(
            series(
                r#"grpc_server_handling_seconds_count{grpc_service="test.Service",grpc_method="Call",grpc_type="unary"}"#
            ),
            "6"
        );
        assert_eq!(
            series(r#"kvs_endpoint_cache_lookups_total{result="hit"}"#),
            "6"
        );
    }
}
