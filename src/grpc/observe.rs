//! One observer for every gRPC call, as a tower layer: the handlers know
//! nothing of it. For each call it
//!
//! - counts it and times it by service, method, kind (`grpc_type`) and
//!   status code (`instruments`);
//! - opens a `tracing` span for calls of the storage service, named after
//!   the method, so every line logged while serving it belongs to it; with
//!   traces on (`crate::telemetry`) that span is the OpenTelemetry server
//!   span, continuing the caller's W3C `traceparent`/`tracestate`, with the
//!   `rpc.*` attributes and the final status code. The span lives as long as
//!   the response body, so a stream's span lasts as long as the stream.
//!
//! The status is read where gRPC puts it: the response headers for a
//! trailers-only answer (errors), the trailers otherwise. A body dropped
//! before its trailers is a call the client cancelled.
//!
//! Which methods exist, and their kinds, come from the services' own
//! descriptor sets, so nothing here lists them; paths that name no method
//! are labelled `unknown`, so scanners cannot grow the metrics' cardinality.

use std::{
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
};

use http_body::{Body, Frame};
use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Code;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{instruments, pb::web_rtc_storage_service_server::SERVICE_NAME, telemetry};

include!(concat!(env!("OUT_DIR"), "/call_spans.rs"));

/// A method as the metrics label it.
#[derive(Debug)]
pub(crate) struct Method {
    pub service: String,
    pub name: String,
    pub kind: &'static str,
}

/// Every method served: the storage service's, health's and reflection's.
static METHODS: LazyLock<Vec<Method>> = LazyLock::new(|| {
    [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|set| <prost_types::FileDescriptorSet as prost::Message>::decode(set).ok())
    .flat_map(|set| set.file)
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let service_name = format!("{package}.{}", service.name());
            service.method.into_iter().map(move |m| Method {
                service: service_name.clone(),
                name: m.name().to_owned(),
                kind: match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                },
            })
        })
    })
    .collect()
});

static UNKNOWN: Method = Method {
    service: String::new(),
    name: String::new(),
    kind: "unknown",
};

/// The method `path` names, if it names one served here.
pub(crate) fn method(path: &str) -> Option<&'static Method> {
    let (service, name) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .find(|m| m.service == service && m.name == name)
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ObserveLayer;

#[derive(Debug, Clone)]
pub(crate) struct Observe<S> {
    inner: S,
}

/// One call being observed, until its status is known.
#[derive(Debug)]
struct Call {
    method: &'static Method,
    start: Instant,
    span: Option<Span>,
    finished: bool,
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

pin_project! {
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            this.project().call.finish(Code::Cancelled);
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

// === impl Observe ===

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for Observe<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
{
    type Response = http::Response<ObservedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let call = Call::start(req.uri().path(), req.headers());
        let inner = match &call.span {
            Some(span) => span.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ResponseFuture {
            inner,
            call: Some(call),
        }
    }
}

// === impl Call ===

impl Call {
    fn start(path: &str, headers: &http::HeaderMap) -> Self {
        let method = method(path).unwrap_or(&UNKNOWN);
        let (service, name) = labels(method);
        instruments::grpc_started(service, name, method.kind);
        let span = (method.service == SERVICE_NAME)
            .then(|| storage_call_span(&method.name))
            .flatten();
        if let Some(span) = &span
            && telemetry::traces_on()
        {
            // Before the span is first entered, when the OTel span is started.
            span.record("otel.kind", "server");
            let _ = span.set_parent(telemetry::caller_context(headers));
            span.set_attribute("rpc.system", "grpc");
            span.set_attribute("rpc.service", SERVICE_NAME);
            span.set_attribute("rpc.method", method.name.clone());
        }
        Self {
            method,
            start: Instant::now(),
            span,
            finished: false,
        }
    }

    /// Records the call's final status, once.
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let (service, name) = labels(self.method);
        instruments::grpc_handled(service, name, self.method.kind, code, self.start.elapsed());
        let Some(span) = &self.span else { return };
        if !telemetry::traces_on() {
            return;
        }
        span.set_attribute("rpc.grpc.status_code", code as i64);
        // The semantic conventions' server errors; a caller's mistake (a bad
        // argument, an unknown channel) leaves the server span's status unset.
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            span.set_status(Status::error(code.description()));
        }
    }
}

fn labels(method: &'static Method) -> (&'static str, &'static str) {
    if method.service.is_empty() {
        ("unknown", "unknown")
    } else {
        (&method.service, &method.name)
    }
}

// === impl ResponseFuture ===

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this
                .call
                .as_ref()
                .and_then(|c| c.span.as_ref())
                .map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let Some(mut call) = this.call.take() else {
            // Polled again after it completed: tower's contract forbids it.
            return Poll::Pending;
        };
        match result {
            Ok(response) => {
                // A trailers-only answer (an error) has its status in the
                // headers.
                if let Some(code) = grpc_status(response.headers()) {
                    call.finish(code);
                }
                Poll::Ready(Ok(response.map(|inner| ObservedBody { inner, call })))
            }
            Err(e) => {
                call.finish(Code::Internal);
                Poll::Ready(Err(e))
            }
        }
    }
}

// === impl ObservedBody ===

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = {
            let _entered = this.call.span.as_ref().map(Span::enter);
            ready!(this.inner.poll_frame(cx))
        };
        if let Some(code) = frame_status(frame.as_ref()) {
            this.call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The call's status as a response body frame tells it: in the trailers,
/// `Internal` for a body error, `Unknown` for a body that ended without
/// trailers; `None` for a data frame (not known yet).
fn frame_status<D, E>(frame: Option<&Result<Frame<D>, E>>) -> Option<Code> {
    match frame {
        Some(Ok(f)) => f
            .trailers_ref()
            .map(|t| grpc_status(t).unwrap_or(Code::Unknown)),
        Some(Err(_)) => Some(Code::Internal),
        None => Some(Code::Unknown),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_their_kinds_come_from_the_descriptor_sets() {
        fn kind(path: &str) -> Option<&'static str> {
            method(path).map(|m| m.kind)
        }
        let storage = "/kvs.webrtcstorage.v1.WebRtcStorageService/";
        assert_eq!(kind(&format!("{storage}JoinStorageSession")), Some("unary"));
        assert_eq!(
            kind(&format!("{storage}CheckStorageReadiness")),
            Some("unary")
        );
        assert_eq!(
            kind(&format!("{storage}MaintainStorageSession")),
            Some("bidi_stream")
        );
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Some("unary"));
        assert_eq!(kind("/grpc.health.v1.Health/Watch"), Some("server_stream"));
        assert_eq!(
            kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some("bidi_stream")
        );
        assert_eq!(
            kind("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some("bidi_stream")
        );
        for unknown in [
            "/evil/../x",
            "/",
            "",
            "/grpc.health.v1.Health/",
            "/kvs.webrtcstorage.v1.WebRtcStorageServiceX/JoinStorageSession",
        ] {
            assert!(method(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn every_storage_method_has_a_span_and_nothing_else_does() {
        // No subscriber here, so the spans are disabled; whether one is
        // made at all is what is tested.
        for m in METHODS.iter().filter(|m| m.service == SERVICE_NAME) {
            assert!(storage_call_span(&m.name).is_some(), "{}", m.name);
        }
        assert!(storage_call_span("Nope").is_none());
        assert!(storage_call_span("Check").is_none());
    }
}
