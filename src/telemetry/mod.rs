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

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Dispatch, Level, Metadata, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::filter_fn,
    fmt::MakeWriter,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::{Format, Writer},
    },
    layer::SubscriberExt,
    registry::{LookupSpan, Registry},
    util::SubscriberInitExt,
};

use crate::{
    BoxError,
    config::{LogArgs, LogFormat},
};

/// Capped whatever the filter asks: aws-sigv4 logs the canonical request it
/// signs at TRACE, and for a presigned URL that holds the session token.
const NEVER_VERBOSE: &str = "aws_sigv4=info";

/// Our spans are created at DEBUG (discovery, attempts) and INFO (calls):
/// the OpenTelemetry layer takes both whatever the log level, so a sidecar
/// logging at `warn` still exports whole traces.
const SPAN_TARGET: &str = env!("CARGO_CRATE_NAME");

/// The service name exported when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
const SERVICE_NAME: &str = "kvs-sidecar";

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

/// The log layer of a sidecar with traces: lines inside a span end with its
/// ids, which the OpenTelemetry layer of the dispatcher given to
/// [`TraceIds::lend`] holds. Colours are off: the line is formatted into a
/// buffer before the ids are added.
fn traced_logs<W>(
    format: LogFormat,
    writer: W,
) -> (Box<dyn Layer<Registry> + Send + Sync>, TraceIds)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let ids = TraceIds::default();
    let layer = match format {
        LogFormat::Json => fmt::layer()
            .event_format(WithTraceIds {
                inner: fmt::format().json().flatten_event(true).with_target(false),
                ids: ids.clone(),
            })
            .fmt_fields(fmt::format::JsonFields::new())
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .event_format(WithTraceIds {
                inner: fmt::format().with_target(false),
                ids: ids.clone(),
            })
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
    };
    (layer, ids)
}

/// Where the log formatter finds the OpenTelemetry layer. Inside an event
/// tracing's current dispatcher is not reachable (`get_default` answers
/// the no-op one while a dispatch is under way), so the formatter keeps a
/// weak handle to its own.
#[derive(Clone, Default)]
struct TraceIds(Arc<OnceLock<WeakDispatch>>);

impl TraceIds {
    fn lend(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }

    /// The ids of the span `id`, if it has valid ones.
    fn of(&self, id: &tracing::span::Id) -> Option<(TraceId, SpanId)> {
        let dispatch = self.0.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    }
}

fn log_filter(config: &LogArgs) -> Result<EnvFilter, BoxError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    }
    // Added last, so it replaces any directive the user gave for the target.
    .add_directive(NEVER_VERBOSE.parse()?);
    Ok(filter)
}

/// What the OpenTelemetry layer sees: the sidecar's spans, and its INFO+
/// events (which become span events).
fn exported(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with(SPAN_TARGET)
        && if meta.is_span() {
            *meta.level() <= Level::DEBUG
        } else {
            *meta.level() <= Level::INFO
        }
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

/// The trace settings the standard variables give, if they ask for traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub sampler: SamplerSpec,
    sampler_name: &'static str,
}

/// The samplers of `OTEL_TRACES_SAMPLER` that the SDK implements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl TraceSettings {
    /// Reads the `OTEL_*` variables through `var`. `Ok(None)`: traces off.
    /// A value the sidecar cannot honour is a startup error, never a
    /// silent fallback: a protocol it does not speak would drop every span.
    /// Header values (`OTEL_EXPORTER_OTLP_HEADERS`) are read by the exporter
    /// itself and never appear in an error or a log line.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        if let Some(exporter) = set("OTEL_TRACES_EXPORTER")
            && exporter.trim() != "otlp"
        {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={exporter}: only `otlp` (or `none`) is supported"
            ));
        }
        let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".into());
        if protocol.trim() != "grpc" {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: kvs-sidecar exports traces over OTLP/gRPC only; set it to `grpc` and point the endpoint at the collector's gRPC port (4317)"
            ));
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: must be an http:// or https:// URL"
            ));
        }
        let (sampler, sampler_name) = SamplerSpec::from_env(
            set("OTEL_TRACES_SAMPLER").as_deref(),
            set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        Ok(Some(Self {
            endpoint,
            sampler,
            sampler_name,
        }))
    }

    fn provider(&self) -> Result<SdkTracerProvider, BoxError> {
        // The exporter reads the endpoint, headers, timeout and
        // compression variables itself, as the specification spells them.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        // The spec's precedence: OTEL_SERVICE_NAME, then
        // OTEL_RESOURCE_ATTRIBUTES, then ours instead of `unknown_service`.
        let detected = Resource::builder().build();
        let named = detected
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
        let resource = if named {
            detected
        } else {
            Resource::builder().with_service_name(SERVICE_NAME).build()
        };
        Ok(SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(self.sampler.sampler())
            // The SDK's batch processor: a bounded queue (spans beyond it
            // are dropped, never waited for) exported from its own thread.
            .with_batch_exporter(Logged(exporter))
            .build())
    }
}

impl SamplerSpec {
    fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<(Self, &'static str), String> {
        let ratio = || match arg {
            None => Ok(1.0),
            Some(arg) => match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg}: must be a ratio between 0 and 1"
                )),
            },
        };
        let name = name.map(str::trim).unwrap_or("parentbased_always_on");
        Ok(match name {
            "always_on" => (Self::AlwaysOn, "always_on"),
            "always_off" => (Self::AlwaysOff, "always_off"),
            "traceidratio" => (Self::Ratio(ratio()?), "traceidratio"),
            "parentbased_always_on" => (Self::ParentBasedAlwaysOn, "parentbased_always_on"),
            "parentbased_always_off" => (Self::ParentBasedAlwaysOff, "parentbased_always_off"),
            "parentbased_traceidratio" => {
                (Self::ParentBasedRatio(ratio()?), "parentbased_traceidratio")
            }
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other}: supported are always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ));
            }
        })
    }

    fn sampler(self) -> Sampler {
        let parent_based = |root| Sampler::ParentBased(Box::new(root));
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            Self::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            Self::ParentBasedRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
        }
    }
}

/// The exporter, saying when an export fails: the SDK's own diagnostics
/// are compiled out (they could print the exporter's settings), so without
/// this a collector that is down would lose spans silently. At most one
/// line a minute.
#[derive(Debug)]
struct Logged<E>(E);

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        static LAST_WARNING: std::sync::Mutex<Option<std::time::Instant>> =
            std::sync::Mutex::new(None);
        let spans = batch.len();
        let result = self.0.export(batch).await;
        if let Err(error) = &result {
            let mut last = LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(%error, spans, "could not export traces; dropping them");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The caller's trace context from W3C `traceparent`/`tracestate` request
/// headers (gRPC metadata); an empty context when absent or malformed.
pub fn caller_context(headers: &http::HeaderMap) -> Context {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// A log formatter that appends the current span's `trace_id` and
/// `span_id` to the line formatted by `F`: as two more JSON fields, or as
/// `trace_id=… span_id=…` at the end of a text line.
struct WithTraceIds<F> {
    inner: F,
    ids: TraceIds,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N> + IsJson,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // No extension lock may be held here: reading the ids takes one.
        let ids = ctx
            .lookup_current()
            .and_then(|span| self.ids.of(&span.id()));
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if F::JSON {
            let Some(open) = body.strip_suffix('}') else {
                return writeln!(writer, "{body}");
            };
            let comma = if open.ends_with('{') { "" } else { "," };
            writeln!(
                writer,
                "{open}{comma}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            )
        } else {
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}

/// Which of the two line formats a formatter writes.
trait IsJson {
    const JSON: bool;
}

impl<T> IsJson for Format<fmt::format::Json, T> {
    const JSON: bool = true;
}

impl<T> IsJson for Format<fmt::format::Full, T> {
    const JSON: bool = false;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What a log layer wrote, line by line.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// Logs a line outside any span and one inside a traced span, in
    /// `format`; returns the lines and the span's (trace id, span id).
    fn log_in_a_span(format: LogFormat) -> (Vec<String>, String, String) {
        let provider = SdkTracerProvider::builder().build();
        let out = Captured::default();
        let (logs, ids) = traced_logs(format, out.clone());
        let dispatch = Dispatch::new(
            tracing_subscriber::registry()
                .with(logs)
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
        );
        ids.lend(&dispatch);
        let (trace_id, span_id) = tracing::dispatcher::with_default(&dispatch, || {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            tracing::info!("outside");
            let span = tracing::info_span!("call", channel = "cam");
            let _entered = span.enter();
            tracing::info!(n = 1, "inside");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(str::to_owned).collect(), trace_id, span_id)
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_ids() {
        let (lines, trace_id, span_id) = log_in_a_span(LogFormat::Json);
        let [outside, inside] = &lines[..] else {
            panic!("{lines:?}")
        };
        let outside: serde_json::Value = serde_json::from_str(outside).unwrap();
        assert_eq!(outside["message"], "outside");
        assert!(outside.get("trace_id").is_none());
        let inside: serde_json::Value = serde_json::from_str(inside).unwrap();
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["n"], 1);
        assert_eq!(inside["span"]["channel"], "cam");
        assert_eq!(inside["trace_id"], trace_id);
        assert_eq!(inside["span_id"], span_id);
    }

    #[test]
    fn text_lines_inside_a_span_end_with_its_ids() {
        let (lines, trace_id, span_id) = log_in_a_span(LogFormat::Text);
        let [outside, inside] = &lines[..] else {
            panic!("{lines:?}")
        };
        assert!(outside.ends_with("outside"), "{outside}");
        assert!(!outside.contains("trace_id"), "{outside}");
        assert!(
            inside.ends_with(&format!(
                "call{{channel=\"cam\"}}: inside n=1 trace_id={trace_id} span_id={span_id}"
            )),
            "{inside}"
        );
    }

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, String> {
        TraceSettings::from_env(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        assert_eq!(settings(&[("OTEL_TRACES_SAMPLER", "always_on")]), Ok(None));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            Ok(None)
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
    }

    #[test]
    fn reads_the_endpoint_protocol_and_sampler() {
        let on = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "https://traces:4317");
        assert_eq!(on.sampler, SamplerSpec::ParentBasedRatio(0.25));
        let default = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(default.sampler, SamplerSpec::ParentBasedAlwaysOn);
    }

    #[test]
    fn refuses_what_it_cannot_honour_without_echoing_headers() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        let headers = ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cr3t");
        for bad in [
            vec![
                endpoint,
                headers,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
            vec![
                endpoint,
                headers,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ],
            vec![endpoint, headers, ("OTEL_TRACES_SAMPLER", "xray")],
            vec![
                endpoint,
                headers,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            vec![endpoint, headers, ("OTEL_TRACES_EXPORTER", "zipkin")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"), headers],
        ] {
            let error = settings(&bad).unwrap_err();
            assert!(error.starts_with("OTEL_"), "{error}");
            assert!(!error.contains("s3cr3t"), "{error}");
        }
    }
}
