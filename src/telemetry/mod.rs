//! Logging and traces.
//!
//! Logs: tracing-subscriber to stdout, text or JSON, filtered by `RUST_LOG`
//! when set and by `--log-level` otherwise.
//!
//! Traces: OpenTelemetry spans exported over OTLP/gRPC, only when the
//! standard `OTEL_*` variables name an endpoint. Without one no
//! OpenTelemetry layer is installed at all, the caller's `traceparent` is
//! never parsed and the subscriber is the plain logging one, so tracing
//! costs nothing when it is off. With it on, log lines written inside a
//! call carry its `trace_id` and `span_id`.

mod logs;
mod traces;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing_subscriber::{Layer, filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt};

pub use self::traces::{SamplerSpec, TraceSettings, caller_context};
use self::{
    logs::{log_filter, traced_logs},
    traces::{SERVICE_NAME, exported},
};
use crate::{
    BoxError,
    config::{LogArgs, LogFormat},
};

/// Set once, before the first call: whether spans are exported, so the
/// call path parses `traceparent` and sets OpenTelemetry-only attributes
/// only then.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported.
pub fn traces_on() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// What `init` set up; flushes the traces still buffered on shutdown.
#[must_use = "traces are lost unless shut down"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// Installs logging, and traces when the environment asks for them. Must
/// run inside the Tokio runtime: the OTLP exporter's gRPC channel lives on
/// it.
pub fn init(config: &LogArgs) -> Result<Telemetry, BoxError> {
    let filter = log_filter(config)?;
    let Some(settings) = TraceSettings::from_env(|name| std::env::var(name).ok())? else {
        // The subscriber of a sidecar without traces, exactly as before
        // traces existed: one global filter, no per-layer bookkeeping.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false);
        match config.log_format {
            LogFormat::Json => builder.json().flatten_event(true).try_init()?,
            LogFormat::Text => builder.try_init()?,
        }
        tracing::info!("traces off: no OTEL_EXPORTER_OTLP_ENDPOINT");
        return Ok(Telemetry { traces: None });
    };

    let provider = settings.provider()?;
    let tracer = provider.tracer(SERVICE_NAME);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Attributes that say where in our code a span was made, on which
        // thread, and how long it sat idle: cost on every span, and no use
        // to whoever reads the trace.
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        // Only our own spans, and the events at INFO and above inside them
        // (retries, throttling, refusals): what a trace viewer needs, and
        // never a library's DEBUG lines.
        .with_filter(filter_fn(exported));
    let (logs, ids) = traced_logs(config.log_format, std::io::stdout);
    let dispatch = Dispatch::new(
        tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(otel),
    );
    ids.lend(&dispatch);
    dispatch.try_init()?;
    TRACES_ON.store(true, Ordering::Relaxed);
    tracing::info!(
        endpoint = %settings.endpoint,
        sampler = settings.sampler_name,
        "traces on: exporting spans over OTLP/gRPC"
    );
    Ok(Telemetry {
        traces: Some(provider),
    })
}

impl Telemetry {
    /// Sends the spans still buffered, giving up at `deadline` (what is
    /// left of the shutdown grace).
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        let Some(provider) = self.traces else { return };
        let deadline = deadline.max(tokio::time::Instant::now() + MIN_FLUSH);
        let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
        // The SDK's shutdown blocks its caller until the batch thread has
        // exported, and the export runs on this runtime: off the workers.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(budget));
        match tokio::time::timeout_at(deadline, flushed).await {
            Ok(Ok(Ok(()))) => tracing::debug!("traces flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not flush the last traces"),
            Ok(Err(_)) | Err(_) => tracing::warn!("the last traces were not flushed in time"),
        }
    }
}

/// Even a grace spent on draining leaves the exporter this long.
const MIN_FLUSH: Duration = Duration::from_millis(100);

/// The longest the last traces' flush may hold the exit.
pub const MAX_FLUSH: Duration = Duration::from_secs(2);
