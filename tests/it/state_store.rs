//! Replicas sharing a real Redis (Debian's `redis-server`, started here on a
//! loopback port): idempotency keys and session ownership hold across
//! replicas, a dead replica's session can be taken over, and an
//! unreachable Redis has the documented effect.

use crate::common;
use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{ARN, Reply, Sidecar};
use kvs_sidecar::pb::{
    JoinStorageSessionRequest, MaintainStorageSessionRequest, SessionStart,
    maintain_storage_session_request::Kind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const JOIN: &str = "/joinStorageSession";

/// A throwaway `redis-server` on a loopback port, stopped when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start() -> Self {
        let port = common::unused_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs Debian's redis-server)");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keyed(key: &str) -> JoinStorageSessionRequest {
    JoinStorageSessionRequest {
        channel_arn: ARN.into(),
        idempotency_key: key.into(),
    }
}

/// Starts maintaining `arn`'s session; the sender keeps the stream open.
async fn maintain(
    sidecar: &Sidecar,
    arn: &str,
) -> Result<
    (
        mpsc::Sender<MaintainStorageSessionRequest>,
        tonic::Streaming<kvs_sidecar::pb::MaintainStorageSessionResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(MaintainStorageSessionRequest {
        kind: Some(Kind::Start(SessionStart {
            channel_arn: arn.into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let events = sidecar
        .client()
        .await
        .maintain_storage_session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, events))
}

#[tokio::test]
async fn an_idempotency_key_holds_across_replicas() {
    let redis = Redis::start();
    let fake = common::kvs().await;
    let args = ["--state-store", redis.url.as_str()];
    let (one, two) = (Sidecar::start(&fake, &args), Sidecar::start(&fake, &args));
    let (mut a, mut b) = (one.client().await, two.client().await);

    let first = a
        .join_storage_session(keyed("k-1"))
        .await
        .unwrap()
        .into_inner();
    let joins = fake.received_on(JOIN).len();
    let again = b
        .join_storage_session(keyed("k-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.aws_request_id, again.aws_request_id);
    assert_eq!(
        fake.received_on(JOIN).len(),
        joins,
        "the retry on replica 2 sent nothing"
    );

    // A retry on replica 2 while replica 1's join is in flight waits for it.
    fake.script(
        JOIN,
        [Reply::Slow(Duration::from_millis(600), Box::new(Reply::Ok))],
    );
    let joins = fake.received_on(JOIN).len();
    let in_flight = tokio::spawn(async move { a.join_storage_session(keyed("k-2")).await });
    common::joins_arrived(&fake, joins + 1).await;
    let waited = b
        .join_storage_session(keyed("k-2"))
        .await
        .unwrap()
        .into_inner();
    let first = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(first.aws_request_id, waited.aws_request_id);
    assert_eq!(fake.received_on(JOIN).len() - joins, 1, "one join for both");

    // The same key for another channel is refused on any replica.
    let err = b
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: common::arn("elsewhere"),
            idempotency_key: "k-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn one_replica_maintains_a_channel_and_another_takes_over_when_it_dies() {
    let redis = Redis::start();
    let fake = common::kvs().await;
    let args = ["--state-store", redis.url.as_str(), "--session-lease", "2s"];
    let (one, two) = (Sidecar::start(&fake, &args), Sidecar::start(&fake, &args));
    let (_keep, mut events) = maintain(&one, ARN).await.unwrap();
    events.message().await.unwrap().expect("the first join");

    let Err(refused) = maintain(&two, ARN).await else {
        panic!("owned by replica 1")
    };
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("another replica"), "{refused:?}");

    // Replica 1 dies without releasing its lease: replica 2 takes over
    // once it expires.
    one.signal("KILL");
    let died = Instant::now();
    let until = died + Duration::from_secs(8);
    let (_keep, mut events) = loop {
        match maintain(&two, ARN).await {
            Ok(session) => break session,
            Err(status) if status.code() == Code::AlreadyExists && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("not taken over: {status:?}"),
        }
    };
    events.message().await.unwrap().expect("replica 2 joins");
    println!(
        "replica 2 took over {:?} after replica 1 died",
        died.elapsed()
    );

    // A replica that stops normally gives the lease up at once.
    drop(events);
    drop(_keep);
    let three = Sidecar::start(&fake, &args);
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match maintain(&three, ARN).await {
            Ok(_) => break,
            Err(status) if Instant::now() < until => {
                assert_eq!(status.code(), Code::AlreadyExists);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the lease was not released: {status:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_store_leaves_joins_working_and_refuses_sessions() {
    let fake = common::kvs().await;
    let url = format!("redis://127.0.0.1:{}/0", common::unused_port());
    let sidecar = Sidecar::start(&fake, &["--state-store", &url]);
    let mut client = sidecar.client().await;
    // Joins go ahead, without idempotency: each call is a real join.
    client.join_storage_session(keyed("k")).await.unwrap();
    let joins = fake.received_on(JOIN).len();
    client.join_storage_session(keyed("k")).await.unwrap();
    assert_eq!(fake.received_on(JOIN).len(), joins + 1);
    let (_, metrics) = sidecar.admin_get("/metrics");
    let errors = common::metric(
        &metrics,
        r#"kvs_sidecar_state_store_errors_total{purpose="idempotency"}"#,
    );
    assert!(errors >= Some(2.0), "{errors:?}");

    let Err(refused) = maintain(&sidecar, ARN).await else {
        panic!("no lease, no session")
    };
    assert_eq!(refused.code(), Code::Unavailable);
}

/// Runs one Redis command against `redis`.
async fn redis(redis: &Redis, args: &[&[u8]]) -> redis::Value {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    // redis-rs gives up on an answer after 500 ms by default: too short for
    // a 64 MiB SET on a loaded CI machine.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// Issue 22, finding 3: a value planted at an idempotency key is refused in
/// Redis itself when it is larger than any record a sidecar writes, so
/// callers with that key cost nothing and are served (without the ledger,
/// as during an outage), not answered INTERNAL blaming KVS.
#[tokio::test]
async fn an_oversized_record_in_the_store_is_never_read_into_memory() {
    let redis_server = Redis::start();
    let fake = common::kvs().await;
    // Time enough to read the whole value, were it read.
    let sidecar = Sidecar::start(
        &fake,
        &[
            "--state-store",
            redis_server.url.as_str(),
            "--state-store-timeout",
            "5s",
        ],
    );
    let mut client = sidecar.client().await;
    client.join_storage_session(keyed("warm")).await.unwrap();
    let planted = vec![b'x'; 64 << 20];
    redis(
        &redis_server,
        &[b"SET", b"kvs-sidecar:idempotency:planted", &planted],
    )
    .await;
    let before = common::peak_rss_kib(sidecar.pid());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.join_storage_session(keyed("planted")).await })
        })
        .collect();
    for call in calls {
        let answer = call.await.unwrap();
        let answer = answer.expect("served without the ledger, as during an outage");
        assert!(common::is_request_id(&answer.into_inner().aws_request_id));
    }
    let grown = common::peak_rss_kib(sidecar.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "peak RSS grew by {} MiB", grown / 1024);
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kvs_sidecar_state_store_errors_total{")),
        "the unreadable record is counted as a store error"
    );
}

/// Issue 22, finding 4: only final outcomes are replayed. After a first call
/// that failed in passing (its own deadline, a 503), a retry with the same
/// key once it is over makes a real join and succeeds; a final error (the
/// channel does not exist) is replayed without a join. In memory and in
/// Redis alike.
#[tokio::test]
async fn a_key_replays_final_outcomes_and_retries_after_passing_failures() {
    let redis_server = Redis::start();
    let fake = common::kvs().await;
    for args in [vec![], vec!["--state-store", redis_server.url.as_str()]] {
        let sidecar = Sidecar::start(&fake, &args);
        let mut client = sidecar.client().await;
        let store = if args.is_empty() { "memory" } else { "redis" };
        client.join_storage_session(keyed("warm")).await.unwrap();

        // The first caller's own 0.5 s deadline passes while KVS is slow.
        fake.script(
            JOIN,
            [Reply::Slow(
                Duration::from_millis(1500),
                Box::new(Reply::Ok),
            )],
        );
        let key = format!("deadline-{store}");
        let mut first = tonic::Request::new(keyed(&key));
        first.set_timeout(Duration::from_millis(500));
        // (Ended by whichever side's timer fires first.)
        assert!(client.join_storage_session(first).await.is_err(), "{store}");
        let joins = fake.received_on(JOIN).len();
        let mut retry = tonic::Request::new(keyed(&key));
        retry.set_timeout(Duration::from_secs(5));
        let retried = client.join_storage_session(retry).await;
        let retried = retried.unwrap_or_else(|e| panic!("{store}: the retry failed: {e:?}"));
        assert!(common::is_request_id(&retried.into_inner().aws_request_id));
        assert_eq!(
            fake.received_on(JOIN).len(),
            joins + 1,
            "{store}: a real join"
        );

        // A 503 on each of the first call's 3 attempts (the default
        // --max-attempts); the retry, with KVS healthy, succeeds.
        let key = format!("unavailable-{store}");
        fake.script(
            JOIN,
            (0..3).map(|_| Reply::error(503, "ServiceUnavailable")),
        );
        let first = client.join_storage_session(keyed(&key)).await;
        assert_eq!(first.unwrap_err().code(), Code::Unavailable, "{store}");
        assert_eq!(fake.scripted_left(JOIN), 0);
        let retried = client.join_storage_session(keyed(&key)).await;
        assert!(retried.is_ok(), "{store}: {retried:?}");

        // Throttled until the first call gives up; the retry succeeds.
        let key = format!("throttled-{store}");
        let throttled = tokio::time::Instant::now();
        fake.throttle(JOIN, Duration::from_millis(800));
        let mut first = tonic::Request::new(keyed(&key));
        first.set_timeout(Duration::from_millis(500));
        assert!(client.join_storage_session(first).await.is_err(), "{store}");
        tokio::time::sleep_until(throttled + Duration::from_millis(900)).await;
        let retried = client.join_storage_session(keyed(&key)).await;
        assert!(retried.is_ok(), "{store}: {retried:?}");

        // A final error is replayed, and no join is sent.
        let missing = JoinStorageSessionRequest {
            channel_arn: common::arn("missing-cam"),
            idempotency_key: format!("missing-{store}"),
        };
        let first = client
            .join_storage_session(missing.clone())
            .await
            .unwrap_err();
        assert_eq!(first.code(), Code::NotFound);
        let joins = fake.received_on(JOIN).len();
        let again = client.join_storage_session(missing).await.unwrap_err();
        assert_eq!(fake.received_on(JOIN).len(), joins, "{store}: replayed");
        // Exactly what the first caller got: the message, KVS's request id
        // and the rich details, from Redis as from memory.
        let details = |s: &tonic::Status| {
            use tonic_types::StatusExt;
            let details = s.get_error_details();
            let info = details.error_info().expect("ErrorInfo");
            (
                info.reason.clone(),
                info.metadata.clone(),
                details.request_info().map(|r| r.request_id.clone()),
            )
        };
        assert_eq!(
            (again.code(), again.message(), details(&again)),
            (first.code(), first.message(), details(&first)),
            "{store}"
        );
        let request_id = |s: &tonic::Status| s.metadata().get("x-amzn-requestid").cloned();
        assert!(request_id(&first).is_some(), "{store}");
        assert_eq!(request_id(&again), request_id(&first), "{store}");
    }
}

/// Issue 22 (Redis is trusted too much): a lease planted without a time
/// to live cannot mean "another replica" forever: the sidecar gives it one.
#[tokio::test]
async fn a_lease_planted_without_expiry_is_given_one() {
    let redis_server = Redis::start();
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(
        &fake,
        &[
            "--state-store",
            redis_server.url.as_str(),
            "--session-lease",
            "2s",
        ],
    );
    let arn = common::arn("planted-lease");
    let lease = format!("kvs-sidecar:session:{arn}:");
    redis(&redis_server, &[b"SET", lease.as_bytes(), b"someone"]).await;
    let refused = maintain(&sidecar, &arn).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    let ttl = redis(&redis_server, &[b"PTTL", lease.as_bytes()]).await;
    assert!(
        matches!(ttl, redis::Value::Int(ms) if ms > 0 && ms <= 2_000),
        "{ttl:?}"
    );
    // Once it expires, the session is maintained here.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (_tx, mut events) = maintain(&sidecar, &arn).await.expect("maintained");
    let first = events.message().await.unwrap().unwrap();
    assert!(first.event.is_some());
}

/// docs/sessions.md's Redis ACL for the sidecar's own user is enough: keyed joins
/// replay and sessions lease, with no state-store error.
#[tokio::test]
async fn the_documented_acl_is_all_the_sidecar_needs() {
    let redis_server = Redis::start();
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sessions.md")).unwrap();
    let acl = docs
        .split('`')
        .find(|s| s.starts_with("ACL SETUSER kvs-sidecar "))
        .expect("docs/sessions.md names the ACL")
        .replace(">PASSWORD", ">s3cret");
    let args: Vec<&[u8]> = acl.split(' ').map(str::as_bytes).collect();
    redis(&redis_server, &args).await;
    let url = redis_server
        .url
        .replace("redis://", "redis://kvs-sidecar:s3cret@");
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--state-store", url.as_str()]);
    let mut client = sidecar.client().await;
    let first = client.join_storage_session(keyed("acl")).await.unwrap();
    let again = client.join_storage_session(keyed("acl")).await.unwrap();
    assert_eq!(
        first.into_inner().aws_request_id,
        again.into_inner().aws_request_id
    );
    let (_tx, mut events) = maintain(&sidecar, &common::arn("acl-session"))
        .await
        .unwrap();
    assert!(events.message().await.unwrap().unwrap().event.is_some());
    let (_, metrics) = sidecar.admin_get("/metrics");
    assert!(
        !metrics.contains("kvs_sidecar_state_store_errors_total{"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("state_store"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The default window of a recording status is the channel's last master
/// join, also when another replica made it: the join is kept in the store.
#[tokio::test]
async fn a_replica_knows_the_last_join_another_made() {
    let redis = Redis::start();
    let fake = common::kvs().await;
    let args = ["--state-store", redis.url.as_str()];
    let (one, two) = (Sidecar::start(&fake, &args), Sidecar::start(&fake, &args));
    let (mut a, mut b) = (one.client().await, two.client().await);
    let channel = common::arn("shared-join");
    let status = |client: &mut kvs_sidecar::pb::web_rtc_storage_service_client::WebRtcStorageServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let channel = channel.clone();
        async move {
            let status = client
                .get_recording_status(kvs_sidecar::pb::GetRecordingStatusRequest {
                    channel_arn: channel,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            std::time::SystemTime::try_from(status.since.unwrap()).unwrap()
        }
    };
    let before = status(&mut b).await;
    let hour = std::time::SystemTime::now().duration_since(before).unwrap();
    assert!(
        hour > Duration::from_secs(3500),
        "no join known: an hour ago"
    );
    let joined = std::time::SystemTime::now();
    a.join_storage_session(common::join(&channel))
        .await
        .unwrap();
    // The store is written after the join answers, in the background.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let since = status(&mut b).await;
        if since >= joined - Duration::from_secs(1) {
            assert!(since <= std::time::SystemTime::now());
            break;
        }
        assert!(
            Instant::now() < until,
            "the other replica never saw the join"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
