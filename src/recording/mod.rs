//! Is it recording? The status of a channel's recording, read from the
//! ground truth: the fragments KVS lists for the channel's stream.
//!
//! One poller per stream ([`poller`]) lists the stream's fragments for every
//! caller at once: GetRecordingStatus calls, WatchRecording watchers and the
//! session supervisors that watch their media (`no_media_after`). Each
//! caller subscribes with its window (`since`, `stalled_after`); callers
//! with the same window share one subscription, whose status is summed by a
//! [`status::Window`]. A window outlives its last caller by a few seconds
//! (`Settings::linger`), so a status asked again is answered from the
//! listings already made; a poller whose windows were all left that long
//! stops, and one with only such windows gives its place up to a new
//! stream at once.
//!
//! The stream comes from DescribeMediaStorageConfiguration through the
//! readiness checks' cache (shared: a status call right after a readiness
//! check costs no Describe*). A channel KVS does not know is NOT_FOUND, one
//! without storage enabled FAILED_PRECONDITION. At most `max_streams`
//! streams are polled at once; a caller past that is refused with
//! RESOURCE_EXHAUSTED, as is one past [`MAX_WINDOWS_PER_STREAM`] distinct
//! windows on one stream.
//!
//! The default `since` is the last successful master join of the channel
//! this sidecar knows ([`Recording::master_joined`], a fixed table that
//! costs the join path a hash, see `joins.rs`), else one hour before the
//! call.

mod joins;
pub(crate) mod poller;
pub(crate) mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

pub(crate) use self::{
    poller::{Subscription, Update},
    status::{State, Status},
};
use crate::{
    clock::SharedClock,
    instruments,
    kvs::{Call, Error, arn::ChannelArn, data_endpoint::DataPlane},
    readiness::StorageReadiness,
    store::SharedStore,
};

/// Distinct windows one stream's poller sums at once.
pub(crate) const MAX_WINDOWS_PER_STREAM: usize = 256;
/// The default window when no join is known.
pub(crate) const DEFAULT_LOOKBACK: Duration = Duration::from_secs(3600);
/// How long the shared store keeps a channel's last join: past the
/// lookback it is never used.
const JOIN_KEPT: Duration = Duration::from_secs(2 * 3600);

fn join_key(channel: &ChannelArn) -> String {
    format!("lastjoin:{channel}")
}

fn floor_to_minute(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % 60)
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Tunables (see [`Settings::default`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Streams polled at once.
    pub max_streams: usize,
    /// Time between listings of a stream while someone watches it: a
    /// status is answered from a listing at most this old.
    pub poll_interval: Duration,
    /// How far before the end of the previous listing the next one starts,
    /// for fragments KVS lists late.
    pub overlap: Duration,
    /// The deadline of one listing, its pages and retries.
    pub listing_timeout: Duration,
    /// How long a window is still fed after its last caller left.
    pub linger: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            poll_interval: Duration::from_secs(1),
            overlap: Duration::from_secs(30),
            listing_timeout: Duration::from_secs(20),
            linger: Duration::from_secs(10),
        }
    }
}

/// Why a subscription could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(transparent)]
    Kvs(Error),
    /// Media storage is off for the channel, or links no stream.
    #[error("{0}")]
    StorageDisabled(String),
    /// The sidecar's role may not read the channel's storage configuration.
    #[error("{0}")]
    Denied(String),
    /// `max_streams` streams are polled already.
    #[error(
        "this sidecar already polls the fragments of {0} streams, its limit (--max-recording-streams)"
    )]
    TooManyStreams(usize),
    /// The stream's poller sums as many windows as it may.
    #[error(
        "this stream is already watched over {MAX_WINDOWS_PER_STREAM} different windows, the limit; reuse a `since`"
    )]
    TooManyWindows,
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Kvs(e)
    }
}

pub(crate) struct Recording {
    readiness: StorageReadiness,
    data: Arc<DataPlane>,
    clock: SharedClock,
    settings: Settings,
    pollers: Mutex<HashMap<ChannelArn, Arc<poller::Poller>>>,
    joins: joins::LastJoins,
    /// The replicas' shared store, if any: the last join is kept there
    /// too, so a replica that did not make it still knows it.
    store: Option<Arc<SharedStore>>,
}

impl Recording {
    pub(crate) fn new(
        readiness: StorageReadiness,
        data: Arc<DataPlane>,
        clock: SharedClock,
        settings: Settings,
        store: Option<Arc<SharedStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            readiness,
            data,
            clock,
            settings,
            pollers: Mutex::default(),
            joins: joins::LastJoins::new(joins::SLOTS),
            store,
        })
    }

    /// The streams' data endpoints, shared with playback (one cache per
    /// stream and API, whoever asks).
    pub(crate) fn data_plane(&self) -> Arc<DataPlane> {
        self.data.clone()
    }

    /// KVS's time, as far as the sidecar knows it.
    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// A master join of `channel` succeeded now. On the join path: a hash
    /// and three atomic stores; with a shared store, a write to it in the
    /// background (the join does not wait for it, and a failure only costs
    /// other replicas the default).
    pub(crate) fn master_joined(&self, channel: &ChannelArn) {
        let now = self.now();
        self.joins.record(channel.as_str(), now);
        if let Some(store) = &self.store {
            let (store, key) = (store.clone(), join_key(channel));
            let ms = millis(now).to_string();
            tokio::spawn(async move {
                if store.set(&key, &ms, JOIN_KEPT).await.is_err() {
                    instruments::state_store_error("recording");
                }
            });
        }
    }

    /// The window a caller gets when it names no `since`: from the last
    /// master join this sidecar or the shared store knows, unless older
    /// than the default lookback.
    pub(crate) async fn default_since(&self, channel: &ChannelArn) -> SystemTime {
        // To the minute: callers asking within the same minute share one
        // window (and its listings) instead of each listing an hour.
        let hour_ago = floor_to_minute(self.now() - DEFAULT_LOOKBACK);
        let mut joined = self.joins.get(channel.as_str());
        if joined.is_none()
            && let Some(store) = &self.store
        {
            match store.get(&join_key(channel)).await {
                Ok(found) => {
                    joined = found
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
                }
                Err(_) => instruments::state_store_error("recording"),
            }
        }
        joined.filter(|at| *at > hour_ago).unwrap_or(hour_ago)
    }

    /// Subscribes to the status of `channel`'s recording over the window
    /// from `since`; the stream is looked up within the call's deadline.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        call: &Call,
        channel: &ChannelArn,
        since: SystemTime,
        stalled_after: Duration,
    ) -> Result<Subscription, Refusal> {
        let stream = self.stream_of(call, channel).await?;
        // A poller found stopping is replaced; the loop ends at once
        // unless a poller stops between the two locks, which is rare.
        loop {
            let poller = {
                let mut pollers = self.lock();
                match pollers.get(&stream) {
                    Some(p) => p.clone(),
                    None => {
                        if pollers.len() >= self.settings.max_streams {
                            // A poller kept only for lingering windows
                            // gives its place up.
                            let idle = pollers
                                .iter()
                                .find(|(_, p)| p.retire())
                                .map(|(stream, _)| stream.clone());
                            match idle {
                                Some(stream) => {
                                    pollers.remove(&stream);
                                }
                                None => {
                                    return Err(Refusal::TooManyStreams(self.settings.max_streams));
                                }
                            }
                        }
                        let p = poller::Poller::start(self.clone(), stream.clone());
                        pollers.insert(stream.clone(), p.clone());
                        instruments::recording_streams(pollers.len());
                        p
                    }
                }
            };
            match poller.subscribe(since, stalled_after) {
                Ok(Some(subscription)) => return Ok(subscription),
                Ok(None) => self.forget(&poller),
                Err(refusal) => return Err(refusal),
            }
        }
    }

    /// The subscription's status as of a listing at most a poll interval
    /// old (it waits for the next listing if the last is older), within
    /// the call's deadline.
    pub(crate) async fn status(
        &self,
        call: &Call,
        subscription: &mut Subscription,
    ) -> Result<Status, Refusal> {
        let asked = Instant::now();
        let fresh = |u: &Update| u.listed_at + self.settings.poll_interval >= asked;
        let work = async {
            loop {
                if let Some(update) = subscription.latest().filter(|u| fresh(u)) {
                    return update.result.map_err(Refusal::Kvs);
                }
                if !subscription.changed().await {
                    return Err(Refusal::Kvs(Error::DeadlineExceeded));
                }
            }
        };
        call.bound(work).await
    }

    /// The channel's stream, from the readiness checks' cache or a check.
    async fn stream_of(&self, call: &Call, channel: &ChannelArn) -> Result<ChannelArn, Refusal> {
        let report = self.readiness.check(call, channel).await?;
        if report.media_storage_status.is_empty()
            && report.stream_arn.is_empty()
            && let Some(problem) = report.problems.iter().find(|p| p.code == "ACCESS_DENIED")
        {
            return Err(Refusal::Denied(problem.message.clone()));
        }
        if report.media_storage_status != "ENABLED" || report.stream_arn.is_empty() {
            return Err(Refusal::StorageDisabled(format!(
                "media storage is not enabled for {channel} (status {:?}): nothing is recorded; enable it with UpdateMediaStorageConfiguration",
                report.media_storage_status
            )));
        }
        ChannelArn::parse(&report.stream_arn).map_err(|e| {
            Refusal::Kvs(Error::MalformedResponse(format!(
                "DescribeMediaStorageConfiguration linked a stream ARN that is not one: {e}"
            )))
        })
    }

    /// Drops a stopped poller from the registry (if it is still the one
    /// registered for its stream).
    fn forget(&self, poller: &Arc<poller::Poller>) {
        let mut pollers = self.lock();
        if pollers
            .get(poller.stream())
            .is_some_and(|p| Arc::ptr_eq(p, poller))
        {
            pollers.remove(poller.stream());
        }
        instruments::recording_streams(pollers.len());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelArn, Arc<poller::Poller>>> {
        // Inserts and removes only; poison cannot leave it torn.
        self.pollers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{
        UpstreamRequest, UpstreamResponse, credentials::Identities, endpoint::EndpointSettings,
        endpoint_cache::EndpointCache,
    };
    use std::sync::Mutex as StdMutex;

    /// Wall time driven by tokio's (paused) clock.
    #[derive(Debug)]
    struct PausedClock {
        t0: Instant,
        wall0: SystemTime,
    }

    impl crate::clock::Clock for PausedClock {
        fn now(&self) -> SystemTime {
            self.wall0 + self.t0.elapsed()
        }
    }

    fn epoch(t: SystemTime) -> f64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    /// A KVS whose stream records a 1 s fragment every second from `wall0`,
    /// each listed a second after it ends; the ListFragments ranges asked
    /// are kept.
    /// The ListFragments ranges asked, in epoch seconds.
    type Ranges = Arc<StdMutex<Vec<(f64, f64)>>>;

    fn recording(wall0: SystemTime) -> (Arc<Recording>, Ranges) {
        let clock = Arc::new(PausedClock {
            t0: Instant::now(),
            wall0,
        });
        let ranges: Ranges = Arc::default();
        let upstream = {
            let (clock, ranges) = (clock.clone(), ranges.clone());
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: UpstreamRequest| {
                let (clock, ranges) = (clock.clone(), ranges.clone());
                async move {
                    let body = match req.operation {
                            Operation::DescribeSignalingChannel => r#"{"ChannelInfo":{"ChannelStatus":"ACTIVE","ChannelType":"SINGLE_MASTER"}}"#.to_owned(),
                            Operation::DescribeMediaStorageConfiguration => r#"{"MediaStorageConfiguration":{"Status":"ENABLED","StreamARN":"arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam/1"}}"#.to_owned(),
                            Operation::DescribeStream => r#"{"StreamInfo":{"Status":"ACTIVE","DataRetentionInHours":24}}"#.to_owned(),
                            Operation::GetDataEndpoint => r#"{"DataEndpoint":"http://127.0.0.1:1"}"#.to_owned(),
                            _ => {
                                let asked: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                                let range = &asked["FragmentSelector"]["TimestampRange"];
                                let (from, to) = (
                                    range["StartTimestamp"].as_f64().unwrap(),
                                    range["EndTimestamp"].as_f64().unwrap(),
                                );
                                ranges.lock().unwrap().push((from, to));
                                let now = epoch(crate::clock::Clock::now(&*clock));
                                let start0 = epoch(wall0);
                                // Unordered: newest first.
                                let mut starts: Vec<f64> = (0..)
                                    .map(|n| start0 + n as f64)
                                    .take_while(|s| s + 2.0 <= now)
                                    .filter(|s| *s >= from && *s <= to)
                                    .collect();
                                starts.reverse();
                                let listed: Vec<_> = starts
                                    .into_iter()
                                    .map(|s| serde_json::json!({
                                        "FragmentNumber": format!("{}", (s * 1000.0) as u64),
                                        "FragmentSizeInBytes": 1000,
                                        "ServerTimestamp": s,
                                        "FragmentLengthInMilliseconds": 1000,
                                    }))
                                    .collect();
                                serde_json::json!({ "Fragments": listed }).to_string()
                            }
                        };
                    Ok(UpstreamResponse {
                        status: http::StatusCode::OK,
                        request_id: None,
                        body: body.into(),
                    })
                }
            }))
        };
        let client = Arc::new(KvsClient::new(
            upstream,
            EndpointCache::new(Duration::from_secs(60), 10),
            EndpointSettings {
                override_url: Some("http://127.0.0.1:1".parse().unwrap()),
                ..Default::default()
            },
            Identities::for_tests(),
        ));
        let readiness = StorageReadiness::new(client.clone(), Duration::from_secs(60), 10);
        let data = Arc::new(DataPlane::new(client, Duration::from_secs(60), 10));
        let settings = Settings {
            max_streams: 1,
            ..Settings::default()
        };
        (
            Recording::new(readiness, data, clock, settings, None),
            ranges,
        )
    }

    use crate::kvs::{KvsClient, Operation};

    #[tokio::test(start_paused = true)]
    async fn one_poller_lists_incrementally_counts_each_fragment_once_and_stops_alone() {
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (recording, ranges) = recording(wall0);
        let channel = ChannelArn::for_tests("cam");
        let call = || Call::new(Instant::now() + Duration::from_secs(10));
        let since = wall0 - Duration::from_secs(600);
        let mut watching = recording
            .subscribe(&call(), &channel, since, Duration::from_secs(5))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let status = recording.status(&call(), &mut watching).await.unwrap();
        assert_eq!(status.state, State::Recording);
        // Fragments start every second from wall0 and show 2 s after their
        // start: a listing at most a second old saw those up to 27 s or 28 s,
        // each once, none missed.
        let last = |s: &Status| {
            s.last_fragment
                .unwrap()
                .duration_since(wall0)
                .unwrap()
                .as_secs()
        };
        assert!(last(&status) >= 27, "{status:?}");
        assert_eq!(status.fragment_count, last(&status) + 1, "{status:?}");
        assert_eq!(status.recorded, Duration::from_secs(last(&status) + 1));
        assert_eq!(status.first_fragment, Some(wall0));
        // One listing a second, the first from `since`, the others from
        // the previous end less the overlap.
        let asked = ranges.lock().unwrap().clone();
        assert!((28..=32).contains(&asked.len()), "{}", asked.len());
        assert_eq!(asked[0].0, epoch(since));
        for pair in asked.windows(2) {
            assert!(pair[1].0 >= pair[0].1 - 30.0 - 1e-3, "{pair:?}");
        }
        // Another window on the same stream: the same poller, and the
        // stream cap (1) is not hit.
        let other = recording
            .status(
                &call(),
                &mut recording
                    .subscribe(
                        &call(),
                        &channel,
                        wall0 + Duration::from_secs(10),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(other.fragment_count, last(&other) - 10 + 1, "{other:?}");
        drop(watching);
        // Every window left: the poller lingers, then stops and listing ends.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(recording.lock().is_empty(), "the poller stopped");
        let listed = ranges.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ranges.lock().unwrap().len(), listed);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_per_stream_are_bounded_and_only_held_ones_are_kept() {
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (recording, _) = recording(wall0);
        let channel = ChannelArn::for_tests("cam");
        let call = || Call::new(Instant::now() + Duration::from_secs(10));
        let window = |n: u64| wall0 - Duration::from_secs(n);
        let mut held = Vec::new();
        for n in 0..MAX_WINDOWS_PER_STREAM as u64 {
            let subscription = recording
                .subscribe(&call(), &channel, window(n), Duration::from_secs(5))
                .await
                .unwrap();
            held.push(subscription);
        }
        let refused = recording
            .subscribe(&call(), &channel, window(9999), Duration::from_secs(5))
            .await;
        assert!(matches!(refused, Err(Refusal::TooManyWindows)));
        // The same window as a held one is shared, not another.
        let shared = recording
            .subscribe(&call(), &channel, window(3), Duration::from_secs(5))
            .await;
        assert!(shared.is_ok());
        // One left: its place goes to a new window at once.
        held.pop();
        let admitted = recording
            .subscribe(&call(), &channel, window(9999), Duration::from_secs(5))
            .await;
        assert!(admitted.is_ok());
    }
}
