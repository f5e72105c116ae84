//! GetRecordingStatus and WatchRecording at the edge: validate the window,
//! subscribe to the stream's poller (`crate::recording`), map what it
//! answers to the contract.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{
    error::{CallError, Shed},
    status::to_status,
};
use crate::{
    kvs::{
        Call,
        arn::{ChannelArn, InvalidField, ValidationError},
    },
    pb::{RecordingGap, RecordingState, RecordingStatus, WatchRecordingResponse},
    recording::{self, Recording, State},
};

/// The default `stalled_after`.
const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(30);
const MIN_STALLED_AFTER: Duration = Duration::from_secs(1);
const MAX_STALLED_AFTER: Duration = Duration::from_secs(3600);
/// How far back `since` may reach.
const MAX_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// A `since` this far ahead of our clock is the caller's clock, not the
/// future.
const SINCE_TOLERANCE: Duration = Duration::from_secs(5);
/// Statuses queued per watcher: a slow reader holds up its own task, never
/// memory (the poller's updates to it coalesce meanwhile).
const WATCH_QUEUE: usize = 4;
/// Watchers served at once by the sidecar.
pub(super) const MAX_WATCHERS: usize = 10_000;

pub(super) type WatchStream = ReceiverStream<Result<WatchRecordingResponse, Status>>;

/// A validated window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub since: SystemTime,
    pub stalled_after: Duration,
}

/// The window a request asks for, each bound named when broken; `since`
/// defaults to the channel's last master join (else an hour ago).
pub(super) async fn window(
    recording: &Recording,
    channel: &ChannelArn,
    since: Option<prost_types::Timestamp>,
    stalled_after: Option<prost_types::Duration>,
) -> Result<Window, InvalidField> {
    let invalid = |field, rule| ValidationError::Constraint(rule).of(field);
    let stalled_after = match stalled_after {
        None => DEFAULT_STALLED_AFTER,
        Some(d) => {
            let d = Duration::try_from(d).unwrap_or(Duration::ZERO);
            if !(MIN_STALLED_AFTER..=MAX_STALLED_AFTER).contains(&d) {
                return Err(invalid("stalled_after", "must be from 1 s to 1 h"));
            }
            d
        }
    };
    let now = recording.now();
    let since = match since {
        None => recording.default_since(channel).await,
        Some(ts) => {
            let since = SystemTime::try_from(ts)
                .map_err(|_| invalid("since", "is not a valid timestamp"))?;
            if since > now + SINCE_TOLERANCE {
                return Err(invalid("since", "is in the future"));
            }
            if now.duration_since(since).unwrap_or_default() > MAX_LOOKBACK {
                return Err(invalid("since", "must be within the last 24 h"));
            }
            since.min(now)
        }
    };
    Ok(Window {
        since,
        stalled_after,
    })
}

/// GetRecordingStatus: the window's status from a listing at most 1 s old.
pub(super) async fn status(
    recording: &Arc<Recording>,
    call: &Call,
    channel: &ChannelArn,
    window: Window,
) -> Result<RecordingStatus, CallError> {
    let mut subscription = recording
        .subscribe(call, channel, window.since, window.stalled_after)
        .await?;
    let stream_arn = subscription.stream_arn().to_owned();
    let status = recording.status(call, &mut subscription).await?;
    Ok(to_pb(&status, &stream_arn))
}

/// WatchRecording: the first status, then one at each change of state,
/// until the caller goes away or a listing fails (its error ends the
/// stream).
pub(super) async fn watch(
    recording: &Arc<Recording>,
    watchers: &Arc<Semaphore>,
    call: &Call,
    channel: &ChannelArn,
    window: Window,
) -> Result<WatchStream, CallError> {
    let Ok(permit) = watchers.clone().try_acquire_owned() else {
        return Err(Shed::Watchers(MAX_WATCHERS).into());
    };
    let subscription = recording
        .subscribe(call, channel, window.since, window.stalled_after)
        .await?;
    let (out, out_rx) = mpsc::channel(WATCH_QUEUE);
    tokio::spawn(relay(subscription, out, permit));
    Ok(ReceiverStream::new(out_rx))
}

async fn relay(
    mut subscription: recording::Subscription,
    out: mpsc::Sender<Result<WatchRecordingResponse, Status>>,
    _permit: OwnedSemaphorePermit,
) {
    let stream_arn = subscription.stream_arn().to_owned();
    let mut last: Option<State> = None;
    loop {
        if let Some(update) = subscription.latest() {
            match update.result {
                Ok(status) if last != Some(status.state) => {
                    last = Some(status.state);
                    let item = WatchRecordingResponse {
                        status: Some(to_pb(&status, &stream_arn)),
                    };
                    if out.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = out.send(Err(to_status(&error.into()))).await;
                    return;
                }
            }
        }
        tokio::select! {
            changed = subscription.changed() => if !changed { return },
            () = out.closed() => return,
        }
    }
}

fn to_pb(status: &recording::Status, stream_arn: &str) -> RecordingStatus {
    let duration = |d: Duration| prost_types::Duration::try_from(d).ok();
    RecordingStatus {
        state: match status.state {
            State::Recording => RecordingState::Recording,
            State::NoMedia => RecordingState::NoMedia,
            State::Stalled => RecordingState::Stalled,
        }
        .into(),
        stream_arn: stream_arn.to_owned(),
        since: Some(status.since.into()),
        first_fragment_time: status.first_fragment.map(Into::into),
        last_fragment_time: status.last_fragment.map(Into::into),
        fragment_count: status.fragment_count,
        recorded_duration: duration(status.recorded),
        recorded_bytes: status.recorded_bytes,
        gaps: status
            .gaps
            .iter()
            .map(|g| RecordingGap {
                start: Some(g.start.into()),
                duration: duration(g.length),
            })
            .collect(),
    }
}
