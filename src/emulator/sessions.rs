//! The storage sessions the emulator holds, so that a caller's re-joins can
//! be checked against what KVS would do.
//!
//! Each successful join starts a storage session for its channel's master
//! (JoinStorageSession) or for its viewer (JoinStorageSessionAsViewer and
//! its client id). A later join of the same one replaces it: the latest
//! join wins, as in KVS. A session that is not replaced within its lifetime
//! ends (KVS ends them after at most one hour). KVS sends nothing on the
//! signaling WebSocket when a session ends (the media connection is what
//! closes), so neither does the emulator: an expiry is counted in the
//! peer's record ([`Emulator::storage_session`]) and logged at info.
//!
//! The same records carry the offers: sent on the peer's signaling socket,
//! dropped because a test or `--emulate-drop-offers` asked for it (the join
//! still answers 200, the failure the supervisor's no-offer re-join is
//! for), or missed because no socket of the peer was open to take it.
//!
//! Records are bounded ([`MAX_RECORDS`]): past it, the one idle longest
//! goes, preferring one without a live session. Every operation is
//! logarithmic in the records, so a test joining tens of thousands of
//! channels does not slow the emulator down.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::{Emulator, signaling::Peer};

/// KVS's longest storage session, and the emulator's default lifetime.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// Masters and viewers with a record, together: a bound on the emulator's
/// memory whatever channels and client ids its callers use (four times the
/// signaling connections it admits, so every connected peer keeps its
/// record while others come and go).
pub(super) const MAX_RECORDS: usize = 4096;

/// What the emulator knows of one master's or viewer's storage sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSession {
    pub channel_arn: String,
    /// The viewer's client id; `None` for the channel's master.
    pub client_id: Option<String>,
    /// Sessions started: one per successful join.
    pub started: u64,
    /// Sessions ended by a later join before their lifetime passed.
    pub replaced: u64,
    /// Sessions ended because their lifetime passed without a re-join.
    pub expired: u64,
    /// Offers written to the peer's open signaling connection.
    pub offers_sent: u64,
    /// Offers dropped on purpose ([`Emulator::drop_offers`],
    /// `--emulate-drop-offers`): the join answered 200, no offer followed.
    pub offers_dropped: u64,
    /// Offers with no open signaling connection (or a full one) to go to.
    pub offers_missed: u64,
    /// When the live session started (the emulator's clock), if one is.
    pub current_since: Option<SystemTime>,
}

/// Whether a join's offer goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    Send,
    Drop,
}

/// A record's place in an index: when (a session's end, or when it was
/// last touched), and a sequence number that makes it unique.
type Slot = (Instant, u64);

#[derive(Debug)]
struct Record {
    counts: StorageSession,
    /// The live session's lifetime; `None` when none is live.
    live: Option<Duration>,
    /// Its key in `Sessions::ends` when live, else in `Sessions::idle`.
    slot: Slot,
    /// Offers still to drop.
    to_drop: u32,
}

/// The records, and two indexes over them so that every operation is a
/// logarithmic one whatever the number of records: live sessions by when
/// they end, the others by when they were last touched.
#[derive(Debug)]
pub(super) struct Sessions {
    records: HashMap<Peer, Record>,
    ends: BTreeMap<Slot, Peer>,
    idle: BTreeMap<Slot, Peer>,
    next_slot: u64,
    lifetime: Duration,
    /// Offers to drop for each peer first seen from now on.
    drop_first: u32,
    cap: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_RECORDS)
    }
}

// === impl Sessions ===

impl Sessions {
    fn new(cap: usize) -> Self {
        Self {
            records: HashMap::new(),
            ends: BTreeMap::new(),
            idle: BTreeMap::new(),
            next_slot: 0,
            lifetime: MAX_SESSION_LIFETIME,
            drop_first: 0,
            cap,
        }
    }

    /// A join of `peer` succeeded at `now` (`wall` on the emulator's clock):
    /// starts its session, replacing the live one, and says whether its
    /// offer goes out, and whether its session is now the first to end
    /// (so the reaper must wake for it).
    pub(super) fn join(&mut self, peer: &Peer, now: Instant, wall: SystemTime) -> (Offer, bool) {
        let lifetime = self.lifetime;
        self.ensure(peer, now);
        let slot = self.slot(now + lifetime);
        let Some(record) = self.records.get_mut(peer) else {
            return (Offer::Send, false);
        };
        let was = std::mem::replace(&mut record.slot, slot);
        if record.live.replace(lifetime).is_some() {
            record.counts.replaced += 1;
            self.ends.remove(&was);
        } else {
            self.idle.remove(&was);
        }
        self.ends.insert(slot, peer.clone());
        record.counts.started += 1;
        record.counts.current_since = Some(wall);
        let offer = if record.to_drop > 0 {
            record.to_drop -= 1;
            record.counts.offers_dropped += 1;
            Offer::Drop
        } else {
            Offer::Send
        };
        let first = self.ends.first_key_value().is_some_and(|(k, _)| *k == slot);
        (offer, first)
    }

    /// Counts the outcome of an offer [`Sessions::join`] let go out.
    pub(super) fn offered(&mut self, peer: &Peer, delivered: bool) {
        if let Some(record) = self.records.get_mut(peer) {
            if delivered {
                record.counts.offers_sent += 1;
            } else {
                record.counts.offers_missed += 1;
            }
        }
    }

    /// Drops the next `n` offers of `peer`, on top of any still to drop.
    pub(super) fn drop_offers(&mut self, peer: &Peer, n: u32, now: Instant) {
        self.ensure(peer, now);
        let slot = self.slot(now);
        if let Some(record) = self.records.get_mut(peer) {
            record.to_drop = record.to_drop.saturating_add(n);
            // Touched: an idle record moves to the back of the eviction line.
            if record.live.is_none() {
                let was = std::mem::replace(&mut record.slot, slot);
                self.idle.remove(&was);
                self.idle.insert(slot, peer.clone());
            }
        }
    }

    pub(super) fn drop_first(&mut self, n: u32) {
        self.drop_first = n;
    }

    pub(super) fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    pub(super) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Ends every session whose lifetime passed by `now`; returns them
    /// with their lifetimes.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(StorageSession, Duration)> {
        let mut ended = Vec::new();
        while let Some(entry) = self.ends.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (slot, peer) = entry.remove_entry();
            let Some(record) = self.records.get_mut(&peer) else {
                continue;
            };
            let lifetime = record.live.take().unwrap_or_default();
            record.counts.expired += 1;
            record.counts.current_since = None;
            // Idle since its session ended.
            record.slot = slot;
            self.idle.insert(slot, peer);
            ended.push((record.counts.clone(), lifetime));
        }
        ended
    }

    /// When the next live session ends, if any is live.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.ends.first_key_value().map(|((at, _), _)| *at)
    }

    pub(super) fn get(&self, peer: &Peer) -> Option<StorageSession> {
        self.records.get(peer).map(|r| r.counts.clone())
    }

    pub(super) fn all(&self) -> Vec<StorageSession> {
        self.records.values().map(|r| r.counts.clone()).collect()
    }

    fn slot(&mut self, at: Instant) -> Slot {
        self.next_slot += 1;
        (at, self.next_slot)
    }

    /// Makes a record for `peer` if it has none, evicting one if full.
    fn ensure(&mut self, peer: &Peer, now: Instant) {
        if self.records.contains_key(peer) {
            return;
        }
        if self.records.len() >= self.cap {
            self.evict();
        }
        let slot = self.slot(now);
        self.idle.insert(slot, peer.clone());
        self.records.insert(
            peer.clone(),
            Record {
                counts: StorageSession {
                    channel_arn: peer.channel_arn.clone(),
                    client_id: peer.client_id.clone(),
                    started: 0,
                    replaced: 0,
                    expired: 0,
                    offers_sent: 0,
                    offers_dropped: 0,
                    offers_missed: 0,
                    current_since: None,
                },
                live: None,
                slot,
                to_drop: self.drop_first,
            },
        );
    }

    /// Removes the record idle longest; if every one has a live session,
    /// the one whose session ends first (its join is the oldest).
    fn evict(&mut self) {
        let oldest = self.idle.pop_first().or_else(|| self.ends.pop_first());
        if let Some((_, peer)) = oldest {
            self.records.remove(&peer);
        }
    }
}

// === impl Emulator ===

impl Emulator {
    /// A join of `channel_arn` (as the viewer `client_id`, if given)
    /// succeeded: starts its storage session and sends (or drops) its SDP
    /// offer on the peer's signaling connection.
    pub(super) fn start_storage_session(&self, channel_arn: &str, client_id: Option<&str>) {
        let peer = Peer::new(channel_arn, client_id);
        let wall = self.now();
        let mut state = self.lock();
        let (offer, first_to_end) = state.sessions.join(&peer, Instant::now(), wall);
        if client_id.is_none() {
            // A master's media follows its offer; none if it was dropped.
            state
                .recordings
                .joined(channel_arn, wall, offer == Offer::Send);
        }
        if offer == Offer::Send {
            let delivered = state.signaling.deliver_offer(&peer);
            state.sessions.offered(&peer, delivered);
        }
        drop(state);
        // The reaper sleeps until the earliest end it knew of; only a
        // session that ends before that one needs it awake.
        if first_to_end {
            self.sessions_changed.notify_one();
        }
    }

    /// Ends sessions as their lifetimes pass, for as long as the runtime
    /// runs (like the emulator's server).
    pub(super) async fn reap_sessions(self) {
        loop {
            let next = {
                // Read before the lock: `now` takes it too.
                let wall = self.now();
                let mut state = self.lock();
                for (session, lifetime) in state.sessions.expire(Instant::now()) {
                    if session.client_id.is_none() {
                        // The session ended, and its media with it.
                        state.recordings.stopped(&session.channel_arn, wall);
                    }
                    tracing::info!(
                        channel_arn = %session.channel_arn,
                        client_id = session.client_id.as_deref().unwrap_or(""),
                        lifetime = ?lifetime,
                        expired = session.expired,
                        "emulated storage session expired: no join within its lifetime"
                    );
                }
                state.sessions.next_expiry()
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.sessions_changed.notified() => {}
                    }
                }
                None => self.sessions_changed.notified().await,
            }
        }
    }

    /// How long a storage session lasts after its join unless joined again
    /// (1 hour unless set). Applies to sessions started from now on.
    pub fn set_session_lifetime(&self, lifetime: Duration) {
        self.lock().sessions.set_lifetime(lifetime);
    }

    pub fn session_lifetime(&self) -> Duration {
        self.lock().sessions.lifetime()
    }

    /// Drops the next `n` SDP offers of the channel's master (`client_id`
    /// `None`) or of that viewer: their joins answer 200, but nothing
    /// arrives on the signaling WebSocket. Counted in
    /// [`StorageSession::offers_dropped`].
    pub fn drop_offers(&self, channel_arn: &str, client_id: Option<&str>, n: u32) {
        self.lock()
            .sessions
            .drop_offers(&Peer::new(channel_arn, client_id), n, Instant::now());
    }

    /// Drops the first `n` SDP offers of every master and viewer the
    /// emulator has no record of yet (`--emulate-drop-offers`); one whose
    /// record was evicted ([`MAX_RECORDS`]) counts as new again.
    pub fn drop_first_offers(&self, n: u32) {
        self.lock().sessions.drop_first(n);
    }

    /// The storage sessions of the channel's master (`client_id` `None`) or
    /// of that viewer, if the emulator has a record of them.
    pub fn storage_session(
        &self,
        channel_arn: &str,
        client_id: Option<&str>,
    ) -> Option<StorageSession> {
        self.lock().sessions.get(&Peer::new(channel_arn, client_id))
    }

    /// Every record of storage sessions the emulator keeps (up to 4096).
    pub fn storage_sessions(&self) -> Vec<StorageSession> {
        self.lock().sessions.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::EmulatorCredentials;

    const ARN: &str = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/porch/1";

    fn peer(channel: &str, client_id: Option<&str>) -> Peer {
        Peer::new(channel, client_id)
    }

    #[test]
    fn records_are_bounded_and_the_longest_idle_without_a_session_goes_first() {
        let mut sessions = Sessions::new(3);
        sessions.set_lifetime(Duration::from_secs(10));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first session to end wakes the reaper; later ones need not.
        assert!(sessions.join(&peer("a", None), at(0), wall).1);
        assert!(!sessions.join(&peer("a", Some("v-1")), at(1), wall).1);
        assert!(!sessions.join(&peer("b", None), at(2), wall).1);
        assert_eq!(sessions.next_expiry(), Some(at(10)));
        // The master of `a` expires; the others are still live.
        assert_eq!(sessions.expire(at(10)).len(), 1);
        sessions.join(&peer("c", None), at(10), wall);
        assert_eq!(sessions.records.len(), 3, "bounded");
        assert!(
            sessions.get(&peer("a", None)).is_none(),
            "the one without a live session went"
        );
        // All live now: the longest idle goes.
        sessions.drop_offers(&peer("d", None), 1, at(10));
        assert_eq!(sessions.records.len(), 3);
        assert!(sessions.get(&peer("a", Some("v-1"))).is_none());
        assert!(sessions.get(&peer("b", None)).is_some());
        // Thousands of channels later, still bounded.
        for i in 0..10_000 {
            sessions.join(&peer(&format!("ch-{i}"), None), at(11), wall);
        }
        assert_eq!(sessions.records.len(), 3);
        assert_eq!(
            sessions.ends.len() + sessions.idle.len(),
            3,
            "the indexes hold the records and nothing else"
        );
        assert_eq!(Sessions::default().cap, MAX_RECORDS);
    }

    #[test]
    fn dropped_offers_count_down_per_peer_and_the_first_n_of_each_new_one() {
        let mut sessions = Sessions::new(16);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let master = peer(ARN, None);
        sessions.drop_offers(&master, 2, now);
        assert_eq!(sessions.join(&master, now, wall).0, Offer::Drop);
        assert_eq!(sessions.join(&master, now, wall).0, Offer::Drop);
        assert_eq!(sessions.join(&master, now, wall).0, Offer::Send);
        sessions.offered(&master, false);
        let record = sessions.get(&master).unwrap();
        assert_eq!((record.offers_dropped, record.offers_missed), (2, 1));
        assert_eq!((record.started, record.replaced), (3, 2));

        sessions.drop_first(1);
        let viewer = peer(ARN, Some("v-1"));
        assert_eq!(sessions.join(&viewer, now, wall).0, Offer::Drop);
        assert_eq!(sessions.join(&viewer, now, wall).0, Offer::Send);
        assert_eq!(
            sessions.join(&master, now, wall).0,
            Offer::Send,
            "a peer already seen keeps its own count"
        );
    }

    /// The lifetime runs from the latest join, on tokio's (paused) clock.
    #[tokio::test(start_paused = true)]
    async fn a_session_expires_when_its_lifetime_passes_without_a_join() {
        let kvs = Emulator::start(EmulatorCredentials::generate())
            .await
            .unwrap();
        kvs.set_session_lifetime(Duration::from_secs(60));
        assert_eq!(kvs.session_lifetime(), Duration::from_secs(60));
        kvs.start_storage_session(ARN, None);
        let since = kvs.storage_session(ARN, None).unwrap().current_since;
        assert!(since.is_some());
        tokio::time::sleep(Duration::from_secs(59)).await;
        // Joined again before the end: replaced, not expired.
        kvs.start_storage_session(ARN, None);
        tokio::time::sleep(Duration::from_secs(59)).await;
        let record = kvs.storage_session(ARN, None).unwrap();
        assert_eq!((record.started, record.replaced, record.expired), (2, 1, 0));
        assert_ne!(record.current_since, None);
        // No socket open: its offers went nowhere.
        assert_eq!((record.offers_sent, record.offers_missed), (0, 2));

        tokio::time::sleep(Duration::from_secs(2)).await;
        let record = kvs.storage_session(ARN, None).unwrap();
        assert_eq!((record.started, record.replaced, record.expired), (2, 1, 1));
        assert_eq!(record.current_since, None);
        // A viewer's session is its own.
        kvs.start_storage_session(ARN, Some("v-1"));
        assert_eq!(kvs.storage_sessions().len(), 2);
        tokio::time::sleep(Duration::from_secs(61)).await;
        let viewer = kvs.storage_session(ARN, Some("v-1")).unwrap();
        assert_eq!((viewer.started, viewer.expired), (1, 1));
    }
}
