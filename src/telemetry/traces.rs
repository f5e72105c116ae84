//! Traces: the `OTEL_*` variables read and checked, the exporter, and the
//! caller's trace context.

use std::time::Duration;

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Level, Metadata};

use crate::BoxError;

/// Our spans are created at DEBUG (discovery, attempts) and INFO (calls):
/// the OpenTelemetry layer takes both whatever the log level, so a sidecar
/// logging at `warn` still exports whole traces.
const SPAN_TARGET: &str = env!("CARGO_CRATE_NAME");

/// The service name exported when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub(super) const SERVICE_NAME: &str = "kvs-sidecar";

/// What the OpenTelemetry layer sees: the sidecar's spans, and its INFO+
/// events (which become span events).
pub(super) fn exported(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with(SPAN_TARGET)
        && if meta.is_span() {
            *meta.level() <= Level::DEBUG
        } else {
            *meta.level() <= Level::INFO
        }
}

/// The trace settings the standard variables give, if they ask for traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub sampler: SamplerSpec,
    pub(super) sampler_name: &'static str,
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

    pub(super) fn provider(&self) -> Result<SdkTracerProvider, BoxError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
