//! EnsureStorage against the emulator: off without --allow-storage-changes,
//! bad input refused before anything is sent, each step (create, wait for
//! ACTIVE, raise the retention, link) with bodies as botocore's kinesisvideo
//! model has them, every refusal, idempotence, single flight per channel,
//! and CheckStorageReadiness seeing the change at once.

use crate::common;
use std::time::Duration;

use crate::common::{Emulator, Reply, Sidecar, arn, assert_refused};
use kvs_sidecar::pb::{
    CheckStorageReadinessRequest, EnsureStorageRequest, EnsureStorageResponse, StorageChange,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tonic::{Code, transport::Channel};

const WRITES: [&str; 3] = [
    "/createStream",
    "/updateDataRetention",
    "/updateMediaStorageConfiguration",
];

fn ensure(channel: &str, stream_name: &str, retention_hours: u32) -> EnsureStorageRequest {
    EnsureStorageRequest {
        channel_arn: arn(channel),
        stream_name: stream_name.into(),
        retention_hours,
    }
}

fn writes(fake: &Emulator) -> usize {
    WRITES.iter().map(|p| fake.received_on(p).len()).sum()
}

fn changes(answer: &EnsureStorageResponse) -> Vec<StorageChange> {
    answer
        .changes
        .iter()
        .map(|c| StorageChange::try_from(*c).unwrap())
        .collect()
}

/// The members of a JSON object, sorted.
fn members(body: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

async fn allowed() -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--allow-storage-changes"]);
    let client = sidecar.client().await;
    (fake, sidecar, client)
}

async fn readiness(
    client: &mut WebRtcStorageServiceClient<Channel>,
    channel: &str,
) -> kvs_sidecar::pb::CheckStorageReadinessResponse {
    client
        .check_storage_readiness(CheckStorageReadinessRequest {
            channel_arn: arn(channel),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn off_by_default_it_names_the_flag_and_sends_nothing() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let mut client = sidecar.client().await;
    let refused = assert_refused(
        client.ensure_storage(ensure("nostorage-cam", "", 0)).await,
        Code::PermissionDenied,
    );
    assert!(
        refused.message().contains("--allow-storage-changes"),
        "{refused:?}"
    );
    assert!(fake.received().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_before_anything_is_sent() {
    let (fake, _sidecar, mut client) = allowed().await;
    let cases = [
        (ensure("cam", "a b", 0), "stream_name: "),
        (ensure("cam", "x/y", 0), "stream_name: "),
        (ensure("cam", &"n".repeat(257), 0), "stream_name: "),
        (ensure("cam", "", 87_601), "retention_hours: "),
        (
            EnsureStorageRequest {
                channel_arn: "arn:aws:kinesisvideo:eu-central-1:1:channel/x".into(),
                ..Default::default()
            },
            "channel_arn: ",
        ),
        (ensure(&"c".repeat(250), "", 0), "stream_name: "),
    ];
    for (request, field) in cases {
        let refused = assert_refused(client.ensure_storage(request).await, Code::InvalidArgument);
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    assert!(fake.received().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn provisions_a_channel_without_storage_then_a_second_call_writes_nothing() {
    let (fake, _sidecar, mut client) = allowed().await;
    // Cached as not ready before the change.
    let before = readiness(&mut client, "nostorage-cam").await;
    assert_eq!(before.problems[0].code, "STORAGE_DISABLED");

    let answer = client
        .ensure_storage(ensure("nostorage-cam", "", 48))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        changes(&answer),
        [StorageChange::StreamCreated, StorageChange::StorageEnabled]
    );
    assert!(
        answer.stream_arn.starts_with(
            "arn:aws:kinesisvideo:eu-central-1:123456789012:stream/nostorage-cam-storage/"
        ),
        "{answer:?}"
    );

    // Bodies as botocore's kinesisvideo model has them.
    let by_name = &fake.received_on("/describeStream")[0];
    assert_eq!(
        by_name.json(),
        serde_json::json!({"StreamName": "nostorage-cam-storage"})
    );
    let create = fake.received_on("/createStream");
    assert_eq!(create.len(), 1);
    assert!(create[0].signature.is_ok());
    assert_eq!(
        create[0].json(),
        serde_json::json!({
            "StreamName": "nostorage-cam-storage",
            "MediaType": "video/h264,audio/aac",
            "DataRetentionInHours": 48,
        })
    );
    // Read again until ACTIVE (the emulator's stream is CREATING at first).
    let polls = fake.received_on("/describeStream");
    assert!(polls.len() >= 2, "{}", polls.len());
    assert_eq!(
        polls[1].json(),
        serde_json::json!({"StreamARN": answer.stream_arn})
    );
    let link = fake.received_on("/updateMediaStorageConfiguration");
    assert_eq!(link.len(), 1);
    assert_eq!(
        link[0].json(),
        serde_json::json!({
            "ChannelARN": arn("nostorage-cam"),
            "MediaStorageConfiguration": {"StreamARN": answer.stream_arn, "Status": "ENABLED"},
        })
    );
    assert!(fake.received_on("/updateDataRetention").is_empty());

    // Readiness sees it at once, not after --readiness-cache-ttl.
    let after = readiness(&mut client, "nostorage-cam").await;
    assert!(after.ready, "{after:?}");
    assert_eq!(after.stream_arn, answer.stream_arn);
    assert_eq!(after.data_retention_hours, 48);

    let writes_before = writes(&fake);
    let again = client
        .ensure_storage(ensure("nostorage-cam", "", 48))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "{again:?}");
    assert_eq!(again.stream_arn, answer.stream_arn);
    assert_eq!(writes(&fake), writes_before, "a second call writes nothing");
}

#[tokio::test]
async fn keeps_a_linked_stream_and_raises_its_retention() {
    let (fake, _sidecar, mut client) = allowed().await;
    let linked = arn("front-door").replace(":channel/", ":stream/");
    // Already in place with the default 24 hours: nothing to write.
    let answer = client
        .ensure_storage(ensure("front-door", "ignored-name", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.changes.is_empty(), "{answer:?}");
    assert_eq!(answer.stream_arn, linked);
    assert_eq!(writes(&fake), 0);
    assert!(fake.received_on("/createStream").is_empty());

    let answer = client
        .ensure_storage(ensure("front-door", "", 72))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes(&answer), [StorageChange::RetentionIncreased]);
    let update = fake.received_on("/updateDataRetention");
    assert_eq!(update.len(), 1);
    assert_eq!(
        update[0].json(),
        serde_json::json!({
            "StreamARN": linked,
            "CurrentVersion": "1",
            "Operation": "INCREASE_DATA_RETENTION",
            "DataRetentionChangeInHours": 48,
        })
    );
    assert_eq!(
        members(&update[0].json()),
        [
            "CurrentVersion",
            "DataRetentionChangeInHours",
            "Operation",
            "StreamARN"
        ]
    );
    assert_eq!(
        readiness(&mut client, "front-door")
            .await
            .data_retention_hours,
        72
    );

    // A stream that keeps nothing gets the default retention.
    let answer = client
        .ensure_storage(ensure("noretention-cam", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes(&answer), [StorageChange::RetentionIncreased]);
    assert!(readiness(&mut client, "noretention-cam").await.ready);
}

#[tokio::test]
async fn a_stale_version_is_read_again_and_tried_once_more() {
    let (fake, _sidecar, mut client) = allowed().await;
    fake.script(
        "/updateDataRetention",
        [Reply::error(400, "VersionMismatchException")],
    );
    let answer = client
        .ensure_storage(ensure("cam-1", "", 30))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes(&answer), [StorageChange::RetentionIncreased]);
    assert_eq!(fake.received_on("/updateDataRetention").len(), 2);

    // A stream that keeps changing: ABORTED after the one retry.
    fake.script(
        "/updateDataRetention",
        [
            Reply::error(400, "VersionMismatchException"),
            Reply::error(400, "VersionMismatchException"),
        ],
    );
    let refused = assert_refused(
        client.ensure_storage(ensure("cam-2", "", 30)).await,
        Code::Aborted,
    );
    assert!(
        refused.message().contains("VersionMismatchException"),
        "{refused:?}"
    );
    assert_eq!(fake.received_on("/updateDataRetention").len(), 4);
}

#[tokio::test]
async fn channels_that_cannot_store_are_refused_and_nothing_is_written() {
    let (fake, _sidecar, mut client) = allowed().await;
    for name in ["fullmesh-cam", "inactive-cam"] {
        let refused = assert_refused(
            client.ensure_storage(ensure(name, "", 0)).await,
            Code::FailedPrecondition,
        );
        assert!(
            refused.message().contains("ACTIVE SINGLE_MASTER"),
            "{refused:?}"
        );
    }
    assert_refused(
        client.ensure_storage(ensure("missing-cam", "", 0)).await,
        Code::NotFound,
    );
    assert_refused(
        client.ensure_storage(ensure("denied-cam", "", 0)).await,
        Code::PermissionDenied,
    );
    assert_eq!(writes(&fake), 0);
}

#[tokio::test]
async fn a_stream_linked_to_another_channel_is_refused_naming_it() {
    let (fake, _sidecar, mut client) = allowed().await;
    let first = client
        .ensure_storage(ensure("nostorage-a", "shared", 0))
        .await
        .unwrap()
        .into_inner();
    let refused = assert_refused(
        client
            .ensure_storage(ensure("nostorage-b", "shared", 0))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        refused.message().contains(&arn("nostorage-a")),
        "{refused:?}"
    );
    let mapped = fake.received_on("/describeMappedResourceConfiguration");
    assert_eq!(mapped.len(), 1);
    assert_eq!(
        mapped[0].json(),
        serde_json::json!({"StreamARN": first.stream_arn})
    );
    assert!(!readiness(&mut client, "nostorage-b").await.ready);
}

#[tokio::test]
async fn kvs_refusals_get_clear_codes_not_unknown() {
    let (fake, _sidecar, mut client) = allowed().await;
    fake.script(
        "/createStream",
        [Reply::error(400, "AccountStreamLimitExceededException")],
    );
    assert_refused(
        client.ensure_storage(ensure("nostorage-1", "", 0)).await,
        Code::ResourceExhausted,
    );
    fake.script(
        "/updateMediaStorageConfiguration",
        [Reply::error(400, "NoDataRetentionException")],
    );
    assert_refused(
        client.ensure_storage(ensure("nostorage-2", "", 0)).await,
        Code::FailedPrecondition,
    );
    fake.script(
        "/updateMediaStorageConfiguration",
        [Reply::error(400, "AccountChannelLimitExceededException")],
    );
    assert_refused(
        client.ensure_storage(ensure("nostorage-2", "", 0)).await,
        Code::ResourceExhausted,
    );
    // The stream made by the second call is kept and linked by the next.
    let answer = client
        .ensure_storage(ensure("nostorage-2", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes(&answer), [StorageChange::StorageEnabled]);
}

#[tokio::test]
async fn concurrent_calls_for_a_channel_make_one_set_of_writes() {
    let (fake, _sidecar, client) = allowed().await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.ensure_storage(ensure("nostorage-cam", "", 0)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }
    assert_eq!(fake.received_on("/createStream").len(), 1);
    assert_eq!(
        fake.received_on("/updateMediaStorageConfiguration").len(),
        1
    );
    assert_eq!(
        answers.iter().filter(|a| !a.changes.is_empty()).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.stream_arn == answers[0].stream_arn)
    );
}

#[tokio::test]
async fn a_stream_still_creating_at_the_deadline_is_finished_by_the_next_call() {
    let (fake, _sidecar, mut client) = allowed().await;
    fake.set_stream_creation_delay(Duration::from_millis(1500));
    let mut request = tonic::Request::new(ensure("nostorage-cam", "", 0));
    request.set_timeout(Duration::from_millis(600));
    assert_refused(client.ensure_storage(request).await, Code::DeadlineExceeded);
    assert_eq!(fake.received_on("/createStream").len(), 1);
    assert!(
        fake.received_on("/updateMediaStorageConfiguration")
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let answer = client
        .ensure_storage(ensure("nostorage-cam", "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes(&answer), [StorageChange::StorageEnabled]);
    assert_eq!(
        fake.received_on("/createStream").len(),
        1,
        "not created twice"
    );
}

#[tokio::test]
async fn two_replicas_creating_the_same_stream_both_end_linked_to_it() {
    let fake = common::kvs().await;
    let replicas = [
        Sidecar::start(&fake, &["--allow-storage-changes"]),
        Sidecar::start(&fake, &["--allow-storage-changes"]),
    ];
    // The first CreateStream to arrive is answered late: the other
    // replica's, sent meanwhile, creates the stream, and the late one
    // then finds it taken (ResourceInUseException).
    fake.script(
        "/createStream",
        [Reply::Slow(Duration::from_millis(300), Box::new(Reply::Ok))],
    );
    let mut calls = Vec::new();
    for replica in &replicas {
        let mut client = replica.client().await;
        calls.push(tokio::spawn(async move {
            client.ensure_storage(ensure("nostorage-cam", "", 0)).await
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }
    assert_eq!(fake.received_on("/createStream").len(), 2);
    assert_eq!(answers[0].stream_arn, answers[1].stream_arn);
    let created: usize = answers
        .iter()
        .map(|a| changes(a).contains(&StorageChange::StreamCreated) as usize)
        .sum();
    assert_eq!(created, 1, "{answers:?}");
}

/// Every request EnsureStorage makes, replayed with boto3: the same paths,
/// bodies, signing scope and content type (botocore's kinesisvideo model).
#[tokio::test]
async fn requests_are_the_ones_boto3_sends() {
    let (fake, _sidecar, mut client) = allowed().await;
    // Create, poll, link; then raise a linked stream's retention; then a
    // stream linked elsewhere, for DescribeMappedResourceConfiguration.
    client
        .ensure_storage(ensure("nostorage-wire", "", 48))
        .await
        .unwrap();
    client
        .ensure_storage(ensure("wire-2", "", 72))
        .await
        .unwrap();
    client
        .ensure_storage(ensure("nostorage-other", "nostorage-wire-storage", 0))
        .await
        .unwrap_err();
    let first = |path: &str| fake.received_on(path)[0].clone();
    let describe = fake.received_on("/describeStream");
    let ours = [
        (
            "kinesisvideo",
            "DescribeSignalingChannel",
            first("/describeSignalingChannel"),
        ),
        (
            "kinesisvideo",
            "DescribeMediaStorageConfiguration",
            first("/describeMediaStorageConfiguration"),
        ),
        ("kinesisvideo", "DescribeStream", describe[0].clone()),
        ("kinesisvideo", "CreateStream", first("/createStream")),
        ("kinesisvideo", "DescribeStream", describe[1].clone()),
        (
            "kinesisvideo",
            "UpdateDataRetention",
            first("/updateDataRetention"),
        ),
        (
            "kinesisvideo",
            "UpdateMediaStorageConfiguration",
            first("/updateMediaStorageConfiguration"),
        ),
        (
            "kinesisvideo",
            "DescribeMappedResourceConfiguration",
            first("/describeMappedResourceConfiguration"),
        ),
    ];
    assert!(describe[0].json().get("StreamName").is_some());
    assert!(describe[1].json().get("StreamARN").is_some());
    common::assert_boto3_sends_the_same(&fake, "eu-central-1", &ours).await;
}
