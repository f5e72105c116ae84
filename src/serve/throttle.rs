//! At most one log line per period for an event an attacker can repeat at
//! will (a full connection table, a failing accept), so the log cannot be
//! turned into the attack's amplifier; the lines in between are counted.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Throttle {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

// === impl Throttle ===

impl Throttle {
    pub(super) fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being the events since
    /// the last line that were not logged; `None` to stay quiet.
    pub(super) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < self.period => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_counting_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.admit(), Some(5));
        assert_eq!(throttle.admit(), None);
    }
}
