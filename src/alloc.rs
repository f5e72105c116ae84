//! The allocator: mimalloc (set as the global allocator in `main.rs`), tuned
//! for a long-running sidecar with a memory limit.
//!
//! Memory freed after a spike must go back to the system: the pod's memory
//! limit is sized for steady traffic, and a sidecar whose RSS stays at every
//! high-water mark (as it did with purging turned off) can be walked up to
//! its limit by a few bursts (issue 13). Two things are needed for that:
//!
//! - a finite purge delay. [`PURGE_DELAY_MS`] keeps freed pages for reuse
//!   through a burst, so steady traffic does not purge and fault the same
//!   pages again, while returning them soon after;
//! - something that carries the purges out. mimalloc purges only when a
//!   thread calls into it, and a page freed on a thread goes back to the
//!   shared arena only when that same thread collects its heap: a worker
//!   that went quiet after a spike would keep its pages. So each runtime
//!   worker collects its heap when it parks (goes idle), at most once a
//!   second ([`collect_on_park`]: a clock read per park, otherwise free
//!   under load, when workers rarely park), and a task returns what the
//!   arenas hold free once a second ([`collect_periodically`]).
//!
//! Measured with the release build (docs/security.md): after 40 unfinished
//! 1 MiB requests, RSS went 15 → 63 → 25 MiB within a second of their end
//! (63 MiB for good without purging). At 1,000 calls/s the join p99 was
//! 0.80 and 1.26 ms in two runs, against 19.7 and 1.68 ms without purging
//! (`MIMALLOC_PURGE_DELAY=-1`) on the same busy machine: no cost within its
//! noise. The earlier 1 s delay without collection had measured a p99 of 2
//! to 8 ms there; that setting returned nothing once the sidecar was idle.
//! `MIMALLOC_PURGE_DELAY` set in the environment still wins.

#![allow(
    unsafe_code,
    reason = "mimalloc is tuned and collected through its C API"
)]

use std::{cell::Cell, ffi::c_long, time::Duration};

use tokio::time::Instant;

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in the bundled mimalloc v3 (`mimalloc.h`); the
/// -sys crate does not export the name. The test below pins the number.
const PURGE_DELAY: mi_option_t = 15;

/// How long freed memory is kept for reuse before it goes back to the OS.
pub const PURGE_DELAY_MS: c_long = 250;

pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option has no memory-safety preconditions.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// The current purge delay in milliseconds (-1: never purge).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reading an option has no memory-safety preconditions.
    unsafe { mi_option_get(PURGE_DELAY) }
}

/// Returns what the arenas hold free to the OS every `period`, forever.
/// Forced, so it does not wait for a purge delay that no allocation would
/// ever check on an idle sidecar; once a second, so under load it costs
/// one purge a second at most.
pub async fn collect_periodically(period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // SAFETY: collecting has no memory-safety preconditions.
        unsafe { mi_collect(true) };
    }
}

/// Least time between two collections on one thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `on_thread_park`: collects this worker's heap, unless it did less
/// than a second ago.
pub fn collect_on_park() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: collecting has no memory-safety preconditions.
        unsafe { mi_collect(false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_number_is_the_purge_delay() {
        // mimalloc v3's documented default purge delay is 1000 ms; any
        // other option at this number has another default, so a mimalloc
        // upgrade that renumbers options fails here.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
            tune();
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
