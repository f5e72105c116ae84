//! CheckStorageReadiness: whether a join on a channel would record
//! anything, and if not, what to fix.
//!
//! A join records only when the channel is an ACTIVE SINGLE_MASTER channel
//! with media storage ENABLED, linked to an ACTIVE Kinesis video stream that
//! keeps data. One check reads all three with `DescribeSignalingChannel` and
//! `DescribeMediaStorageConfiguration` (in parallel), then `DescribeStream`
//! for the linked stream, through the stack like every KVS request (their
//! own rate-limit bucket, `--describe-rate`).
//!
//! DescribeMediaStorageConfiguration allows 5 requests a second per channel,
//! so answers are cached per channel for a few seconds (`--readiness-cache-ttl`)
//! and concurrent checks of a channel share one (single flight). The cache
//! is keyed by what callers send, so it is bounded (LRU); failures are not
//! cached.

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use crate::kvs::{
    Call, Error, ErrorKind, KvsClient,
    arn::ChannelArn,
    streams::{ChannelInfo, MediaStorage, StreamInfo},
};

/// The deadline of one shared check: its Describe* requests, retries and
/// backoffs included.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most channels whose answer is kept.
pub(crate) const CAPACITY: u64 = 10_000;

/// One reason a channel is not ready, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub code: &'static str,
    pub message: String,
}

/// What a check found. Fields KVS did not answer (access denied, nothing
/// linked) are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub channel_type: String,
    pub channel_status: String,
    pub media_storage_status: String,
    pub stream_arn: String,
    pub stream_status: String,
    pub data_retention_hours: u32,
    pub problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn ready(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Cheap to clone: clones share the client and the cache (the recording
/// status reads linked streams from it).
#[derive(Clone)]
pub(crate) struct StorageReadiness {
    client: Arc<KvsClient>,
    answers: Cache<ChannelArn, Arc<Report>>,
}

// === impl StorageReadiness ===

impl StorageReadiness {
    pub(crate) fn new(client: Arc<KvsClient>, ttl: Duration, capacity: u64) -> Self {
        let answers = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        Self { client, answers }
    }

    /// The channel's readiness, from a check at most `ttl` old. A channel
    /// KVS does not know is an error (`NOT_FOUND`), not a problem.
    ///
    /// The check is shared by every caller asking about the channel while it
    /// runs, so it runs under its own deadline ([`CHECK_TIMEOUT`]), never the
    /// first caller's: a dashboard polling with a 200 ms deadline must not
    /// fail a patient caller that joined its check. Each caller waits for it
    /// within its own deadline.
    pub(crate) async fn check(&self, call: &Call, arn: &ChannelArn) -> Result<Arc<Report>, Error> {
        let work = async {
            let shared = Call::new(tokio::time::Instant::now() + CHECK_TIMEOUT);
            self.answers
                .entry(arn.clone())
                .or_try_insert_with(async move { self.inspect(&shared, arn).await })
                .await
                .map(|entry| entry.into_value())
                // Callers that waited on the same check share its error.
                .map_err(|shared| (*shared).clone())
        };
        call.bound(work).await
    }

    /// Forgets the channel's answer, so the next check reads KVS again:
    /// EnsureStorage calls it after it may have changed the channel.
    pub(crate) async fn forget(&self, arn: &ChannelArn) {
        self.answers.invalidate(arn).await;
    }

    async fn inspect(&self, call: &Call, arn: &ChannelArn) -> Result<Arc<Report>, Error> {
        let client = &self.client;
        let (channel, storage) = tokio::join!(
            client.describe_signaling_channel(call, arn),
            client.describe_media_storage_configuration(call, arn),
        );
        let channel = denied_or(channel)?;
        let storage = denied_or(storage)?;
        let stream_arn = storage
            .as_ref()
            .and_then(|s| s.stream_arn.clone())
            .filter(|s| !s.is_empty());
        let stream = match (&storage, &stream_arn) {
            (Some(s), Some(stream_arn)) if s.status == "ENABLED" => {
                match client.describe_stream(call, arn, stream_arn).await {
                    Err(Error::Service(e)) if e.kind == ErrorKind::NotFound => Lookup::NotFound,
                    other => match denied_or(other)? {
                        Some(info) => Lookup::Found(info),
                        None => Lookup::Denied,
                    },
                }
            }
            _ => Lookup::NotAsked,
        };
        Ok(Arc::new(report(channel, storage, stream_arn, stream)))
    }
}

/// What a Describe* request found: its answer, or `None` when the sidecar's
/// role may not call it (a problem to report, not a failed check).
fn denied_or<T>(answer: Result<T, Error>) -> Result<Option<T>, Error> {
    match answer {
        Ok(found) => Ok(Some(found)),
        Err(Error::Service(e)) if e.kind == ErrorKind::AccessDenied => Ok(None),
        Err(e) => Err(e),
    }
}

/// What `DescribeStream` said about the linked stream.
#[derive(Debug)]
enum Lookup {
    /// Storage is off or links nothing: nothing to ask.
    NotAsked,
    Found(StreamInfo),
    NotFound,
    Denied,
}

/// The report of what the three reads found (`None`: access denied).
fn report(
    channel: Option<ChannelInfo>,
    storage: Option<MediaStorage>,
    stream_arn: Option<String>,
    stream: Lookup,
) -> Report {
    let mut problems = Vec::new();
    let mut problem = |code, message: String| problems.push(Problem { code, message });
    let denied = |action: &str| {
        format!(
            "the sidecar's AWS role may not call kinesisvideo:{action} on this channel: allow it in the role's policy"
        )
    };
    let mut report = Report::default();
    match channel {
        None => problem("ACCESS_DENIED", denied("DescribeSignalingChannel")),
        Some(c) => {
            if c.channel_status != "ACTIVE" {
                problem(
                    "CHANNEL_NOT_ACTIVE",
                    format!(
                        "the channel's status is {}, not ACTIVE: wait until it is created, or use another channel",
                        c.channel_status
                    ),
                );
            }
            if c.channel_type != "SINGLE_MASTER" {
                problem(
                    "CHANNEL_NOT_SINGLE_MASTER",
                    format!(
                        "the channel is of type {}; WebRTC storage needs a SINGLE_MASTER channel",
                        c.channel_type
                    ),
                );
            }
            report.channel_type = c.channel_type;
            report.channel_status = c.channel_status;
        }
    }
    match storage {
        None => problem("ACCESS_DENIED", denied("DescribeMediaStorageConfiguration")),
        Some(s) if s.status != "ENABLED" || stream_arn.is_none() => {
            problem(
                "STORAGE_DISABLED",
                "media storage is not enabled for the channel: enable it with UpdateMediaStorageConfiguration, linking a Kinesis video stream".into(),
            );
            report.media_storage_status = s.status;
        }
        Some(s) => report.media_storage_status = s.status,
    }
    let linked = stream_arn.clone().unwrap_or_default();
    match stream {
        Lookup::NotAsked => {}
        Lookup::Denied => problem("ACCESS_DENIED", denied("DescribeStream")),
        Lookup::NotFound => problem(
            "STREAM_NOT_FOUND",
            format!(
                "the linked stream {linked} does not exist: create it, or link another with UpdateMediaStorageConfiguration"
            ),
        ),
        Lookup::Found(info) => {
            if info.status != "ACTIVE" {
                problem(
                    "STREAM_NOT_ACTIVE",
                    format!(
                        "the linked stream's status is {}, not ACTIVE: wait until it is created, or link another",
                        info.status
                    ),
                );
            }
            if info.data_retention_in_hours == 0 {
                problem(
                    "STREAM_NO_RETENTION",
                    "the linked stream keeps no data (DataRetentionInHours is 0): give it a retention with UpdateDataRetention".into(),
                );
            }
            report.stream_status = info.status;
            report.data_retention_hours = info.data_retention_in_hours;
        }
    }
    report.stream_arn = stream_arn.unwrap_or_default();
    report.problems = problems;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{
        Operation, ServiceError, UpstreamRequest, UpstreamResponse, endpoint_cache::EndpointCache,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    fn arn(name: &str) -> ChannelArn {
        ChannelArn::for_tests(name)
    }

    fn kvs_error(status: u16, code: &str) -> Error {
        let headers: http::HeaderMap = [(
            http::HeaderName::from_static("x-amzn-errortype"),
            http::HeaderValue::from_str(&format!("{code}:")).unwrap(),
        )]
        .into_iter()
        .collect();
        Error::Service(ServiceError::from_response(status, &headers, b"{}"))
    }

    /// A KVS that answers every Describe* for a healthy channel, slowly,
    /// except `missing-*` channels; counts requests.
    fn checker(requests: Arc<AtomicUsize>, capacity: u64) -> StorageReadiness {
        let upstream = tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |req: UpstreamRequest| {
                let requests = requests.clone();
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if String::from_utf8_lossy(&req.body).contains("missing-") {
                        return Err(kvs_error(404, "ResourceNotFoundException"));
                    }
                    let body = match req.operation {
                        Operation::DescribeSignalingChannel => {
                            r#"{"ChannelInfo":{"ChannelStatus":"ACTIVE","ChannelType":"SINGLE_MASTER"}}"#
                        }
                        Operation::DescribeMediaStorageConfiguration => {
                            r#"{"MediaStorageConfiguration":{"Status":"ENABLED","StreamARN":"arn:aws:kinesisvideo:us-west-2:1:stream/s/1"}}"#
                        }
                        _ => r#"{"StreamInfo":{"Status":"ACTIVE","DataRetentionInHours":24}}"#,
                    };
                    Ok(UpstreamResponse {
                        status: http::StatusCode::OK,
                        request_id: None,
                        body: body.into(),
                    })
                }
            },
        ));
        let client = KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 10),
            crate::kvs::endpoint::EndpointSettings {
                override_url: Some("http://127.0.0.1:1".parse().unwrap()),
                ..Default::default()
            },
            crate::kvs::credentials::Identities::for_tests(),
        );
        StorageReadiness::new(Arc::new(client), Duration::from_secs(60), capacity)
    }

    /// Answers held, after pending evictions are applied.
    async fn held(readiness: &StorageReadiness) -> u64 {
        readiness.answers.run_pending_tasks().await;
        readiness.answers.entry_count()
    }

    fn call() -> Call {
        Call::new(Instant::now() + Duration::from_secs(10))
    }

    #[tokio::test]
    async fn concurrent_checks_of_a_channel_share_one_and_reuse_its_answer() {
        let requests = Arc::new(AtomicUsize::new(0));
        let readiness = Arc::new(checker(requests.clone(), 100));
        let checks: Vec<_> = (0..20)
            .map(|_| {
                let readiness = readiness.clone();
                tokio::spawn(async move { readiness.check(&call(), &arn("cam")).await })
            })
            .collect();
        for check in checks {
            let report = check.await.unwrap().unwrap();
            assert!(report.ready(), "{report:?}");
            assert_eq!(report.data_retention_hours, 24);
        }
        readiness.check(&call(), &arn("cam")).await.unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 3, "one of each Describe*");
    }

    #[tokio::test]
    async fn a_missing_channel_is_not_found_and_not_cached() {
        let requests = Arc::new(AtomicUsize::new(0));
        let readiness = checker(requests.clone(), 100);
        for _ in 0..2 {
            let err = readiness
                .check(&call(), &arn("missing-cam"))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::Service(e) if e.kind == ErrorKind::NotFound),
                "{err}"
            );
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            4,
            "two checks, two requests each"
        );
        assert_eq!(held(&readiness).await, 0);
    }

    #[tokio::test]
    async fn holds_at_most_its_capacity_of_channels() {
        let readiness = checker(Arc::new(AtomicUsize::new(0)), 50);
        for i in 0..150 {
            readiness
                .check(&call(), &arn(&format!("cam-{i}")))
                .await
                .unwrap();
        }
        assert!(held(&readiness).await <= 50);
    }

    fn codes(report: &Report) -> Vec<&'static str> {
        report.problems.iter().map(|p| p.code).collect()
    }

    fn channel(status: &str, kind: &str) -> Option<ChannelInfo> {
        Some(ChannelInfo {
            channel_status: status.into(),
            channel_type: kind.into(),
        })
    }

    fn storage(status: &str) -> Option<MediaStorage> {
        Some(MediaStorage {
            status: status.into(),
            stream_arn: Some("s".into()),
        })
    }

    fn stream(status: &str, hours: u32) -> Lookup {
        Lookup::Found(StreamInfo {
            status: status.into(),
            data_retention_in_hours: hours,
            ..StreamInfo::default()
        })
    }

    #[test]
    fn each_problem_has_its_code_and_ready_means_none() {
        let s = || Some("s".to_owned());
        let ok = report(
            channel("ACTIVE", "SINGLE_MASTER"),
            storage("ENABLED"),
            s(),
            stream("ACTIVE", 24),
        );
        assert!(ok.ready(), "{ok:?}");
        let cases = [
            (
                report(
                    channel("CREATING", "SINGLE_MASTER"),
                    storage("ENABLED"),
                    s(),
                    stream("ACTIVE", 1),
                ),
                vec!["CHANNEL_NOT_ACTIVE"],
            ),
            (
                report(
                    channel("ACTIVE", "FULL_MESH"),
                    storage("ENABLED"),
                    s(),
                    stream("ACTIVE", 1),
                ),
                vec!["CHANNEL_NOT_SINGLE_MASTER"],
            ),
            (
                report(
                    channel("ACTIVE", "SINGLE_MASTER"),
                    storage("DISABLED"),
                    s(),
                    Lookup::NotAsked,
                ),
                vec!["STORAGE_DISABLED"],
            ),
            (
                report(
                    channel("ACTIVE", "SINGLE_MASTER"),
                    storage("ENABLED"),
                    s(),
                    Lookup::NotFound,
                ),
                vec!["STREAM_NOT_FOUND"],
            ),
            (
                report(
                    channel("ACTIVE", "SINGLE_MASTER"),
                    storage("ENABLED"),
                    s(),
                    stream("CREATING", 1),
                ),
                vec!["STREAM_NOT_ACTIVE"],
            ),
            (
                report(
                    channel("ACTIVE", "SINGLE_MASTER"),
                    storage("ENABLED"),
                    s(),
                    stream("ACTIVE", 0),
                ),
                vec!["STREAM_NO_RETENTION"],
            ),
            (
                report(None, None, None, Lookup::NotAsked),
                vec!["ACCESS_DENIED", "ACCESS_DENIED"],
            ),
            (
                report(
                    channel("ACTIVE", "SINGLE_MASTER"),
                    storage("ENABLED"),
                    s(),
                    Lookup::Denied,
                ),
                vec!["ACCESS_DENIED"],
            ),
        ];
        for (report, want) in cases {
            assert_eq!(codes(&report), want, "{report:?}");
            assert!(!report.ready());
            assert!(report.problems.iter().all(|p| !p.message.is_empty()));
        }
        let denied = report(
            channel("ACTIVE", "SINGLE_MASTER"),
            storage("ENABLED"),
            s(),
            Lookup::Denied,
        );
        assert!(
            denied.problems[0]
                .message
                .contains("kinesisvideo:DescribeStream")
        );
    }
}
