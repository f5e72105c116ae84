//! Keeps a channel's storage session recorded: a supervisor per maintained
//! session that joins, watches what the caller reports from its signaling
//! connection, and joins again when the session needs it (see [`policy`]).
//!
//! [`Sessions`] is the registry (one supervisor per channel and client id,
//! at most `capacity` at once, all told to stop when the sidecar drains);
//! [`Supervisor::run`] is the driver that runs a [`Policy`] over the KVS
//! client and turns what happens into [`Event`]s.

pub mod policy;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

pub use self::policy::{Action, GiveUp, Policy, Reason, Report, Settings};
use crate::{
    kvs::{Call, Error, ErrorKind, Joined, KvsClient, arn::ChannelArn},
    metrics,
};

/// What a maintained session does, for the caller's event stream.
#[derive(Debug, Clone)]
pub enum Event {
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
pub enum Stop {
    Policy(GiveUp),
    /// The sidecar is shutting down; the caller's other replica may take
    /// over.
    Draining,
}

/// Why a session could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    AlreadyMaintained,
    AtCapacity(usize),
    Draining,
}

type Key = (ChannelArn, Box<str>);

/// The maintained sessions of this sidecar.
#[derive(Debug)]
pub struct Sessions {
    active: Mutex<HashSet<Key>>,
    capacity: usize,
    draining: watch::Sender<bool>,
}

/// A session's place in the registry, given back when dropped.
#[derive(Debug)]
pub struct Claim {
    sessions: Arc<Sessions>,
    key: Key,
}

// === impl Sessions ===

impl Sessions {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            active: Mutex::default(),
            capacity,
            draining: watch::Sender::new(false),
        })
    }

    /// Takes the one place for `channel` and `client_id`.
    pub fn claim(
        self: &Arc<Self>,
        channel: &ChannelArn,
        client_id: &str,
    ) -> Result<Claim, Refusal> {
        if *self.draining.borrow() {
            return Err(Refusal::Draining);
        }
        let mut active = self.lock();
        if active.len() >= self.capacity {
            return Err(Refusal::AtCapacity(self.capacity));
        }
        let key = (channel.clone(), client_id.into());
        if !active.insert(key.clone()) {
            return Err(Refusal::AlreadyMaintained);
        }
        metrics::sessions_maintained(active.len());
        Ok(Claim {
            sessions: self.clone(),
            key,
        })
    }

    /// Tells every supervisor to stop (SIGTERM), and refuses new ones.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        // Every update is one insert or remove; poison cannot leave it torn.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut active = self.sessions.lock();
        active.remove(&self.key);
        metrics::sessions_maintained(active.len());
    }
}

/// One maintained session: the policy and what it needs to act.
pub struct Supervisor {
    pub client: Arc<KvsClient>,
    pub channel: ChannelArn,
    /// Empty for the master; the viewer's client id otherwise.
    pub client_id: String,
    pub settings: Settings,
    /// Deadline of each join.
    pub join_timeout: Duration,
    pub claim: Claim,
}

// === impl Supervisor ===

impl Supervisor {
    /// Runs until the policy gives up, the sidecar drains, the caller stops
    /// sending reports (its stream ended) or stops listening (`events`
    /// closed). No join starts after the caller went away, and a join in
    /// flight then is abandoned.
    pub async fn run(self, mut reports: mpsc::Receiver<Report>, events: mpsc::Sender<Event>) {
        let mut draining = self.claim.sessions.draining.subscribe();
        let mut policy = Policy::new(self.settings, Instant::now());
        let mut attempt = 0u32;
        let mut joined_at: Option<Instant> = None;
        let mut last_error: Option<Error> = None;
        let stop = loop {
            let wake = match policy.next(Instant::now()) {
                Action::Stop(why) => break Some(Stop::Policy(why)),
                Action::Join(reason) => {
                    attempt += 1;
                    metrics::session_join(reason.as_str());
                    let result = tokio::select! {
                        result = self.join() => result,
                        () = events.closed() => break None,
                        _ = draining.wait_for(|d| *d) => break Some(Stop::Draining),
                    };
                    let now = Instant::now();
                    let event = match result {
                        Ok(Joined { request_id }) => {
                            policy.joined(now, fastrand::f64());
                            joined_at = Some(now);
                            Event::Joined {
                                attempt,
                                request_id,
                                reason,
                            }
                        }
                        Err(error) => {
                            let next_attempt_in =
                                policy.join_failed(now, is_final(&error), fastrand::f64());
                            last_error = Some(error.clone());
                            Event::JoinFailed {
                                attempt,
                                error,
                                next_attempt_in,
                            }
                        }
                    };
                    if events.send(event).await.is_err() {
                        break None;
                    }
                    continue;
                }
                Action::WaitUntil(at) => Some(at),
                Action::WaitForReport => None,
            };
            tokio::select! {
                () = sleep_until(wake) => {}
                report = reports.recv() => match report {
                    Some(report) => {
                        if report == Report::OfferReceived
                            && let Some(at) = joined_at.take()
                        {
                            metrics::session_offer_latency(at.elapsed());
                        }
                        policy.report(report, Instant::now());
                    }
                    None => break None,
                },
                () = events.closed() => break None,
                _ = draining.wait_for(|d| *d) => break Some(Stop::Draining),
            }
        };
        // The caller went away: nothing to tell it.
        let Some(why) = stop else { return };
        metrics::session_gave_up(match why {
            Stop::Policy(GiveUp::FailureBudget) => "failure_budget",
            Stop::Policy(GiveUp::Final) => "final_error",
            Stop::Draining => "draining",
        });
        let error = match why {
            Stop::Policy(_) => last_error,
            Stop::Draining => None,
        };
        let _ = events.send(Event::GaveUp { why, error }).await;
    }

    async fn join(&self) -> Result<Joined, Error> {
        let call = Call::new(Instant::now() + self.join_timeout);
        if self.client_id.is_empty() {
            self.client.join_storage_session(&call, &self.channel).await
        } else {
            self.client
                .join_storage_session_as_viewer(&call, &self.channel, &self.client_id)
                .await
        }
    }
}

/// A join failure no later join can fix: the channel is gone or refused,
/// the request is wrong, or the session has all the viewers it allows.
fn is_final(err: &Error) -> bool {
    match err {
        Error::Service(e) => matches!(
            e.kind,
            ErrorKind::NotFound
                | ErrorKind::AccessDenied
                | ErrorKind::InvalidArgument
                | ErrorKind::ResourceInUse
                | ErrorKind::ViewerLimit
        ),
        Error::InvalidRequest { .. } | Error::ChannelNotAllowed(_) | Error::Endpoint(_) => true,
        _ => false,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
