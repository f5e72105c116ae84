//! The last successful master join of each channel, the default start of a
//! recording status's window.
//!
//! Recorded on every join, so it must cost the join path next to nothing
//! and stay bounded whatever channels callers join: a fixed table of
//! [`SLOTS`] slots, each an atomic (tag, time) pair, indexed by a hash of
//! the channel ARN. Recording is one hash and three atomic stores, no lock,
//! no allocation. Two channels whose hashes share a slot overwrite each
//! other; the 64-bit tag tells a lookup the slot holds another channel, and
//! the caller falls back to its default (an hour ago). So the table never
//! answers another channel's join, only sometimes none.

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Slots in the table (a power of two): 512 KiB.
pub(crate) const SLOTS: usize = 1 << 15;

#[derive(Default)]
struct Slot {
    tag: AtomicU64,
    /// Milliseconds since the epoch; 0 while being written.
    at_ms: AtomicU64,
}

pub(crate) struct LastJoins {
    slots: Box<[Slot]>,
    hasher: RandomState,
}

impl LastJoins {
    pub(crate) fn new(slots: usize) -> Self {
        let slots = slots.next_power_of_two().max(1);
        Self {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn record(&self, channel: &str, at: SystemTime) {
        let (tag, slot) = self.slot(channel);
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .max(1) as u64;
        // A reader between these stores sees a time of 0 or two different
        // times, and takes the slot as empty.
        slot.at_ms.store(0, Ordering::Release);
        slot.tag.store(tag, Ordering::Release);
        slot.at_ms.store(ms, Ordering::Release);
    }

    pub(crate) fn get(&self, channel: &str) -> Option<SystemTime> {
        let (tag, slot) = self.slot(channel);
        let before = slot.at_ms.load(Ordering::Acquire);
        let found = slot.tag.load(Ordering::Acquire);
        let after = slot.at_ms.load(Ordering::Acquire);
        (before != 0 && before == after && found == tag)
            .then(|| UNIX_EPOCH + Duration::from_millis(before))
    }

    fn slot(&self, channel: &str) -> (u64, &Slot) {
        let hash = self.hasher.hash_one(channel);
        // Tag 0 is an empty slot's.
        let tag = hash | 1;
        let index = (hash >> 1) as usize & (self.slots.len() - 1);
        (tag, &self.slots[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_join_of_each_channel_in_a_fixed_table() {
        let joins = LastJoins::new(64);
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
        assert_eq!(joins.get("a"), None);
        joins.record("a", t(1));
        joins.record("b", t(2));
        joins.record("a", t(3));
        assert_eq!(joins.get("a"), Some(t(3)));
        assert_eq!(joins.get("b"), Some(t(2)));
        // Thousands of channels: the table does not grow, and a lookup
        // answers a channel's own join or none, never another's.
        for i in 0..10_000 {
            joins.record(&format!("c-{i}"), t(100 + i));
        }
        assert_eq!(joins.slots.len(), 64);
        for i in 0..10_000 {
            if let Some(at) = joins.get(&format!("c-{i}")) {
                assert_eq!(at, t(100 + i));
            }
        }
        let kept = (9_900..10_000)
            .filter(|i| joins.get(&format!("c-{i}")).is_some())
            .count();
        assert!(kept > 10, "the latest joins are mostly kept: {kept}");
    }
}
