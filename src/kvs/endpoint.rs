//! Where requests go: the partition-aware control-plane endpoint, and a cache
//! of each channel's WEBRTC endpoint found by `GetSignalingChannelEndpoint`.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Uri;
use tokio::{sync::OnceCell, time::Instant};

use super::{Error, arn::ChannelArn};
use crate::metrics;

/// The DNS suffix of each partition's regional endpoints.
fn dns_suffix(partition: &str) -> Option<&'static str> {
    Some(match partition {
        "aws" | "aws-us-gov" => "amazonaws.com",
        "aws-cn" => "amazonaws.com.cn",
        "aws-iso" => "c2s.ic.gov",
        "aws-iso-b" => "sc2s.sgov.gov",
        "aws-iso-e" => "cloud.adc-e.uk",
        "aws-iso-f" => "csp.hci.ic.gov",
        "aws-eusc" => "amazonaws.eu",
        _ => return None,
    })
}

/// The control-plane endpoint for a channel: the configured override (the
/// SDKs' `AWS_ENDPOINT_URL_KINESIS_VIDEO` / `AWS_ENDPOINT_URL`) if any, else
/// `https://kinesisvideo.{region}.{partition suffix}`.
pub fn control_plane(arn: &ChannelArn, override_url: Option<&Uri>) -> Result<Uri, Error> {
    if let Some(url) = override_url {
        return Ok(url.clone());
    }
    let suffix = dns_suffix(arn.partition())
        .ok_or_else(|| Error::UnknownPartition(arn.partition().to_owned()))?;
    format!("https://kinesisvideo.{}.{suffix}", arn.region())
        .parse()
        .map_err(|e| Error::MalformedResponse(format!("control-plane endpoint: {e}")))
}

/// The role a channel endpoint was discovered for. KVS may answer different
/// endpoints for each, so they are cached apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "MASTER",
            Role::Viewer => "VIEWER",
        }
    }
}

type Key = (ChannelArn, Role);

#[derive(Debug)]
struct Entry {
    endpoint: Uri,
    expires: Instant,
}

/// WEBRTC endpoints per channel and role, each kept for `ttl`.
///
/// Concurrent misses for one key share one discovery (single flight): the
/// first caller runs it and the others wait on the same cell. A failed
/// discovery leaves the cell empty, so the next caller tries again.
#[derive(Debug)]
pub struct EndpointCache {
    ttl: Duration,
    entries: Mutex<HashMap<Key, Arc<OnceCell<Entry>>>>,
}

// === impl EndpointCache ===

impl EndpointCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The cached endpoint for `arn` and `role`, or the one `discover` finds.
    pub async fn get_or_discover<F, Fut>(
        &self,
        arn: &ChannelArn,
        role: Role,
        discover: F,
    ) -> Result<Uri, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Uri, Error>>,
    {
        let cell = self.cell(arn, role);
        let mut discovered = false;
        let ttl = self.ttl;
        let entry = cell
            .get_or_try_init(|| {
                discovered = true;
                async move {
                    let endpoint = discover().await?;
                    Ok::<_, Error>(Entry {
                        endpoint,
                        expires: Instant::now() + ttl,
                    })
                }
            })
            .await?;
        metrics::endpoint_cache(!discovered);
        Ok(entry.endpoint.clone())
    }

    /// Forgets a channel's endpoint, so the next call discovers it again.
    pub fn invalidate(&self, arn: &ChannelArn, role: Role) {
        self.lock().remove(&(arn.clone(), role));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cell(&self, arn: &ChannelArn, role: Role) -> Arc<OnceCell<Entry>> {
        let mut entries = self.lock();
        let key = (arn.clone(), role);
        if let Some(cell) = entries.get(&key) {
            let expired = cell.get().is_some_and(|e| e.expires <= Instant::now());
            if !expired {
                return cell.clone();
            }
        }
        let cell = Arc::new(OnceCell::new());
        entries.insert(key, cell.clone());
        cell
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<OnceCell<Entry>>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poison is ignored.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn arn(region: &str, partition: &str) -> ChannelArn {
        ChannelArn::parse(&format!(
            "arn:{partition}:kinesisvideo:{region}:123456789012:channel/cam/1"
        ))
        .unwrap()
    }

    #[test]
    fn control_plane_is_partition_aware() {
        let cases = [
            (
                "aws",
                "eu-central-1",
                "https://kinesisvideo.eu-central-1.amazonaws.com/",
            ),
            (
                "aws-cn",
                "cn-north-1",
                "https://kinesisvideo.cn-north-1.amazonaws.com.cn/",
            ),
            (
                "aws-us-gov",
                "us-gov-west-1",
                "https://kinesisvideo.us-gov-west-1.amazonaws.com/",
            ),
        ];
        for (partition, region, want) in cases {
            let got = control_plane(&arn(region, partition), None).unwrap();
            assert_eq!(got.to_string(), want);
        }
        assert!(matches!(
            control_plane(&arn("us-east-1", "aws-mars"), None),
            Err(Error::UnknownPartition(p)) if p == "aws-mars"
        ));
        let local: Uri = "http://127.0.0.1:4566".parse().unwrap();
        assert_eq!(
            control_plane(&arn("us-east-1", "aws-mars"), Some(&local)).unwrap(),
            local
        );
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_discovery() {
        let cache = Arc::new(EndpointCache::new(Duration::from_secs(3600)));
        let calls = Arc::new(AtomicUsize::new(0));
        let a = arn("us-west-2", "aws");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls, a) = (cache.clone(), calls.clone(), a.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_discover(&a, Role::Master, || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok("https://r-1.example".parse().unwrap())
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "https://r-1.example");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_cached_and_entries_expire() {
        let cache = EndpointCache::new(Duration::from_secs(60));
        let a = arn("us-west-2", "aws");
        let failed = cache
            .get_or_discover(&a, Role::Viewer, || async { Err(Error::DeadlineExceeded) })
            .await;
        assert!(failed.is_err());

        let found = |uri: &'static str| move || async move { Ok(uri.parse().unwrap()) };
        let first = cache
            .get_or_discover(&a, Role::Viewer, found("https://one"))
            .await;
        assert_eq!(first.unwrap(), "https://one");
        let cached = cache
            .get_or_discover(&a, Role::Viewer, found("https://two"))
            .await;
        assert_eq!(cached.unwrap(), "https://one");
        // The master role is a different key.
        let master = cache
            .get_or_discover(&a, Role::Master, found("https://three"))
            .await;
        assert_eq!(master.unwrap(), "https://three");

        tokio::time::advance(Duration::from_secs(61)).await;
        let renewed = cache
            .get_or_discover(&a, Role::Viewer, found("https://four"))
            .await;
        assert_eq!(renewed.unwrap(), "https://four");

        cache.invalidate(&a, Role::Viewer);
        let rediscovered = cache
            .get_or_discover(&a, Role::Viewer, found("https://five"))
            .await;
        assert_eq!(rediscovered.unwrap(), "https://five");
    }
}
