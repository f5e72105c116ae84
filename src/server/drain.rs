//! Serving until the shutdown signal, then the drain.

use std::future::Future;

use tokio::sync::watch;

use super::{Sidecar, listeners::GrpcListener};
use crate::{
    BoxError,
    grpc::WebRtcStorage,
    pb::web_rtc_storage_service_server::WebRtcStorageServiceServer,
    serve::{self, Tcp},
};

// === impl Sidecar ===

impl Sidecar {
    /// Serves until `shutdown` resolves, then drains: readiness and health
    /// turn NOT_SERVING, the gRPC listeners close, connections with no call
    /// in flight close at once and in-flight calls get up to the grace
    /// period to finish; the admin port closes last, within the same grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let grpc_addr = self.grpc_addr()?;
        let admin_addr = self.admin_addr()?;
        let Self { listeners, app } = self;
        app.spawn_background();
        let (drain_tx, drain_rx) = watch::channel(false);
        let (stop_admin_tx, stop_admin_rx) = watch::channel(false);

        let (router, settings, cap) = (&app.grpc_router, &app.grpc_settings, &app.grpc_cap);
        let unix_path = listeners.unix.as_ref().map(|unix| unix.path.clone());
        let unix = listeners.unix.map(|unix| {
            serve::serve(
                unix,
                router.clone(),
                settings.clone(),
                cap.clone(),
                drain_rx.clone(),
            )
        });
        let mut grpc = match listeners.grpc {
            GrpcListener::Plain(listener) => {
                let tcp = Tcp {
                    listener,
                    no_delay: true,
                };
                serve::serve(tcp, router.clone(), settings.clone(), cap.clone(), drain_rx)
            }
            GrpcListener::Tls(tls) => {
                serve::serve(tls, router.clone(), settings.clone(), cap.clone(), drain_rx)
            }
        };
        let admin = Tcp {
            listener: listeners.admin,
            no_delay: false,
        };
        let admin = serve::serve(
            admin,
            app.admin_router,
            app.admin_settings,
            app.admin_cap,
            stop_admin_rx,
        );

        app.health
            .set_serving::<WebRtcStorageServiceServer<WebRtcStorage>>()
            .await;
        app.ready.set(true);
        if let Some(path) = &app.ready_file {
            let ready = crate::ready_file::Ready {
                pid: std::process::id(),
                grpc: grpc_addr,
                admin: admin_addr,
                unix: unix_path,
            };
            ready
                .write(path)
                .map_err(|e| format!("cannot write --ready-file {}: {e}", path.display()))?;
        }
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "serving");
        if app.emulating {
            tracing::info!(
                "try: grpcurl -plaintext -d '{{\"channel_arn\":\"{DEMO_ARN}\"}}' {grpc_addr} kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession"
            );
        }

        tokio::select! {
            () = shutdown => {}
            ended = &mut grpc => {
                ended?;
                return Err("the gRPC server stopped unexpectedly".into());
            }
        }

        tracing::info!(grace = ?app.grace, "draining");
        app.ready.set(false);
        if let Some(path) = &app.ready_file {
            let _ = std::fs::remove_file(path);
        }
        // Maintained sessions end now with a final event, so their callers'
        // other replicas can take over while this one drains.
        app.sessions.drain();
        app.health
            .set_not_serving::<WebRtcStorageServiceServer<WebRtcStorage>>()
            .await;
        app.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = drain_tx.send(true);
        let until = tokio::time::Instant::now() + app.grace;
        let drained = async {
            grpc.await?;
            if let Some(unix) = unix {
                unix.await?;
            }
            Ok::<_, BoxError>(())
        };
        match tokio::time::timeout_at(until, drained).await {
            Ok(ended) => ended?,
            Err(_) => tracing::warn!("grace period over; ending calls still in flight"),
        }
        // Probes and scrapes answered until now; the admin port gets what is
        // left of the grace, so the exit never waits on one of its clients.
        let _ = stop_admin_tx.send(true);
        if tokio::time::timeout_at(until, admin).await.is_err() {
            tracing::debug!("admin connections still open at the end of the grace period");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A channel ARN for the emulator demo.
const DEMO_ARN: &str = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/demo/1700000000000";
