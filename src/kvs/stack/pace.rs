//! KVS's per-stream limit on its data-plane APIs, kept on our side.
//!
//! KVS allows 5 requests a second per stream to `ListFragments` and to the
//! playback-URL APIs; beyond that it answers `ClientLimitExceededException`.
//! That limit belongs to the stream, not to a caller, so one pacer per
//! (stream, API) is shared by every request the sidecar makes for it: pages,
//! retries (this layer sits below the retry layer, so every attempt takes a
//! slot) and every caller alike.
//!
//! A pacer is a sliding window, not a token bucket: a bucket with a burst of
//! 5 lets 10 requests through in the second after an idle spell, and KVS
//! would throttle the second five. Each request reserves a send instant
//! such that no window of [`WINDOW`] holds more than [`PER_WINDOW`]
//! instants; [`WINDOW`] is a little over a second so that the requests stay
//! within KVS's limit even when network delays bring two of them closer.
//!
//! Like the rate limiter, the pacer never makes a call wait for nothing: a
//! slot that would come after the call's deadline, or more than
//! [`MAX_QUEUE`] away, is refused at once ([`Error::StreamPaced`],
//! RESOURCE_EXHAUSTED) and nothing is reserved; a call that goes away while
//! waiting gives its slot back. The pacers are kept per key in a map bounded
//! by [`MAX_KEYS`]: a key whose slots are all older than a window carries
//! nothing a fresh pacer would not, so it is dropped when room is needed;
//! when every key is busy, a new one is refused rather than the map grown.
//!
//! [`Pacer`] takes the time as an argument, so its arithmetic is tested
//! without clocks; the layer is tested with tokio's paused clock.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use crate::kvs::{Error, UpstreamRequest, data_endpoint::ApiName};

/// Requests allowed per window and stream, as KVS allows per second.
pub const PER_WINDOW: usize = 5;
/// A second, and a margin for requests that a slow network brings closer
/// together on their way to KVS.
pub const WINDOW: Duration = Duration::from_millis(1_050);
/// The longest a request may queue for its slot, whatever its deadline.
pub const MAX_QUEUE: Duration = Duration::from_secs(10);
/// Most (stream, API) pairs paced at once.
pub const MAX_KEYS: usize = 10_000;

/// What a pacer is kept for: a stream and a data-plane API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaceKey {
    pub stream: Arc<str>,
    pub api: ApiName,
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No slot before the deadline (or within [`MAX_QUEUE`]).
    NoSlot,
    /// Every key of the map is busy.
    TooManyStreams,
}

/// The send instants reserved per key: the recent ones (within a window of
/// now) and the queued ones, in order.
#[derive(Debug)]
pub struct Pacer {
    slots: HashMap<PaceKey, VecDeque<Instant>>,
    max_keys: usize,
}

impl Pacer {
    pub fn new(max_keys: usize) -> Self {
        Self {
            slots: HashMap::new(),
            max_keys,
        }
    }

    /// Reserves the earliest send instant for `key` at or after `now` that
    /// keeps every window within [`PER_WINDOW`], or refuses (reserving
    /// nothing) when it would come after `deadline` or [`MAX_QUEUE`].
    pub fn acquire(
        &mut self,
        key: &PaceKey,
        now: Instant,
        deadline: Instant,
    ) -> Result<Instant, Refusal> {
        if !self.slots.contains_key(key) && self.slots.len() >= self.max_keys {
            self.sweep(now);
            if self.slots.len() >= self.max_keys {
                return Err(Refusal::TooManyStreams);
            }
        }
        let slots = self.slots.entry(key.clone()).or_default();
        forget_old(slots, now);
        // Always after the last reservation: a new instant is then the
        // latest of every window it falls in, so only the window ending at
        // it needs checking (a cancelled slot leaves a hole that only
        // makes that window emptier).
        let mut at = now.max(slots.back().copied().unwrap_or(now));
        if slots.len() >= PER_WINDOW {
            at = at.max(slots[slots.len() - PER_WINDOW] + WINDOW);
        }
        if at > deadline || at > now + MAX_QUEUE {
            if slots.is_empty() {
                self.slots.remove(key);
            }
            return Err(Refusal::NoSlot);
        }
        slots.push_back(at);
        Ok(at)
    }

    /// Gives back the slot at `at` of a request that went away unsent.
    pub fn release(&mut self, key: &PaceKey, at: Instant) {
        if let Some(slots) = self.slots.get_mut(key)
            && let Some(i) = slots.iter().rposition(|s| *s == at)
        {
            slots.remove(i);
        }
    }

    /// Keys paced now (some may be idle until the next sweep).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Drops every key whose slots are all a window old.
    fn sweep(&mut self, now: Instant) {
        self.slots.retain(|_, slots| {
            forget_old(slots, now);
            !slots.is_empty()
        });
    }
}

/// Slots a window old can no longer share a window with a new one.
fn forget_old(slots: &mut VecDeque<Instant>, now: Instant) {
    while slots.front().is_some_and(|s| *s + WINDOW <= now) {
        slots.pop_front();
    }
}

/// The layer: one [`Pacer`] map for the whole stack.
#[derive(Debug, Clone)]
pub struct PaceLayer {
    pacer: Arc<Mutex<Pacer>>,
}

impl PaceLayer {
    pub fn new(max_keys: usize) -> Self {
        Self {
            pacer: Arc::new(Mutex::new(Pacer::new(max_keys))),
        }
    }
}

impl<S> tower::Layer<S> for PaceLayer {
    type Service = Pace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pace {
            inner,
            pacer: self.pacer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pace<S> {
    inner: S,
    pacer: Arc<Mutex<Pacer>>,
}

impl<S, R> tower::Service<UpstreamRequest> for Pace<S>
where
    S: tower::Service<UpstreamRequest, Response = R, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    R: Send,
{
    type Response = R;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let Some(key) = req.pace.clone() else {
            return Box::pin(inner.call(req));
        };
        let pacer = self.pacer.clone();
        let operation = req.operation.name();
        Box::pin(async move {
            let now = Instant::now();
            let at = lock(&pacer).acquire(&key, now, req.deadline);
            let at = match at {
                Ok(at) => at,
                Err(refusal) => {
                    crate::instruments::stream_paced_refused(match refusal {
                        Refusal::NoSlot => "no_slot",
                        Refusal::TooManyStreams => "too_many_streams",
                    });
                    return Err(Error::StreamPaced { operation });
                }
            };
            if at > now {
                // Given back unless the wait ends and the request goes.
                let reservation = Reservation {
                    pacer: &pacer,
                    key: &key,
                    at,
                    kept: false,
                };
                tokio::time::sleep_until(at).await;
                reservation.keep();
            }
            inner.call(req).await
        })
    }
}

struct Reservation<'a> {
    pacer: &'a Mutex<Pacer>,
    key: &'a PaceKey,
    at: Instant,
    kept: bool,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(self.pacer).release(self.key, self.at);
        }
    }
}

fn lock(pacer: &Mutex<Pacer>) -> std::sync::MutexGuard<'_, Pacer> {
    // Plain instants; a panic elsewhere cannot leave them torn.
    pacer.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use tower::ServiceExt;

    use crate::kvs::{Operation, stack::mock};

    const FAR: Duration = Duration::from_secs(3600);

    fn key(stream: &str) -> PaceKey {
        PaceKey {
            stream: stream.into(),
            api: ApiName::ListFragments,
        }
    }

    /// The most instants of `sent` in any window.
    fn densest(sent: &[Instant]) -> usize {
        sent.iter()
            .map(|start| {
                sent.iter()
                    .filter(|t| **t >= *start && **t < *start + WINDOW)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_holds_more_than_five_and_streams_are_apart() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        let a: Vec<_> = (0..23)
            .map(|_| p.acquire(&key("a"), t0, t0 + FAR).unwrap())
            .collect();
        assert_eq!(&a[..5], &[t0; 5], "five go at once");
        assert_eq!(a[5], t0 + WINDOW);
        assert_eq!(densest(&a), PER_WINDOW);
        // Another stream, and another API of the same stream, have their own.
        assert_eq!(p.acquire(&key("b"), t0, t0 + FAR), Ok(t0));
        let hls = PaceKey {
            api: ApiName::GetHlsStreamingSessionUrl,
            ..key("a")
        };
        assert_eq!(p.acquire(&hls, t0, t0 + FAR), Ok(t0));
    }

    #[test]
    fn refuses_past_the_deadline_or_the_queue_and_reserves_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        for _ in 0..5 {
            p.acquire(&key("a"), t0, t0).unwrap();
        }
        let short = t0 + Duration::from_millis(500);
        assert_eq!(p.acquire(&key("a"), t0, short), Err(Refusal::NoSlot));
        assert_eq!(
            p.acquire(&key("a"), t0, t0 + FAR),
            Ok(t0 + WINDOW),
            "the refusal reserved nothing"
        );
        let mut n = 0;
        while p.acquire(&key("a"), t0, t0 + FAR).is_ok() {
            n += 1;
        }
        assert!(n < 60, "the queue is bounded: {n}");
    }

    #[test]
    fn a_released_slot_is_taken_by_the_next_request() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        for _ in 0..5 {
            p.acquire(&key("a"), t0, t0 + FAR).unwrap();
        }
        let queued = p.acquire(&key("a"), t0, t0 + FAR).unwrap();
        p.release(&key("a"), queued);
        let later = t0 + Duration::from_millis(300);
        assert_eq!(p.acquire(&key("a"), later, later + FAR), Ok(queued));
    }

    #[test]
    fn the_map_is_bounded_and_idle_keys_make_room() {
        let t0 = Instant::now();
        let mut p = Pacer::new(3);
        for s in ["a", "b", "c"] {
            p.acquire(&key(s), t0, t0 + FAR).unwrap();
        }
        assert_eq!(
            p.acquire(&key("d"), t0, t0 + FAR),
            Err(Refusal::TooManyStreams),
            "every key is busy"
        );
        // A window later every key is idle: thousands of streams come and
        // go and the map never grows past its bound.
        let mut now = t0;
        for i in 0..5_000 {
            now += WINDOW;
            p.acquire(&key(&format!("s-{i}")), now, now + FAR).unwrap();
            assert!(p.len() <= 3);
        }
    }

    fn request(stream: &str, deadline: Instant) -> UpstreamRequest {
        UpstreamRequest {
            operation: Operation::ListFragments,
            endpoint: "https://kvs.example".parse().unwrap(),
            region: "us-west-2".into(),
            body: Default::default(),
            deadline,
            attempts: Arc::new(AtomicU32::new(0)),
            attempt: 1,
            retry_reason: None,
            pace: Some(key(stream)),
            credentials: crate::kvs::credentials::Identities::for_tests()
                .all()
                .next()
                .unwrap()
                .clone(),
        }
    }

    fn paced() -> (
        Pace<mock::Mock<UpstreamRequest, ()>>,
        mock::Handle<UpstreamRequest, ()>,
    ) {
        let (mock, handle) = mock::pair::<UpstreamRequest, ()>();
        (tower::Layer::layer(&PaceLayer::new(100), mock), handle)
    }

    #[tokio::test(start_paused = true)]
    async fn many_callers_share_one_pace_per_stream() {
        let (svc, mut handle) = paced();
        handle.allow(1000);
        let t0 = Instant::now();
        let calls: Vec<_> = (0..30)
            .map(|_| tokio::spawn(svc.clone().oneshot(request("a", t0 + FAR))))
            .collect();
        let mut sent = Vec::new();
        for _ in 0..30 {
            let (_, answer) = handle.next_request().await.unwrap();
            sent.push(Instant::now());
            answer.send_response(());
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(densest(&sent), PER_WINDOW);
        // 30 requests at 5 a window: the last went out 5 windows in.
        assert_eq!(*sent.last().unwrap(), t0 + WINDOW * 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_fails_at_once_and_a_cancelled_one_gives_back() {
        let (svc, mut handle) = paced();
        handle.allow(1000);
        let t0 = Instant::now();
        for _ in 0..5 {
            let call = tokio::spawn(svc.clone().oneshot(request("a", t0 + FAR)));
            handle.next_request().await.unwrap().1.send_response(());
            call.await.unwrap().unwrap();
        }
        let refused = svc
            .clone()
            .oneshot(request("a", t0 + Duration::from_millis(500)))
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::StreamPaced {
                    operation: "ListFragments"
                })
            ),
            "{refused:?}"
        );
        assert_eq!(t0.elapsed(), Duration::ZERO, "refused without waiting");

        // A caller queues for the slot a window away, then gives up; the
        // next caller gets that slot, not the one after.
        let waiting = tokio::spawn(svc.clone().oneshot(request("a", t0 + FAR)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        waiting.abort();
        let _ = waiting.await;
        let next = tokio::spawn(svc.clone().oneshot(request("a", t0 + FAR)));
        handle.next_request().await.unwrap().1.send_response(());
        next.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), WINDOW);

        // Requests without a pace are never held up.
        let mut free = request("a", t0 + FAR);
        free.pace = None;
        let call = tokio::spawn(svc.clone().oneshot(free));
        handle.next_request().await.unwrap().1.send_response(());
        call.await.unwrap().unwrap();
        assert_eq!(t0.elapsed(), WINDOW);
    }
}
