//! Wires the sidecar: configuration, logging, metrics, serve, drain.

use std::process::ExitCode;

use clap::Parser;
use kvs_sidecar::{config::Config, metrics, server::Sidecar, telemetry};

// glibc malloc spent ~15% of the sidecar's CPU under load (profile in
// issue 6); mimalloc's per-thread free lists spend a fraction of that.
// Tuned in `alloc`, which also returns memory to the system after a spike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kvs_sidecar::alloc::tune();
    let config = Config::parse();
    if let Err(e) = telemetry::init(&config) {
        eprintln!("kvs-sidecar: bad log configuration: {e}");
        return ExitCode::from(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.on_thread_park(kvs_sidecar::alloc::collect_on_park);
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n.get());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(error) => {
            eprintln!("kvs-sidecar: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let run = async {
        // Listen for signals before binding, so a SIGTERM that arrives as
        // soon as the sidecar reports ready drains it instead of killing it.
        let shutdown = shutdown_signal()?;
        tokio::spawn(kvs_sidecar::alloc::collect_periodically(
            std::time::Duration::from_secs(1),
        ));
        let metrics = metrics::install()?;
        let sidecar = Sidecar::bind(&config, Some(metrics)).await?;
        sidecar.serve(shutdown).await
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "kvs-sidecar failed");
            ExitCode::FAILURE
        }
    }
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
