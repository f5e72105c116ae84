//! Fleet-scale behaviour against the emulator: a throttle storm on discovery
//! (other pods using up the account's quota) must not block channels whose
//! endpoint is cached, must not lock the limiter down after it ends, and
//! tens of thousands of distinct channels must not grow memory without
//! bound.

use crate::common;
use std::time::{Duration, Instant};

use crate::common::{ARN, Sidecar};
use kvs_sidecar::pb::{
    JoinStorageSessionRequest, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tonic::{Code, transport::Channel};

const DISCOVERY: &str = "/getSignalingChannelEndpoint";

fn join(arn: &str, timeout: Duration) -> tonic::Request<JoinStorageSessionRequest> {
    let mut req = tonic::Request::new(JoinStorageSessionRequest {
        channel_arn: arn.into(),
        ..Default::default()
    });
    req.set_timeout(timeout);
    req
}

/// Joins of `n` channels never seen before, all at once.
fn new_channel_burst(
    client: &WebRtcStorageServiceClient<Channel>,
    prefix: &str,
    n: usize,
    timeout: Duration,
) -> Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>> {
    (0..n)
        .map(|i| {
            let mut client = client.clone();
            let arn = common::arn(&format!("{prefix}-{i}"));
            tokio::spawn(async move {
                client
                    .join_storage_session(join(&arn, timeout))
                    .await
                    .map(drop)
            })
        })
        .collect()
}

/// A burst of joins on 300 new channels while KVS throttles discovery for
/// `storm`; returns how many were refused and when the storm ends.
async fn storm(
    fake: &common::Emulator,
    client: &WebRtcStorageServiceClient<Channel>,
    storm: Duration,
) -> (
    Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>>,
    Instant,
) {
    fake.throttle(DISCOVERY, storm);
    let ends = Instant::now() + storm;
    (
        new_channel_burst(client, "storm", 300, Duration::from_secs(4)),
        ends,
    )
}

async fn refused(burst: Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>>) -> usize {
    let mut refused = 0;
    for call in burst {
        if let Err(status) = call.await.unwrap() {
            assert!(
                matches!(
                    status.code(),
                    Code::ResourceExhausted | Code::DeadlineExceeded
                ),
                "{status:?}"
            );
            refused += 1;
        }
    }
    refused
}

#[tokio::test]
async fn a_discovery_storm_does_not_block_channels_whose_endpoint_is_cached() {
    // Few upstream slots, so that calls holding them while they sleep for a
    // rate token (as tower's ConcurrencyLimit under our rate limit did)
    // would starve everything else.
    let (fake, _sidecar, client) = common::warmed(&["--max-upstream-concurrency", "8"]).await;
    let (burst, _) = storm(&fake, &client, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each join has 2 s: the first, 0.3 s into a 3 s storm, can only succeed
    // if it does not wait for the storm to end (on the old code it waited
    // behind calls sleeping for rate tokens and missed its deadline). No
    // stopwatch: on a loaded 2-core machine a join's time says little.
    for _ in 0..5 {
        client
            .clone()
            .join_storage_session(join(ARN, Duration::from_secs(2)))
            .await
            .expect("a cached channel joins during the storm, within its deadline");
    }
    let refused = refused(burst).await;
    assert!(
        refused > 250,
        "the storm throttled new channels ({refused} refused)"
    );
}

#[tokio::test]
async fn new_channels_are_discovered_again_soon_after_a_storm() {
    let (fake, sidecar, client) = common::warmed(&[]).await;
    let (burst, storm_ends) = storm(&fake, &client, Duration::from_secs(3)).await;
    let mut refused = 0;
    for call in burst {
        refused += usize::from(call.await.unwrap().is_err());
    }
    assert!(
        refused > 250,
        "the storm throttled new channels ({refused} refused)"
    );

    // No call got through during the storm, so the limiter learnt nothing
    // but throttling; it must still let new channels through within
    // seconds of its end.
    tokio::time::sleep(storm_ends.saturating_duration_since(Instant::now())).await;
    let recovered_by = Instant::now() + Duration::from_secs(5);
    let mut first_success = None;
    let mut i = 0;
    while Instant::now() < recovered_by {
        i += 1;
        let arn = common::arn(&format!("after-{i}"));
        if client
            .clone()
            .join_storage_session(join(&arn, Duration::from_secs(2)))
            .await
            .is_ok()
        {
            first_success = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_success = first_success.expect("a new channel joined within 5 s of the storm's end");
    let (_, metrics) = sidecar.admin_get("/metrics");
    println!(
        "storm: {refused}/300 new channels refused; first new channel joined {:?} after the storm; discovery rate then {:?}/s",
        first_success.saturating_duration_since(storm_ends),
        common::metric(
            &metrics,
            r#"kvs_rate_limit_per_second{operation="GetSignalingChannelEndpoint"}"#
        )
    );
    // And then at a normal pace: 20 more, one after another.
    for i in 0..20 {
        let arn = common::arn(&format!("steady-{i}"));
        client
            .clone()
            .join_storage_session(join(&arn, Duration::from_secs(2)))
            .await
            .expect("new channels join after the storm");
    }
}

#[tokio::test]
async fn distinct_channels_keep_the_endpoint_cache_and_memory_bounded() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(
        &fake,
        &["--endpoint-cache-capacity", "1000", "--discovery-rate", "0"],
    );
    let client = sidecar.client().await;
    const CONCURRENCY: usize = 64;
    // Channels that exist (cached) and channels that don't (a failed
    // discovery, which must leave nothing behind), each distinct.
    let run = |from: usize, to: usize| {
        let client = client.clone();
        async move {
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|lane| {
                    let mut client = client.clone();
                    tokio::spawn(async move {
                        for i in (from + lane..to).step_by(CONCURRENCY) {
                            let name = if i % 2 == 0 {
                                format!("cam-{i}")
                            } else {
                                format!("missing-{i}")
                            };
                            let answer = client
                                .join_storage_session(join(
                                    &common::arn(&name),
                                    Duration::from_secs(5),
                                ))
                                .await;
                            match answer {
                                Ok(_) => assert!(i % 2 == 0),
                                Err(s) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    run(0, 4_000).await;
    let warm = common::rss_kib(sidecar.pid());
    run(4_000, 30_000).await;
    let after = common::rss_kib(sidecar.pid());
    let (_, metrics) = sidecar.admin_get("/metrics");
    let entries = common::metric(&metrics, "kvs_endpoint_cache_entries").unwrap();
    let evicted = common::metric(
        &metrics,
        r#"kvs_endpoint_cache_evictions_total{cause="size"}"#,
    )
    .unwrap_or(0.0);
    println!(
        "30,000 distinct channels: RSS {warm} KiB after 4,000, {after} KiB after 30,000; {entries} entries, {evicted} evicted for size"
    );
    assert!(
        entries <= 1_100.0,
        "{entries} entries for a capacity of 1,000"
    );
    assert!(evicted >= 10_000.0, "{evicted} evicted for size");
    // 13,000 more cached channels at ~0.5 KiB each would be 6+ MiB.
    assert!(
        after.saturating_sub(warm) < 4 * 1024,
        "RSS grew from {warm} to {after} KiB"
    );
}
