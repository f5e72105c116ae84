//! Idempotent joins. Each join that reaches KVS makes it send an SDP offer,
//! so a caller that retries a join whose answer it lost could cause a
//! second offer. With an idempotency key, a repeat within the window sends
//! nothing: it answers the first call's outcome (its request id or its
//! error), waiting for it while it is in flight.
//!
//! In memory, the ledger is keyed by what callers send, so it is bounded in
//! entries and in time (moka: capacity, time to live); concurrent calls
//! with one key share one join (moka's single flight). With a shared store
//! (Redis), the first replica to claim a key joins and records the outcome;
//! the others wait for it by polling, within their deadlines. If the store
//! cannot be reached, joins go ahead without idempotency (and
//! `kvs_sidecar_state_store_errors_total` counts it): a join must not fail
//! because its safety net is down.

use std::{sync::Arc, time::Duration};

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    grpc::status,
    instruments,
    kvs::{Error, Joined, arn::ChannelArn, arn::ValidationError, endpoint::Role},
    store::SharedStore,
};

/// How often a replica waiting on another's join looks for its outcome.
const POLL: Duration = Duration::from_millis(50);

/// What a join was for: a key may only be repeated for the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinTarget {
    pub channel: ChannelArn,
    pub role: Role,
    /// The viewer's client id; empty for the master.
    pub client_id: Box<str>,
}

#[derive(Debug)]
struct Outcome {
    target: JoinTarget,
    result: Result<Joined, Error>,
}

#[derive(Debug, Clone)]
pub(crate) struct JoinLedger {
    outcomes: Cache<Box<str>, Arc<Outcome>>,
    shared: Option<Shared>,
}

#[derive(Debug, Clone)]
struct Shared {
    store: Arc<SharedStore>,
    window: Duration,
    /// How long a claimed key waits for its outcome before another replica
    /// may claim it: longer than any call.
    pending: Duration,
}

/// A key's record in the shared store.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    channel: String,
    role: String,
    client_id: String,
    /// `None` while the first call is in flight.
    outcome: Option<Stored>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored {
    Joined { request_id: String },
    Failed { code: i32, message: String },
}

// === impl JoinLedger ===

impl JoinLedger {
    /// A ledger in this process's memory.
    pub(crate) fn new(window: Duration, capacity: u64) -> Self {
        Self {
            outcomes: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(window)
                .build(),
            shared: None,
        }
    }

    /// A ledger in `store`, shared with every replica using it. A key
    /// claimed by a call that never records its outcome (its replica died)
    /// is free again after `pending`.
    pub(crate) fn shared(store: Arc<SharedStore>, window: Duration, pending: Duration) -> Self {
        Self {
            shared: Some(Shared {
                store,
                window,
                pending,
            }),
            ..Self::new(window, 1)
        }
    }

    /// The outcome of the first join made with `key`, running `join` if
    /// there is none yet. A caller that waits on another's join stops
    /// waiting at its own `deadline`.
    pub(crate) async fn join<F>(
        &self,
        key: &str,
        target: JoinTarget,
        deadline: Instant,
        join: F,
    ) -> Result<Joined, Error>
    where
        F: Future<Output = Result<Joined, Error>>,
    {
        if let Some(shared) = &self.shared {
            return shared.join(key, target, deadline, join).await;
        }
        let first = self.outcomes.entry(key.into()).or_insert_with(async {
            let result = join.await;
            Arc::new(Outcome {
                target: target.clone(),
                result,
            })
        });
        let entry = tokio::time::timeout_at(deadline, first)
            .await
            .map_err(|_| Error::DeadlineExceeded)?;
        let outcome = entry.value();
        if outcome.target != target {
            return Err(Error::InvalidRequest {
                field: "idempotency_key",
                reason: ValidationError::KeyReused,
            });
        }
        if !entry.is_fresh() {
            crate::instruments::idempotent_replay();
        }
        outcome.result.clone()
    }
}

// === impl Shared ===

impl Shared {
    async fn join<F>(
        &self,
        key: &str,
        target: JoinTarget,
        deadline: Instant,
        join: F,
    ) -> Result<Joined, Error>
    where
        F: Future<Output = Result<Joined, Error>>,
    {
        let key = format!("idempotency:{key}");
        let mut record = Record {
            channel: target.channel.to_string(),
            role: target.role.as_str().to_owned(),
            client_id: target.client_id.to_string(),
            outcome: None,
        };
        let pending = serde_json::to_string(&record).unwrap_or_default();
        loop {
            match self.store.insert_new(&key, &pending, self.pending).await {
                Ok(true) => {
                    let result = join.await;
                    record.outcome = Some(Stored::from(&result));
                    let done = serde_json::to_string(&record).unwrap_or_default();
                    if let Err(error) = self.store.set(&key, &done, self.window).await {
                        store_error("idempotency", &error);
                    }
                    return result;
                }
                Ok(false) => {}
                Err(error) => {
                    store_error("idempotency", &error);
                    return join.await;
                }
            }
            // Another call holds the key: wait for its outcome, or for the
            // key to free up (its replica died) and claim it then.
            loop {
                let found = match self.store.get(&key).await {
                    Ok(found) => found,
                    Err(error) => {
                        store_error("idempotency", &error);
                        return join.await;
                    }
                };
                let Some(found) = found else { break };
                let found: Record = serde_json::from_str(&found).map_err(|_| {
                    Error::MalformedResponse("an unreadable idempotency record".into())
                })?;
                if (&found.channel, &found.role, &found.client_id)
                    != (&record.channel, &record.role, &record.client_id)
                {
                    return Err(Error::InvalidRequest {
                        field: "idempotency_key",
                        reason: ValidationError::KeyReused,
                    });
                }
                if let Some(outcome) = found.outcome {
                    instruments::idempotent_replay();
                    return outcome.into();
                }
                if Instant::now() + POLL >= deadline {
                    return Err(Error::DeadlineExceeded);
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

impl From<&Result<Joined, Error>> for Stored {
    fn from(result: &Result<Joined, Error>) -> Self {
        match result {
            Ok(joined) => Stored::Joined {
                request_id: joined.request_id.clone(),
            },
            Err(error) => Stored::Failed {
                code: status::code(error).into(),
                message: status::to_status(error).message().to_owned(),
            },
        }
    }
}

impl From<Stored> for Result<Joined, Error> {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Joined { request_id } => Ok(Joined { request_id }),
            Stored::Failed { code, message } => Err(Error::Replayed {
                code,
                message: message.into(),
            }),
        }
    }
}

fn store_error(purpose: &'static str, error: &crate::store::StoreError) {
    instruments::state_store_error(purpose);
    tracing::warn!(%error, purpose, "state store unreachable; going on without it");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn target(name: &str, role: Role) -> JoinTarget {
        JoinTarget {
            channel: ChannelArn::parse(&format!(
                "arn:aws:kinesisvideo:us-west-2:123456789012:channel/{name}/1"
            ))
            .unwrap(),
            role,
            client_id: "".into(),
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_repeat_answers_the_first_outcome_and_sends_nothing() {
        let ledger = JoinLedger::new(Duration::from_secs(600), 100);
        let joins = Arc::new(AtomicUsize::new(0));
        let join = |id: &'static str| {
            let joins = joins.clone();
            async move {
                joins.fetch_add(1, Ordering::SeqCst);
                Ok(Joined {
                    request_id: id.into(),
                })
            }
        };
        let a = target("cam", Role::Master);
        let first = ledger.join("k1", a.clone(), far(), join("req-1")).await;
        let again = ledger.join("k1", a.clone(), far(), join("req-2")).await;
        assert_eq!(first.unwrap().request_id, "req-1");
        assert_eq!(again.unwrap().request_id, "req-1");
        assert_eq!(joins.load(Ordering::SeqCst), 1);

        // Errors are outcomes too.
        let failed = ledger
            .join("k2", a.clone(), far(), async {
                Err(Error::DeadlineExceeded)
            })
            .await;
        let replayed = ledger.join("k2", a.clone(), far(), join("req-3")).await;
        assert!(matches!(failed, Err(Error::DeadlineExceeded)));
        assert!(matches!(replayed, Err(Error::DeadlineExceeded)));
        assert_eq!(joins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_key_repeated_for_another_target_is_refused() {
        let ledger = JoinLedger::new(Duration::from_secs(600), 100);
        let ok = || async {
            Ok(Joined {
                request_id: "r".into(),
            })
        };
        ledger
            .join("k", target("cam", Role::Master), far(), ok())
            .await
            .unwrap();
        for other in [target("other", Role::Master), target("cam", Role::Viewer)] {
            let refused = ledger.join("k", other, far(), ok()).await;
            assert!(
                matches!(
                    refused,
                    Err(Error::InvalidRequest {
                        field: "idempotency_key",
                        reason: ValidationError::KeyReused
                    })
                ),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_repeat_in_flight_waits_for_the_first_within_its_own_deadline() {
        let ledger = Arc::new(JoinLedger::new(Duration::from_secs(600), 100));
        let joins = Arc::new(AtomicUsize::new(0));
        let slow = {
            let joins = joins.clone();
            async move {
                joins.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(Joined {
                    request_id: "slow".into(),
                })
            }
        };
        let a = target("cam", Role::Master);
        let first = tokio::spawn({
            let (ledger, a) = (ledger.clone(), a.clone());
            async move { ledger.join("k", a, far(), slow).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let impatient = ledger
            .join(
                "k",
                a.clone(),
                Instant::now() + Duration::from_millis(20),
                async { unreachable!("the first call is in flight") },
            )
            .await;
        assert!(matches!(impatient, Err(Error::DeadlineExceeded)));
        let patient = ledger
            .join("k", a, far(), async {
                unreachable!("the first call is in flight")
            })
            .await;
        assert_eq!(patient.unwrap().request_id, "slow");
        assert_eq!(first.await.unwrap().unwrap().request_id, "slow");
        assert_eq!(joins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn holds_at_most_its_capacity_of_keys() {
        let ledger = JoinLedger::new(Duration::from_secs(600), 1_000);
        let a = target("cam", Role::Master);
        for i in 0..20_000 {
            ledger
                .join(&format!("key-{i}"), a.clone(), far(), async {
                    Ok(Joined {
                        request_id: "r".into(),
                    })
                })
                .await
                .unwrap();
        }
        ledger.outcomes.run_pending_tasks().await;
        let held = ledger.outcomes.entry_count();
        assert!(held <= 1_000, "{held} keys held");
    }
}
