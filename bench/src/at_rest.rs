//! The cost of maintained sessions at rest: N MaintainStorageSession
//! streams, each past its join with the offer and CONNECTED reported (so
//! its supervisor only waits for the re-join ahead of the session limit),
//! held open while the sidecar's CPU time and RSS are read over an idle
//! interval, against the same interval before any stream was opened.
//!
//! The baseline sidecar has already served joins (its KVS connection pool,
//! endpoint cache and allocator are warm), and the sessions open a few at
//! a time, as a fleet's would over time: what is left is what the sessions
//! hold, not the residue of a burst of 1,000 simultaneous joins.

use std::time::Duration;

use kvs_sidecar::pb::{
    MaintainStorageSessionRequest, SessionReport, SessionReportKind, SessionStart,
    maintain_storage_session_request::Kind, maintain_storage_session_response::Event,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{process, procfs::Probe};

/// Streams per HTTP/2 connection: under the sidecar's default
/// --max-calls-per-connection (256), as a pooled client would spread them.
const STREAMS_PER_CONNECTION: usize = 200;
/// Sessions starting at once.
const OPENING: usize = 16;
/// Unary joins (on channels of their own) before the baseline.
const WARM_JOINS: usize = 256;
/// Sessions opened and ended before the baseline, so the code a session
/// runs is resident in both readings (as the join path is): what is
/// measured is what each session holds, not the first one's code pages,
/// which the release build's run-order layout no longer shares with
/// start-up's (docs/performance.md).
const WARM_SESSIONS: usize = 16;
/// Pause before each reading: longer than the allocator's purge delay and
/// its once-a-second collection, so freed memory is back with the system.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct AtRest {
    pub sessions: usize,
    pub idle_seconds: f64,
    /// The sidecar's CPU over the idle interval before any session, and
    /// with every session at rest, in ms per second of wall time.
    pub cpu_ms_per_s_before: f64,
    pub cpu_ms_per_s_at_rest: f64,
    pub rss_before_mib: f64,
    pub rss_at_rest_mib: f64,
    /// The differences, scaled to 1,000 sessions.
    pub cpu_ms_per_s_per_1000: f64,
    pub rss_mib_per_1000: f64,
    /// Streams that did not reach rest (a refused start, a failed join).
    pub errors: usize,
    pub first_error: Option<String>,
}

/// Opens `sessions` maintained sessions against a fresh sidecar (flags
/// `flags`, KVS at `fake`) and measures them at rest for `idle`.
pub async fn measure(
    binary: &std::path::Path,
    fake: &str,
    env: &[(String, String)],
    flags: &[&str],
    sessions: usize,
    idle: Duration,
) -> AtRest {
    let limit = sessions.to_string();
    let calls = (sessions + 64).to_string();
    let mut all = vec![
        // Room for every stream, and no pacing of the discovery of each
        // session's channel.
        "--max-maintained-sessions",
        &limit,
        "--max-concurrent-calls",
        &calls,
        "--discovery-rate",
        "0",
    ];
    all.extend_from_slice(flags);
    let sidecar = process::sidecar(binary, fake, env, &all);
    let probe = Probe::Pid(sidecar.process.pid());
    let mut clients = Vec::new();
    for _ in 0..sessions.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        let channel = tonic::transport::Endpoint::from_shared(sidecar.grpc_url.clone())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect to the sidecar");
        clients.push(WebRtcStorageServiceClient::new(channel));
    }
    // The baseline: the same sidecar, connected, warm, with no session.
    warm(&clients[0], WARM_JOINS).await;
    warm_sessions(&clients[0], sessions).await;
    tokio::time::sleep(SETTLE).await;
    let rss_before = probe.rss_kib();
    let cpu_before = cpu_over(probe, idle).await;

    let (stop, stopped) = watch::channel(false);
    let (rested, mut at_rest) = mpsc::channel(sessions.max(1));
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut streams = JoinSet::new();
    for n in 0..sessions {
        let client = clients[n % clients.len()].clone();
        streams.spawn(hold(
            client,
            n,
            opening.clone(),
            rested.clone(),
            stopped.clone(),
        ));
    }
    drop(rested);
    let (mut errors, mut first_error) = (0, None);
    for _ in 0..sessions {
        match at_rest.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    // The reports are in; let the supervisors take them and the allocator
    // settle before the idle interval.
    tokio::time::sleep(SETTLE).await;
    let rss_at_rest = probe.rss_kib();
    let cpu_at_rest = cpu_over(probe, idle).await;
    stop.send_replace(true);
    while streams.join_next().await.is_some() {}

    let per_1000 = 1000.0 / sessions.max(1) as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let at_rest = AtRest {
        sessions,
        idle_seconds: idle.as_secs_f64(),
        cpu_ms_per_s_before: cpu_before,
        cpu_ms_per_s_at_rest: cpu_at_rest,
        rss_before_mib: mib(rss_before),
        rss_at_rest_mib: mib(rss_at_rest),
        cpu_ms_per_s_per_1000: (cpu_at_rest - cpu_before) * per_1000,
        rss_mib_per_1000: (mib(rss_at_rest) - mib(rss_before)) * per_1000,
        errors,
        first_error,
    };
    eprintln!(
        "{sessions} maintained sessions at rest: CPU {:.2} → {:.2} ms/s, RSS {:.1} → {:.1} MiB, {errors} errors",
        at_rest.cpu_ms_per_s_before,
        at_rest.cpu_ms_per_s_at_rest,
        at_rest.rss_before_mib,
        at_rest.rss_at_rest_mib
    );
    at_rest
}

/// The probed process's CPU over `idle`, in ms per second: per thread in
/// nanoseconds where the kernel counts them, else in clock ticks.
pub(crate) async fn cpu_over(probe: Probe, idle: Duration) -> f64 {
    let read = || {
        probe
            .thread_cpu_seconds()
            .unwrap_or_else(|| probe.cpu_seconds())
    };
    let start = read();
    tokio::time::sleep(idle).await;
    (read() - start) * 1000.0 / idle.as_secs_f64()
}

/// Unary joins on `count` channels of their own, `OPENING` at a time: the
/// join path's pool, cache and allocator warm before the baseline.
async fn warm(client: &WebRtcStorageServiceClient<Channel>, count: usize) {
    let mut joins = JoinSet::new();
    for lane in 0..OPENING {
        let mut client = client.clone();
        joins.spawn(async move {
            for n in (lane..count).step_by(OPENING) {
                client
                    .join_storage_session(kvs_sidecar::pb::JoinStorageSessionRequest {
                        channel_arn: crate::arn(&format!("warm-{n}")),
                        ..Default::default()
                    })
                    .await
                    .expect("a warm-up join");
            }
        });
    }
    while joins.join_next().await.is_some() {}
}

/// Opens [`WARM_SESSIONS`] sessions on channels after the measured ones'
/// (`first` on), waits until they are at rest, and ends them.
async fn warm_sessions(client: &WebRtcStorageServiceClient<Channel>, first: usize) {
    let (stop, stopped) = watch::channel(false);
    let (rested, mut at_rest) = mpsc::channel(WARM_SESSIONS);
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut streams = JoinSet::new();
    for n in first..first + WARM_SESSIONS {
        streams.spawn(hold(
            client.clone(),
            n,
            opening.clone(),
            rested.clone(),
            stopped.clone(),
        ));
    }
    drop(rested);
    for _ in 0..WARM_SESSIONS {
        if let Some(Err(e)) = at_rest.recv().await {
            panic!("a warm-up session: {e}");
        }
    }
    stop.send_replace(true);
    while streams.join_next().await.is_some() {}
}

/// Holds one session at rest ([`session`]) and tells `rested` once it is,
/// or why it is not.
async fn hold(
    client: WebRtcStorageServiceClient<Channel>,
    n: usize,
    opening: std::sync::Arc<tokio::sync::Semaphore>,
    rested: mpsc::Sender<Result<(), String>>,
    stop: watch::Receiver<bool>,
) {
    if let Err(e) = session(client, n, opening, rested.clone(), stop).await {
        let _ = rested.send(Err(e)).await;
    }
}

/// One maintained session as a backend holds it at rest: started, joined,
/// the offer and CONNECTED reported; then held until `stop`.
async fn session(
    mut client: WebRtcStorageServiceClient<Channel>,
    n: usize,
    opening: std::sync::Arc<tokio::sync::Semaphore>,
    rested: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let (reports, rx) = mpsc::channel(4);
    let message = |kind| MaintainStorageSessionRequest { kind: Some(kind) };
    let report =
        |kind: SessionReportKind| message(Kind::Report(SessionReport { kind: kind.into() }));
    let start = SessionStart {
        channel_arn: crate::arn(&format!("at-rest-{n}")),
        ..Default::default()
    };
    let closed = |_| "the request stream closed".to_owned();
    let turn = opening.acquire_owned().await.map_err(|e| e.to_string())?;
    reports
        .send(message(Kind::Start(start)))
        .await
        .map_err(closed)?;
    let mut events = client
        .maintain_storage_session(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match events.message().await {
        Ok(Some(m)) if matches!(m.event, Some(Event::Joined(_))) => {}
        Ok(other) => return Err(format!("not a join: {other:?}")),
        Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
    }
    // The fake KVS has no signaling socket: the offer is taken as arrived,
    // and media as flowing.
    reports
        .send(report(SessionReportKind::OfferReceived))
        .await
        .map_err(closed)?;
    reports
        .send(report(SessionReportKind::Connected))
        .await
        .map_err(closed)?;
    drop(turn);
    let _ = rested.send(Ok(())).await;
    let _ = stop.wait_for(|s| *s).await;
    // Dropping the streams ends the session.
    drop((reports, events));
    Ok(())
}
