//! State shared by a fleet of sidecars, in Redis: idempotency outcomes
//! (so a join retried on another replica sends nothing) and session leases
//! (so one replica maintains a channel's session). Without
//! `--state-store`, each sidecar keeps both in its own memory.
//!
//! Every key expires (outcomes with the idempotency window, leases unless
//! renewed), so a replica that dies leaves nothing behind for long. Every
//! operation is bounded by a timeout: an unreachable Redis is an error the
//! caller decides about, never a hang.

use std::time::Duration;

use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::OnceCell;

/// Prefix of every key the sidecar writes, so a shared Redis stays tidy.
const PREFIX: &str = "kvs-sidecar:";

#[derive(Debug, thiserror::Error)]
#[error("the state store is unreachable: {0}")]
pub struct StoreError(String);

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // Redis errors name the command and the server, never a value.
        StoreError(e.to_string())
    }
}

pub(crate) struct SharedStore {
    client: redis::Client,
    /// Made on first use, so a Redis that is down at start does not stop
    /// the sidecar; it then reconnects by itself.
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    /// This process's identity in the leases it holds.
    token: String,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("SharedStore").finish_non_exhaustive()
    }
}

// === impl SharedStore ===

impl SharedStore {
    /// A store at `url` (`redis://[:password@]host:port[/db]`); nothing is
    /// connected yet.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            timeout,
            token,
        })
    }

    /// This process's lease token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Sets `key` to `value` for `ttl` unless it exists; true if it was set.
    pub(crate) async fn insert_new(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(millis(ttl)));
        let set: Option<String> = self
            .bounded(|mut c| async move { c.set_options(prefixed(key), value, options).await })
            .await?;
        Ok(set.is_some())
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.bounded(|mut c| async move { c.pset_ex(prefixed(key), value, millis(ttl)).await })
            .await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.bounded(|mut c| async move { c.get(prefixed(key)).await })
            .await
    }

    /// Extends `key`'s time to live if it still holds `value`; false if it
    /// does not (the lease was lost).
    pub(crate) async fn renew(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";
        let renewed: i64 = self
            .bounded(|mut c| async move {
                redis::Script::new(RENEW)
                    .key(prefixed(key))
                    .arg(value)
                    .arg(millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes `key` if it still holds `value`.
    pub(crate) async fn release(&self, key: &str, value: &str) -> Result<(), StoreError> {
        const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0";
        let _: i64 = self
            .bounded(|mut c| async move {
                redis::Script::new(RELEASE)
                    .key(prefixed(key))
                    .arg(value)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Runs `op` on the connection, within the timeout.
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self
                .conn
                .get_or_try_init(|| {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    self.client.get_connection_manager_with_config(config)
                })
                .await?
                .clone();
            Ok(op(conn).await?)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError(format!("no answer within {:?}", self.timeout)))?
    }
}

fn prefixed(key: &str) -> String {
    format!("{PREFIX}{key}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
