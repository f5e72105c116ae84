//! One stream's poller: lists the stream's fragments for every window
//! subscribed to it, once a poll interval, and publishes each window's
//! status after each listing.
//!
//! Listings are incremental: each starts [`Settings::overlap`] before the
//! end of the previous one (KVS lists a fragment only after it ends, and
//! late), not at the oldest `since`. A fragment is fed to the windows once:
//! the numbers of the fragments in the overlap are remembered (and only
//! those), and a fragment listed again is skipped. A window subscribed
//! while the poller runs is filled by the next listing, which then reaches
//! back to its `since` (a new window is listed from its start, and sees each
//! of its fragments once since the pages of one listing partition it; the
//! windows already fed take from that listing only the fragments they have
//! not seen). A new window makes the next listing come early, no sooner
//! than [`MIN_SPACING`] after the last.
//!
//! Every request goes through the stack, so the stream's pace (5 a second,
//! `kvs/stack/pace.rs`) holds whatever the number of pollers' pages and
//! retries and of other callers; throttling and server errors are retried
//! within the listing's deadline. A listing that still fails is published
//! to every window as its error (watchers end with it); the next listing
//! comes a poll interval later.
//!
//! A window whose last subscriber left lingers for [`Settings::linger`],
//! still fed, so that a caller asking for the same window again (a status
//! polled every few seconds) is answered from the listings already made,
//! incrementally, instead of starting over from its `since`. The poller
//! stops when every window has been left that long, or at once when the
//! registry needs its place for another stream ([`Poller::retire`]).
//!
//! [`Settings::linger`]: super::Settings::linger
//!
//! [`Settings::overlap`]: super::Settings::overlap
//! [`Settings::linger`]: super::Settings::linger

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use super::{
    MAX_WINDOWS_PER_STREAM, Recording, Refusal,
    status::{State, Status, Window},
};
use crate::{
    instruments,
    kvs::{
        Call, Error,
        arn::ChannelArn,
        fragments::{Fragment, Listing, MAX_PAGE},
    },
};

/// Least time between two listings, however many windows arrive.
pub(crate) const MIN_SPACING: Duration = Duration::from_millis(200);
/// Pages one listing reads at most (a million fragments).
const MAX_PAGES: usize = 1000;
/// Fragment numbers remembered for the overlap, at most.
const RECENT_KEPT: usize = 8192;

/// What a window's subscribers see after each listing.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    /// When the listing started.
    pub listed_at: Instant,
    pub result: Result<Status, Error>,
}

type Key = (SystemTime, Duration);

struct Entry {
    window: Window,
    /// Fed by a listing already: later listings give it new fragments only.
    live: bool,
    /// New, and covered by the listing in progress (one subscribed during
    /// a listing waits for the next, which reaches back to its `since`).
    listing: bool,
    subscribers: usize,
    /// Since when the window has had no subscriber.
    left: Option<Instant>,
    updates: watch::Sender<Option<Update>>,
    state: Option<State>,
}

#[derive(Default)]
struct Shared {
    windows: HashMap<Key, Entry>,
    /// Set by the task when it stops: a subscription then needs a new
    /// poller.
    stopped: bool,
}

pub(crate) struct Poller {
    stream: ChannelArn,
    shared: Mutex<Shared>,
    wake: Notify,
}

/// A caller's hold on a window's status; dropping it ends the hold.
pub(crate) struct Subscription {
    poller: Arc<Poller>,
    key: Key,
    updates: watch::Receiver<Option<Update>>,
}

impl Subscription {
    /// The latest status (or error) published, if any listing fed it yet.
    pub(crate) fn latest(&mut self) -> Option<Update> {
        self.updates.borrow_and_update().clone()
    }

    /// Waits for the next listing's update; false if the poller is gone.
    pub(crate) async fn changed(&mut self) -> bool {
        self.updates.changed().await.is_ok()
    }

    pub(crate) fn stream_arn(&self) -> &str {
        self.poller.stream.as_str()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.poller.unsubscribe(self.key);
    }
}

impl Poller {
    pub(super) fn start(recording: Arc<Recording>, stream: ChannelArn) -> Arc<Self> {
        let poller = Arc::new(Self {
            stream,
            shared: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(poller.clone().run(recording));
        poller
    }

    pub(super) fn stream(&self) -> &ChannelArn {
        &self.stream
    }

    /// Holds the window (`since`, `stalled_after`), making it if new;
    /// `None` if this poller stopped.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        since: SystemTime,
        stalled_after: Duration,
    ) -> Result<Option<Subscription>, Refusal> {
        let key = (since, stalled_after);
        let mut shared = self.lock();
        if shared.stopped {
            return Ok(None);
        }
        if !shared.windows.contains_key(&key) && shared.windows.len() >= MAX_WINDOWS_PER_STREAM {
            // A window nobody holds any more makes room; held ones never.
            let left = shared
                .windows
                .iter()
                .filter_map(|(k, e)| e.left.map(|left| (left, *k)))
                .min();
            match left {
                Some((_, k)) => {
                    shared.windows.remove(&k);
                }
                None => return Err(Refusal::TooManyWindows),
            }
        }
        let entry = shared.windows.entry(key).or_insert_with(|| {
            self.wake.notify_one();
            Entry {
                window: Window::new(since, stalled_after),
                live: false,
                listing: false,
                subscribers: 0,
                left: None,
                updates: watch::Sender::new(None),
                state: None,
            }
        });
        entry.subscribers += 1;
        entry.left = None;
        let updates = entry.updates.subscribe();
        drop(shared);
        Ok(Some(Subscription {
            poller: self.clone(),
            key,
            updates,
        }))
    }

    fn unsubscribe(&self, key: Key) {
        let mut shared = self.lock();
        let Some(entry) = shared.windows.get_mut(&key) else {
            return;
        };
        entry.subscribers -= 1;
        if entry.subscribers == 0 {
            // Kept a little, for a caller who asks again.
            entry.left = Some(Instant::now());
        }
    }

    /// Stops this poller now if no window has a subscriber (only lingering
    /// ones); true if it stopped.
    pub(super) fn retire(&self) -> bool {
        let mut shared = self.lock();
        if shared.stopped || shared.windows.values().any(|e| e.subscribers > 0) {
            return shared.stopped;
        }
        shared.stopped = true;
        shared.windows.clear();
        self.wake.notify_one();
        true
    }

    async fn run(self: Arc<Self>, recording: Arc<Recording>) {
        let settings = recording.settings;
        let mut listed_to: Option<SystemTime> = None;
        let mut recent: HashMap<String, SystemTime> = HashMap::new();
        let mut last: Option<Instant> = None;
        loop {
            // Stop, or wait for the next listing (sooner for a new window).
            let waiting = {
                let mut shared = self.lock();
                let now = Instant::now();
                shared
                    .windows
                    .retain(|_, e| e.left.is_none_or(|left| now < left + settings.linger));
                if shared.stopped || shared.windows.is_empty() {
                    shared.stopped = true;
                    break;
                }
                shared.windows.values().any(|e| !e.live)
            };
            let due = match last {
                None => Instant::now(),
                Some(at) if waiting => at + MIN_SPACING,
                Some(at) => at + settings.poll_interval,
            };
            if Instant::now() < due {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }

            let started = Instant::now();
            last = Some(started);
            // The windows this listing covers, fixed now: one subscribed
            // from here on waits for the next listing.
            let (new_since, live_since) = {
                let mut shared = self.lock();
                let (mut new, mut live) = (None::<SystemTime>, None::<SystemTime>);
                for entry in shared.windows.values_mut() {
                    entry.listing = !entry.live;
                    let since = Some(entry.window.since());
                    if entry.live {
                        live = live.min(since).or(since);
                    } else {
                        new = new.min(since).or(since);
                    }
                }
                (new, live)
            };
            let to = recording.now();
            // Live windows need only what the last listing may have missed.
            let live_from = live_since.map(|since| match listed_to {
                Some(end) => since.max(end.checked_sub(settings.overlap).unwrap_or(end)),
                None => since,
            });
            let Some(from) = [new_since, live_from].into_iter().flatten().min() else {
                continue;
            };
            let call = Call::new(started + settings.listing_timeout);
            let listed = list(&recording, &call, &self.stream, from.min(to), to).await;
            let mut shared = self.lock();
            match listed {
                Ok(mut fragments) => {
                    fragments.sort_by_key(|f| f.server_timestamp);
                    for f in &fragments {
                        let seen = recent.contains_key(&f.number)
                            || live_from.is_none_or(|from| f.server_timestamp < from);
                        for entry in shared.windows.values_mut() {
                            let feed = if entry.live { !seen } else { entry.listing };
                            if feed && let Some(gap) = entry.window.add(f) {
                                instruments::recording_gap(gap.length);
                            }
                        }
                        recent.insert(f.number.clone(), f.server_timestamp);
                    }
                    forget_before(&mut recent, to.checked_sub(settings.overlap).unwrap_or(to));
                    listed_to = Some(to);
                    for entry in shared.windows.values_mut() {
                        if entry.listing {
                            entry.live = true;
                            entry.listing = false;
                        }
                        if !entry.live {
                            continue;
                        }
                        let status = entry.window.status(to);
                        if entry.state != Some(status.state) {
                            instruments::recording_state_change(status.state.as_str());
                            entry.state = Some(status.state);
                        }
                        entry.updates.send_replace(Some(Update {
                            listed_at: started,
                            result: Ok(status),
                        }));
                    }
                }
                Err(error) => {
                    tracing::debug!(stream = %self.stream, %error, "listing the stream's fragments failed");
                    for entry in shared.windows.values_mut() {
                        // Nothing was fed: a new window waits for the next.
                        entry.listing = false;
                        entry.updates.send_replace(Some(Update {
                            listed_at: started,
                            result: Err(error.clone()),
                        }));
                    }
                }
            }
        }
        recording.forget(&self);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Every change is made whole under the lock; poison cannot tear it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every fragment of `stream` from `from` to `to`, page after page.
async fn list(
    recording: &Recording,
    call: &Call,
    stream: &ChannelArn,
    from: SystemTime,
    to: SystemTime,
) -> Result<Vec<Fragment>, Error> {
    let mut listing = Listing::Range { from, to };
    let mut fragments = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = recording
            .data
            .list_fragments(call, stream, &listing, MAX_PAGE)
            .await?;
        fragments.extend(page.fragments);
        match page.next_token {
            Some(token) => listing = Listing::After(token),
            None => break,
        }
    }
    Ok(fragments)
}

/// Forgets the numbers of fragments that start before `before`: no later
/// listing reaches back to them. Past [`RECENT_KEPT`], the oldest go.
fn forget_before(recent: &mut HashMap<String, SystemTime>, before: SystemTime) {
    recent.retain(|_, start| *start >= before);
    if recent.len() > RECENT_KEPT {
        let mut starts: Vec<_> = recent.values().copied().collect();
        let cut = starts.len() - RECENT_KEPT;
        let (_, threshold, _) = starts.select_nth_unstable(cut);
        let threshold = *threshold;
        recent.retain(|_, start| *start >= threshold);
    }
}
