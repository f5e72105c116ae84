//! The log lines: the filter, and the formatter that appends a span's trace
//! ids when traces are on.

use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Dispatch, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::MakeWriter,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::{Format, Writer},
    },
    registry::{LookupSpan, Registry},
};

use crate::{
    BoxError,
    config::{LogArgs, LogFormat},
};

/// Capped whatever the filter asks: aws-sigv4 logs the canonical request it
/// signs at TRACE, and for a presigned URL that holds the session token.
const NEVER_VERBOSE: &str = "aws_sigv4=info";

pub(super) fn log_filter(config: &LogArgs) -> Result<EnvFilter, BoxError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec)?,
        _ => EnvFilter::try_new(&config.log_level)?,
    }
    // Added last, so it replaces any directive the user gave for the target.
    .add_directive(NEVER_VERBOSE.parse()?);
    Ok(filter)
}

/// The log layer of a sidecar with traces: lines inside a span end with its
/// ids, which the OpenTelemetry layer of the dispatcher given to
/// [`TraceIds::lend`] holds. Colours are off: the line is formatted into a
/// buffer before the ids are added.
pub(super) fn traced_logs<W>(
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
pub(super) struct TraceIds(Arc<OnceLock<WeakDispatch>>);

impl TraceIds {
    pub(super) fn lend(&self, dispatch: &Dispatch) {
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

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

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
}
