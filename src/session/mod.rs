//! Keeps a channel's storage session recorded: a supervisor per maintained
//! session that joins, watches what the caller reports from its signaling
//! connection, and joins again when the session needs it (see [`policy`]).
//!
//! [`Sessions`] is the registry (one supervisor per channel and client id,
//! at most `capacity` at once, all told to stop when the sidecar drains;
//! with a shared store, one per channel across every replica, through a
//! lease each supervisor renews while it lives);
//! [`Supervisor::run`] is the driver that runs a [`Policy`] over the KVS
//! client and turns what happens into [`Event`]s.

pub(crate) mod policy;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

pub(crate) use self::policy::{Action, GiveUp, Policy, Reason, Report, Settings};
use crate::{
    instruments,
    kvs::{Call, Error, Joined, KvsClient, arn::ChannelArn},
    recording::{Recording, Subscription},
    store::SharedStore,
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

/// Why a session could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    AlreadyMaintained,
    /// Another replica holds the session's lease.
    MaintainedElsewhere,
    AtCapacity(usize),
    Draining,
    /// The shared store could not be reached to take the lease.
    StoreUnavailable,
}

type Key = (ChannelArn, Box<str>);

/// The maintained sessions of this sidecar.
#[derive(Debug)]
pub(crate) struct Sessions {
    active: Mutex<HashSet<Key>>,
    capacity: usize,
    draining: watch::Sender<bool>,
    /// The fleet's store and the lease time, when replicas share sessions.
    shared: Option<(Arc<SharedStore>, Duration)>,
}

/// A session's place in the registry (and its lease), given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    sessions: Arc<Sessions>,
    key: Key,
    lease: Option<Lease>,
}

/// A session's lease in the shared store, renewed in the background.
#[derive(Debug)]
struct Lease {
    key: String,
    renewal: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

// === impl Sessions ===

impl Sessions {
    /// A registry of this process's sessions; with `shared`, leased in the
    /// fleet's store for `lease` at a time.
    pub(crate) fn new(capacity: usize, shared: Option<(Arc<SharedStore>, Duration)>) -> Arc<Self> {
        Arc::new(Self {
            active: Mutex::default(),
            capacity,
            draining: watch::Sender::new(false),
            shared,
        })
    }

    /// Takes the one place for `channel` and `client_id`: in this process,
    /// then, with a shared store, in the fleet.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        channel: &ChannelArn,
        client_id: &str,
    ) -> Result<Claim, Refusal> {
        if *self.draining.borrow() {
            return Err(Refusal::Draining);
        }
        let key = (channel.clone(), Box::<str>::from(client_id));
        {
            let mut active = self.lock();
            if active.len() >= self.capacity {
                return Err(Refusal::AtCapacity(self.capacity));
            }
            if !active.insert(key.clone()) {
                return Err(Refusal::AlreadyMaintained);
            }
            instruments::sessions_maintained(active.len());
        }
        // From here on, dropping the claim gives the place back.
        let mut claim = Claim {
            sessions: self.clone(),
            key,
            lease: None,
        };
        if let Some((store, ttl)) = &self.shared {
            let lease_key = format!("session:{channel}:{client_id}");
            match store.insert_new(&lease_key, store.token(), *ttl).await {
                Ok(true) => claim.lease = Some(Lease::keep(store.clone(), lease_key, *ttl)),
                Ok(false) => return Err(Refusal::MaintainedElsewhere),
                Err(error) => {
                    instruments::state_store_error("lease");
                    tracing::warn!(%error, "state store unreachable; cannot lease the session");
                    return Err(Refusal::StoreUnavailable);
                }
            }
        }
        Ok(claim)
    }

    /// Tells every supervisor to stop (SIGTERM), and refuses new ones.
    /// Resolves once the sidecar drains.
    pub(crate) async fn draining(&self) {
        let _ = self.draining.subscribe().wait_for(|d| *d).await;
    }

    pub(crate) fn drain(&self) {
        self.draining.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        // Every update is one insert or remove; poison cannot leave it torn.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Claim ===

impl Claim {
    /// Resolves if the lease was lost; never without a shared store.
    async fn lost(&mut self) {
        match &mut self.lease {
            Some(lease) => {
                let _ = lease.lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut active = self.sessions.lock();
        active.remove(&self.key);
        instruments::sessions_maintained(active.len());
        drop(active);
        if let (Some(lease), Some((store, _))) = (self.lease.take(), &self.sessions.shared) {
            lease.renewal.abort();
            // Give the lease up now rather than make the next replica wait
            // for it to expire.
            let store = store.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if store.release(&lease.key, store.token()).await.is_err() {
                        instruments::state_store_error("lease");
                    }
                });
            }
        }
    }
}

// === impl Lease ===

impl Lease {
    /// Renews `key` every third of `ttl` until aborted; marks it lost when
    /// another holder has it, or when it could not be renewed before it
    /// would have expired.
    fn keep(store: Arc<SharedStore>, key: String, ttl: Duration) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let renewal = tokio::spawn({
            let key = key.clone();
            async move {
                let mut held_until = Instant::now() + ttl;
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.renew(&key, store.token(), ttl).await {
                        Ok(true) => held_until = Instant::now() + ttl,
                        Ok(false) => break,
                        Err(_) => {
                            instruments::state_store_error("lease");
                            if Instant::now() + ttl / 3 >= held_until {
                                break;
                            }
                        }
                    }
                }
                let _ = lost_tx.send(true);
            }
        });
        Self { key, renewal, lost }
    }
}

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
    /// Runs until the policy gives up, the sidecar drains, the caller stops
    /// sending reports (its stream ended) or stops listening (`events`
    /// closed). No join starts after the caller went away, and a join in
    /// flight then is abandoned.
    pub(crate) async fn run(
        self,
        mut reports: mpsc::Receiver<Report>,
        events: mpsc::Sender<Box<Event>>,
    ) {
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
            if client_id.is_empty() {
                client.join_storage_session(&call, &channel).await
            } else {
                client
                    .join_storage_session_as_viewer(&call, &channel, &client_id)
                    .await
            }
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
                        () = events.closed() => break None,
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
                                media = Box::pin(watch(
                                    &recording,
                                    &channel,
                                    wall,
                                    &settings,
                                    join_timeout,
                                ))
                                .await
                                .map(|s| (s, now, wall));
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
                    if events.send(Box::new(event)).await.is_err() {
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
                report = reports.recv() => match report {
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
                () = events.closed() => break None,
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
        let _ = events.send(Box::new(Event::GaveUp { why, error })).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(name: &str) -> ChannelArn {
        ChannelArn::for_tests(name)
    }

    #[tokio::test]
    async fn holds_one_claim_per_session_at_most_its_capacity_and_frees_on_drop() {
        let sessions = Sessions::new(2, None);
        let a = sessions.claim(&arn("a"), "").await.unwrap();
        assert_eq!(
            sessions.claim(&arn("a"), "").await.unwrap_err(),
            Refusal::AlreadyMaintained
        );
        // A viewer's session on the same channel is another session.
        let viewer = sessions.claim(&arn("a"), "v-1").await.unwrap();
        assert_eq!(
            sessions.claim(&arn("b"), "").await.unwrap_err(),
            Refusal::AtCapacity(2),
            "bounded whatever channels callers send"
        );
        drop(a);
        let b = sessions.claim(&arn("b"), "").await.unwrap();
        sessions.drain();
        assert_eq!(
            sessions.claim(&arn("c"), "").await.unwrap_err(),
            Refusal::Draining
        );
        drop((viewer, b));
        assert!(sessions.lock().is_empty(), "every claim given back");
    }
}
