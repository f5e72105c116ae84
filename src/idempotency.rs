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

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    instruments,
    kvs::{
        Call, Error, Joined, ServiceError,
        arn::ChannelArn,
        endpoint::{Peer, Role},
    },
    store::{SharedStore, StoreError},
};

/// A keyed join's answer when it is not the join's own outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LedgerError {
    /// The key was given earlier, within the window, for another channel,
    /// role or client id: nothing was sent.
    #[error("the idempotency key was used for another join")]
    KeyReused,
    /// The join's outcome: this call's, or the first call's with the key.
    #[error(transparent)]
    Join(#[from] Error),
}

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

impl JoinTarget {
    pub(crate) fn new(channel: &ChannelArn, peer: Peer<'_>) -> Self {
        Self {
            channel: channel.clone(),
            role: peer.role(),
            client_id: peer.client_id().unwrap_or_default().into(),
        }
    }
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

/// A final outcome as a record holds it: enough to answer a replay on any
/// replica exactly as the first call was answered.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stored {
    Joined {
        request_id: String,
    },
    /// KVS's final refusal, as read (its message already made safe).
    /// Records of earlier releases (`{"failed":{"code":..}}`) do not parse:
    /// they are unreadable, and a retry joins for real.
    Refused {
        http_status: u16,
        code: Option<String>,
        message: String,
        request_id: Option<String>,
    },
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
    /// waiting at its own call's deadline.
    ///
    /// Only final outcomes are kept (a request id, or an error a repeat
    /// would meet again: `Error::is_final`). After a passing failure
    /// (throttled, a server fault, a lost connection, the first caller's
    /// own deadline) nothing is kept, and a retry with the key, or a caller
    /// that was waiting on that join, makes a real attempt: KVS may have
    /// acted on the failed one, so a second offer is possible, as without a
    /// key. Never replaying a passing failure is what lets the retry a key
    /// exists for succeed.
    pub(crate) async fn join<F>(
        &self,
        key: &str,
        target: JoinTarget,
        call: &Call,
        join: impl Fn() -> F,
    ) -> Result<Joined, LedgerError>
    where
        F: Future<Output = Result<Joined, Error>>,
    {
        if let Some(shared) = &self.shared {
            return shared.join(key, target, call.deadline(), join).await;
        }
        let work = async {
            loop {
                let ran = AtomicBool::new(false);
                let first = self
                    .outcomes
                    .entry(key.into())
                    .or_try_insert_with(async {
                        ran.store(true, Ordering::Relaxed);
                        match join().await {
                            Err(passing) if !passing.is_final() => Err(passing),
                            result => Ok(Arc::new(Outcome {
                                target: target.clone(),
                                result,
                            })),
                        }
                    })
                    .await;
                let entry = match first {
                    Ok(entry) => entry,
                    // Our own passing failure: ours to answer, not kept.
                    Err(passing) if ran.load(Ordering::Relaxed) => {
                        return Err((*passing).clone().into());
                    }
                    // Another caller's: not ours to replay; try for real.
                    Err(_) => continue,
                };
                let outcome = entry.value();
                if outcome.target != target {
                    return Err(LedgerError::KeyReused);
                }
                if !entry.is_fresh() {
                    crate::instruments::idempotent_replay();
                }
                return outcome.result.clone().map_err(LedgerError::Join);
            }
        };
        call.bound(work).await
    }
}

// === impl Shared ===

impl Shared {
    async fn join<F>(
        &self,
        key: &str,
        target: JoinTarget,
        deadline: Instant,
        join: impl Fn() -> F,
    ) -> Result<Joined, LedgerError>
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
        let pending = serde_json::to_string(&record).expect("a record is strings and numbers");
        loop {
            match self.store.insert_new(&key, &pending, self.pending).await {
                Ok(true) => {
                    // Frees the key if this call ends without an outcome
                    // (its caller went away), so a retry need not wait out
                    // the pending time.
                    let mut claim = Claim {
                        store: self.store.clone(),
                        key: &key,
                        pending: &pending,
                        held: true,
                    };
                    let result = join().await;
                    if let Some(stored) = Stored::kept(&result) {
                        record.outcome = Some(stored);
                        let done = serde_json::to_string(&record)
                            .expect("a record is strings and numbers");
                        claim.held = false;
                        if let Err(error) = self.store.set(&key, &done, self.window).await {
                            store_error("idempotency", &error);
                        }
                    }
                    // Anything else keeps nothing: the claim's drop frees
                    // the key for a real retry.
                    return result.map_err(LedgerError::Join);
                }
                Ok(false) => {}
                Err(error) => {
                    store_error("idempotency", &error);
                    return join().await.map_err(LedgerError::Join);
                }
            }
            // Another call holds the key: wait for its outcome, or for the
            // key to free up (its replica died, or its join failed in
            // passing) and claim it then.
            loop {
                let found = match self
                    .store
                    .get(&key)
                    .await
                    .and_then(|found| found.map(|found| read_record(&found)).transpose())
                {
                    Ok(found) => found,
                    Err(error) => {
                        store_error("idempotency", &error);
                        return join().await.map_err(LedgerError::Join);
                    }
                };
                let Some((found, outcome)) = found else { break };
                if (&found.channel, &found.role, &found.client_id)
                    != (&record.channel, &record.role, &record.client_id)
                {
                    return Err(LedgerError::KeyReused);
                }
                if let Some(outcome) = outcome {
                    instruments::idempotent_replay();
                    return outcome.map_err(LedgerError::Join);
                }
                if Instant::now() + POLL >= deadline {
                    return Err(Error::DeadlineExceeded.into());
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// A claimed key whose call has no outcome to record (yet): dropping it
/// frees the key, on a task of its own since the call may be going away.
struct Claim<'a> {
    store: Arc<SharedStore>,
    key: &'a str,
    pending: &'a str,
    held: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let (store, key, pending) = (
            self.store.clone(),
            self.key.to_owned(),
            self.pending.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = store.release(&key, &pending).await {
                store_error("idempotency", &error);
            }
        });
    }
}

/// A record read back from the store, with its outcome as the first call
/// met it, checked as far as a sidecar writes them: a request id of AWS's
/// shape, a final refusal KVS could have answered. A record that fails is
/// not replayed.
fn read_record(raw: &str) -> Result<(Record, Option<Result<Joined, Error>>), StoreError> {
    let unreadable = |why: &str| StoreError::Unreadable(format!("idempotency record: {why}"));
    let mut record: Record = serde_json::from_str(raw).map_err(|_| unreadable("not JSON"))?;
    let outcome = match record.outcome.take() {
        None => None,
        Some(Stored::Joined { request_id })
            if request_id.is_empty() || crate::kvs::is_request_id(&request_id) =>
        {
            Some(Ok(Joined { request_id }))
        }
        Some(Stored::Joined { .. }) => return Err(unreadable("not a request id")),
        Some(Stored::Refused {
            http_status,
            code,
            message,
            request_id,
        }) => match ServiceError::restore(http_status, code, message, request_id)
            .map(Error::Service)
        {
            Some(error) if error.is_final() => Some(Err(error)),
            _ => return Err(unreadable("not a final refusal")),
        },
    };
    Ok((record, outcome))
}

// === impl Stored ===

impl Stored {
    /// What the shared ledger keeps of a join's result: a success, or a
    /// final refusal by KVS. A replica's own final failures (its endpoint
    /// settings, its role mappings) say nothing about the key on another
    /// replica, and passing failures are never kept.
    fn kept(result: &Result<Joined, Error>) -> Option<Self> {
        match result {
            Ok(joined) => Some(Stored::Joined {
                request_id: joined.request_id.clone(),
            }),
            Err(error @ Error::Service(e)) if error.is_final() => Some(Stored::Refused {
                http_status: e.http_status,
                code: e.code.clone(),
                message: e.message.clone(),
                request_id: e.request_id.clone(),
            }),
            Err(_) => None,
        }
    }
}

fn store_error(purpose: &'static str, error: &StoreError) {
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

    fn far() -> Call {
        Call::new(Instant::now() + Duration::from_secs(60))
    }

    fn not_found() -> Error {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-amzn-requestid", "rid-9".parse().unwrap());
        Error::Service(crate::kvs::ServiceError::from_response(
            404,
            &headers,
            br#"{"__type":"ResourceNotFoundException","message":"no such channel"}"#,
        ))
    }

    #[tokio::test]
    async fn a_repeat_answers_the_first_outcome_and_sends_nothing() {
        let ledger = JoinLedger::new(Duration::from_secs(600), 100);
        let joins = Arc::new(AtomicUsize::new(0));
        let join = |id: &'static str| {
            let joins = joins.clone();
            move || {
                let joins = joins.clone();
                async move {
                    joins.fetch_add(1, Ordering::SeqCst);
                    Ok(Joined {
                        request_id: id.into(),
                    })
                }
            }
        };
        let a = target("cam", Role::Master);
        let first = ledger.join("k1", a.clone(), &far(), join("req-1")).await;
        let again = ledger.join("k1", a.clone(), &far(), join("req-2")).await;
        assert_eq!(first.unwrap().request_id, "req-1");
        assert_eq!(again.unwrap().request_id, "req-1");
        assert_eq!(joins.load(Ordering::SeqCst), 1);

        // Final errors are outcomes too.
        let failed = ledger
            .join("k2", a.clone(), &far(), || async { Err(not_found()) })
            .await;
        let replayed = ledger.join("k2", a.clone(), &far(), join("req-3")).await;
        assert!(matches!(failed, Err(LedgerError::Join(Error::Service(_)))));
        assert!(
            matches!(replayed, Err(LedgerError::Join(Error::Service(_)))),
            "{replayed:?}"
        );
        assert_eq!(joins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_passing_failure_is_not_kept_and_a_retry_joins_for_real() {
        let ledger = JoinLedger::new(Duration::from_secs(600), 100);
        let a = target("cam", Role::Master);
        for passing in [
            Error::DeadlineExceeded,
            Error::Transport("reset".into()),
            Error::AttemptTimeout(Duration::from_secs(5)),
        ] {
            let key = format!("{passing:?}");
            let failed = ledger
                .join(&key, a.clone(), &far(), || {
                    let passing = passing.clone();
                    async move { Err(passing) }
                })
                .await;
            assert!(failed.is_err());
            let retried = ledger
                .join(&key, a.clone(), &far(), || async {
                    Ok(Joined {
                        request_id: "retried".into(),
                    })
                })
                .await;
            assert_eq!(retried.unwrap().request_id, "retried", "after {key}");
        }
    }

    #[tokio::test]
    async fn a_caller_waiting_on_a_join_that_fails_in_passing_makes_its_own_attempt() {
        let ledger = Arc::new(JoinLedger::new(Duration::from_secs(600), 100));
        let a = target("cam", Role::Master);
        let first = tokio::spawn({
            let (ledger, a) = (ledger.clone(), a.clone());
            async move {
                ledger
                    .join("k", a, &far(), || async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(Error::DeadlineExceeded)
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = ledger
            .join("k", a, &far(), || async {
                Ok(Joined {
                    request_id: "own".into(),
                })
            })
            .await;
        // Never the first caller's deadline.
        assert_eq!(waiter.unwrap().request_id, "own");
        assert!(matches!(
            first.await.unwrap(),
            Err(LedgerError::Join(Error::DeadlineExceeded))
        ));
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
            .join("k", target("cam", Role::Master), &far(), ok)
            .await
            .unwrap();
        for other in [target("other", Role::Master), target("cam", Role::Viewer)] {
            let refused = ledger.join("k", other, &far(), ok).await;
            assert!(
                matches!(refused, Err(LedgerError::KeyReused)),
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
            move || {
                let joins = joins.clone();
                async move {
                    joins.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(Joined {
                        request_id: "slow".into(),
                    })
                }
            }
        };
        let a = target("cam", Role::Master);
        let first = tokio::spawn({
            let (ledger, a) = (ledger.clone(), a.clone());
            async move { ledger.join("k", a, &far(), slow).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let in_flight = || async { unreachable!("the first call is in flight") };
        let impatient = ledger
            .join(
                "k",
                a.clone(),
                &Call::new(Instant::now() + Duration::from_millis(20)),
                in_flight,
            )
            .await;
        assert!(matches!(
            impatient,
            Err(LedgerError::Join(Error::DeadlineExceeded))
        ));
        let patient = ledger.join("k", a, &far(), in_flight).await;
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
                .join(&format!("key-{i}"), a.clone(), &far(), || async {
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

    #[test]
    fn records_no_sidecar_writes_are_unreadable() {
        let record = |outcome: &str| {
            format!(r#"{{"channel":"c","role":"MASTER","client_id":"","outcome":{outcome}}}"#)
        };
        let joined = record(r#"{"joined":{"request_id":"2b1f6c3e-1111-4222-a333-123456789abc"}}"#);
        assert!(matches!(read_record(&joined), Ok((_, Some(Ok(_))))));
        let refused = record(
            r#"{"refused":{"http_status":404,"code":"ResourceNotFoundException","message":"no such channel","request_id":"rid-1"}}"#,
        );
        assert!(matches!(
            read_record(&refused),
            Ok((_, Some(Err(Error::Service(_)))))
        ));
        for planted in [
            "not json".to_owned(),
            record(r#"{"joined":{"request_id":"forged id with spaces"}}"#),
            // The shape of an earlier release.
            record(r#"{"failed":{"code":5,"message":"m"}}"#),
            // Not final: a retry must join.
            record(r#"{"refused":{"http_status":503,"code":null,"message":"","request_id":null}}"#),
            record(
                r#"{"refused":{"http_status":200,"code":"ResourceNotFoundException","message":"","request_id":null}}"#,
            ),
            record(
                r#"{"refused":{"http_status":404,"code":"Not a code","message":"","request_id":null}}"#,
            ),
            record(
                r#"{"refused":{"http_status":404,"code":"ResourceNotFoundException","message":"","request_id":"bad id!"}}"#,
            ),
        ] {
            assert!(
                matches!(read_record(&planted), Err(StoreError::Unreadable(_))),
                "{planted}"
            );
        }
    }

    /// A replay from the shared store answers what the first call met, to
    /// the request id: the same status the first caller got.
    #[test]
    fn a_stored_refusal_restores_the_first_callers_error() {
        let first = not_found();
        let stored = Stored::kept(&Err(first.clone())).expect("a final refusal is kept");
        let raw = serde_json::to_string(&Record {
            channel: "c".into(),
            role: "MASTER".into(),
            client_id: String::new(),
            outcome: Some(stored),
        })
        .unwrap();
        let (_, outcome) = read_record(&raw).unwrap();
        let (Error::Service(replayed), Error::Service(first)) =
            (outcome.unwrap().unwrap_err(), first)
        else {
            panic!("not a KVS refusal");
        };
        assert_eq!(
            (
                replayed.http_status,
                replayed.code,
                replayed.kind,
                replayed.message,
                replayed.request_id
            ),
            (
                first.http_status,
                first.code,
                first.kind,
                first.message,
                first.request_id
            )
        );
        // Passing failures and a replica's own final failures are not kept.
        for not_kept in [
            Error::DeadlineExceeded,
            Error::CredentialsDenied("no role".into()),
        ] {
            assert!(Stored::kept(&Err(not_kept)).is_none());
        }
    }
}
