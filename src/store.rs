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

/// The largest value read back: the sidecar's own records are a few hundred
/// bytes. Anything larger was not written by a sidecar, and is refused in
/// Redis itself (a script), so it never crosses the network or our memory.
pub(crate) const MAX_VALUE_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state store is unreachable: {0}")]
    Unreachable(String),
    /// A value at one of our keys that no sidecar wrote: too large, or not
    /// a record we can read. Treated like an outage of that key.
    #[error("the state store holds an unreadable record: {0}")]
    Unreadable(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        // Redis errors name the command and the server, never a value.
        StoreError::Unreachable(e.to_string())
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
    ///
    /// Every key the sidecar writes expires. One found without an expiry was
    /// planted (or left by a bug): it gets `ttl` now, so it cannot hold a
    /// lease or an idempotency key forever.
    pub(crate) async fn insert_new(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        const INSERT_NEW: &str = r"if redis.call('pttl', KEYS[1]) == -1 then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0";
        let set: i64 = self
            .bounded(|mut c| async move {
                redis::Script::new(INSERT_NEW)
                    .key(prefixed(key))
                    .arg(value)
                    .arg(millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(set == 1)
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

    /// The value at `key`, if it is at most [`MAX_VALUE_BYTES`]; a larger
    /// one is refused in Redis, before it is sent.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        const GET: &str = r"local n = redis.call('strlen', KEYS[1])
if n > tonumber(ARGV[1]) then
  return {2, tostring(n)}
end
local v = redis.call('get', KEYS[1])
if not v then
  return {0, ''}
end
return {1, v}";
        let (found, value): (i64, String) = self
            .bounded(|mut c| async move {
                redis::Script::new(GET)
                    .key(prefixed(key))
                    .arg(MAX_VALUE_BYTES)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match found {
            0 => Ok(None),
            1 => Ok(Some(value)),
            _ => Err(StoreError::Unreadable(format!(
                "{value} bytes at one key, past the {MAX_VALUE_BYTES} a record may have"
            ))),
        }
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
            .map_err(|_| StoreError::Unreachable(format!("no answer within {:?}", self.timeout)))?
    }
}

fn prefixed(key: &str) -> String {
    format!("{PREFIX}{key}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
