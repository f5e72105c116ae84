//! The cost of watched streams at rest: N WatchRecording streams, one per
//! channel (and so one stream poller each, listing once a second), held
//! open past their first status while the sidecar's CPU time and RSS are
//! read over an idle interval, against the same interval before any watch.
//! The fake KVS answers every listing at once with one fresh fragment, so
//! what is measured is the sidecar's polling: one signed ListFragments a
//! second per stream, its parsing, and the status it publishes.

use std::time::Duration;

use kvs_sidecar::pb::{
    RecordingState, WatchRecordingRequest,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use serde::Serialize;
use tokio::{sync::watch, task::JoinSet};

use crate::{process, procfs::Probe};

/// As in the at-rest measurement: freed memory is back with the system.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct Watching {
    pub streams: usize,
    pub idle_seconds: f64,
    pub cpu_ms_per_s_before: f64,
    pub cpu_ms_per_s_watching: f64,
    pub rss_before_mib: f64,
    pub rss_watching_mib: f64,
    /// Watches that did not start RECORDING.
    pub errors: usize,
    pub first_error: Option<String>,
}

/// Opens `streams` watches against a fresh sidecar and measures them.
pub async fn measure(
    binary: &std::path::Path,
    fake: &str,
    env: &[(String, String)],
    flags: &[&str],
    streams: usize,
    idle: Duration,
) -> Watching {
    let sidecar = process::sidecar(binary, fake, env, flags);
    let probe = Probe::Pid(sidecar.process.pid());
    let channel = tonic::transport::Endpoint::from_shared(sidecar.grpc_url.clone())
        .expect("a valid URL")
        .connect()
        .await
        .expect("connect to the sidecar");
    let client = WebRtcStorageServiceClient::new(channel);
    tokio::time::sleep(SETTLE).await;
    let rss_before = probe.rss_kib();
    let cpu_before = crate::at_rest::cpu_over(probe, idle).await;

    let (stop, stopped) = watch::channel(false);
    let (started, mut first) = tokio::sync::mpsc::channel(streams.max(1));
    let mut watches = JoinSet::new();
    for n in 0..streams {
        let (mut client, started, mut stopped) = (client.clone(), started.clone(), stopped.clone());
        watches.spawn(async move {
            let opened = client
                .watch_recording(WatchRecordingRequest {
                    channel_arn: crate::arn(&format!("watched-{n}")),
                    since: None,
                    stalled_after: None,
                })
                .await;
            let mut stream = match opened {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    let _ = started
                        .send(Err(format!("{:?}: {}", s.code(), s.message())))
                        .await;
                    return;
                }
            };
            let outcome = match stream.message().await {
                Ok(Some(m))
                    if m.status
                        .as_ref()
                        .is_some_and(|s| s.state() == RecordingState::Recording) =>
                {
                    Ok(())
                }
                Ok(other) => Err(format!("not RECORDING: {other:?}")),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            };
            let _ = started.send(outcome).await;
            let _ = stopped.wait_for(|s| *s).await;
            drop(stream);
        });
    }
    drop(started);
    let (mut errors, mut first_error) = (0, None);
    for _ in 0..streams {
        match first.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    tokio::time::sleep(SETTLE).await;
    let rss_watching = probe.rss_kib();
    let cpu_watching = crate::at_rest::cpu_over(probe, idle).await;
    stop.send_replace(true);
    while watches.join_next().await.is_some() {}
    let mib = |kib: u64| kib as f64 / 1024.0;
    let watching = Watching {
        streams,
        idle_seconds: idle.as_secs_f64(),
        cpu_ms_per_s_before: cpu_before,
        cpu_ms_per_s_watching: cpu_watching,
        rss_before_mib: mib(rss_before),
        rss_watching_mib: mib(rss_watching),
        errors,
        first_error,
    };
    eprintln!(
        "{streams} watched streams: CPU {:.2} → {:.2} ms/s, RSS {:.1} → {:.1} MiB, {errors} errors",
        watching.cpu_ms_per_s_before,
        watching.cpu_ms_per_s_watching,
        watching.rss_before_mib,
        watching.rss_watching_mib
    );
    watching
}
