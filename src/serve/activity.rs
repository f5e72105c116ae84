//! Calls in flight on one connection. A connection is busy from a request's
//! arrival until its response body has been handed to hyper in full; the
//! connection's task reads this to close it when idle, and to close it at
//! once in a drain when nothing is left to answer (a client that ignores
//! GOAWAY would otherwise hold the process for the whole grace period).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    in_flight: usize,
    /// Bumped by every request, so a call that came and went between two
    /// looks still counts as activity.
    started: u64,
}

/// The connection's side: watches its calls.
#[derive(Debug)]
pub struct Activity {
    load: watch::Receiver<Load>,
    tracker: watch::Sender<Load>,
}

/// Held by each request being served; releases its call on drop.
#[derive(Debug)]
pub struct Busy(watch::Sender<Load>);

/// The connection's service: the port's router, with each call tracked.
#[derive(Debug, Clone)]
pub struct Tracked {
    router: axum::Router,
    tracker: watch::Sender<Load>,
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
    pub fn new() -> Self {
        let (tracker, load) = watch::channel(Load::default());
        Self { load, tracker }
    }

    /// The service to serve this connection with.
    pub fn track(&self, router: axum::Router) -> Tracked {
        Tracked {
            router,
            tracker: self.tracker.clone(),
        }
    }

    /// Resolves once no call has been in flight, nor started, for `idle`.
    pub async fn idle(&mut self, idle: Duration) {
        loop {
            if self.load.borrow_and_update().in_flight == 0 {
                if tokio::time::timeout(idle, self.load.changed())
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                // The sender lives in `self`, so this cannot fail.
                let _ = self.load.changed().await;
            }
        }
    }

    /// Resolves once no call is in flight.
    pub async fn quiet(&mut self) {
        let _ = self.load.wait_for(|load| load.in_flight == 0).await;
    }
}

// === impl Busy ===

impl Busy {
    fn start(tracker: &watch::Sender<Load>) -> Self {
        tracker.send_modify(|load| {
            load.in_flight += 1;
            load.started = load.started.wrapping_add(1);
        });
        Self(tracker.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|load| load.in_flight -= 1);
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
        let busy = Busy::start(&self.tracker);
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
        let mut activity = Activity::new();
        let busy = Busy::start(&activity.tracker);
        let idle = Duration::from_secs(60);
        // Busy: not idle however long the call takes.
        assert!(
            tokio::time::timeout(idle * 3, activity.idle(idle))
                .await
                .is_err()
        );
        drop(busy);
        let started = tokio::time::Instant::now();
        // A short call half-way through the idle period restarts it.
        let tracker = activity.tracker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(Busy::start(&tracker));
        });
        activity.idle(idle).await;
        assert_eq!(started.elapsed(), Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_resolves_when_the_last_call_ends() {
        let mut activity = Activity::new();
        activity.quiet().await;
        let busy = Busy::start(&activity.tracker);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(busy);
        });
        let started = tokio::time::Instant::now();
        activity.quiet().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
