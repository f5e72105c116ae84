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
pub(super) struct Busy(Arc<Load>);

/// The connection's service: the port's router, with each call tracked.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    router: axum::Router,
    load: Arc<Load>,
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
    pub(super) fn track(&self, router: axum::Router) -> Tracked {
        Tracked {
            router,
            load: self.load.clone(),
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

    /// Resolves once no call is in flight.
    pub(super) async fn quiet(&self) {
        self.load.draining.store(true, Ordering::Release);
        loop {
            let notified = self.load.quiet.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end in between still wakes us.
            notified.as_mut().enable();
            if self.load.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

// === impl Busy ===

impl Busy {
    fn start(load: &Arc<Load>) -> Self {
        load.started.fetch_add(1, Ordering::AcqRel);
        load.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(load.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let left = self.0.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && self.0.draining.load(Ordering::Acquire) {
            self.0.quiet.notify_waiters();
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
        let busy = Busy::start(&self.load);
        let router = self.router.clone();
        Box::pin(async move {
            let Ok(response) = router.oneshot(req.map(Body::new)).await;
            Ok(response.map(|inner| TrackedBody {
                inner,
                busy: Some(busy),
            }))
        })
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

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_calls_to_end_and_restarts_on_each_call() {
        let activity = Activity::new();
        let idle = Duration::from_secs(60);
        let busy = Busy::start(&activity.load);
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
            drop(Busy::start(&load));
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
        activity.quiet().await;
        let (first, second) = (Busy::start(&activity.load), Busy::start(&activity.load));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(first);
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(second);
        });
        let started = tokio::time::Instant::now();
        activity.quiet().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
