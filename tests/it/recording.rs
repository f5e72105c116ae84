//! GetRecordingStatus, WatchRecording and MaintainStorageSession's
//! no_media_after against the emulator, which records fragments after each
//! master join: each state, gaps, pagination, incremental listings, the
//! per-stream pace under many callers, the errors, the no-media re-join and
//! fragments proving a session.

use crate::common;
use std::time::{Duration, SystemTime};

use crate::common::{Emulator, Reply, Sidecar, arn};
use kvs_sidecar::pb::{
    GetRecordingStatusRequest, JoinReason, MaintainStorageSessionRequest, RecordingState,
    RecordingStatus, SessionStart, WatchRecordingRequest, maintain_storage_session_request::Kind,
    maintain_storage_session_response::Event,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Channel};

const LIST: &str = "/listFragments";

/// An emulator recording short fragments (200 ms, listed 50 ms after they
/// end), and a sidecar on it.
async fn setup() -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = common::kvs().await;
    fake.set_fragment_length(Duration::from_millis(200));
    fake.set_listing_delay(Duration::from_millis(50));
    let sidecar = Sidecar::start(&fake, &[]);
    let client = sidecar.client().await;
    (fake, sidecar, client)
}

fn secs(s: f64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_secs_f64(s)).ok()
}

fn ago(d: Duration) -> Option<prost_types::Timestamp> {
    Some((SystemTime::now() - d).into())
}

fn request(channel: &str, stalled_after: f64) -> GetRecordingStatusRequest {
    GetRecordingStatusRequest {
        channel_arn: channel.into(),
        since: None,
        stalled_after: secs(stalled_after),
    }
}

async fn status(
    client: &WebRtcStorageServiceClient<Channel>,
    req: GetRecordingStatusRequest,
) -> Result<RecordingStatus, tonic::Status> {
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(10));
    Ok(client
        .clone()
        .get_recording_status(req)
        .await?
        .into_inner()
        .status
        .expect("a status"))
}

async fn join(client: &WebRtcStorageServiceClient<Channel>, channel: &str) {
    client
        .clone()
        .join_storage_session(common::join(channel))
        .await
        .expect("join");
}

fn duration(d: &Option<prost_types::Duration>) -> Duration {
    Duration::try_from(d.expect("a duration")).unwrap()
}

fn time(t: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(t.expect("a time")).unwrap()
}

/// The most requests in any second of `times`.
fn densest(times: &[std::time::Instant]) -> usize {
    times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && u.duration_since(*t) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn no_media_then_recording_then_stalled() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("porch");
    let stream = channel.replace(":channel/", ":stream/");

    // Nothing joined yet: the window is the last hour, and empty.
    let before = status(&client, request(&channel, 2.0)).await.unwrap();
    assert_eq!(before.state(), RecordingState::NoMedia, "{before:?}");
    assert_eq!(before.stream_arn, stream);
    assert_eq!(before.fragment_count, 0);
    let since = time(&before.since);
    let hour = SystemTime::now().duration_since(since).unwrap();
    assert!(
        // An hour ago, to the minute (callers within a minute share it).
        hour >= Duration::from_secs(3599) && hour < Duration::from_secs(3661),
        "{hour:?}"
    );

    // After a join, the window starts at the join and fragments arrive.
    let joined = SystemTime::now();
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recording = status(&client, request(&channel, 2.0)).await.unwrap();
    assert_eq!(
        recording.state(),
        RecordingState::Recording,
        "{recording:?}"
    );
    let since = time(&recording.since);
    assert!(
        since >= joined - Duration::from_secs(1) && since <= SystemTime::now(),
        "the default window starts at the last join"
    );
    assert!(recording.fragment_count >= 2, "{recording:?}");
    assert!(time(&recording.first_fragment_time) >= since);
    assert!(time(&recording.last_fragment_time) >= time(&recording.first_fragment_time));
    assert_eq!(
        duration(&recording.recorded_duration),
        Duration::from_millis(200) * recording.fragment_count as u32
    );
    assert!(recording.recorded_bytes >= 120_000 * recording.fragment_count);
    assert!(recording.gaps.is_empty());

    // The media stops while the session lives: stalled after 2 s.
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let stalled = status(&client, request(&channel, 2.0)).await.unwrap();
    assert_eq!(stalled.state(), RecordingState::Stalled, "{stalled:?}");
    assert_eq!(
        stalled.fragment_count as usize,
        fake.recorded_fragments(&channel)
            .iter()
            .filter(|f| f.server_timestamp >= time(&stalled.since))
            .count(),
        "every fragment counted once"
    );

    // The wire: one GetDataEndpoint for LIST_FRAGMENTS, signed; listings by
    // server timestamp, on the data endpoint, signed for kinesisvideo.
    let lookups = fake.received_on("/getDataEndpoint");
    assert_eq!(lookups.len(), 1, "the data endpoint is cached");
    assert_eq!(
        lookups[0].json(),
        serde_json::json!({"StreamARN": stream, "APIName": "LIST_FRAGMENTS"})
    );
    assert!(lookups[0].signature.is_ok());
    let listings = fake.received_on(LIST);
    let first = listings[0].json();
    assert_eq!(first["StreamARN"], stream.as_str());
    assert_eq!(
        first["FragmentSelector"]["FragmentSelectorType"],
        "SERVER_TIMESTAMP"
    );
    assert!(first["FragmentSelector"]["TimestampRange"]["StartTimestamp"].is_f64());
    assert!(listings.iter().all(|r| {
        r.signature
            .as_ref()
            .is_ok_and(|s| s.service == "kinesisvideo")
    }));
}

#[tokio::test]
async fn holes_longer_than_stalled_after_are_gaps() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("gappy");
    let since = SystemTime::now();
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = status(
        &client,
        GetRecordingStatusRequest {
            channel_arn: channel.clone(),
            since: Some(since.into()),
            stalled_after: secs(1.0),
        },
    )
    .await
    .unwrap();
    assert_eq!(answer.state(), RecordingState::Recording, "{answer:?}");
    assert_eq!(answer.gaps.len(), 1, "{answer:?}");
    let gap = &answer.gaps[0];
    let length = duration(&gap.duration);
    // From the last fragment before the stop to the first after the
    // re-join (started 0.5 s after it).
    assert!(
        length >= Duration::from_millis(2500) && length < Duration::from_millis(4000),
        "{length:?}"
    );
    assert!(time(&gap.start) > since);
    // A stalled_after longer than the hole sees no gap (asked once the
    // media stopped, so that both windows count the same fragments).
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let strict = status(
        &client,
        GetRecordingStatusRequest {
            channel_arn: channel.clone(),
            since: Some(since.into()),
            stalled_after: secs(1.0),
        },
    )
    .await
    .unwrap();
    let lenient = status(
        &client,
        GetRecordingStatusRequest {
            channel_arn: channel,
            since: Some(since.into()),
            stalled_after: secs(10.0),
        },
    )
    .await
    .unwrap();
    assert!(lenient.gaps.is_empty(), "{lenient:?}");
    assert_eq!(strict.gaps.len(), 1);
    assert_eq!(lenient.fragment_count, strict.fragment_count);
}

#[tokio::test]
async fn pages_are_followed_and_unordered_answers_counted_once() {
    let (fake, _sidecar, client) = setup().await;
    fake.set_fragment_length(Duration::from_millis(20));
    fake.set_list_page_limit(25);
    let channel = arn("paged");
    let since = SystemTime::now();
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorded = fake.recorded_fragments(&channel).len();
    assert!(recorded > 50, "{recorded}");
    let answer = status(
        &client,
        GetRecordingStatusRequest {
            channel_arn: channel.clone(),
            since: Some(since.into()),
            stalled_after: secs(30.0),
        },
    )
    .await
    .unwrap();
    assert_eq!(answer.fragment_count as usize, recorded, "{answer:?}");
    assert_eq!(
        duration(&answer.recorded_duration),
        Duration::from_millis(20) * recorded as u32
    );
    let tokens = fake
        .received_on(LIST)
        .iter()
        .filter(|r| r.json()["NextToken"].is_string())
        .count();
    assert!(
        tokens >= recorded / 25 - 1,
        "{tokens} pages after the first"
    );
    assert_eq!(fake.list_fragments_requests(&channel).throttled, 0);
}

#[tokio::test]
async fn listings_are_incremental_not_from_since_each_time() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("incremental");
    join(&client, &channel).await;
    let mut watch = client
        .clone()
        .watch_recording(WatchRecordingRequest {
            channel_arn: channel.clone(),
            since: ago(Duration::from_secs(3600)),
            stalled_after: secs(2.0),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.status.is_some());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let starts: Vec<f64> = fake
        .received_on(LIST)
        .iter()
        .filter_map(|r| r.json()["FragmentSelector"]["TimestampRange"]["StartTimestamp"].as_f64())
        .collect();
    assert!(starts.len() >= 4, "one listing a second: {starts:?}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(starts[0] < now - 3500.0, "the first reaches back to since");
    for later in &starts[1..] {
        assert!(
            *later > now - 40.0,
            "later listings start near the previous end: {starts:?}"
        );
    }
    // Still one fragment counted per fragment recorded.
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = status(
        &client,
        GetRecordingStatusRequest {
            channel_arn: channel.clone(),
            since: ago(Duration::from_secs(3600)),
            stalled_after: secs(2.0),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        answer.fragment_count as usize,
        fake.recorded_fragments(&channel).len()
    );
}

#[tokio::test]
async fn many_callers_share_one_pace_of_five_requests_a_second_per_stream() {
    let (fake, _sidecar, client) = setup().await;
    fake.set_fragment_length(Duration::from_millis(20));
    fake.set_list_page_limit(20);
    let busy = arn("busy");
    let other = arn("other");
    join(&client, &busy).await;
    join(&client, &other).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 60 status calls with as many windows (each a backfill of its own),
    // and 10 watchers, on one stream; a few on another.
    let mut calls = Vec::new();
    for i in 0..60u64 {
        let (client, channel) = (
            client.clone(),
            if i % 10 == 9 {
                other.clone()
            } else {
                busy.clone()
            },
        );
        calls.push(tokio::spawn(async move {
            status(
                &client,
                GetRecordingStatusRequest {
                    channel_arn: channel,
                    since: ago(Duration::from_secs(10 + i)),
                    stalled_after: secs(5.0),
                },
            )
            .await
        }));
    }
    let mut watchers = Vec::new();
    for _ in 0..10 {
        let mut stream = client
            .clone()
            .watch_recording(WatchRecordingRequest {
                channel_arn: busy.clone(),
                since: None,
                stalled_after: secs(5.0),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status.unwrap().state(), RecordingState::Recording);
        watchers.push(stream);
    }
    for call in calls {
        let answer = call.await.unwrap().expect("every caller answered");
        assert_eq!(answer.state(), RecordingState::Recording);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for channel in [&busy, &other] {
        let seen = fake.list_fragments_requests(channel);
        assert_eq!(seen.throttled, 0, "KVS never throttled: {seen:?}");
        assert!(densest(&seen.times) <= 5, "{}", densest(&seen.times));
        eprintln!(
            "{channel}: {} ListFragments, at most {} in a second, {} throttled",
            seen.total,
            densest(&seen.times),
            seen.throttled
        );
        assert!(seen.total >= 5, "{seen:?}");
    }
}

#[tokio::test]
async fn errors_invalid_not_found_not_enabled_and_a_failing_watch_ends() {
    let (fake, _sidecar, client) = setup().await;
    let refused = |r: Result<RecordingStatus, tonic::Status>, code: Code, needle: &str| {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), code, "{s:?}");
        assert!(s.message().contains(needle), "{s:?}");
    };
    refused(
        status(&client, request("arn:aws:s3:::bucket", 5.0)).await,
        Code::InvalidArgument,
        "channel_arn",
    );
    refused(
        status(&client, request(&arn("cam"), 0.5)).await,
        Code::InvalidArgument,
        "stalled_after",
    );
    refused(
        status(
            &client,
            GetRecordingStatusRequest {
                channel_arn: arn("cam"),
                since: Some((SystemTime::now() + Duration::from_secs(60)).into()),
                stalled_after: None,
            },
        )
        .await,
        Code::InvalidArgument,
        "since",
    );
    refused(
        status(
            &client,
            GetRecordingStatusRequest {
                channel_arn: arn("cam"),
                since: ago(Duration::from_secs(25 * 3600)),
                stalled_after: None,
            },
        )
        .await,
        Code::InvalidArgument,
        "since",
    );
    assert!(fake.received().is_empty(), "nothing sent for bad input");
    refused(
        status(&client, request(&arn("missing-cam"), 5.0)).await,
        Code::NotFound,
        "",
    );
    refused(
        status(&client, request(&arn("nostorage-cam"), 5.0)).await,
        Code::FailedPrecondition,
        "not enabled",
    );

    // Throttling and server errors are retried within the listing.
    fake.script(
        LIST,
        [
            Reply::error(400, "ClientLimitExceededException"),
            Reply::error(503, "ServiceUnavailable"),
        ],
    );
    let answer = status(&client, request(&arn("flaky"), 5.0)).await.unwrap();
    assert_eq!(answer.state(), RecordingState::NoMedia);

    // A listing that keeps failing ends the watch with its error.
    fake.script(LIST, vec![Reply::error(401, "NotAuthorizedException"); 10]);
    let mut watch = client
        .clone()
        .watch_recording(WatchRecordingRequest {
            channel_arn: arn("unlucky"),
            since: None,
            stalled_after: None,
        })
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .expect_err("the watch ends with the listing's error");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
}

/// Starts a maintained session.
async fn maintain(
    client: &WebRtcStorageServiceClient<Channel>,
    start: SessionStart,
) -> Result<
    (
        mpsc::Sender<MaintainStorageSessionRequest>,
        tonic::Streaming<kvs_sidecar::pb::MaintainStorageSessionResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(MaintainStorageSessionRequest {
        kind: Some(Kind::Start(start)),
    })
    .await
    .unwrap();
    let events = client
        .clone()
        .maintain_storage_session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, events))
}

async fn next_join(
    events: &mut tonic::Streaming<kvs_sidecar::pb::MaintainStorageSessionResponse>,
    within: Duration,
) -> Option<JoinReason> {
    let message = tokio::time::timeout(within, events.message()).await.ok()?;
    match message.unwrap().unwrap().event.unwrap() {
        Event::Joined(j) => Some(j.reason()),
        other => panic!("expected a join, got {other:?}"),
    }
}

#[tokio::test]
async fn no_fragment_after_a_join_rejoins_with_no_media() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("nomedia-cam");
    let (_tx, mut events) = maintain(
        &client,
        SessionStart {
            channel_arn: channel.clone(),
            offer_wait: secs(60.0),
            no_media_after: secs(2.0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_join(&mut events, Duration::from_secs(5)).await,
        Some(JoinReason::Initial)
    );
    assert_eq!(
        next_join(&mut events, Duration::from_secs(5)).await,
        Some(JoinReason::NoMedia)
    );
    assert!(fake.recorded_fragments(&channel).is_empty());

    // Viewers record nothing: the setting is refused for them.
    let viewer = maintain(
        &client,
        SessionStart {
            channel_arn: arn("cam"),
            client_id: "viewer-1".into(),
            no_media_after: secs(2.0),
            ..Default::default()
        },
    )
    .await;
    let refused = match viewer {
        Err(status) => status,
        Ok((_tx, mut events)) => events.message().await.expect_err("refused"),
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("no_media_after"), "{refused:?}");
}

#[tokio::test]
async fn fragments_prove_the_session_and_their_stop_rejoins() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("proven");
    // No report ever comes: without fragments the offer wait (2 s) would
    // make a no_offer join.
    let (_tx, mut events) = maintain(
        &client,
        SessionStart {
            channel_arn: channel.clone(),
            offer_wait: secs(2.0),
            no_media_after: secs(3.0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_join(&mut events, Duration::from_secs(5)).await,
        Some(JoinReason::Initial)
    );
    assert_eq!(
        next_join(&mut events, Duration::from_secs(6)).await,
        None,
        "fragments arrive: no re-join"
    );
    assert!(!fake.recorded_fragments(&channel).is_empty());
    let record = fake.storage_session(&channel, None).unwrap();
    assert_eq!(record.started, 1);
    // The media stops: a no_media join within no_media_after and a poll.
    fake.stop_media(&channel);
    assert_eq!(
        next_join(&mut events, Duration::from_secs(8)).await,
        Some(JoinReason::NoMedia)
    );
}

#[tokio::test]
async fn streams_polled_at_once_are_capped_and_a_poller_left_alone_stops() {
    let fake = common::kvs().await;
    fake.set_fragment_length(Duration::from_millis(200));
    fake.set_listing_delay(Duration::from_millis(50));
    let sidecar = Sidecar::start(&fake, &["--max-recording-streams", "2"]);
    let client = sidecar.client().await;
    let (a, b, c) = (arn("cap-a"), arn("cap-b"), arn("cap-c"));
    join(&client, &a).await;
    let open = |channel: &str| {
        let (mut client, channel) = (client.clone(), channel.to_owned());
        async move {
            let mut stream = client
                .watch_recording(WatchRecordingRequest {
                    channel_arn: channel,
                    since: None,
                    stalled_after: secs(5.0),
                })
                .await?
                .into_inner();
            let first = stream.message().await?.and_then(|m| m.status);
            let state = first.map_or(RecordingState::Unspecified, |s| s.state());
            Ok::<_, tonic::Status>((stream, state))
        }
    };
    let (mut watch_a, first) = open(&a).await.unwrap();
    // One status at each change of state: `a` records within a second.
    if first != RecordingState::Recording {
        assert_eq!(first, RecordingState::NoMedia);
        let next = tokio::time::timeout(Duration::from_secs(5), watch_a.message())
            .await
            .expect("a change of state within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(next.status.unwrap().state(), RecordingState::Recording);
    }
    let _watch_b = open(&b).await.unwrap();
    let refused = status(&client, request(&c, 5.0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-recording-streams"),
        "{refused:?}"
    );
    // Nothing was listed for the refused stream.
    assert_eq!(fake.list_fragments_requests(&c).total, 0);

    // The watcher of `a` goes away: its poller stops, its place frees.
    drop(watch_a);
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match status(&client, request(&c, 5.0)).await {
            Ok(answer) => break answer,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < until, "never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    assert_eq!(answer.state(), RecordingState::NoMedia);
    let listed = fake.list_fragments_requests(&a).total;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        fake.list_fragments_requests(&a).total,
        listed,
        "a stream nobody watches is not listed"
    );
    assert!(fake.list_fragments_requests(&b).total > listed.min(3));

    // The metrics carry no channel or stream.
    let (_, metrics) = sidecar.admin_get("/metrics");
    let recording: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("kvs_sidecar_recording_"))
        .collect();
    assert!(
        recording.iter().any(
            |l| l.starts_with("kvs_sidecar_recording_state_changes_total{state=\"recording\"}")
        ),
        "{metrics}"
    );
    assert!(
        recording
            .iter()
            .any(|l| l.starts_with("kvs_sidecar_recording_streams_polled ")),
        "{metrics}"
    );
    assert!(
        recording.iter().all(|l| !l.contains("arn:")),
        "{recording:#?}"
    );
    for method in ["GetRecordingStatus", "WatchRecording"] {
        assert!(
            metrics.contains(&format!("grpc_method=\"{method}\"")),
            "{method} is labelled by name"
        );
    }
}

#[tokio::test]
async fn the_emulated_media_ends_with_its_storage_session() {
    let (fake, _sidecar, client) = setup().await;
    fake.set_fragment_length(Duration::from_millis(100));
    fake.set_session_lifetime(Duration::from_millis(1500));
    let channel = arn("short-lived");
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let fragments = fake.recorded_fragments(&channel);
    let record = fake.storage_session(&channel, None).unwrap();
    assert_eq!(record.expired, 1, "{record:?}");
    // From 0.5 s after the join to the session's end, 1.5 s after it.
    assert!(
        (8..=11).contains(&fragments.len()),
        "{} fragments",
        fragments.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.recorded_fragments(&channel).len(), fragments.len());
    let answer = status(&client, request(&channel, 1.0)).await.unwrap();
    assert_eq!(answer.state(), RecordingState::Stalled);
    assert_eq!(answer.fragment_count as usize, fragments.len());
}

/// The sidecar's GetDataEndpoint and ListFragments against boto3's
/// (tests/boto3_wire.py, the same stream and range, the same emulator):
/// the same paths, the same JSON bodies, signed for the same service and
/// region; and boto3 reads the emulator's answers.
#[tokio::test]
async fn requests_are_the_ones_boto3_sends() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("wire");
    let stream = channel.replace(":channel/", ":stream/");
    join(&client, &channel).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    status(&client, request(&channel, 5.0)).await.unwrap();
    let ours = (
        fake.received_on("/getDataEndpoint")[0].clone(),
        fake.received_on(LIST)[0].clone(),
    );
    let range = ours.1.json()["FragmentSelector"]["TimestampRange"].clone();
    let keys = fake.credentials();
    // Off the runtime: the emulator answering boto3 runs on it.
    let (url, stream_arn) = (fake.url(), stream.clone());
    let (start, end) = (
        range["StartTimestamp"].to_string(),
        range["EndTimestamp"].to_string(),
    );
    let keys = keys.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3_wire.py"))
            .args([url, "eu-central-1".into(), stream_arn, start, end])
            .env("AWS_ACCESS_KEY_ID", &keys.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &keys.secret_access_key)
            .env("AWS_SESSION_TOKEN", keys.session_token.as_deref().unwrap())
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .output()
    })
    .await
    .unwrap()
    .expect("python with boto3 (tests/requirements.txt)");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!("data_endpoint {}", fake.url())),
        "{printed}"
    );
    let listed: usize = printed
        .lines()
        .find_map(|l| l.strip_prefix("fragments "))
        .and_then(|n| n.parse().ok())
        .expect("boto3 read the page");
    assert!(listed >= 1, "{printed}");
    // KVS's errors, as boto3 reads them from the emulator.
    assert!(
        printed.contains("missing ResourceNotFoundException 404"),
        "{printed}"
    );
    assert!(
        printed.contains("denied NotAuthorizedException 401"),
        "{printed}"
    );
    assert!(
        printed.contains("burst none,none,none,none,none,ClientLimitExceededException 400"),
        "{printed}"
    );

    // boto3's first of each, told apart by its user agent.
    let boto3 = |path: &str| {
        fake.received_on(path)
            .into_iter()
            .find(|r| {
                r.headers
                    .get("user-agent")
                    .is_some_and(|ua| ua.to_str().unwrap_or_default().starts_with("Boto3/"))
            })
            .expect("a request from boto3")
    };
    let theirs = (boto3("/getDataEndpoint"), boto3(LIST));
    for (ours, theirs) in [(&ours.0, &theirs.0), (&ours.1, &theirs.1)] {
        assert_eq!(ours.json(), theirs.json(), "{}", ours.path);
        let (a, b) = (
            ours.signature.as_ref().unwrap(),
            theirs.signature.as_ref().unwrap(),
        );
        assert_eq!((&a.service, &a.region), (&b.service, &b.region));
        let content_type =
            |r: &kvs_sidecar::emulator::Received| r.headers.get("content-type").cloned();
        assert_eq!(content_type(ours), content_type(theirs));
    }
}

#[tokio::test]
async fn a_status_asked_again_is_answered_from_the_listings_already_made() {
    let (fake, _sidecar, client) = setup().await;
    let channel = arn("polled");
    join(&client, &channel).await;
    let since = SystemTime::now() - Duration::from_secs(600);
    let ask = || {
        status(
            &client,
            GetRecordingStatusRequest {
                channel_arn: channel.clone(),
                since: Some(since.into()),
                stalled_after: secs(5.0),
            },
        )
    };
    let first = ask().await.unwrap();
    let starts = |fake: &Emulator| -> Vec<f64> {
        fake.received_on(LIST)
            .iter()
            .filter_map(|r| {
                r.json()["FragmentSelector"]["TimestampRange"]["StartTimestamp"].as_f64()
            })
            .collect()
    };
    let epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    assert!(
        (starts(&fake)[0] - epoch(since)).abs() < 0.01,
        "the first reaches back"
    );
    // Asked again after the caller left: the window lingers, fed by
    // incremental listings, and answers at once.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let again = ask().await.unwrap();
        assert!(again.fragment_count > first.fragment_count);
        assert_eq!(time(&again.since), time(&first.since));
    }
    let now = epoch(SystemTime::now());
    let later = &starts(&fake)[1..];
    assert!(later.len() >= 3, "{later:?}");
    assert!(
        later.iter().all(|s| *s > now - 40.0),
        "no listing from `since` again: {later:?}"
    );
    // Once the media stops and the last fragments are listed, every
    // fragment was counted once.
    fake.stop_media(&channel);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ask().await.unwrap().fragment_count as usize,
        fake.recorded_fragments(&channel).len(),
        "every fragment counted once"
    );
}
