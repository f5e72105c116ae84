//! A mixed fault load for a bounded time (KVS_SIDECAR_SOAK_SECS, 45 s by
//! default): KVS fails, throttles, resets, slows down and answers errors
//! while 32 callers keep calling. Every call must get an answer, health must
//! answer throughout, the process must not panic, and its memory must stay
//! under a bound. The figures are printed.

use crate::common;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{ARN, Reply};
use kvs_sidecar::pb::JoinStorageSessionRequest;

const CALLERS: usize = 32;
/// Peak RSS allowed for the (debug-built) sidecar under this load.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn random_fault(rng: &mut fastrand::Rng) -> Reply {
    match rng.u8(..8) {
        0 => Reply::error(503, "ServiceUnavailable"),
        1 => Reply::error(500, "InternalFailure"),
        2 => Reply::error(400, "ClientLimitExceededException"),
        3 => Reply::Reset,
        4 => Reply::Slow(Duration::from_millis(rng.u64(50..400)), Box::new(Reply::Ok)),
        5 => Reply::error(404, "ResourceNotFoundException"),
        6 => Reply::error(403, "AccessDeniedException"),
        _ => Reply::Ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_mixed_faults_loses_no_call_and_stays_healthy() {
    let secs: u64 = std::env::var("KVS_SIDECAR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let (fake, sidecar, client) = common::warmed(&[
        "--attempt-timeout",
        "200ms",
        "--max-concurrent-calls",
        "64",
        "--retry-quota",
        "100000",
    ])
    .await;
    let pid = sidecar.pid();
    let until = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));

    // Faults: kept topped up every 50 ms, so a steady share of requests
    // meets one.
    let injected = Arc::new(AtomicUsize::new(0));
    let injector = tokio::spawn({
        let (fake, injected, stop) = (fake.clone(), injected.clone(), stop.clone());
        async move {
            let mut rng = fastrand::Rng::with_seed(7);
            while !stop.load(Ordering::Relaxed) {
                if fake.scripted_left("/joinStorageSession") < 16 {
                    let batch: Vec<_> = (0..8).map(|_| random_fault(&mut rng)).collect();
                    injected.fetch_add(batch.len(), Ordering::Relaxed);
                    fake.script("/joinStorageSession", batch);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Health and memory, watched throughout.
    let health_failures = Arc::new(AtomicUsize::new(0));
    let peak_rss = Arc::new(AtomicUsize::new(0));
    let watcher = tokio::spawn({
        let (admin, failures, peak, stop) = (
            sidecar.admin,
            health_failures.clone(),
            peak_rss.clone(),
            stop.clone(),
        );
        async move {
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = tokio::task::spawn_blocking(move || {
                    common::sidecar::try_http_get(admin, "/readyz")
                })
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|(status, _)| status == 200);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                peak.fetch_max(common::rss_kib(pid) as usize, Ordering::Relaxed);
                checks += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            checks
        }
    });

    let answers = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let lost = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (mut client, answers, lost) = (client.clone(), answers.clone(), lost.clone());
            tokio::spawn(async move {
                let mut calls = 0;
                while Instant::now() < until {
                    let mut req = tonic::Request::new(JoinStorageSessionRequest {
                        channel_arn: ARN.into(),
                        ..Default::default()
                    });
                    req.set_timeout(Duration::from_secs(2));
                    calls += 1;
                    // A call that has not answered 3 s after a 2 s deadline
                    // is lost.
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        client.join_storage_session(req),
                    )
                    .await
                    {
                        Ok(answer) => {
                            let code =
                                answer.map_or_else(|s| format!("{:?}", s.code()), |_| "Ok".into());
                            *answers.lock().unwrap().entry(code).or_default() += 1;
                        }
                        Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    injector.await.unwrap();
    let health_checks = watcher.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let answered: usize = answers.values().sum();
    let faults = injected.load(Ordering::Relaxed) - fake.scripted_left("/joinStorageSession");
    let peak = peak_rss.load(Ordering::Relaxed) as u64;
    println!(
        "soak: {secs} s, {calls} calls, {faults} faults injected, {answered} answered {answers:?}, \
         {} lost, {health_checks} health checks ({} failed), peak RSS {:.1} MiB (bound {} MiB)",
        lost.load(Ordering::Relaxed),
        health_failures.load(Ordering::Relaxed),
        peak as f64 / 1024.0,
        RSS_BOUND_KIB / 1024,
    );
    assert_eq!(lost.load(Ordering::Relaxed), 0, "every call gets an answer");
    assert_eq!(answered, calls);
    assert!(
        answers.get("Ok").copied().unwrap_or(0) > calls / 4,
        "most calls still succeed: {answers:?}"
    );
    assert!(faults > 100, "faults were injected: {faults}");
    assert_eq!(
        health_failures.load(Ordering::Relaxed),
        0,
        "readyz answered throughout"
    );
    assert!(peak > 0 && peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    let panicked: Vec<_> = sidecar
        .output()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panicked.is_empty(), "{panicked:?}");
    assert_eq!(sidecar.admin_get("/readyz").0, 200);
}
