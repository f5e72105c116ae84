//! Calls in flight on one connection. A connection is busy from a request's
//! arrival until its response body has been handed to hyper in full; the
//! connection's task reads this to close it when idle, and to close it at
//! once in a drain when nothing is left to answer (a client that ignores
//! GOAWAY would otherwise hold the process for the whole grace period).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;

use crate::grpc::{
    error::{Late, Shed},
    status::to_status,
};
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Counted with atomics, and looked at by the connection's task on a timer
/// (idle) or only while draining (quiet), so a busy connection pays two
/// atomic increments and two decrements a call, and wakes no one.
#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicUsize,
    /// Of `in_flight`, the long-lived streams.
    long_lived: AtomicUsize,
    /// Calls waiting for one of the connection's call slots.
    waiting: AtomicUsize,
    /// A call (not a long-lived stream) ended: a waiting call may start.
    freed: Notify,
    /// Bumped by every request, so a call that came and went between two
    /// looks still counts as activity.
    started: AtomicU64,
    /// Set once the connection waits for its last call: only then does the
    /// end of a call notify.
    draining: AtomicBool,
    quiet: Notify,
}

/// The connection's side: watches its calls.
#[derive(Debug, Default)]
pub(super) struct Activity {
    load: Arc<Load>,
}

/// Held by each request being served; releases its call on drop.
#[derive(Debug)]
pub(super) struct Busy {
    load: Arc<Load>,
    long_lived: bool,
}

/// The connection's service: the port's router, with each call tracked.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    router: axum::Router,
    load: Arc<Load>,
    limits: Limits,
}

/// What a connection's calls are held to (see `serve::Settings`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_calls: usize,
    pub long_lived: &'static [&'static str],
    /// How long a call past `max_calls` may wait for a slot: its deadline
    /// as its headers give it, at most `max_wait`.
    pub deadline: fn(&http::HeaderMap) -> Option<Duration>,
    pub max_wait: Duration,
}

pin_project! {
    /// A response body that keeps its call busy until it is done.
    pub struct TrackedBody {
        #[pin]
        inner: Body,
        busy: Option<Busy>,
    }
}

// === impl Activity ===

impl Activity {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The service to serve this connection with.
    pub(super) fn track(&self, router: axum::Router, limits: Limits) -> Tracked {
        Tracked {
            router,
            load: self.load.clone(),
            limits,
        }
    }

    /// Resolves once no call has been in flight, nor started, for a whole
    /// `idle` period: between one and two periods after the last call.
    pub(super) async fn idle(&self, idle: Duration) {
        let mut seen = self.load.started.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(idle).await;
            let started = self.load.started.load(Ordering::Acquire);
            if started == seen && self.load.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            seen = started;
        }
    }

    /// Resolves once no call is in flight, or once only long-lived streams
    /// are and `streams` has passed: they have had the time to take their
    /// final event, and a caller that reads nothing cannot hold the drain.
    pub(super) async fn quiet(&self, streams: Duration) {
        self.load.draining.store(true, Ordering::Release);
        let streams_over = tokio::time::Instant::now() + streams;
        loop {
            let notified = self.load.quiet.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end in between still wakes us.
            notified.as_mut().enable();
            let in_flight = self.load.in_flight.load(Ordering::Acquire);
            if in_flight == 0 {
                return;
            }
            if in_flight == self.load.long_lived.load(Ordering::Acquire) {
                if tokio::time::timeout_at(streams_over, notified)
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                notified.await;
            }
        }
    }
}

// === impl Busy ===

impl Busy {
    /// A call starting, unless it is not long-lived and `max_calls` such
    /// calls are in flight already.
    fn start(load: &Arc<Load>, long_lived: bool, max_calls: usize) -> Option<Self> {
        load.started.fetch_add(1, Ordering::AcqRel);
        let before = load.in_flight.fetch_add(1, Ordering::AcqRel);
        if long_lived {
            load.long_lived.fetch_add(1, Ordering::AcqRel);
        } else if before - load.long_lived.load(Ordering::Acquire).min(before) >= max_calls {
            // Not a call that ended: no waiting call is woken for it (they
            // would wake each other in turn), only a drain looking for zero.
            load.in_flight.fetch_sub(1, Ordering::AcqRel);
            if load.draining.load(Ordering::Acquire) {
                load.quiet.notify_waiters();
            }
            return None;
        }
        Some(Self {
            load: load.clone(),
            long_lived,
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.long_lived {
            self.load.long_lived.fetch_sub(1, Ordering::AcqRel);
        }
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.long_lived && self.load.waiting.load(Ordering::Acquire) > 0 {
            self.load.freed.notify_one();
        }
        // Every end wakes a drain: it waits for none left, or for only
        // long-lived streams left.
        if self.load.draining.load(Ordering::Acquire) {
            self.load.quiet.notify_waiters();
        }
    }
}

// === impl Tracked ===

impl hyper::service::Service<http::Request<Incoming>> for Tracked {
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send + 'static>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        // Taken now, before the handler runs, so a request still reading its
        // body counts as busy; dropped with the future if the peer resets.
        let long_lived = self.limits.long_lived.contains(&req.uri().path());
        let router = self.router.clone();
        if let Some(busy) = Busy::start(&self.load, long_lived, self.limits.max_calls) {
            return Box::pin(async move {
                let Ok(response) = router.oneshot(req.map(Body::new)).await;
                Ok(response.map(|inner| TrackedBody {
                    inner,
                    busy: Some(busy),
                }))
            });
        }
        // Past the connection's call slots: wait for one within the call's
        // deadline, as the client would have waited for a stream, if no
        // more than `max_calls` wait already; else refused at once, before
        // any body is read.
        let limits = self.limits;
        let Some(waiting) = Waiting::enter(&self.load, limits.max_calls) else {
            return Box::pin(refuse(
                req,
                to_status(&Shed::ConnectionCalls(limits.max_calls).into()),
            ));
        };
        let wait =
            (limits.deadline)(req.headers()).map_or(limits.max_wait, |d| d.min(limits.max_wait));
        Box::pin(async move {
            // The request is read while it waits: HTTP/2 budgets the frames
            // it holds unread, and hundreds of waiting calls would spend the
            // connection's budget (GOAWAY ENHANCE_YOUR_CALM).
            let until = tokio::time::Instant::now() + wait;
            let (parts, body) = req.into_parts();
            let read =
                http_body_util::BodyExt::collect(http_body_util::Limited::new(body, DRAIN_LIMIT));
            let (busy, read) =
                tokio::join!(waiting.slot(until), tokio::time::timeout_at(until, read));
            let (Some(busy), Ok(Ok(read))) = (busy, read) else {
                metrics::counter!(crate::instruments::CALLS_SHED).increment(1);
                return Ok(answer(to_status(&Late::ConnectionSlot.into())));
            };
            let req = http::Request::from_parts(parts, Body::from(read.to_bytes()));
            let Ok(response) = router.oneshot(req).await;
            Ok(response.map(|inner| TrackedBody {
                inner,
                busy: Some(busy),
            }))
        })
    }
}

/// A refusal of a call that was never served. What the caller sends is
/// read first (at most a request's worth, for at most [`DRAIN_WAIT`]): a
/// client still sending its request when the answer comes sees its send
/// fail ("broken pipe", UNKNOWN) instead of the answer.
async fn refuse(
    req: http::Request<Incoming>,
    status: tonic::Status,
) -> Result<http::Response<TrackedBody>, Infallible> {
    let request = http_body_util::Limited::new(req.into_body(), DRAIN_LIMIT);
    let _ = tokio::time::timeout(DRAIN_WAIT, http_body_util::BodyExt::collect(request)).await;
    metrics::counter!(crate::instruments::CALLS_SHED).increment(1);
    Ok(answer(status))
}

fn answer(status: tonic::Status) -> http::Response<TrackedBody> {
    status
        .into_http::<Body>()
        .map(|inner| TrackedBody { inner, busy: None })
}

/// What a waiting or refused call's request may send before it is served
/// or answered: past it, a waiting call is refused.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// A call waiting for a slot of its connection; counted while it waits.
struct Waiting {
    load: Arc<Load>,
    max_calls: usize,
}

impl Waiting {
    fn enter(load: &Arc<Load>, max_calls: usize) -> Option<Self> {
        if load.waiting.fetch_add(1, Ordering::AcqRel) >= max_calls {
            load.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            load: load.clone(),
            max_calls,
        })
    }

    /// A slot, once one is free, or `None` at `until`.
    async fn slot(self, until: tokio::time::Instant) -> Option<Busy> {
        loop {
            let freed = self.load.freed.notified();
            tokio::pin!(freed);
            // Registered before the try, so a slot freed in between wakes us.
            freed.as_mut().enable();
            if let Some(busy) = Busy::start(&self.load, false, self.max_calls) {
                return Some(busy);
            }
            tokio::time::timeout_at(until, freed).await.ok()?;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.load.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl TrackedBody ===

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            this.busy.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(load: &Arc<Load>) -> Busy {
        Busy::start(load, false, usize::MAX).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_calls_to_end_and_restarts_on_each_call() {
        let activity = Activity::new();
        let idle = Duration::from_secs(60);
        let busy = call(&activity.load);
        // Busy: not idle however long the call takes.
        assert!(
            tokio::time::timeout(idle * 3, activity.idle(idle))
                .await
                .is_err()
        );
        drop(busy);
        let started = tokio::time::Instant::now();
        // A short call within the idle period restarts it.
        let load = activity.load.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(call(&load));
        });
        activity.idle(idle).await;
        assert_eq!(started.elapsed(), Duration::from_secs(120));
        // With nothing at all, one period.
        let started = tokio::time::Instant::now();
        activity.idle(idle).await;
        assert_eq!(started.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_resolves_when_the_last_call_ends() {
        let activity = Activity::new();
        activity.quiet(Duration::from_secs(2)).await;
        let (first, second) = (call(&activity.load), call(&activity.load));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(first);
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(second);
        });
        let started = tokio::time::Instant::now();
        activity.quiet(Duration::from_secs(2)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_drain_long_lived_streams_alone_hold_the_connection_for_a_bounded_time() {
        let activity = Activity::new();
        let stream = Busy::start(&activity.load, true, 0).unwrap();
        let call = call(&activity.load);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(call);
        });
        let started = tokio::time::Instant::now();
        activity.quiet(Duration::from_secs(2)).await;
        // The call got all the time it needed; the stream then its bound.
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(12) + Duration::from_millis(1));
        drop(stream);
    }

    #[test]
    fn calls_past_the_limit_are_refused_and_long_lived_streams_are_not_counted() {
        let load = Arc::new(Load::default());
        let streams: Vec<_> = (0..5)
            .map(|_| Busy::start(&load, true, 2).unwrap())
            .collect();
        let first = Busy::start(&load, false, 2).unwrap();
        let second = Busy::start(&load, false, 2).unwrap();
        assert!(Busy::start(&load, false, 2).is_none());
        // A refusal leaves nothing counted.
        assert_eq!(load.in_flight.load(Ordering::Acquire), 7);
        drop(first);
        assert!(Busy::start(&load, false, 2).is_some());
        drop((second, streams));
        assert_eq!(load.in_flight.load(Ordering::Acquire), 0);
        assert_eq!(load.long_lived.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_limit_waits_for_a_slot_within_its_deadline() {
        let load = Arc::new(Load::default());
        let first = Busy::start(&load, false, 1).unwrap();
        // One waits, and gets the slot the moment the first call ends.
        let waiting = Waiting::enter(&load, 1).unwrap();
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(waiting.slot(started + Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // No second waiter: as many wait as may run.
        assert!(Waiting::enter(&load, 1).is_none());
        drop(first);
        let busy = waiter.await.unwrap().expect("the freed slot");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(load.waiting.load(Ordering::Acquire), 0);
        // One that finds no slot before its deadline gives up there.
        let waiting = Waiting::enter(&load, 1).unwrap();
        let started = tokio::time::Instant::now();
        assert!(
            waiting
                .slot(started + Duration::from_secs(2))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(load.waiting.load(Ordering::Acquire), 0);
        drop(busy);
        assert_eq!(load.in_flight.load(Ordering::Acquire), 0);
    }
}
