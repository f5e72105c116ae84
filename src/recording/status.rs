//! The recording status of one window, computed from the fragments fed to
//! it: pure, given the fragments and the time, so every rule is tested with
//! plain instants.
//!
//! What is kept is what the status needs and nothing per fragment: counts
//! and sums, the first and last fragment starts, the end of the latest
//! fragment, and the last [`GAPS_KEPT`] gaps. Fragments come in no order
//! (KVS lists them unordered, and a late one shows up in a later listing):
//! one earlier than the latest end fills a kept gap it falls into (which
//! then splits or shrinks), or, before the first fragment, opens a gap
//! between itself and the old first.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use crate::kvs::fragments::Fragment;

/// Gaps kept per window: the most recent ones.
pub(crate) const GAPS_KEPT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum State {
    /// A fragment started within `stalled_after`.
    Recording,
    /// No fragment since `since`.
    NoMedia,
    /// Fragments since `since`, none within `stalled_after`.
    Stalled,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Recording => "recording",
            State::NoMedia => "no_media",
            State::Stalled => "stalled",
        }
    }
}

/// A hole between two fragments longer than `stalled_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    pub start: SystemTime,
    pub length: Duration,
}

impl Gap {
    fn end(&self) -> SystemTime {
        self.start + self.length
    }
}

/// The status of a window as of a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub state: State,
    pub since: SystemTime,
    pub first_fragment: Option<SystemTime>,
    pub last_fragment: Option<SystemTime>,
    pub fragment_count: u64,
    pub recorded: Duration,
    pub recorded_bytes: u64,
    /// Oldest first.
    pub gaps: Vec<Gap>,
}

/// The fragments of one window (`since`, `stalled_after`), summed.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    since: SystemTime,
    stalled_after: Duration,
    count: u64,
    bytes: u64,
    recorded: Duration,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    /// The latest fragment end.
    end: Option<SystemTime>,
    /// Oldest first.
    gaps: VecDeque<Gap>,
}

impl Window {
    pub(crate) fn new(since: SystemTime, stalled_after: Duration) -> Self {
        Self {
            since,
            stalled_after,
            count: 0,
            bytes: 0,
            recorded: Duration::ZERO,
            first: None,
            last: None,
            end: None,
            gaps: VecDeque::new(),
        }
    }

    pub(crate) fn since(&self) -> SystemTime {
        self.since
    }

    /// Counts a fragment not seen before (the caller dedupes); fragments
    /// that start before `since` are not the window's. Returns the gap it
    /// opened, if any.
    pub(crate) fn add(&mut self, f: &Fragment) -> Option<Gap> {
        let start = f.server_timestamp;
        if start < self.since {
            return None;
        }
        let end = start + f.length;
        self.count += 1;
        self.bytes = self.bytes.saturating_add(f.size);
        self.recorded = self.recorded.saturating_add(f.length);
        let (Some(first), Some(latest_end)) = (self.first, self.end) else {
            self.first = Some(start);
            self.last = Some(start);
            self.end = Some(end);
            return None;
        };
        self.last = self.last.max(Some(start));
        self.end = Some(latest_end.max(end));
        if start >= latest_end {
            // The usual case: the next fragment, maybe after a hole.
            return self.gap(latest_end, start, true);
        }
        if start < first {
            self.first = Some(start);
            // A hole between this earlier fragment and the old first.
            return if end < first {
                self.gap(end, first, false)
            } else {
                None
            };
        }
        // A late fragment inside what was seen: it fills part of a gap.
        self.fill(start, end);
        None
    }

    /// The status as of `now` (the time of the listing that fed it).
    pub(crate) fn status(&self, now: SystemTime) -> Status {
        let state = match self.last {
            None => State::NoMedia,
            Some(last) if now.duration_since(last).unwrap_or_default() <= self.stalled_after => {
                State::Recording
            }
            Some(_) => State::Stalled,
        };
        Status {
            state,
            since: self.since,
            first_fragment: self.first,
            last_fragment: self.last,
            fragment_count: self.count,
            recorded: self.recorded,
            recorded_bytes: self.bytes,
            gaps: self.gaps.iter().copied().collect(),
        }
    }

    /// Records the hole from `from` to `to` if it is long enough; `latest`
    /// when it is the newest (else it goes in order, and is dropped if
    /// older than every kept one when the list is full).
    fn gap(&mut self, from: SystemTime, to: SystemTime, latest: bool) -> Option<Gap> {
        let length = to.duration_since(from).unwrap_or_default();
        if length <= self.stalled_after {
            return None;
        }
        let gap = Gap {
            start: from,
            length,
        };
        if latest {
            self.gaps.push_back(gap);
        } else {
            let at = self.gaps.partition_point(|g| g.start < from);
            if at == 0 && self.gaps.len() >= GAPS_KEPT {
                return Some(gap);
            }
            self.gaps.insert(at, gap);
        }
        while self.gaps.len() > GAPS_KEPT {
            self.gaps.pop_front();
        }
        Some(gap)
    }

    /// A late fragment `[start, end)` falls into a kept gap: what is left
    /// on either side stays a gap if still long enough.
    fn fill(&mut self, start: SystemTime, end: SystemTime) {
        let Some(i) = self
            .gaps
            .iter()
            .position(|g| start < g.end() && end > g.start)
        else {
            return;
        };
        let Some(gap) = self.gaps.remove(i) else {
            return;
        };
        let long_enough = |from: SystemTime, to: SystemTime| {
            let length = to.duration_since(from).unwrap_or_default();
            (length > self.stalled_after).then_some(Gap {
                start: from,
                length,
            })
        };
        let left = long_enough(gap.start, start);
        let right = long_enough(end, gap.end());
        for (offset, piece) in [left, right].into_iter().flatten().enumerate() {
            self.gaps.insert(i + offset, piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Wall time driven by tokio's (paused) clock.
    struct Clock {
        t0: Instant,
        wall0: SystemTime,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                wall0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            }
        }

        fn now(&self) -> SystemTime {
            self.wall0 + self.t0.elapsed()
        }

        fn at(&self, secs: f64) -> SystemTime {
            self.wall0 + Duration::from_secs_f64(secs)
        }
    }

    fn fragment(clock: &Clock, start: f64, length: f64) -> Fragment {
        Fragment {
            number: format!("{}", (start * 1000.0) as u64),
            server_timestamp: clock.at(start),
            length: Duration::from_secs_f64(length),
            size: 1000,
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn no_media_then_recording_then_stalled_as_time_passes() {
        let clock = Clock::new();
        let mut w = Window::new(clock.at(0.0), s(5));
        assert_eq!(w.status(clock.now()).state, State::NoMedia);
        tokio::time::sleep(s(3)).await;
        // A fragment from before the window does not count.
        w.add(&Fragment {
            server_timestamp: clock.wall0 - s(1),
            ..fragment(&clock, 0.0, 2.0)
        });
        assert_eq!(w.status(clock.now()).state, State::NoMedia);
        w.add(&fragment(&clock, 1.0, 2.0));
        let status = w.status(clock.now());
        assert_eq!(status.state, State::Recording);
        assert_eq!(status.fragment_count, 1);
        assert_eq!(status.first_fragment, Some(clock.at(1.0)));
        // A fragment started within stalled_after (5 s) until 6 s in.
        tokio::time::sleep(s(3)).await;
        assert_eq!(w.status(clock.now()).state, State::Recording);
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        let status = w.status(clock.now());
        assert_eq!(status.state, State::Stalled);
        assert_eq!(status.last_fragment, Some(clock.at(1.0)));
        assert_eq!(status.since, clock.at(0.0));
    }

    #[test]
    fn sums_and_gaps_longer_than_stalled_after() {
        let clock = Clock::new();
        let mut w = Window::new(clock.at(0.0), s(3));
        for start in [0.0, 2.0, 4.0] {
            assert_eq!(w.add(&fragment(&clock, start, 2.0)), None);
        }
        // 6 s to 9 s: a hole of 3 s is not longer than stalled_after.
        assert_eq!(w.add(&fragment(&clock, 9.0, 2.0)), None);
        // 11 s to 20 s: a gap.
        let gap = w.add(&fragment(&clock, 20.0, 2.0)).unwrap();
        assert_eq!((gap.start, gap.length), (clock.at(11.0), s(9)));
        let status = w.status(clock.at(22.0));
        assert_eq!(status.fragment_count, 5);
        assert_eq!(status.recorded, s(10));
        assert_eq!(status.recorded_bytes, 5000);
        assert_eq!(status.gaps, [gap]);
        assert_eq!(status.first_fragment, Some(clock.at(0.0)));
        assert_eq!(status.last_fragment, Some(clock.at(20.0)));
    }

    #[test]
    fn late_fragments_split_gaps_and_unordered_input_gives_the_same_answer() {
        let clock = Clock::new();
        let starts = [0.0, 2.0, 10.0, 12.0, 30.0, 4.0, 20.0];
        let mut unordered = Window::new(clock.at(0.0), s(4));
        for start in starts {
            unordered.add(&fragment(&clock, start, 2.0));
        }
        let mut sorted_starts = starts;
        sorted_starts.sort_by(f64::total_cmp);
        let mut ordered = Window::new(clock.at(0.0), s(4));
        for start in sorted_starts {
            ordered.add(&fragment(&clock, start, 2.0));
        }
        let (a, b) = (
            unordered.status(clock.at(33.0)),
            ordered.status(clock.at(33.0)),
        );
        assert_eq!(a, b);
        // Holes: 6..10 (4 s, not longer), 14..20 (6 s), 22..30 (8 s).
        let gaps: Vec<_> = a.gaps.iter().map(|g| (g.start, g.length)).collect();
        assert_eq!(
            gaps,
            [(clock.at(14.0), s(6)), (clock.at(22.0), s(8))],
            "the late 4 s fragment shrank 4..10 below the threshold; 20 s split 14..30"
        );
        // A fragment earlier than every other opens a gap before the old
        // first, and moves the first.
        let mut w = Window::new(clock.at(0.0), s(4));
        w.add(&fragment(&clock, 20.0, 2.0));
        w.add(&fragment(&clock, 1.0, 2.0));
        let status = w.status(clock.at(22.0));
        assert_eq!(status.first_fragment, Some(clock.at(1.0)));
        assert_eq!(status.gaps.len(), 1);
        assert_eq!(status.gaps[0].start, clock.at(3.0));
    }

    #[test]
    fn keeps_only_the_last_few_gaps() {
        let clock = Clock::new();
        let mut w = Window::new(clock.at(0.0), s(1));
        for i in 0..1000 {
            w.add(&fragment(&clock, f64::from(i) * 10.0, 2.0));
        }
        let status = w.status(clock.at(10_000.0));
        assert_eq!(status.fragment_count, 1000);
        assert_eq!(status.gaps.len(), GAPS_KEPT);
        assert_eq!(status.gaps.last().unwrap().start, clock.at(9982.0));
        assert!(status.gaps.windows(2).all(|g| g[0].start < g[1].start));
    }
}
