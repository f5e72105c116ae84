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
//! would throttle the second five. And it is anchored on when requests
//! *ended*, not when they were sent: KVS counts a request when it arrives,
//! and network delays can bring two requests sent a second apart to within
//! a second of each other. A request may go once every request sent five or
//! more before it has ended (had its answer, or failed) and [`WINDOW`] has
//! passed since the last of those ended; a request arrives before it ends,
//! so no window of a second at KVS holds more than [`PER_WINDOW`] of them,
//! whatever the delays. While one of those is still in flight, the next
//! waits for it to end (within its deadline).
//!
//! Like the rate limiter, the pacer never makes a call wait for nothing: a
//! slot that would come after the call's deadline, or more than
//! [`MAX_QUEUE`] away, is refused at once ([`Error::StreamPaced`],
//! RESOURCE_EXHAUSTED) and nothing is reserved; so is a request behind
//! [`MAX_QUEUED`] others; a call that goes away while waiting gives its
//! slot back. The pacers are kept per key in a map bounded by
//! [`MAX_KEYS`]: a key whose requests all ended more than a window ago
//! carries nothing a fresh pacer would not, so it is dropped when room is
//! needed; when every key is busy, a new one is refused rather than the
//! map grown.
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

use futures_util::future::Either;
use tokio::{sync::Notify, time::Instant};

use crate::kvs::{Error, UpstreamRequest};

/// Requests allowed per window and stream, as KVS allows per second.
pub const PER_WINDOW: usize = 5;
/// A second, and a margin for KVS's own clock.
pub const WINDOW: Duration = Duration::from_millis(1_050);
/// The longest a request may queue for its slot, whatever its deadline.
pub const MAX_QUEUE: Duration = Duration::from_secs(10);
/// Requests reserved and in flight per key, at most.
pub const MAX_QUEUED: usize = 64;
/// Most (stream, API) pairs paced at once.
pub const MAX_KEYS: usize = 10_000;

/// What a pacer is kept for: a stream and a data-plane API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PaceKey {
    pub stream: Arc<str>,
    /// The data-plane API, as `GetDataEndpoint` names it (`LIST_FRAGMENTS`).
    pub api: &'static str,
}

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No slot before the deadline (or within [`MAX_QUEUE`], or the queue
    /// is full).
    NoSlot,
    /// Every key of the map is busy.
    TooManyStreams,
    /// A request the slot depends on is still in flight: ask again when a
    /// request of the key ends.
    Busy,
}

/// A request of a key: its slot, and when it ended.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: u64,
    ended: Option<Instant>,
}

/// The requests of each key that may still bound the next one, in the
/// order their slots were given.
#[derive(Debug)]
pub struct Pacer {
    sent: HashMap<PaceKey, VecDeque<Sent>>,
    max_keys: usize,
    next_id: u64,
}

impl Pacer {
    pub fn new(max_keys: usize) -> Self {
        Self {
            sent: HashMap::new(),
            max_keys,
            next_id: 0,
        }
    }

    /// Reserves the earliest instant at or after `now` at which a request
    /// of `key` may go (and its id, for [`Pacer::ended`] or
    /// [`Pacer::release`]), or says why not; a refusal reserves nothing.
    pub fn acquire(
        &mut self,
        key: &PaceKey,
        now: Instant,
        deadline: Instant,
    ) -> Result<(Instant, u64), Refusal> {
        if !self.sent.contains_key(key) && self.sent.len() >= self.max_keys {
            self.sweep(now);
            if self.sent.len() >= self.max_keys {
                return Err(Refusal::TooManyStreams);
            }
        }
        let sent = self.sent.entry(key.clone()).or_default();
        forget_old(sent, now);
        let mut at = now;
        if sent.len() >= MAX_QUEUED {
            return Err(Refusal::NoSlot);
        }
        if sent.len() >= PER_WINDOW {
            let bounding = sent.range(..=sent.len() - PER_WINDOW);
            let mut last_end = None;
            for s in bounding {
                match s.ended {
                    Some(ended) => last_end = last_end.max(Some(ended)),
                    // It ends in the future at the earliest.
                    None if now + WINDOW > deadline => return Err(Refusal::NoSlot),
                    None => return Err(Refusal::Busy),
                }
            }
            if let Some(ended) = last_end {
                at = at.max(ended + WINDOW);
            }
        }
        if at > deadline || at > now + MAX_QUEUE {
            if sent.is_empty() {
                self.sent.remove(key);
            }
            return Err(Refusal::NoSlot);
        }
        self.next_id += 1;
        let id = self.next_id;
        sent.push_back(Sent { id, ended: None });
        Ok((at, id))
    }

    /// The request `id` of `key` ended (answered, failed, or abandoned
    /// after it was sent) at `at`.
    pub fn ended(&mut self, key: &PaceKey, id: u64, at: Instant) {
        if let Some(s) = self
            .sent
            .get_mut(key)
            .and_then(|sent| sent.iter_mut().rev().find(|s| s.id == id))
        {
            s.ended = Some(at);
        }
    }

    /// Gives back the slot of a request that went away unsent.
    pub fn release(&mut self, key: &PaceKey, id: u64) {
        if let Some(sent) = self.sent.get_mut(key)
            && let Some(i) = sent.iter().rposition(|s| s.id == id)
        {
            sent.remove(i);
        }
    }

    /// Keys paced now (some may be idle until the next sweep).
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Drops every key whose requests all ended a window ago.
    fn sweep(&mut self, now: Instant) {
        self.sent.retain(|_, sent| {
            forget_old(sent, now);
            !sent.is_empty()
        });
    }
}

/// Requests that ended a window ago bound no later one (every later one's
/// slot would be at or after now anyway).
fn forget_old(sent: &mut VecDeque<Sent>, now: Instant) {
    while sent
        .front()
        .is_some_and(|s| s.ended.is_some_and(|e| e + WINDOW <= now))
    {
        sent.pop_front();
    }
}

/// The layer: one [`Pacer`] map for the whole stack, and a wake-up for the
/// requests waiting on one in flight.
#[derive(Debug, Clone)]
pub struct PaceLayer {
    pacer: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pacer: Mutex<Pacer>,
    /// Notified whenever a request ends or a slot is given back.
    ended: Notify,
}

impl PaceLayer {
    pub fn new(max_keys: usize) -> Self {
        Self {
            pacer: Arc::new(Shared {
                pacer: Mutex::new(Pacer::new(max_keys)),
                ended: Notify::new(),
            }),
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
    pacer: Arc<Shared>,
}

impl<S, R> tower::Service<UpstreamRequest> for Pace<S>
where
    S: tower::Service<UpstreamRequest, Response = R, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    R: Send,
{
    type Response = R;
    type Error = Error;
    // Requests without a pace (the joins, discovery, the control plane)
    // pass straight through: no box, no clone, the join path as it was.
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: UpstreamRequest) -> Self::Future {
        let Some(key) = req.pace.clone() else {
            return Either::Left(self.inner.call(req));
        };
        let mut inner = super::take_ready(&mut self.inner);
        let shared = self.pacer.clone();
        let operation = req.operation.name();
        Either::Right(Box::pin(async move {
            let refused = |refusal| {
                crate::instruments::stream_paced_refused(match refusal {
                    Refusal::TooManyStreams => "too_many_streams",
                    _ => "no_slot",
                });
                Err(Error::StreamPaced { operation })
            };
            let (at, id) = loop {
                // Registered before the pacer is read, so an end between
                // the two is not missed.
                let ended = shared.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                let now = Instant::now();
                let acquired = lock(&shared.pacer).acquire(&key, now, req.deadline);
                match acquired {
                    Ok(slot) => break slot,
                    Err(Refusal::Busy) => {
                        if tokio::time::timeout_at(req.deadline, ended).await.is_err() {
                            return refused(Refusal::NoSlot);
                        }
                    }
                    Err(refusal) => return refused(refusal),
                }
            };
            // From here the slot is this request's: given back if the call
            // goes away before sending, marked ended when it ends.
            let mut held = Held {
                shared: &shared,
                key: &key,
                id,
                sent: false,
            };
            tokio::time::sleep_until(at).await;
            held.sent = true;
            inner.call(req).await
        }))
    }
}

/// A slot taken: released if unsent, ended when dropped after sending.
struct Held<'a> {
    shared: &'a Shared,
    key: &'a PaceKey,
    id: u64,
    sent: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut pacer = lock(&self.shared.pacer);
        if self.sent {
            pacer.ended(self.key, self.id, Instant::now());
        } else {
            pacer.release(self.key, self.id);
        }
        drop(pacer);
        self.shared.ended.notify_waiters();
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
            api: "LIST_FRAGMENTS",
        }
    }

    /// The most instants of `sent` in any window of a second.
    fn densest(sent: &[Instant]) -> usize {
        sent.iter()
            .map(|start| {
                sent.iter()
                    .filter(|t| **t >= *start && **t < *start + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Takes a slot at `now` and ends its request `latency` after the slot.
    fn send(p: &mut Pacer, k: &PaceKey, now: Instant, latency: Duration) -> Instant {
        let (at, id) = p.acquire(k, now, now + FAR).unwrap();
        p.ended(k, id, at + latency);
        at
    }

    #[test]
    fn five_go_at_once_and_the_sixth_a_window_after_the_first_ended() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        let a = key("a");
        let slots: Vec<_> = (0..5)
            .map(|_| p.acquire(&a, t0, t0 + FAR).unwrap())
            .collect();
        assert!(slots.iter().all(|(at, _)| *at == t0), "five go at once");
        // None has ended: the sixth must wait for the first to.
        assert_eq!(p.acquire(&a, t0, t0 + FAR), Err(Refusal::Busy));
        let latency = Duration::from_millis(300);
        for (_, id) in &slots {
            p.ended(&a, *id, t0 + latency);
        }
        // Sent at t0, ended 300 ms later: KVS may have counted it as late
        // as then, so the sixth goes a window after that.
        assert_eq!(
            p.acquire(&a, t0, t0 + FAR).unwrap().0,
            t0 + latency + WINDOW
        );
        // Another stream, and another API of the same stream, have their own.
        assert_eq!(p.acquire(&key("b"), t0, t0 + FAR).unwrap().0, t0);
        let hls = PaceKey {
            api: "GET_HLS_STREAMING_SESSION_URL",
            ..key("a")
        };
        assert_eq!(p.acquire(&hls, t0, t0 + FAR).unwrap().0, t0);
    }

    #[test]
    fn whatever_the_latencies_no_second_at_kvs_holds_more_than_five() {
        // Requests arrive at KVS anywhere between their send and their end:
        // take a bad case, a slow one arriving as it ends and the next five
        // as they go (a pacer anchored on sends lets six into a second).
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        let a = key("a");
        let mut arrivals = Vec::new();
        let mut now = t0;
        for n in 0..40u64 {
            let slow = n % 10 == 0;
            let latency = Duration::from_millis(if slow { 900 } else { 5 });
            let at = send(&mut p, &a, now, latency);
            // The slow ones arrive as they end, the fast ones as they go.
            arrivals.push(if slow { at + latency } else { at });
            now = at;
        }
        assert_eq!(densest(&arrivals), PER_WINDOW, "{arrivals:?}");
    }

    #[test]
    fn refuses_past_the_deadline_or_the_queue_and_reserves_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        let a = key("a");
        for _ in 0..5 {
            send(&mut p, &a, t0, Duration::ZERO);
        }
        let short = t0 + Duration::from_millis(500);
        assert_eq!(p.acquire(&a, t0, short), Err(Refusal::NoSlot));
        assert_eq!(
            p.acquire(&a, t0, t0 + FAR).unwrap().0,
            t0 + WINDOW,
            "the refusal reserved nothing"
        );
        // One in flight bounds the next: with less than a window left, the
        // wait cannot end in time, so it is refused at once.
        assert_eq!(p.acquire(&a, t0, short), Err(Refusal::NoSlot));
        let mut n = 0;
        while p.acquire(&a, t0, t0 + FAR).is_ok() {
            n += 1;
        }
        assert!(n < MAX_QUEUED, "the queue is bounded: {n}");
    }

    #[test]
    fn a_released_slot_is_taken_by_the_next_request() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100);
        let a = key("a");
        for _ in 0..5 {
            send(&mut p, &a, t0, Duration::ZERO);
        }
        let (at, id) = p.acquire(&a, t0, t0 + FAR).unwrap();
        p.release(&a, id);
        let later = t0 + Duration::from_millis(300);
        assert_eq!(p.acquire(&a, later, later + FAR).unwrap().0, at);
    }

    #[test]
    fn the_map_is_bounded_and_idle_keys_make_room() {
        let t0 = Instant::now();
        let mut p = Pacer::new(3);
        for s in ["a", "b", "c"] {
            send(&mut p, &key(s), t0, Duration::ZERO);
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
            send(&mut p, &key(&format!("s-{i}")), now, Duration::ZERO);
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
        // 30 requests answered at once, at 5 a window: the last went out 5
        // windows in.
        assert_eq!(*sent.last().unwrap(), t0 + WINDOW * 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_the_sixth_until_it_ends() {
        let (svc, mut handle) = paced();
        handle.allow(1000);
        let t0 = Instant::now();
        let calls: Vec<_> = (0..6)
            .map(|_| tokio::spawn(svc.clone().oneshot(request("a", t0 + FAR))))
            .collect();
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(handle.next_request().await.unwrap().1);
        }
        // The five are still in flight 3 s later: the sixth waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for answer in answers {
            answer.send_response(());
        }
        let (_, last) = handle.next_request().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(3) + WINDOW);
        last.send_response(());
        for call in calls {
            call.await.unwrap().unwrap();
        }
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
