//! Wires the sidecar: configuration, logging and traces, metrics, serve,
//! drain.

use std::{
    process::ExitCode,
    sync::{Arc, OnceLock},
};

use clap::Parser;
use kvs_sidecar::{
    config::Config,
    instruments,
    server::Sidecar,
    telemetry::{self, Telemetry},
};
use tokio::time::Instant;

// glibc malloc spent ~15% of the sidecar's CPU under load (profile in
// issue 6); mimalloc's per-thread free lists spend a fraction of that.
// Tuned in `alloc`, which also returns memory to the system after a spike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kvs_sidecar::alloc::tune();
    let config = Config::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.on_thread_park(kvs_sidecar::alloc::collect_on_park);
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n.get());
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvs-sidecar: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
    let telemetry = match runtime.block_on(async { telemetry::init(&config.logs) }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("kvs-sidecar: bad log or trace configuration: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(config, telemetry))
}

async fn run(config: Config, telemetry: Telemetry) -> ExitCode {
    let grace = config.shutdown_grace;
    // When the signal came, so the last traces are flushed within the
    // grace that draining started.
    let signalled = Arc::new(OnceLock::new());
    let run = async {
        // Listen for signals before binding, so a SIGTERM that arrives as
        // soon as the sidecar reports ready drains it instead of killing it.
        let shutdown = shutdown_signal()?;
        let mark = signalled.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = mark.set(Instant::now());
        };
        tokio::spawn(kvs_sidecar::alloc::collect_periodically(
            std::time::Duration::from_secs(1),
        ));
        let metrics = instruments::install()?;
        let sidecar = Sidecar::bind(&config, Some(metrics)).await?;
        sidecar.serve(shutdown).await
    };
    let code = match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "kvs-sidecar failed");
            ExitCode::FAILURE
        }
    };
    // The flush gets what is left of the grace, but never more than a
    // bounded share of it: a collector that is down or slow must not hold
    // the exit for the whole grace.
    let since = signalled.get().copied().unwrap_or_else(Instant::now);
    let flush_until = (since + grace).min(Instant::now() + kvs_sidecar::telemetry::MAX_FLUSH);
    telemetry.shutdown(flush_until).await;
    code
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (a terminal).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
