//! When to join a storage session again: a pure state machine. It is given
//! what happened and the time, and says what to do next; it never sleeps,
//! spawns or calls anything, so every path is tested with plain instants.
//!
//! The loop is the one the KVS WebRTC SDKs carry: join; if the offer does
//! not arrive within a few seconds, join again; once media flows, join again
//! ahead of KVS's one-hour session limit; after a disconnection or on
//! request, join again; pace failed joins and give up after too many of
//! them in a window, or at once on a failure that no retry can fix.
//!
//! With `no_media_after`, the fragments KVS lists for the channel's stream
//! are evidence too ([`Policy::media`]): a fragment after the join proves
//! the session (it counts as connected, so no `no_offer` join follows even
//! if the caller never reports), no fragment within `no_media_after` of the
//! join fails the join (a `no_media` join, counted against the budget like
//! a missing offer), and fragments that stop for `no_media_after` make a
//! `no_media` join (not a failure: the session recorded).

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Why a join is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Initial,
    NoOffer,
    SessionLimit,
    Disconnected,
    Requested,
    NoMedia,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::NoOffer => "no_offer",
            Reason::SessionLimit => "session_limit",
            Reason::Disconnected => "disconnected",
            Reason::Requested => "requested",
            Reason::NoMedia => "no_media",
        }
    }
}

/// What the caller saw on its signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    OfferReceived,
    Connected,
    Disconnected,
    RejoinRequested,
}

/// Why the supervisor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// Too many failed joins (or joins without an offer) in the window.
    FailureBudget,
    /// A join failed in a way no retry can fix (not found, denied, ...).
    Final,
}

/// Tunables; the bounds a caller may set them within are checked at the
/// edge (`grpc/session.rs`, `settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// How long to wait for the offer after a join before joining again
    /// (plus up to a quarter of it as jitter).
    pub offer_wait: Duration,
    /// How long after the join that led to media the session is joined
    /// again, ahead of KVS's one-hour limit.
    pub rejoin_after: Duration,
    /// Failed joins allowed within `failure_window` before giving up.
    pub failure_budget: u32,
    pub failure_window: Duration,
    /// Least time between two joins, whatever asks for them.
    pub min_interval: Duration,
    /// Backoff after a failed join: doubles from this, jittered, up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Join again when no fragment starts within this of a join, or none
    /// for this long since the last; `None`: fragments are not watched.
    pub no_media_after: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            offer_wait: Duration::from_secs(6),
            rejoin_after: Duration::from_secs(55 * 60),
            failure_budget: 5,
            failure_window: Duration::from_secs(10 * 60),
            min_interval: Duration::from_secs(1),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            no_media_after: None,
        }
    }
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Join(Reason),
    /// Nothing until this instant (or until a report arrives).
    WaitUntil(Instant),
    /// Nothing until a report arrives.
    WaitForReport,
    Stop(GiveUp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A join is due at `at` (a join in flight stays in this phase).
    JoinDue {
        at: Instant,
        reason: Reason,
    },
    /// Joined at `joined`; the offer is expected by `deadline`.
    AwaitingOffer {
        joined: Instant,
        deadline: Instant,
    },
    /// The offer arrived; waiting for media.
    Offered {
        joined: Instant,
    },
    /// Media flows; join again at `rejoin_at`.
    Connected {
        rejoin_at: Instant,
    },
    Stopped(GiveUp),
}

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    settings: Settings,
    phase: Phase,
    last_join: Option<Instant>,
    /// When recent joins failed, oldest first, within the window.
    failures: VecDeque<Instant>,
    /// Failed joins in a row, for the backoff.
    consecutive_failures: u32,
    /// With `no_media_after`: when the joined session is due a fragment
    /// (the join's, or the last fragment's, plus `no_media_after`).
    media_due: Option<Instant>,
    /// Whether a fragment came since the last join.
    media_seen: bool,
}

// === impl Policy ===

impl Policy {
    /// A policy that joins at once.
    pub(crate) fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            phase: Phase::JoinDue {
                at: now,
                reason: Reason::Initial,
            },
            last_join: None,
            failures: VecDeque::new(),
            consecutive_failures: 0,
            media_due: None,
            media_seen: false,
        }
    }

    /// What to do at `now`; deadlines that passed are acted on first.
    pub(crate) fn next(&mut self, now: Instant) -> Action {
        match self.phase {
            Phase::AwaitingOffer { deadline, .. } if now >= deadline => {
                // A join whose offer never came failed as surely as one
                // KVS refused.
                if self.count_failure(now) {
                    return Action::Stop(GiveUp::FailureBudget);
                }
                self.join_due(now, Reason::NoOffer);
            }
            Phase::Connected { rejoin_at } if now >= rejoin_at => {
                self.join_due(now, Reason::SessionLimit);
            }
            Phase::AwaitingOffer { .. } | Phase::Offered { .. } | Phase::Connected { .. }
                if self.media_due.is_some_and(|due| now >= due) =>
            {
                // No fragment at all after the join failed the join; one
                // that stopped coming ends a session that recorded.
                if !self.media_seen && self.count_failure(now) {
                    return Action::Stop(GiveUp::FailureBudget);
                }
                self.join_due(now, Reason::NoMedia);
            }
            _ => {}
        }
        let media = |at: Instant| self.media_due.map_or(at, |due| due.min(at));
        match self.phase {
            Phase::JoinDue { at, reason } if now >= at => Action::Join(reason),
            Phase::JoinDue { at, .. } => Action::WaitUntil(at),
            Phase::AwaitingOffer { deadline, .. } => Action::WaitUntil(media(deadline)),
            Phase::Offered { .. } => match self.media_due {
                Some(due) => Action::WaitUntil(due),
                None => Action::WaitForReport,
            },
            Phase::Connected { rejoin_at } => Action::WaitUntil(media(rejoin_at)),
            Phase::Stopped(why) => Action::Stop(why),
        }
    }

    /// A join succeeded at `now`. `jitter` in `[0, 1)` spreads the offer
    /// wait, so a fleet restarted at once does not re-join in lockstep.
    pub(crate) fn joined(&mut self, now: Instant, jitter: f64) {
        self.last_join = Some(now);
        self.consecutive_failures = 0;
        let extra = self
            .settings
            .offer_wait
            .mul_f64(0.25 * jitter.clamp(0.0, 1.0));
        self.phase = Phase::AwaitingOffer {
            joined: now,
            deadline: now + self.settings.offer_wait + extra,
        };
        self.media_due = self.settings.no_media_after.map(|after| now + after);
        self.media_seen = false;
    }

    /// The stream's listing shows a fragment of the joined session that
    /// started at `last_fragment` (converted to our clock). Fragments prove
    /// the session: it counts as connected. Ignored when fragments are not
    /// watched, and for fragments older than the join.
    pub(crate) fn media(&mut self, last_fragment: Instant) {
        let Some(after) = self.settings.no_media_after else {
            return;
        };
        let joined = match self.phase {
            Phase::AwaitingOffer { joined, .. } | Phase::Offered { joined } => joined,
            Phase::Connected { .. } => self.last_join.unwrap_or(last_fragment),
            Phase::JoinDue { .. } | Phase::Stopped(_) => return,
        };
        if last_fragment < joined {
            return;
        }
        self.media_seen = true;
        let due = last_fragment + after;
        self.media_due = Some(self.media_due.map_or(due, |d| d.max(due)));
        if let Phase::AwaitingOffer { joined, .. } | Phase::Offered { joined } = self.phase {
            self.phase = Phase::Connected {
                rejoin_at: joined + self.settings.rejoin_after,
            };
        }
    }

    /// A join failed at `now`; `final_error` when no retry can fix it.
    /// Returns how long until the next attempt, if there is one.
    pub(crate) fn join_failed(
        &mut self,
        now: Instant,
        final_error: bool,
        jitter: f64,
    ) -> Option<Duration> {
        self.last_join = Some(now);
        if final_error {
            self.phase = Phase::Stopped(GiveUp::Final);
            return None;
        }
        if self.count_failure(now) {
            return None;
        }
        self.consecutive_failures += 1;
        let exp = self
            .settings
            .backoff
            .saturating_mul(1 << (self.consecutive_failures - 1).min(16));
        let delay = exp
            .min(self.settings.max_backoff)
            .mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
            .max(self.settings.min_interval);
        let reason = match self.phase {
            Phase::JoinDue { reason, .. } => reason,
            _ => Reason::Initial,
        };
        self.phase = Phase::JoinDue {
            at: now + delay,
            reason,
        };
        Some(delay)
    }

    /// The caller reported what it saw on its signaling connection.
    pub(crate) fn report(&mut self, report: Report, now: Instant) {
        match (report, self.phase) {
            (Report::OfferReceived, Phase::AwaitingOffer { joined, .. }) => {
                self.phase = Phase::Offered { joined };
            }
            (
                Report::Connected,
                Phase::AwaitingOffer { joined, .. } | Phase::Offered { joined },
            ) => {
                self.phase = Phase::Connected {
                    rejoin_at: joined + self.settings.rejoin_after,
                };
            }
            (Report::Disconnected, Phase::Stopped(_))
            | (Report::RejoinRequested, Phase::Stopped(_)) => {}
            // A join already due keeps its time: a flood of reports cannot
            // make joins come faster than the backoff allows.
            (Report::Disconnected | Report::RejoinRequested, Phase::JoinDue { .. }) => {}
            (Report::Disconnected, _) => self.join_due(now, Reason::Disconnected),
            (Report::RejoinRequested, _) => self.join_due(now, Reason::Requested),
            // Late or repeated reports change nothing.
            (Report::OfferReceived | Report::Connected, _) => {}
        }
    }

    /// Schedules a join for `reason`, no sooner than `min_interval` after
    /// the last one.
    fn join_due(&mut self, now: Instant, reason: Reason) {
        let earliest = self
            .last_join
            .map_or(now, |last| last + self.settings.min_interval);
        self.phase = Phase::JoinDue {
            at: earliest.max(now),
            reason,
        };
        self.media_due = None;
    }

    /// Records a failure; true (and stopped) when the budget is spent.
    fn count_failure(&mut self, now: Instant) -> bool {
        while self
            .failures
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= self.settings.failure_window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= self.settings.failure_budget as usize {
            self.phase = Phase::Stopped(GiveUp::FailureBudget);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn joins_at_once_then_again_when_no_offer_arrives() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        assert_eq!(p.next(t0), Action::Join(Reason::Initial));
        p.joined(t0, 0.0);
        assert_eq!(p.next(t0), Action::WaitUntil(t0 + s(6)));
        assert_eq!(p.next(t0 + s(6)), Action::Join(Reason::NoOffer));
    }

    #[test]
    fn jitter_spreads_the_offer_wait_by_up_to_a_quarter() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        p.joined(t0, 0.999_999);
        let Action::WaitUntil(at) = p.next(t0) else {
            panic!("waits for the offer")
        };
        assert!(at > t0 + s(7) && at <= t0 + Duration::from_millis(7_500));
    }

    #[test]
    fn media_moves_the_next_join_to_ahead_of_the_session_limit() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        p.joined(t0, 0.0);
        p.report(Report::OfferReceived, t0 + s(1));
        assert_eq!(
            p.next(t0 + s(100)),
            Action::WaitForReport,
            "offer in: no timer"
        );
        p.report(Report::Connected, t0 + s(2));
        let limit = t0 + s(55 * 60);
        assert_eq!(p.next(t0 + s(3)), Action::WaitUntil(limit));
        assert_eq!(p.next(limit), Action::Join(Reason::SessionLimit));
    }

    #[test]
    fn disconnection_and_requests_rejoin_paced_by_the_minimum_interval() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        p.joined(t0, 0.0);
        p.report(Report::Connected, t0);
        p.report(Report::Disconnected, t0 + Duration::from_millis(200));
        assert_eq!(
            p.next(t0 + Duration::from_millis(200)),
            Action::WaitUntil(t0 + s(1)),
            "no sooner than a second after the last join"
        );
        assert_eq!(p.next(t0 + s(1)), Action::Join(Reason::Disconnected));
        p.joined(t0 + s(1), 0.0);
        p.report(Report::RejoinRequested, t0 + s(5));
        assert_eq!(p.next(t0 + s(5)), Action::Join(Reason::Requested));
    }

    #[test]
    fn failed_joins_back_off_and_give_up_after_the_budget() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            assert_eq!(p.next(now), Action::Join(Reason::Initial));
            let delay = p.join_failed(now, false, 1.0).expect("retried");
            delays.push(delay);
            now += delay;
        }
        assert_eq!(delays, [s(1), s(2), s(4), s(8)]);
        assert_eq!(p.next(now), Action::Join(Reason::Initial));
        assert_eq!(p.join_failed(now, false, 1.0), None, "the fifth failure");
        assert_eq!(p.next(now), Action::Stop(GiveUp::FailureBudget));
    }

    #[test]
    fn failures_leave_the_window_and_no_offer_counts_as_one() {
        let settings = Settings {
            failure_budget: 2,
            failure_window: s(60),
            ..Settings::default()
        };
        let t0 = Instant::now();
        let mut p = Policy::new(settings, t0);
        p.join_failed(t0, false, 0.0).unwrap();
        // Out of the window by the time the next one fails.
        let later = t0 + s(61);
        p.join_failed(later, false, 0.0).unwrap();
        // A join whose offer never comes is the second failure in a minute.
        p.joined(later + s(1), 0.0);
        assert_eq!(p.next(later + s(10)), Action::Stop(GiveUp::FailureBudget));
    }

    #[test]
    fn a_final_error_stops_at_once_and_reports_change_nothing_after() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        assert_eq!(p.join_failed(t0, true, 0.0), None);
        p.report(Report::RejoinRequested, t0 + s(1));
        assert_eq!(p.next(t0 + s(2)), Action::Stop(GiveUp::Final));
    }

    fn watching(no_media_after: u64) -> Settings {
        Settings {
            no_media_after: Some(s(no_media_after)),
            ..Settings::default()
        }
    }

    #[test]
    fn no_fragment_within_no_media_after_of_a_join_rejoins_as_a_failure() {
        let t0 = Instant::now();
        let mut p = Policy::new(watching(4), t0);
        p.joined(t0, 0.0);
        // The media deadline (4 s) comes before the offer's (6 s).
        assert_eq!(p.next(t0), Action::WaitUntil(t0 + s(4)));
        p.report(Report::OfferReceived, t0 + s(1));
        assert_eq!(p.next(t0 + s(1)), Action::WaitUntil(t0 + s(4)));
        assert_eq!(p.next(t0 + s(4)), Action::Join(Reason::NoMedia));
        // Counted: five joins without media exhaust the default budget.
        let mut now = t0 + s(4);
        for _ in 0..4 {
            p.joined(now, 0.0);
            now += s(4);
            if p.next(now) == Action::Stop(GiveUp::FailureBudget) {
                return;
            }
            assert_eq!(p.next(now), Action::Join(Reason::NoMedia));
        }
        panic!("joins without media never gave up");
    }

    #[test]
    fn fragments_prove_the_session_and_their_stop_rejoins_without_failing() {
        let t0 = Instant::now();
        let mut p = Policy::new(
            Settings {
                failure_budget: 1,
                ..watching(5)
            },
            t0,
        );
        p.joined(t0, 0.0);
        // A fragment older than the join proves nothing.
        p.media(t0 - s(1));
        assert_eq!(p.next(t0), Action::WaitUntil(t0 + s(5)));
        // A fragment after the join: live, no offer needed.
        p.media(t0 + s(1));
        let mut last = s(1);
        for at in [s(3), s(5), s(6)] {
            assert_eq!(
                p.next(t0 + at),
                Action::WaitUntil(t0 + last + s(5)),
                "no no_offer join"
            );
            p.media(t0 + at);
            last = at;
        }
        assert_eq!(p.next(t0 + s(10)), Action::WaitUntil(t0 + s(11)));
        // Fragments stop: a no_media join at 11 s, and with a budget of one
        // failure the session did not give up: it had recorded.
        assert_eq!(p.next(t0 + s(11)), Action::Join(Reason::NoMedia));
        p.joined(t0 + s(11), 0.0);
        p.media(t0 + s(12));
        assert_eq!(p.next(t0 + s(12)), Action::WaitUntil(t0 + s(17)));
    }

    #[test]
    fn without_no_media_after_fragments_change_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        p.joined(t0, 0.0);
        p.media(t0 + s(1));
        assert_eq!(p.next(t0 + s(6)), Action::Join(Reason::NoOffer));
    }

    #[test]
    fn a_flood_of_reports_cannot_speed_up_a_backed_off_join() {
        let t0 = Instant::now();
        let mut p = Policy::new(Settings::default(), t0);
        let delay = p.join_failed(t0, false, 1.0).unwrap();
        for _ in 0..100 {
            p.report(Report::RejoinRequested, t0);
            p.report(Report::Disconnected, t0);
        }
        assert_eq!(p.next(t0), Action::WaitUntil(t0 + delay));
    }
}
