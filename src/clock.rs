//! Wall-clock time, injectable so that signing and credential expiry can be
//! tested at fixed instants. Durations and deadlines use tokio's clock
//! instead, which tests control with `tokio::time::pause`.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock stopped at one instant.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// A clock corrected by the offset a server reported. When KVS rejects a
/// request as too skewed, the offset to its `Date` header is learned once and
/// used for every later signature, as the KVS WebRTC C SDK does.
#[derive(Debug)]
pub struct SkewCorrectedClock {
    inner: SharedClock,
    offset_ms: AtomicI64,
}

impl SkewCorrectedClock {
    pub fn new(inner: SharedClock) -> Self {
        Self {
            inner,
            offset_ms: AtomicI64::new(0),
        }
    }

    /// Learns the offset from a server's notion of now; returns it in
    /// (signed) seconds.
    pub fn correct(&self, server_now: SystemTime) -> f64 {
        let local = self.inner.now();
        let offset_ms = match server_now.duration_since(local) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        };
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        offset_ms as f64 / 1e3
    }

    /// This host's time, without the correction: what callers' clocks say.
    pub fn uncorrected(&self) -> SystemTime {
        self.inner.now()
    }
}

impl Clock for SkewCorrectedClock {
    fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let local = self.inner.now();
        if offset >= 0 {
            local + Duration::from_millis(offset as u64)
        } else {
            local - Duration::from_millis(offset.unsigned_abs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn learns_and_applies_the_servers_offset_both_ways() {
        let local = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = SkewCorrectedClock::new(Arc::new(FixedClock(local)));
        assert_eq!(clock.now(), local);
        assert_eq!(clock.correct(local + Duration::from_secs(3600)), 3600.0);
        assert_eq!(clock.now(), local + Duration::from_secs(3600));
        assert_eq!(clock.correct(local - Duration::from_millis(1500)), -1.5);
        assert_eq!(clock.now(), local - Duration::from_millis(1500));
    }
}
