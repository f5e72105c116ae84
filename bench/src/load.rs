//! Closed- and open-loop drivers. Each phase warms up first, then measures a
//! window: calls finished inside it, the probed process's CPU across it, and
//! its peak RSS.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{task::JoinSet, time::Instant};

use crate::procfs::Probe;

/// Something the benchmark calls: one join per `call`, the `n`th of a phase.
pub trait Target: Send + Sync + 'static {
    fn call(&self, n: u64) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub calls_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// CPU of the probed process per call, user plus system.
    pub cpu_us_per_call: f64,
    pub peak_rss_mib: f64,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to a minute, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Brackets a measurement window with CPU and RSS readings of `probe`.
struct Meter {
    probe: Probe,
    cpu: f64,
}

/// The probed process's CPU seconds and peak RSS over a window.
struct Usage {
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

impl Meter {
    fn start(probe: Probe) -> Self {
        probe.reset_peak();
        Self {
            probe,
            cpu: probe.cpu_seconds(),
        }
    }

    fn stop(self) -> Usage {
        Usage {
            cpu_seconds: self.probe.cpu_seconds() - self.cpu,
            peak_rss_kib: self.probe.peak_rss_kib(),
        }
    }
}

impl Sample {
    fn new(hist: &Histogram<u64>, tally: Tally, window: Duration, usage: Usage) -> Self {
        let calls = tally.ok + tally.errors;
        Self {
            calls,
            errors: tally.errors,
            first_error: tally.first_error,
            calls_per_second: calls as f64 / window.as_secs_f64(),
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            cpu_us_per_call: usage.cpu_seconds * 1e6 / calls.max(1) as f64,
            peak_rss_mib: usage.peak_rss_kib as f64 / 1024.0,
        }
    }
}

/// `concurrency` callers, each starting its next call when the last ends.
pub async fn closed<T: Target>(
    target: Arc<T>,
    concurrency: usize,
    window: Window,
    probe: Probe,
) -> Sample {
    let begin = Instant::now() + window.warmup;
    let end = begin + window.measure;
    let mut callers = JoinSet::new();
    for caller in 0..concurrency {
        let target = target.clone();
        callers.spawn(async move {
            let (mut hist, mut tally) = (histogram(), Tally::default());
            let mut n = caller as u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let result = target.call(n).await;
                n += concurrency as u64;
                let done = Instant::now();
                if start >= begin && done <= end {
                    hist.saturating_record(micros(done - start));
                    tally.add(result);
                }
            }
            (hist, tally)
        });
    }
    tokio::time::sleep_until(begin).await;
    let meter = Meter::start(probe);
    tokio::time::sleep_until(end).await;
    let usage = meter.stop();
    let (mut hist, mut tally) = (histogram(), Tally::default());
    while let Some(done) = callers.join_next().await {
        let (h, t) = done.expect("a caller panicked");
        hist.add(h).expect("histograms share bounds");
        tally.merge(t);
    }
    Sample::new(&hist, tally, window.measure, usage)
}

/// Calls started on a fixed schedule, `rate` per second, whether or not
/// earlier ones have finished. Latency runs from each call's scheduled
/// start, so a stall in the caller counts against the callee instead of
/// hiding (no coordinated omission). The schedule runs on its own thread:
/// tokio's timer wheel has millisecond ticks, which would add up to a
/// millisecond of lateness to every call.
pub async fn open<T: Target>(target: Arc<T>, rate: f64, window: Window, probe: Probe) -> Sample {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let begin = start + window.warmup;
    let end = begin + window.measure;
    let shared = Arc::new(Mutex::new((histogram(), Tally::default())));
    let runtime = tokio::runtime::Handle::current();
    let scheduler = std::thread::spawn({
        let shared = shared.clone();
        move || {
            let mut calls = Vec::new();
            for n in 0u64.. {
                let scheduled = start + interval.mul_f64(n as f64);
                if scheduled >= end {
                    break;
                }
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                let (target, shared) = (target.clone(), shared.clone());
                calls.push(runtime.spawn(async move {
                    let result = target.call(n).await;
                    let latency = Instant::now() - scheduled;
                    if scheduled >= begin {
                        let mut guard = shared.lock().unwrap();
                        guard.0.saturating_record(micros(latency));
                        guard.1.add(result);
                    }
                }));
                // Forget finished calls as we go so the list stays short.
                if calls.len() >= 1024 {
                    calls.retain(|c| !c.is_finished());
                }
            }
            calls
        }
    });
    tokio::time::sleep_until(begin).await;
    let meter = Meter::start(probe);
    tokio::time::sleep_until(end).await;
    let usage = meter.stop();
    let calls = tokio::task::spawn_blocking(move || scheduler.join())
        .await
        .expect("the scheduler thread is joined")
        .expect("the scheduler ran");
    for call in calls {
        call.await.expect("a call panicked");
    }
    let (hist, tally) = Arc::into_inner(shared)
        .expect("every call finished")
        .into_inner()
        .unwrap();
    Sample::new(&hist, tally, window.measure, usage)
}
