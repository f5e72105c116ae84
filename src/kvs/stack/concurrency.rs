//! Bounds the requests (and so the connections) in flight to KVS.
//!
//! tower's `ConcurrencyLimit` takes its permit in `poll_ready`, which every
//! layer above passes through: a call would take an upstream slot before
//! waiting for its rate token or its credentials, and hold it through those
//! waits. This limit takes its permit in the response future instead, after
//! every wait above it, and holds it only for the attempt itself. The wait
//! for a permit ends with the call (the client bounds every call by its
//! deadline), and a call that goes away gives up its place in the queue.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;

use crate::kvs::Error;

#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

// === impl ConcurrencyLimitLayer ===

impl ConcurrencyLimitLayer {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> tower::Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

// === impl ConcurrencyLimit ===

impl<S, Req> tower::Service<Req> for ConcurrencyLimit<S>
where
    S: tower::Service<Req, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let permits = self.permits.clone();
        Box::pin(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _slot = permits
                .acquire_owned()
                .await
                .map_err(|_| Error::Transport("the upstream concurrency limit closed".into()))?;
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::kvs::stack::mock;

    fn limited(
        max: usize,
    ) -> (
        ConcurrencyLimit<mock::Mock<u32, u32>>,
        mock::Handle<u32, u32>,
    ) {
        let (mock, handle) = mock::pair::<u32, u32>();
        (
            tower::Layer::layer(&ConcurrencyLimitLayer::new(max), mock),
            handle,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn ready_takes_no_slot_and_a_call_holds_one_only_while_in_flight() {
        let (svc, mut handle) = limited(1);
        handle.allow(100);
        // Many services made ready (as every layer above does before it
        // waits for a rate token) take nothing.
        let mut readied = Vec::new();
        for _ in 0..10 {
            readied.push(svc.clone().ready_oneshot().await.unwrap());
        }
        let first = tokio::spawn(svc.clone().oneshot(1));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, 1);
        // The second call waits for the slot...
        let second = tokio::spawn(svc.clone().oneshot(2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished());
        // ...which frees when the first answer arrives.
        send.send_response(10);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, 2);
        send.send_response(20);
        assert_eq!(second.await.unwrap().unwrap(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_goes_away_leaves_the_queue() {
        let (svc, mut handle) = limited(1);
        handle.allow(100);
        let first = tokio::spawn(svc.clone().oneshot(1));
        let (_, send) = handle.next_request().await.unwrap();
        let gave_up = tokio::spawn(svc.clone().oneshot(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
        gave_up.abort();
        let _ = gave_up.await;
        send.send_response(10);
        first.await.unwrap().unwrap();
        let third = tokio::spawn(svc.clone().oneshot(3));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req, 3, "the abandoned call never reached the service");
        send.send_response(30);
        third.await.unwrap().unwrap();
    }
}
