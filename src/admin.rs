//! The admin HTTP server: `/metrics` for Prometheus, `/readyz` and `/livez`
//! for Kubernetes (the server also mounts `grpc.health.v1` here, for
//! kubelet's native gRPC probes).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

/// Whether the sidecar takes new calls. Turns false when a drain starts, in
/// the same step that closes the gRPC listeners (nothing waits in between):
/// it tells probes and callers why calls are refused, while Kubernetes takes
/// a terminating pod out of its Service's endpoints on its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    ready: Readiness,
    metrics: Option<PrometheusHandle>,
}

pub(crate) fn router(ready: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/readyz", get(readyz))
        .route("/livez", get(|| async { "ok\n" }))
        .with_state(AdminState { ready, metrics })
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
