//! A maintained session's lease in the shared store, so that one replica
//! of a fleet maintains it.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{instruments, store::SharedStore};

/// A session's lease in the shared store, renewed in the background.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) key: String,
    pub(super) renewal: JoinHandle<()>,
    pub(super) lost: watch::Receiver<bool>,
}
// === impl Lease ===

impl Lease {
    /// Renews `key` every third of `ttl` until aborted; marks it lost when
    /// another holder has it, or when it could not be renewed before it
    /// would have expired.
    pub(super) fn keep(store: Arc<SharedStore>, key: String, ttl: Duration) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let renewal = tokio::spawn({
            let key = key.clone();
            async move {
                let mut held_until = Instant::now() + ttl;
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.renew(&key, store.token(), ttl).await {
                        Ok(true) => held_until = Instant::now() + ttl,
                        Ok(false) => break,
                        Err(_) => {
                            instruments::state_store_error("lease");
                            if Instant::now() + ttl / 3 >= held_until {
                                break;
                            }
                        }
                    }
                }
                let _ = lost_tx.send(true);
            }
        });
        Self { key, renewal, lost }
    }
}
