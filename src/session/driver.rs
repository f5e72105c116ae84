//! The driver of one maintained session: runs the re-join policy over the
//! KVS client and tells the caller what happens.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    registry::Claim,
    rejoin::{Action, GiveUp, Policy, Reason, Report, Settings},
};
use crate::{
    instruments,
    kvs::{Call, Error, Joined, KvsClient, arn::ChannelArn, endpoint::Peer},
    recording::{Recording, Subscription},
};

/// What a maintained session does, for the caller's event stream.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Joined {
        attempt: u32,
        request_id: String,
        reason: Reason,
    },
    JoinFailed {
        attempt: u32,
        error: Error,
        next_attempt_in: Option<Duration>,
    },
    /// The last event: the supervisor stopped.
    GaveUp { why: Stop, error: Option<Error> },
}

/// Why a supervisor stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Policy(GiveUp),
    /// The sidecar is shutting down; the caller's other replica may take
    /// over.
    Draining,
    /// The session's lease in the shared store could not be renewed: another
    /// replica may own the session now.
    LeaseLost,
}

/// The caller of a maintained session as its supervisor sees it: reports
/// come from it and events go to it. The supervisor waits on nothing else
/// without also waiting on the caller (`report` or `gone`, or inside
/// `tell`), so the caller's stream is read all the time: HTTP/2 would
/// otherwise hold what an unread caller sends, up to its flow-control
/// windows, for as long as it likes.
pub(crate) trait Caller {
    /// The caller's next report; `None` once it ended its stream, stopped
    /// listening or broke the protocol (then it has been told why).
    async fn report(&mut self) -> Option<Report>;
    /// Keeps the caller's reports for `report` while the supervisor is busy,
    /// and resolves when `report` would say the caller is gone.
    async fn gone(&mut self);
    /// Tells the caller of `event`, waiting while its queue is full;
    /// `Err(Gone)` when it is gone.
    async fn tell(&mut self, event: Event) -> Result<(), Gone>;
}

/// The caller went away: nothing more is told or read.
#[derive(Debug)]
pub(crate) struct Gone;

/// One maintained session: the policy and what it needs to act.
pub(crate) struct Supervisor {
    pub client: Arc<KvsClient>,
    pub channel: ChannelArn,
    /// Empty for the master; the viewer's client id otherwise.
    pub client_id: String,
    pub settings: Settings,
    /// Deadline of each join.
    pub join_timeout: Duration,
    pub claim: Claim,
    /// The fragments of the channel's stream, watched after each master
    /// join when `settings.no_media_after` is set.
    pub recording: Arc<Recording>,
}

// === impl Supervisor ===

impl Supervisor {
    /// Runs until the policy gives up, the sidecar drains or the caller is
    /// gone. No join starts after the caller went away, and a join in
    /// flight then is abandoned.
    ///
    /// The caller is driven here, in the supervisor's own task, rather
    /// than by a task of its own: a session at rest then holds one task
    /// and one queue (the caller's answers), not two tasks and three.
    pub(crate) async fn run(self, mut caller: impl Caller) {
        let Self {
            client,
            channel,
            client_id,
            settings,
            join_timeout,
            mut claim,
            recording,
        } = self;
        let watch_media = client_id.is_empty() && settings.no_media_after.is_some();
        // The fragments of the session joined last, and when (our clock
        // and KVS's) it was joined.
        let mut media: Option<(Subscription, Instant, std::time::SystemTime)> = None;
        let mut first_fragment_seen = false;
        let mut draining = claim.sessions.draining.subscribe();
        let join = || async {
            let call = Call::new(Instant::now() + join_timeout);
            client
                .join(&call, &channel, Peer::from_client_id(&client_id))
                .await
        };
        let mut policy = Policy::new(settings, Instant::now());
        let mut attempt = 0u32;
        let mut joined_at: Option<Instant> = None;
        let mut last_error: Option<Error> = None;
        let stop = loop {
            let wake = match policy.next(Instant::now()) {
                Action::Stop(why) => break Some(Stop::Policy(why)),
                Action::Join(reason) => {
                    attempt += 1;
                    instruments::session_join(reason.as_str());
                    // Boxed, as is `watch` below: a task's allocation is its
                    // future's largest state, and a join's (retries, signing,
                    // the HTTP exchange) inlined made every session at rest
                    // hold 16 KiB (`kvs-bench at-rest`).
                    let result = tokio::select! {
                        result = Box::pin(join()) => result,
                        () = caller.gone() => break None,
                        _ = draining.wait_for(|d| *d) => break Some(Stop::Draining),
                        () = claim.lost() => break Some(Stop::LeaseLost),
                    };
                    let now = Instant::now();
                    let event = match result {
                        Ok(Joined { request_id }) => {
                            policy.joined(now, fastrand::f64());
                            joined_at = Some(now);
                            if client_id.is_empty() {
                                recording.master_joined(&channel);
                            }
                            if watch_media {
                                let wall = recording.now();
                                let watching = Box::pin(watch(
                                    &recording,
                                    &channel,
                                    wall,
                                    &settings,
                                    join_timeout,
                                ));
                                media = tokio::select! {
                                    subscription = watching => subscription.map(|s| (s, now, wall)),
                                    () = caller.gone() => break None,
                                };
                                first_fragment_seen = false;
                            }
                            Event::Joined {
                                attempt,
                                request_id,
                                reason,
                            }
                        }
                        Err(error) => {
                            let next_attempt_in =
                                policy.join_failed(now, error.is_final(), fastrand::f64());
                            tracing::info!(
                                attempt,
                                reason = reason.as_str(),
                                %error,
                                ?next_attempt_in,
                                "maintained session's join failed"
                            );
                            last_error = Some(error.clone());
                            Event::JoinFailed {
                                attempt,
                                error,
                                next_attempt_in,
                            }
                        }
                    };
                    if caller.tell(event).await.is_err() {
                        break None;
                    }
                    continue;
                }
                Action::WaitUntil(at) => Some(at),
                Action::WaitForReport => None,
            };
            tokio::select! {
                () = sleep_until(wake) => {}
                changed = media_changed(&mut media) => {
                    if !changed {
                        media = None;
                        continue;
                    }
                    let Some((subscription, joined, joined_wall)) = &mut media else { continue };
                    let Some(Ok(status)) = subscription.latest().map(|u| u.result) else { continue };
                    if let Some(first) = status.first_fragment
                        && !first_fragment_seen
                    {
                        first_fragment_seen = true;
                        instruments::recording_first_fragment(
                            first.duration_since(*joined_wall).unwrap_or_default(),
                        );
                    }
                    if let Some(last) = status.last_fragment {
                        // KVS's time of the fragment, on our clock.
                        let age = recording.now().duration_since(last).unwrap_or_default();
                        let now = Instant::now();
                        policy.media(now.checked_sub(age).unwrap_or(now).max(*joined));
                    }
                }
                report = caller.report() => match report {
                    Some(report) => {
                        if report == Report::OfferReceived
                            && let Some(at) = joined_at.take()
                        {
                            instruments::session_offer_latency(at.elapsed());
                        }
                        policy.report(report, Instant::now());
                    }
                    None => break None,
                },
                _ = draining.wait_for(|d| *d) => break Some(Stop::Draining),
                () = claim.lost() => break Some(Stop::LeaseLost),
            }
        };
        // The caller went away: nothing to tell it.
        let Some(why) = stop else { return };
        let why_label = match why {
            Stop::Policy(GiveUp::FailureBudget) => "failure_budget",
            Stop::Policy(GiveUp::Final) => "final_error",
            Stop::Draining => "draining",
            Stop::LeaseLost => "lease_lost",
        };
        instruments::session_gave_up(why_label);
        let error = match why {
            Stop::Policy(_) => last_error,
            Stop::Draining | Stop::LeaseLost => None,
        };
        match &error {
            Some(error) => tracing::info!(why = why_label, %error, "maintained session gave up"),
            None => tracing::info!(why = why_label, "maintained session gave up"),
        }
        let _ = caller.tell(Event::GaveUp { why, error }).await;
    }
}

/// A subscription to the fragments of the channel's stream from `since`, with
/// `no_media_after` as its stalled_after; `None` (logged) when the stream
/// cannot be found, so the media deadline passes and the join counts as one
/// without media.
async fn watch(
    recording: &Arc<Recording>,
    channel: &ChannelArn,
    since: std::time::SystemTime,
    settings: &Settings,
    timeout: Duration,
) -> Option<Subscription> {
    let after = settings.no_media_after?;
    let call = Call::new(Instant::now() + timeout);
    match recording.subscribe(&call, channel, since, after).await {
        Ok(subscription) => Some(subscription),
        Err(refusal) => {
            tracing::warn!(?refusal, "cannot watch the session's fragments");
            None
        }
    }
}

/// Resolves when the watched fragments' status changed (false: the poller
/// went away); never without a subscription.
async fn media_changed(media: &mut Option<(Subscription, Instant, std::time::SystemTime)>) -> bool {
    match media {
        Some((subscription, _, _)) => subscription.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
