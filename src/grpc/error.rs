//! What a call of the storage service can fail with, by where it failed:
//! the edge's own refusals (a field, the allow-list, a bound of the
//! sidecar's), a capability's (storage set-up, playback, recording,
//! sessions, the idempotency ledger), or KVS's ([`CallError::Upstream`],
//! which holds only what the KVS client can produce). The texts are here,
//! beside each variant; `status.rs` is the one place a `CallError` becomes
//! a gRPC status.

use std::time::Duration;

use crate::{
    idempotency::LedgerError,
    kvs::{
        self,
        arn::{ChannelArn, InvalidField, ValidationError},
    },
    playback::PlaybackError,
    recording,
    session::Refusal,
    storage::EnsureError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// A field of the request is malformed or out of its bounds; nothing
    /// was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The channel is outside `--allowed-channels`; nothing was sent.
    #[error("channel_arn: this sidecar is not allowed to act on {0}")]
    NotAllowed(ChannelArn),
    /// A bound of the sidecar's own is reached; nothing was sent.
    #[error(transparent)]
    Shed(#[from] Shed),
    /// The call's deadline passed before the call was served.
    #[error(transparent)]
    Late(#[from] Late),
    /// The sidecar is shutting down and takes no new session.
    #[error("the sidecar is draining")]
    Draining,
    /// A session stream could not start.
    #[error(transparent)]
    Session(#[from] SessionRefused),
    /// A session stream ended: its supervisor gave up.
    #[error(transparent)]
    SessionEnded(#[from] SessionEnded),
    #[error(transparent)]
    Storage(EnsureError),
    #[error(transparent)]
    Playback(PlaybackError),
    #[error(transparent)]
    Recording(recording::Refusal),
    /// What the KVS client met: KVS's answer, or the way to it.
    #[error(transparent)]
    Upstream(#[from] kvs::Error),
}

/// The sidecar's bounds on work in flight.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Shed {
    #[error("the sidecar is at its limit of {0} calls in flight; retry with backoff")]
    Calls(usize),
    #[error(
        "this connection has {0} calls in flight and as many waiting, its limit; retry with backoff or open another connection"
    )]
    ConnectionCalls(usize),
    #[error(
        "{0} session streams are already waiting for their `start`; send `start` with the stream, retry with backoff"
    )]
    PendingStarts(usize),
    #[error("this sidecar already serves {0} WatchRecording streams, its limit")]
    Watchers(usize),
    /// The request is larger than `--max-request-bytes`.
    #[error("request larger than {0} bytes (--max-request-bytes)")]
    TooLarge(usize),
}

/// What the call's deadline passed while waiting for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Late {
    #[error("the request did not arrive within its deadline")]
    Request,
    #[error("no call slot of this connection came free within the call's deadline")]
    ConnectionSlot,
    #[error("start: no first message within {0:?}")]
    Start(Duration),
}

/// A session stream refused at its start.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.refusal, .channel, .client_id))]
pub(crate) struct SessionRefused {
    pub refusal: Refusal,
    pub channel: ChannelArn,
    pub client_id: String,
}

fn describe(refusal: &Refusal, channel: &ChannelArn, client_id: &str) -> String {
    match refusal {
        Refusal::AlreadyMaintained => {
            format!("{channel} (client id {client_id:?}) is already maintained by this sidecar")
        }
        Refusal::MaintainedElsewhere => {
            format!("{channel} (client id {client_id:?}) is already maintained by another replica")
        }
        Refusal::StoreUnavailable => {
            "the shared state store is unreachable, so the session cannot be leased".into()
        }
        Refusal::AtCapacity(n) => format!("this sidecar already maintains {n} sessions, its limit"),
        Refusal::Draining => "the sidecar is draining".into(),
    }
}

/// Why a session's supervisor gave up; the stream ends with this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnded {
    #[error("gave up: too many failed joins in the failure window{}", last(.0.as_ref()))]
    FailureBudget(Option<kvs::Error>),
    /// A final error of KVS's, whose status the stream ends with.
    #[error("gave up on a final error")]
    Final,
    #[error("draining: the sidecar is shutting down")]
    Draining,
    #[error("the session's lease in the shared store was lost; another replica may maintain it")]
    LeaseLost,
}

fn last(error: Option<&kvs::Error>) -> String {
    error.map_or_else(String::new, |e| format!("; the last: {e}"))
}

impl From<LedgerError> for CallError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::KeyReused => ValidationError::Constraint(
                "was used for another channel, role or client id within the idempotency window",
            )
            .of("idempotency_key")
            .into(),
            LedgerError::Join(error) => CallError::Upstream(error),
        }
    }
}

impl From<EnsureError> for CallError {
    fn from(error: EnsureError) -> Self {
        match error {
            EnsureError::Invalid(invalid) => CallError::Invalid(invalid),
            EnsureError::Kvs(error) => CallError::Upstream(error),
            refusal => CallError::Storage(refusal),
        }
    }
}

impl From<PlaybackError> for CallError {
    fn from(error: PlaybackError) -> Self {
        match error {
            PlaybackError::Kvs(error) => CallError::Upstream(error),
            refusal => CallError::Playback(refusal),
        }
    }
}

impl From<recording::Refusal> for CallError {
    fn from(refusal: recording::Refusal) -> Self {
        match refusal {
            recording::Refusal::Kvs(error) => CallError::Upstream(error),
            refusal => CallError::Recording(refusal),
        }
    }
}
