//! A cache in front of the aws-config credential chain, and the choice of
//! which cache signs for a channel ([`Identities`]): an assumed role's for a
//! channel in a mapped account, the default chain's otherwise.
//!
//! Calls read the cached credentials without waiting. When they come within
//! [`REFRESH_AHEAD`] of expiring, one background task refreshes them while
//! calls go on using the old ones; only a cold or invalidated cache makes a
//! call wait, and then all waiting calls share one provider call.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use aws_credential_types::{
    Credentials,
    provider::{ProvideCredentials, SharedCredentialsProvider},
};

use aws_sdk_sts::{error::ProvideErrorMetadata, operation::assume_role::AssumeRoleError};

use super::{Error, arn::ChannelArn, error::chain};
use crate::{clock::SharedClock, instruments};

/// How long before expiry credentials are refreshed. The SDKs use 5 minutes;
/// STS and container credentials live at least 15.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// Least time between two background refreshes. Credentials that arrive
/// already inside the refresh window (a provider handing out 4-minute
/// credentials) would otherwise start a reload on every call.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a failed load is answered again before the provider is asked
/// anew: the first failure's, doubling with each failure in a row up to
/// [`MAX_FAILURE_HOLD`], each scaled by a random 50-100% so replicas that
/// failed together do not ask STS together again. A refused or throttled
/// AssumeRole is not asked again on every call.
const FIRST_FAILURE_HOLD: Duration = Duration::from_secs(1);
const MAX_FAILURE_HOLD: Duration = Duration::from_secs(30);

type Loaded = Result<Credentials, Error>;

#[derive(Debug)]
struct Failed {
    error: Error,
    until: Instant,
    in_a_row: u32,
}

pub struct CredentialCache {
    provider: SharedCredentialsProvider,
    /// `default`, or the role ARN the provider assumes: a metrics label.
    role: Arc<str>,
    clock: SharedClock,
    load_timeout: Duration,
    current: RwLock<Option<Credentials>>,
    /// The provider call in flight, if any: every caller that needs
    /// credentials waits on this one, each within its own deadline.
    loading: Mutex<Option<watch::Receiver<Option<Loaded>>>>,
    /// The last failed load, answered again without asking the provider
    /// until its time is up.
    failed: Mutex<Option<Failed>>,
    background: AtomicBool,
    /// When the provider was last asked, whatever it answered.
    last_load: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug redacts the secret; the provider's may not.
        f.debug_struct("CredentialCache")
            .field("current", &self.read())
            .finish_non_exhaustive()
    }
}

// === impl CredentialCache ===

impl CredentialCache {
    pub fn new(
        provider: SharedCredentialsProvider,
        clock: SharedClock,
        load_timeout: Duration,
    ) -> Self {
        Self {
            provider,
            role: "default".into(),
            clock,
            load_timeout,
            current: RwLock::new(None),
            loading: Mutex::new(None),
            failed: Mutex::new(None),
            background: AtomicBool::new(false),
            last_load: Mutex::new(None),
        }
    }

    /// The same cache, labelled as assuming `role` (metrics and logs).
    pub fn with_role(mut self, role: &str) -> Self {
        self.role = role.into();
        self
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Credentials to sign with now.
    pub async fn get(self: &Arc<Self>) -> Result<Credentials, Error> {
        match self.read() {
            Some(c) if !self.expires_within(&c, Duration::ZERO) => {
                if self.expires_within(&c, REFRESH_AHEAD) {
                    self.refresh_in_background();
                }
                Ok(c)
            }
            _ => self.load().await,
        }
    }

    /// Drops the cached credentials (KVS said they expired); the next `get`
    /// loads fresh ones.
    pub fn invalidate(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn read(&self) -> Option<Credentials> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn expires_within(&self, c: &Credentials, margin: Duration) -> bool {
        c.expiry()
            .is_some_and(|expiry| expiry <= self.clock.now() + margin)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        let recently = lock(&self.last_load).is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL);
        if recently || self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.load().await {
                tracing::warn!(%error, "background credential refresh failed; using current credentials until they expire");
            }
            this.background.store(false, Ordering::Release);
        });
    }

    /// Fresh credentials: a failure still held, or the one provider call
    /// in flight (started here if there is none). The provider call runs on
    /// its own task, bounded by the load timeout: a caller whose deadline
    /// passes stops waiting, and neither cancels the call the others wait on
    /// nor leaves another one behind it.
    async fn load(self: &Arc<Self>) -> Result<Credentials, Error> {
        if let Some(c) = self
            .read()
            .filter(|c| !self.expires_within(c, REFRESH_AHEAD))
        {
            return Ok(c);
        }
        let mut loaded = {
            let mut loading = lock(&self.loading);
            if let Some(in_flight) = &*loading {
                in_flight.clone()
            } else {
                if let Some(failed) = &*lock(&self.failed)
                    && Instant::now() < failed.until
                {
                    return Err(failed.error.clone());
                }
                let (done, in_flight) = watch::channel(None);
                *loading = Some(in_flight.clone());
                tokio::spawn(self.clone().ask_provider(done));
                in_flight
            }
        };
        let answer = loaded.wait_for(Option::is_some).await;
        match answer.as_deref() {
            Ok(Some(loaded)) => loaded.clone(),
            // The loading task ended without an answer (the runtime is
            // shutting down).
            _ => Err(Error::Credentials(
                "the credential load was abandoned".into(),
            )),
        }
    }

    async fn ask_provider(self: Arc<Self>, done: watch::Sender<Option<Loaded>>) {
        *lock(&self.last_load) = Some(Instant::now());
        let loaded = tokio::time::timeout(self.load_timeout, self.provider.provide_credentials())
            .await
            .map_err(|_| {
                Error::Credentials(format!(
                    "the provider chain did not answer within {:?}",
                    self.load_timeout
                ))
            })
            .and_then(|r| {
                r.map_err(|e| {
                    if assume_role_denied(&e) {
                        Error::CredentialsDenied(chain(&e))
                    } else {
                        Error::Credentials(chain(&e))
                    }
                })
            });
        instruments::credential_refresh(loaded.is_ok(), &self.role);
        match &loaded {
            Ok(credentials) => {
                tracing::debug!(expiry = ?credentials.expiry(), "loaded AWS credentials");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    Some(credentials.clone());
                *lock(&self.failed) = None;
            }
            Err(error) => {
                let mut failed = lock(&self.failed);
                let in_a_row = failed.as_ref().map_or(0, |f| f.in_a_row) + 1;
                let hold = failure_hold(in_a_row);
                tracing::debug!(%error, ?hold, "credential load failed; answering its error until the hold is over");
                *failed = Some(Failed {
                    error: error.clone(),
                    until: Instant::now() + hold,
                    in_a_row,
                });
            }
        }
        // Cleared before the answer goes out, so a caller that sees it and
        // needs a new load starts one.
        *lock(&self.loading) = None;
        let _ = done.send(Some(loaded));
    }
}

/// How long the `in_a_row`th failure in a row is held.
fn failure_hold(in_a_row: u32) -> Duration {
    let doubled = FIRST_FAILURE_HOLD.saturating_mul(1 << in_a_row.saturating_sub(1).min(16));
    doubled
        .min(MAX_FAILURE_HOLD)
        .mul_f64(0.5 + fastrand::f64() / 2.0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether STS refused the AssumeRole (`AccessDenied`): the caller's
/// channel is one this pod may not act on, not a passing fault.
fn assume_role_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    type StsError = aws_sdk_sts::error::SdkError<AssumeRoleError>;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(sts) = e.downcast_ref::<StsError>() {
            return sts.as_service_error().and_then(|s| s.code()) == Some("AccessDenied");
        }
        next = e.source();
    }
    false
}

/// Which credentials sign for each channel.
#[derive(Debug)]
pub struct Identities {
    default: Arc<CredentialCache>,
    /// By AWS account id; keys come from the configuration only.
    roles: HashMap<String, Arc<CredentialCache>>,
}

// === impl Identities ===

impl Identities {
    pub fn new(default: Arc<CredentialCache>) -> Self {
        Self {
            default,
            roles: HashMap::new(),
        }
    }

    /// Channels of `account` are signed with `cache` (an assumed role's).
    pub fn with_role(mut self, account: &str, cache: Arc<CredentialCache>) -> Self {
        self.roles.insert(account.to_owned(), cache);
        self
    }

    /// The credentials that sign every request about `arn`.
    pub fn for_channel(&self, arn: &ChannelArn) -> &Arc<CredentialCache> {
        // Most sidecars assume no role: skip finding the account in the ARN.
        if self.roles.is_empty() {
            return &self.default;
        }
        self.roles.get(arn.account()).unwrap_or(&self.default)
    }

    /// Static test keys for every channel, for unit tests whose upstream
    /// never checks them.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        let provider = SharedCredentialsProvider::new(Credentials::for_tests());
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let cache = CredentialCache::new(provider, clock, Duration::from_secs(1));
        Arc::new(Self::new(Arc::new(cache)))
    }

    /// Every cache, the default chain's first (to warm them at start).
    pub fn all(&self) -> impl Iterator<Item = &Arc<CredentialCache>> {
        std::iter::once(&self.default).chain(self.roles.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use std::{
        sync::atomic::AtomicUsize,
        time::{SystemTime, UNIX_EPOCH},
    };

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        expiry: SystemTime,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let expiry = self.expiry;
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    None,
                    Some(expiry),
                    "test",
                ))
            })
        }
    }

    fn cache(now: u64, expiry: u64) -> (Arc<CredentialCache>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let provider = Counting {
            calls: calls.clone(),
            expiry: UNIX_EPOCH + Duration::from_secs(expiry),
        };
        let clock = Arc::new(FixedClock(UNIX_EPOCH + Duration::from_secs(now)));
        let cache = CredentialCache::new(
            SharedCredentialsProvider::new(provider),
            clock,
            Duration::from_secs(1),
        );
        (Arc::new(cache), calls)
    }

    #[tokio::test]
    async fn concurrent_cold_loads_share_one_provider_call() {
        let (cache, calls) = cache(1_000, 100_000);
        let gets: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map(|c| c.access_key_id().to_owned()) })
            })
            .collect();
        for g in gets {
            assert_eq!(g.await.unwrap().unwrap(), "AKID0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry_without_blocking() {
        // Two minutes left: inside the refresh window, still valid.
        let (cache, calls) = cache(1_000, 1_120);
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
        // The cached (old) credentials come back at once; a refresh starts.
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_inside_the_refresh_window_are_not_reloaded_back_to_back() {
        // The provider only ever hands out credentials with two minutes
        // left, inside the five-minute refresh window.
        let (cache, calls) = cache(1_000, 1_120);
        for _ in 0..20 {
            cache.get().await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // The first load only: no refresh within 30 s of it.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        for _ in 0..5 {
            cache.get().await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh, then a pause");
    }

    #[tokio::test]
    async fn invalidate_forces_a_reload() {
        let (cache, calls) = cache(1_000, 100_000);
        cache.get().await.unwrap();
        cache.get().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache.invalidate();
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
    }

    #[tokio::test]
    async fn a_failing_provider_gives_its_reason_not_a_hang() {
        #[derive(Debug)]
        struct Failing(String);
        impl ProvideCredentials for Failing {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                    aws_credential_types::provider::error::CredentialsError::not_loaded(
                        self.0.clone(),
                    ),
                ))
            }
        }
        let cache = Arc::new(CredentialCache::new(
            SharedCredentialsProvider::new(Failing("no IRSA token file".into())),
            Arc::new(crate::clock::SystemClock),
            Duration::from_secs(1),
        ));
        let err = cache.get().await.unwrap_err().to_string();
        assert!(err.contains("no IRSA token file"), "{err}");
    }

    #[derive(Debug)]
    struct Slow {
        calls: Arc<AtomicUsize>,
        answer: fn(usize) -> Result<Credentials, String>,
    }

    impl ProvideCredentials for Slow {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer;
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                answer(n)
                    .map_err(aws_credential_types::provider::error::CredentialsError::not_loaded)
            })
        }
    }

    fn slow(
        answer: fn(usize) -> Result<Credentials, String>,
    ) -> (Arc<CredentialCache>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let provider = Slow {
            calls: calls.clone(),
            answer,
        };
        let cache = CredentialCache::new(
            SharedCredentialsProvider::new(provider),
            Arc::new(FixedClock(UNIX_EPOCH + Duration::from_secs(1_000))),
            Duration::from_secs(10),
        );
        (Arc::new(cache), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn callers_that_give_up_neither_cancel_nor_repeat_the_load_they_waited_on() {
        let (cache, calls) = slow(|n| {
            Ok(Credentials::new(
                format!("AKID{n}"),
                "secret",
                None,
                Some(UNIX_EPOCH + Duration::from_secs(100_000)),
                "test",
            ))
        });
        // Ten callers with 200 ms deadlines, one after another, while the
        // provider takes 3 s.
        for _ in 0..10 {
            let gave_up = tokio::time::timeout(Duration::from_millis(200), cache.get()).await;
            assert!(gave_up.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one provider call for all");
        // The load they left goes on, and serves the next caller.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_held_for_a_growing_jittered_time() {
        let (cache, calls) = slow(|_| Err("throttled".into()));
        assert!(cache.get().await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Held: answered at once, without asking the provider.
        for _ in 0..100 {
            let held = tokio::time::timeout(Duration::from_millis(1), cache.get()).await;
            assert!(held.expect("answered at once").is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The first hold is at most FIRST_FAILURE_HOLD; the next failure's
        // at least half of twice that.
        tokio::time::sleep(FIRST_FAILURE_HOLD).await;
        assert!(cache.get().await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(FIRST_FAILURE_HOLD - Duration::from_millis(1)).await;
        assert!(cache.get().await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the second hold is longer");
        for n in 1..10 {
            let hold = failure_hold(n);
            assert!(hold >= (FIRST_FAILURE_HOLD * (1 << (n - 1))).min(MAX_FAILURE_HOLD) / 2);
            assert!(hold <= MAX_FAILURE_HOLD);
        }
    }
}
