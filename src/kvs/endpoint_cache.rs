//! Each channel's endpoints per role (WEBRTC for the joins, WSS and HTTPS
//! for signaling), found once by `GetSignalingChannelEndpoint` and reused.
//!
//! The cache is keyed by what callers send (any valid channel ARN), so it is
//! bounded: at most `capacity` entries (moka's TinyLFU admission and LRU
//! eviction keep the channels in use), each dropped `ttl` after discovery.
//! Concurrent misses for one key share one discovery (single flight); a
//! failed discovery is not cached and leaves nothing behind.

use std::{future::Future, sync::Arc, time::Duration};

use moka::{future::Cache, notification::RemovalCause};
use tracing::{Instrument, field::Empty};

use super::{
    Error,
    arn::ChannelArn,
    endpoint::{Endpoints, Role},
};
use crate::instruments;

type Key = (ChannelArn, Role);

#[derive(Debug, Clone)]
pub struct EndpointCache {
    entries: Cache<Key, Arc<Endpoints>>,
}

// === impl EndpointCache ===

impl EndpointCache {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .eviction_listener(|_, _, cause| {
                instruments::endpoint_cache_eviction(cause_label(cause))
            })
            .build();
        Self { entries }
    }

    /// The cached endpoints for `arn` and `role`, or those `discover` finds.
    /// Under a DEBUG span (exported with traces), whose `cache.hit` says
    /// whether this call found them without discovering them itself; the
    /// discovery's attempts are its children.
    pub async fn get_or_discover<F, Fut>(
        &self,
        arn: &ChannelArn,
        role: Role,
        discover: F,
    ) -> Result<Arc<Endpoints>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Endpoints>, Error>>,
    {
        let span = tracing::debug_span!(
            "endpoint_discovery",
            kvs.role = role.as_str(),
            cache.hit = Empty,
        );
        let key = (arn.clone(), role);
        // A hit, the usual case, is a plain read. Only a miss builds the
        // discovery (boxed, so its future does not weigh on every join's)
        // and takes moka's entry path for single flight.
        if let Some(found) = self.entries.get(&key).await {
            span.record("cache.hit", true);
            instruments::endpoint_cache(true);
            return Ok(found);
        }
        let entry = self
            .entries
            .entry(key)
            .or_try_insert_with(Box::pin(discover()))
            .instrument(span.clone())
            .await
            // Callers that waited on the same discovery share its error.
            .map_err(|shared| (*shared).clone())?;
        let discovered = entry.is_fresh();
        span.record("cache.hit", !discovered);
        instruments::endpoint_cache(!discovered);
        if discovered {
            instruments::endpoint_cache_entries(self.entries.entry_count());
        }
        Ok(entry.into_value())
    }

    /// Forgets a channel's endpoint, so the next call discovers it again.
    pub async fn invalidate(&self, arn: &ChannelArn, role: Role) {
        self.entries.invalidate(&(arn.clone(), role)).await;
    }

    /// Drops expired entries now (moka otherwise does it as a side effect
    /// of later lookups) and reports the entry count.
    pub async fn sweep(&self) {
        self.entries.run_pending_tasks().await;
        instruments::endpoint_cache_entries(self.entries.entry_count());
    }

    /// Entries held, as of the last sweep.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cause_label(cause: RemovalCause) -> &'static str {
    match cause {
        RemovalCause::Expired => "expired",
        RemovalCause::Size => "size",
        RemovalCause::Explicit => "invalidated",
        RemovalCause::Replaced => "replaced",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn arn(name: &str) -> ChannelArn {
        ChannelArn::for_tests(name)
    }

    fn endpoints(uri: &str) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            webrtc: Some(uri.parse().unwrap()),
            ..Endpoints::default()
        })
    }

    fn found(
        uri: &'static str,
    ) -> impl FnOnce() -> std::future::Ready<Result<Arc<Endpoints>, Error>> {
        move || std::future::ready(Ok(endpoints(uri)))
    }

    /// The WEBRTC endpoint a lookup answered.
    fn webrtc(found: Result<Arc<Endpoints>, Error>) -> String {
        found.unwrap().webrtc.clone().unwrap().to_string()
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_discovery() {
        let cache = Arc::new(EndpointCache::new(Duration::from_secs(3600), 100));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = arn("cam");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls, a) = (cache.clone(), calls.clone(), a.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_discover(&a, Role::Master, || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(endpoints("https://r-1.example"))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(webrtc(t.await.unwrap()), "https://r-1.example/");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_leave_nothing_and_roles_are_apart() {
        let cache = EndpointCache::new(Duration::from_secs(60), 100);
        let a = arn("cam");
        for _ in 0..3 {
            let failed = cache
                .get_or_discover(&a, Role::Viewer, || async { Err(Error::DeadlineExceeded) })
                .await;
            assert!(matches!(failed, Err(Error::DeadlineExceeded)));
        }
        cache.sweep().await;
        assert!(cache.is_empty(), "a failed discovery keeps no entry");

        let first = cache
            .get_or_discover(&a, Role::Viewer, found("https://one"))
            .await;
        assert_eq!(webrtc(first), "https://one/");
        let cached = cache
            .get_or_discover(&a, Role::Viewer, found("https://two"))
            .await;
        assert_eq!(webrtc(cached), "https://one/");
        let master = cache
            .get_or_discover(&a, Role::Master, found("https://three"))
            .await;
        assert_eq!(webrtc(master), "https://three/");

        cache.invalidate(&a, Role::Viewer).await;
        let rediscovered = cache
            .get_or_discover(&a, Role::Viewer, found("https://five"))
            .await;
        assert_eq!(webrtc(rediscovered), "https://five/");
    }

    #[tokio::test]
    async fn entries_expire_and_are_freed() {
        // moka keeps its own clock, so this waits in real time, briefly.
        let cache = EndpointCache::new(Duration::from_millis(100), 100);
        let a = arn("cam");
        cache
            .get_or_discover(&a, Role::Master, found("https://one"))
            .await
            .unwrap();
        cache.sweep().await;
        assert_eq!(cache.len(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.sweep().await;
        assert_eq!(cache.len(), 0, "expired entries are dropped, not kept");
        let renewed = cache
            .get_or_discover(&a, Role::Master, found("https://four"))
            .await;
        assert_eq!(webrtc(renewed), "https://four/");
    }

    #[tokio::test]
    async fn holds_at_most_its_capacity_of_distinct_channels() {
        let cache = EndpointCache::new(Duration::from_secs(3600), 1_000);
        for i in 0..20_000 {
            cache
                .get_or_discover(
                    &arn(&format!("cam-{i}")),
                    Role::Master,
                    found("https://one"),
                )
                .await
                .unwrap();
        }
        cache.sweep().await;
        assert!(cache.len() <= 1_000, "{} entries", cache.len());
    }
}
