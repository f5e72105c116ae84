//! Wires the sidecar: configuration, logging, metrics, serve, drain.

use std::process::ExitCode;

use clap::Parser;
use kvs_sidecar::{config::Config, metrics, server::Sidecar, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = telemetry::init(&config) {
        eprintln!("kvs-sidecar: bad log configuration: {e}");
        return ExitCode::from(2);
    }
    let run = async {
        let metrics = metrics::install()?;
        let sidecar = Sidecar::bind(&config, Some(metrics)).await?;
        sidecar.serve(shutdown_signal()).await
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "kvs-sidecar failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
