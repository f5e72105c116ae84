//! The registry of maintained sessions, and the claim each one holds.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use super::lease::Lease;
use crate::{instruments, kvs::arn::ChannelArn, store::SharedStore};

/// Why a session could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    AlreadyMaintained,
    /// Another replica holds the session's lease.
    MaintainedElsewhere,
    AtCapacity(usize),
    Draining,
    /// The shared store could not be reached to take the lease.
    StoreUnavailable,
}

type Key = (ChannelArn, Box<str>);

/// The maintained sessions of this sidecar.
#[derive(Debug)]
pub(crate) struct Sessions {
    active: Mutex<HashSet<Key>>,
    capacity: usize,
    pub(super) draining: watch::Sender<bool>,
    /// The fleet's store and the lease time, when replicas share sessions.
    shared: Option<(Arc<SharedStore>, Duration)>,
}

/// A session's place in the registry (and its lease), given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(super) sessions: Arc<Sessions>,
    key: Key,
    lease: Option<Lease>,
}

// === impl Sessions ===

impl Sessions {
    /// A registry of this process's sessions; with `shared`, leased in the
    /// fleet's store for `lease` at a time.
    pub(crate) fn new(capacity: usize, shared: Option<(Arc<SharedStore>, Duration)>) -> Arc<Self> {
        Arc::new(Self {
            active: Mutex::default(),
            capacity,
            draining: watch::Sender::new(false),
            shared,
        })
    }

    /// Takes the one place for `channel` and `client_id`: in this process,
    /// then, with a shared store, in the fleet.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        channel: &ChannelArn,
        client_id: &str,
    ) -> Result<Claim, Refusal> {
        if *self.draining.borrow() {
            return Err(Refusal::Draining);
        }
        let key = (channel.clone(), Box::<str>::from(client_id));
        {
            let mut active = self.lock();
            if active.len() >= self.capacity {
                return Err(Refusal::AtCapacity(self.capacity));
            }
            if !active.insert(key.clone()) {
                return Err(Refusal::AlreadyMaintained);
            }
            instruments::sessions_maintained(active.len());
        }
        // From here on, dropping the claim gives the place back.
        let mut claim = Claim {
            sessions: self.clone(),
            key,
            lease: None,
        };
        if let Some((store, ttl)) = &self.shared {
            let lease_key = format!("session:{channel}:{client_id}");
            match store.insert_new(&lease_key, store.token(), *ttl).await {
                Ok(true) => claim.lease = Some(Lease::keep(store.clone(), lease_key, *ttl)),
                Ok(false) => return Err(Refusal::MaintainedElsewhere),
                Err(error) => {
                    instruments::state_store_error("lease");
                    tracing::warn!(%error, "state store unreachable; cannot lease the session");
                    return Err(Refusal::StoreUnavailable);
                }
            }
        }
        Ok(claim)
    }

    /// Tells every supervisor to stop (SIGTERM), and refuses new ones.
    /// Resolves once the sidecar drains.
    pub(crate) async fn draining(&self) {
        let _ = self.draining.subscribe().wait_for(|d| *d).await;
    }

    pub(crate) fn drain(&self) {
        self.draining.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        // Every update is one insert or remove; poison cannot leave it torn.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl Claim ===

impl Claim {
    /// Resolves if the lease was lost; never without a shared store.
    pub(super) async fn lost(&mut self) {
        match &mut self.lease {
            Some(lease) => {
                let _ = lease.lost.wait_for(|lost| *lost).await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut active = self.sessions.lock();
        active.remove(&self.key);
        instruments::sessions_maintained(active.len());
        drop(active);
        if let (Some(lease), Some((store, _))) = (self.lease.take(), &self.sessions.shared) {
            lease.renewal.abort();
            // Give the lease up now rather than make the next replica wait
            // for it to expire.
            let store = store.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if store.release(&lease.key, store.token()).await.is_err() {
                        instruments::state_store_error("lease");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(name: &str) -> ChannelArn {
        ChannelArn::for_tests(name)
    }

    #[tokio::test]
    async fn holds_one_claim_per_session_at_most_its_capacity_and_frees_on_drop() {
        let sessions = Sessions::new(2, None);
        let a = sessions.claim(&arn("a"), "").await.unwrap();
        assert_eq!(
            sessions.claim(&arn("a"), "").await.unwrap_err(),
            Refusal::AlreadyMaintained
        );
        // A viewer's session on the same channel is another session.
        let viewer = sessions.claim(&arn("a"), "v-1").await.unwrap();
        assert_eq!(
            sessions.claim(&arn("b"), "").await.unwrap_err(),
            Refusal::AtCapacity(2),
            "bounded whatever channels callers send"
        );
        drop(a);
        let b = sessions.claim(&arn("b"), "").await.unwrap();
        sessions.drain();
        assert_eq!(
            sessions.claim(&arn("c"), "").await.unwrap_err(),
            Refusal::Draining
        );
        drop((viewer, b));
        assert!(sessions.lock().is_empty(), "every claim given back");
    }
}
