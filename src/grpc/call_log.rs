//! The one log line of each storage call, with its volume bounded by design.
//!
//! Successes log at DEBUG: at thousands of calls a second in every pod an
//! INFO line each would cost more CPU than the rest of the call path's
//! bookkeeping, and the metrics already count them. Failures log at most
//! [`LINES_PER_SECOND`] lines a second for each kind (method and status
//! code), saying how many like it were left out, so a caller that fails on
//! purpose cannot turn the sidecar into a log amplifier. Rejected input is
//! logged by its length and what was wrong with it, never its value.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tonic::Code;

use super::{error::CallError, status};
use crate::kvs::{Call, Error};

const LINES_PER_SECOND: u32 = 5;

pub(super) fn log_call(
    rpc: &'static str,
    arn: &str,
    call: &Call,
    started: Instant,
    result: Result<&str, &CallError>,
) {
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let attempts = call.attempts();
    let err = match result {
        Ok(request_id) => {
            tracing::debug!(
                rpc,
                channel = arn,
                status = "OK",
                attempts,
                latency_ms,
                request_id,
                "call"
            );
            return;
        }
        Err(err) => err,
    };
    let code = status::code(err);
    let Some(suppressed) = BUDGET.admit(rpc, code, Instant::now()) else {
        return;
    };
    match err {
        CallError::Invalid(invalid) => tracing::info!(
            rpc,
            field = invalid.field,
            reason = invalid.reason.code(),
            channel_len = arn.len(),
            status = ?code,
            latency_ms,
            suppressed,
            "call"
        ),
        CallError::NotAllowed(_) => tracing::warn!(
            rpc,
            channel = arn,
            status = ?code,
            suppressed,
            refused = "the channel is outside --allowed-channels",
            "call"
        ),
        err => {
            let request_id = match err {
                CallError::Upstream(Error::Service(e)) => e.request_id.as_deref(),
                _ => None,
            };
            tracing::warn!(
                rpc,
                channel = arn,
                status = ?code,
                attempts,
                latency_ms,
                request_id,
                suppressed,
                error = %err,
                "call"
            )
        }
    }
}

static BUDGET: LazyLock<LogBudget> = LazyLock::new(LogBudget::default);

/// Lines allowed per kind of failure and second. Its keys are static method
/// names and status codes, so it cannot grow with what callers send.
#[derive(Debug, Default)]
struct LogBudget {
    windows: Mutex<HashMap<(&'static str, Code), Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether a line of this kind may be logged now, and if so how many
    /// were left out since the last one.
    fn admit(&self, rpc: &'static str, code: Code, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry((rpc, code)).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.started) >= Duration::from_secs(1) {
            window.started = now;
            window.logged = 0;
        }
        if window.logged >= LINES_PER_SECOND {
            window.suppressed += 1;
            return None;
        }
        window.logged += 1;
        Some(std::mem::take(&mut window.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_few_lines_a_second_per_kind_and_counts_the_rest() {
        let budget = LogBudget::default();
        let t0 = Instant::now();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(budget.admit("Join", Code::NotFound, t0), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(budget.admit("Join", Code::NotFound, t0), None);
        }
        // Another kind has its own budget.
        assert_eq!(budget.admit("Join", Code::Unavailable, t0), Some(0));
        // A second later, the next line says how many were left out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.admit("Join", Code::NotFound, t1), Some(100));
        assert_eq!(budget.admit("Join", Code::NotFound, t1), Some(0));
    }
}
