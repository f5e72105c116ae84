//! GetPlaybackUrl against the emulator: bad input refused before anything
//! is sent, bodies as botocore's archived-media model has them, a new URL
//! every call that a player can fetch, the data endpoint cached and dropped
//! after a failure, "no fragments" and storage off as FAILED_PRECONDITION,
//! the per-stream pace of 5 requests a second, and the URL kept out of
//! logs and errors.

use crate::common;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{ARN, Emulator, Sidecar, arn, assert_refused, join};
use kvs_sidecar::pb::{
    EnsureStorageRequest, GetPlaybackUrlRequest, GetPlaybackUrlResponse, GetRecordingStatusRequest,
    PlaybackMode, PlaybackProtocol, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tonic::{Code, transport::Channel};

const HLS: &str = "/getHLSStreamingSessionURL";
const DASH: &str = "/getDASHStreamingSessionURL";

fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(t))
}

fn live(channel_arn: &str) -> GetPlaybackUrlRequest {
    GetPlaybackUrlRequest {
        channel_arn: channel_arn.into(),
        ..Default::default()
    }
}

/// A fake KVS that records short fragments, listed at once, and a sidecar.
async fn recording(args: &[&str]) -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = common::kvs().await;
    fake.set_fragment_length(Duration::from_millis(100));
    fake.set_listing_delay(Duration::ZERO);
    let sidecar = Sidecar::start(&fake, args);
    let client = sidecar.client().await;
    (fake, sidecar, client)
}

/// Joins `channel_arn`'s master and waits for its first fragments.
async fn record(
    fake: &Emulator,
    client: &mut WebRtcStorageServiceClient<Channel>,
    channel_arn: &str,
) {
    client
        .join_storage_session(join(channel_arn))
        .await
        .unwrap();
    common::wait_for(|| (fake.recorded_fragments(channel_arn).len() >= 2).then_some(())).await;
}

/// GETs `url` (on the emulator) as a player would: (status, body). The
/// emulator serves on this test's runtime, so the blocking GET runs apart.
async fn fetch(fake: &Emulator, url: &str) -> (u16, String) {
    let addr = fake.addr();
    let path = url.trim_start_matches(&fake.url()).to_owned();
    tokio::task::spawn_blocking(move || common::sidecar::http_get(addr, &path))
        .await
        .unwrap()
}

fn token(answer: &GetPlaybackUrlResponse) -> &str {
    answer.url.split("SessionToken=").nth(1).expect("a token")
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_before_anything_is_sent() {
    let (fake, _sidecar, mut client) = recording(&[]).await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let with = |mode: PlaybackMode, start, end| GetPlaybackUrlRequest {
        channel_arn: ARN.into(),
        mode: mode as i32,
        start,
        end,
        ..Default::default()
    };
    let expires = |seconds| GetPlaybackUrlRequest {
        channel_arn: ARN.into(),
        expires: Some(prost_types::Duration { seconds, nanos: 0 }),
        ..Default::default()
    };
    let cases = [
        (with(PlaybackMode::OnDemand, ts(now - hour), None), "end: "),
        (with(PlaybackMode::OnDemand, None, ts(now)), "start: "),
        (with(PlaybackMode::LiveReplay, None, None), "start: "),
        (with(PlaybackMode::Live, ts(now - hour), None), "start: "),
        (with(PlaybackMode::Live, None, ts(now)), "end: "),
        (
            with(PlaybackMode::OnDemand, ts(now), ts(now - hour)),
            "end: ",
        ),
        (expires(299), "expires: "),
        (expires(43_201), "expires: "),
        (
            GetPlaybackUrlRequest {
                channel_arn: ARN.into(),
                protocol: 7,
                ..Default::default()
            },
            "protocol: ",
        ),
        (
            live("arn:aws:kinesisvideo:eu-central-1:1:channel/x"),
            "channel_arn: ",
        ),
    ];
    for (request, field) in cases {
        let refused = assert_refused(
            client.get_playback_url(request).await,
            Code::InvalidArgument,
        );
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    assert!(fake.received().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn each_call_makes_a_new_url_that_a_player_can_fetch() {
    let (fake, _sidecar, mut client) = recording(&[]).await;
    record(&fake, &mut client, ARN).await;
    let stream = ARN.replace(":channel/", ":stream/");

    let asked = SystemTime::now();
    let first = client
        .get_playback_url(live(ARN))
        .await
        .unwrap()
        .into_inner();
    let prefix = format!(
        "{}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=",
        fake.url()
    );
    assert!(first.url.starts_with(&prefix), "{}", first.url);
    let answered = SystemTime::now();
    let expires_at = SystemTime::try_from(first.expires_at.unwrap()).unwrap();
    assert!(
        expires_at >= asked + Duration::from_secs(300),
        "{expires_at:?}"
    );
    assert!(
        expires_at <= answered + Duration::from_secs(300),
        "{expires_at:?}"
    );

    // Bodies as botocore's models have them.
    let endpoint = fake.received_on("/getDataEndpoint");
    assert_eq!(endpoint.len(), 1);
    assert_eq!(
        endpoint[0].json(),
        serde_json::json!({"StreamARN": stream, "APIName": "GET_HLS_STREAMING_SESSION_URL"})
    );
    let sent = fake.received_on(HLS);
    assert!(sent[0].signature.is_ok());
    assert_eq!(
        sent[0].json(),
        serde_json::json!({"StreamARN": stream, "PlaybackMode": "LIVE", "Expires": 300})
    );

    // A player fetches it: the master playlist, then the media playlist.
    let (status, playlist) = fetch(&fake, &first.url).await;
    assert_eq!(status, 200, "{playlist}");
    assert!(playlist.starts_with("#EXTM3U"), "{playlist}");
    let media = format!(
        "/hls/v1/{}",
        playlist
            .lines()
            .find(|l| l.starts_with("getHLSMediaPlaylist"))
            .unwrap()
    );
    let (status, media) = fetch(&fake, &media).await;
    assert_eq!(status, 200);
    assert!(media.contains("#EXTINF:"), "{media}");

    // Never cached or shared: a second call is a second session; the data
    // endpoint is reused.
    let second = client
        .get_playback_url(live(ARN))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(token(&first), token(&second));
    assert_eq!(fake.received_on(HLS).len(), 2);
    assert_eq!(fake.received_on("/getDataEndpoint").len(), 1);

    // DASH, on demand, for a range: the selector in epoch seconds.
    let start = SystemTime::now() - Duration::from_secs(60);
    let end = SystemTime::now();
    let dash = client
        .get_playback_url(GetPlaybackUrlRequest {
            channel_arn: ARN.into(),
            protocol: PlaybackProtocol::Dash as i32,
            mode: PlaybackMode::OnDemand as i32,
            start: ts(start),
            end: ts(end),
            expires: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let body = fake.received_on(DASH)[0].json();
    assert_eq!(body["PlaybackMode"], "ON_DEMAND");
    assert_eq!(body["Expires"], 3600);
    let selector = &body["DASHFragmentSelector"];
    assert_eq!(selector["FragmentSelectorType"], "SERVER_TIMESTAMP");
    let epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let sent_start = selector["TimestampRange"]["StartTimestamp"]
        .as_f64()
        .unwrap();
    assert!((sent_start - epoch(start)).abs() < 0.001, "{body}");
    assert!(selector["TimestampRange"]["EndTimestamp"].as_f64().unwrap() > sent_start);
    assert_eq!(
        fake.received_on("/getDataEndpoint")[1].json()["APIName"],
        "GET_DASH_STREAMING_SESSION_URL"
    );
    let (status, mpd) = fetch(&fake, &dash.url).await;
    assert_eq!(status, 200);
    assert!(mpd.contains("<MPD"), "{mpd}");
}

#[tokio::test]
async fn nothing_to_play_and_no_storage_are_failed_preconditions() {
    let (fake, _sidecar, mut client) = recording(&[]).await;
    // Never joined: no fragments.
    let refused = assert_refused(
        client.get_playback_url(live(&arn("quiet-cam"))).await,
        Code::FailedPrecondition,
    );
    assert!(refused.message().contains("no fragments"), "{refused:?}");
    // Joined, but its media never arrives.
    client
        .join_storage_session(join(&arn("nomedia-cam")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_refused(
        client.get_playback_url(live(&arn("nomedia-cam"))).await,
        Code::FailedPrecondition,
    );
    // The data endpoint is dropped after a failure: each call asked again.
    assert_eq!(fake.received_on("/getDataEndpoint").len(), 2);

    // Storage off: nothing asked of the data plane.
    let refused = assert_refused(
        client.get_playback_url(live(&arn("nostorage-cam"))).await,
        Code::FailedPrecondition,
    );
    assert!(refused.message().contains("EnsureStorage"), "{refused:?}");
    assert_eq!(fake.received_on("/getDataEndpoint").len(), 2);
    assert_eq!(fake.received_on(HLS).len(), 2);

    let stream = fake.received_on(HLS)[0].json()["StreamARN"].clone();
    assert!(stream.as_str().unwrap().contains(":stream/quiet-cam/"));
}

#[tokio::test]
async fn a_provisioned_channel_records_and_plays_back() {
    let (fake, _sidecar, mut client) = recording(&["--allow-storage-changes"]).await;
    let channel = arn("nostorage-porch");
    let ensured = client
        .ensure_storage(EnsureStorageRequest {
            channel_arn: channel.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    record(&fake, &mut client, &channel).await;
    // The recording status lists the linked stream's fragments: the
    // channel's joins record into it.
    let status = client
        .get_recording_status(GetRecordingStatusRequest {
            channel_arn: channel.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.stream_arn, ensured.stream_arn);
    assert!(status.fragment_count >= 2, "{status:?}");
    let answer = client
        .get_playback_url(live(&channel))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fake.received_on(HLS)[0].json()["StreamARN"],
        ensured.stream_arn.as_str()
    );
    let (status, _) = fetch(&fake, &answer.url).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn at_most_five_requests_a_second_per_stream_reach_kvs() {
    let (fake, _sidecar, mut client) = recording(&[]).await;
    record(&fake, &mut client, ARN).await;
    // The endpoint is found first, so every call below only asks for URLs.
    client.get_playback_url(live(ARN)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let calls: Vec<_> = (0..11)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.get_playback_url(live(ARN)).await })
        })
        .collect();
    // Behind ten queued calls, a call that must answer within 300 ms
    // cannot get a slot: refused at once, nothing sent.
    common::wait_for(|| (fake.received_on(HLS).len() >= 6).then_some(())).await;
    let mut hurried = tonic::Request::new(live(ARN));
    hurried.set_timeout(Duration::from_millis(300));
    let refused = assert_refused(
        client.get_playback_url(hurried).await,
        Code::ResourceExhausted,
    );
    assert!(!refused.message().contains("SessionToken"), "{refused:?}");
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap().unwrap().into_inner().url);
    }
    let elapsed = started.elapsed();
    assert_eq!(fake.playback_throttled(), 0, "KVS never throttled");
    assert_eq!(
        fake.received_on(HLS).len(),
        12,
        "the refused call sent nothing"
    );
    // 11 requests at 5 per 1.05 s: the last two waited for a third window.
    assert!(elapsed >= Duration::from_millis(2000), "{elapsed:?}");
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 11, "each call its own URL");
}

#[tokio::test]
async fn the_url_never_reaches_logs_or_errors() {
    let (fake, sidecar, mut client) =
        recording(&["--log-level", "trace", "--log-format", "json"]).await;
    record(&fake, &mut client, ARN).await;
    let mut tokens = Vec::new();
    for protocol in [PlaybackProtocol::Hls, PlaybackProtocol::Dash] {
        let answer = client
            .get_playback_url(GetPlaybackUrlRequest {
                channel_arn: ARN.into(),
                protocol: protocol as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(token(&answer).to_owned());
    }
    // The last line written: a call refused for its input.
    client.get_playback_url(live("arn:nope")).await.unwrap_err();
    common::wait_for(|| {
        sidecar
            .call_logs()
            .iter()
            .any(|l| l["rpc"] == "GetPlaybackUrl" && l["status"] == "InvalidArgument")
            .then_some(())
    })
    .await;
    let output = sidecar.output();
    assert!(output.len() > 20, "trace logging is on");
    assert!(
        sidecar
            .call_logs()
            .iter()
            .filter(|l| l["rpc"] == "GetPlaybackUrl")
            .count()
            >= 3
    );
    let (_, metrics) = sidecar.admin_get("/metrics");
    for token in &tokens {
        for line in output.iter().chain([&metrics]) {
            assert!(
                !line.contains(token.as_str()),
                "a playback URL leaked: {line}"
            );
        }
    }
}

/// GetDataEndpoint and both session-URL requests, replayed with boto3: the
/// same paths, bodies (timestamps as epoch seconds), signing scope and
/// content type (botocore's kinesisvideo and kinesis-video-archived-media
/// models).
#[tokio::test]
async fn requests_are_the_ones_boto3_sends() {
    let (fake, _sidecar, mut client) = recording(&[]).await;
    record(&fake, &mut client, ARN).await;
    client.get_playback_url(live(ARN)).await.unwrap();
    client
        .get_playback_url(GetPlaybackUrlRequest {
            channel_arn: ARN.into(),
            protocol: PlaybackProtocol::Dash as i32,
            mode: PlaybackMode::OnDemand as i32,
            start: ts(SystemTime::now() - Duration::from_secs(60)),
            end: ts(SystemTime::now()),
            expires: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    let endpoints = fake.received_on("/getDataEndpoint");
    let ours = [
        ("kinesisvideo", "GetDataEndpoint", endpoints[0].clone()),
        (
            "kinesis-video-archived-media",
            "GetHLSStreamingSessionURL",
            fake.received_on(HLS)[0].clone(),
        ),
        ("kinesisvideo", "GetDataEndpoint", endpoints[1].clone()),
        (
            "kinesis-video-archived-media",
            "GetDASHStreamingSessionURL",
            fake.received_on(DASH)[0].clone(),
        ),
    ];
    common::assert_boto3_sends_the_same(&fake, "eu-central-1", &ours).await;
}
