//! The one place errors become gRPC statuses.
//!
//! When KVS answered, the status carries `google.rpc.ErrorInfo` (reason: the
//! KVS error code) and `google.rpc.RequestInfo` (request id: KVS's
//! `x-amzn-RequestId`), and the request id as `x-amzn-requestid` metadata,
//! for clients that do not decode rich error details.

use std::collections::HashMap;

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

use super::error::{CallError, SessionEnded};
use crate::{
    kvs::{Error, ErrorKind, ServiceError},
    playback::PlaybackError,
    recording::Refusal as RecordingRefusal,
    session::Refusal as SessionRefusal,
    storage::EnsureError,
};

/// The gRPC code for each error class.
pub(crate) fn code(err: &CallError) -> Code {
    match err {
        CallError::Invalid(_) => Code::InvalidArgument,
        CallError::NotAllowed(_) => Code::PermissionDenied,
        CallError::Shed(_) => Code::ResourceExhausted,
        CallError::Late(_) => Code::DeadlineExceeded,
        CallError::Draining => Code::Unavailable,
        CallError::Session(refused) => match refused.refusal {
            SessionRefusal::AlreadyMaintained | SessionRefusal::MaintainedElsewhere => {
                Code::AlreadyExists
            }
            SessionRefusal::AtCapacity(_) => Code::ResourceExhausted,
            SessionRefusal::StoreUnavailable | SessionRefusal::Draining => Code::Unavailable,
        },
        CallError::SessionEnded(ended) => match ended {
            SessionEnded::Final => Code::Unknown,
            SessionEnded::FailureBudget(_) | SessionEnded::Draining | SessionEnded::LeaseLost => {
                Code::Unavailable
            }
        },
        CallError::Storage(refusal) => match refusal {
            EnsureError::Disabled => Code::PermissionDenied,
            EnsureError::Precondition(_) => Code::FailedPrecondition,
            EnsureError::Busy => Code::ResourceExhausted,
            EnsureError::Invalid(_) => Code::InvalidArgument,
            EnsureError::Kvs(e) => kvs_code(e),
        },
        CallError::Playback(refusal) => match refusal {
            PlaybackError::NothingToPlay(_) => Code::FailedPrecondition,
            PlaybackError::Kvs(e) => kvs_code(e),
        },
        CallError::Recording(refusal) => match refusal {
            RecordingRefusal::StorageDisabled(_) => Code::FailedPrecondition,
            RecordingRefusal::Denied(_) => Code::PermissionDenied,
            RecordingRefusal::TooManyStreams(_) | RecordingRefusal::TooManyWindows => {
                Code::ResourceExhausted
            }
            RecordingRefusal::Kvs(e) => kvs_code(e),
        },
        CallError::Upstream(e) => kvs_code(e),
    }
}

/// The gRPC code for what the KVS client met.
pub(crate) fn kvs_code(err: &Error) -> Code {
    match err {
        // The sidecar's FIPS / dual-stack settings cannot reach this
        // partition: its setup, not the request, must change.
        Error::Endpoint(_) => Code::FailedPrecondition,
        Error::CredentialsDenied(_) => Code::PermissionDenied,
        Error::Service(e) => service_code(e),
        Error::Transport(_)
        | Error::Connect(_)
        | Error::AttemptTimeout(_)
        | Error::Credentials(_) => Code::Unavailable,
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        Error::RateLimited { .. } | Error::StreamPaced { .. } => Code::ResourceExhausted,
        // Out of retries while being throttled is still throttling.
        Error::RetryQuotaExhausted(last) => match kvs_code(last) {
            Code::ResourceExhausted => Code::ResourceExhausted,
            _ => Code::Unavailable,
        },
        Error::Signing(_) | Error::MalformedResponse(_) => Code::Internal,
    }
}

fn service_code(e: &ServiceError) -> Code {
    match e.kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AccessDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::ResourceInUse => Code::FailedPrecondition,
        // Another writer changed the stream between our read and write.
        ErrorKind::VersionMismatch => Code::Aborted,
        // The stream is in a state that does not allow the request: fix the
        // stream, not the call.
        ErrorKind::NoDataRetention | ErrorKind::NotPlayable => Code::FailedPrecondition,
        // A quota of the account, not a rate: waiting does not help.
        ErrorKind::AccountLimit => Code::ResourceExhausted,
        ErrorKind::Throttling | ErrorKind::ViewerLimit => Code::ResourceExhausted,
        // KVS rejected the sidecar's own credentials, signature or clock: a
        // fault of this pod's setup, not of the caller's request.
        ErrorKind::ExpiredCredentials | ErrorKind::AuthRejected | ErrorKind::ClockSkew => {
            Code::Unavailable
        }
        ErrorKind::Transient => Code::Unavailable,
        ErrorKind::Other if e.http_status >= 500 => Code::Unavailable,
        ErrorKind::Other => Code::Unknown,
    }
}

/// The `ErrorInfo` reason: KVS's code, except where the sidecar decided
/// something KVS's code alone does not say.
fn reason(e: &ServiceError) -> &str {
    match e.kind {
        ErrorKind::ViewerLimit => "ViewerLimitReached",
        _ => e.code(),
    }
}

/// The status a call answers with.
pub(crate) fn to_status(err: &CallError) -> Status {
    match err {
        CallError::Upstream(e) => kvs_status(e),
        err => Status::new(code(err), err.to_string()),
    }
}

/// The status of a call whose request body failed while it was read:
/// the deadline's status (`request_deadline` fails the body with it), or
/// what the peer's reset says.
pub(crate) fn body_failed(error: crate::BoxError) -> Status {
    Status::from_error(error)
}

/// The status for what the KVS client met. When KVS answered, it carries
/// KVS's error code and request id as rich details and metadata.
pub(crate) fn kvs_status(err: &Error) -> Status {
    let code = kvs_code(err);
    let Error::Service(e) = err else {
        return Status::new(code, err.to_string());
    };
    let mut details = ErrorDetails::new();
    let mut metadata = HashMap::from([("http_status".to_owned(), e.http_status.to_string())]);
    if let Some(id) = &e.request_id {
        metadata.insert("aws_request_id".to_owned(), id.clone());
        details.set_request_info(id.clone(), "");
    }
    details.set_error_info(reason(e), "kinesisvideo.amazonaws.com", metadata);
    let mut status = Status::with_error_details(code, err.to_string(), details);
    if let Some(id) = e
        .request_id
        .as_deref()
        .and_then(|id| MetadataValue::try_from(id).ok())
    {
        status.metadata_mut().insert("x-amzn-requestid", id);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::{
        arn::{ChannelArn, ValidationError},
        endpoint::EndpointError,
    };

    fn kvs(http_status: u16, code: &str) -> Error {
        kvs_saying(http_status, code, "m")
    }

    fn kvs_saying(http_status: u16, code: &str, message: &str) -> Error {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-amzn-requestid", "rid-7".parse().unwrap());
        if !code.is_empty() {
            headers.insert("x-amzn-errortype", code.parse().unwrap());
        }
        let body = serde_json::json!({ "message": message }).to_string();
        Error::Service(ServiceError::from_response(
            http_status,
            &headers,
            body.as_bytes(),
        ))
    }

    #[test]
    fn maps_each_error_class() {
        let cases = [
            (kvs(404, "ResourceNotFoundException"), Code::NotFound),
            (kvs(403, "AccessDeniedException"), Code::PermissionDenied),
            (kvs(400, "InvalidArgumentException"), Code::InvalidArgument),
            (
                kvs(400, "ClientLimitExceededException"),
                Code::ResourceExhausted,
            ),
            (kvs(429, ""), Code::ResourceExhausted),
            (kvs(503, ""), Code::Unavailable),
            (kvs(403, "ExpiredTokenException"), Code::Unavailable),
            (kvs(409, "SomethingNew"), Code::Unknown),
            (kvs(400, "ResourceInUseException"), Code::FailedPrecondition),
            (kvs(400, "VersionMismatchException"), Code::Aborted),
            (
                kvs(400, "NoDataRetentionException"),
                Code::FailedPrecondition,
            ),
            (
                kvs(400, "AccountStreamLimitExceededException"),
                Code::ResourceExhausted,
            ),
            (
                kvs(400, "AccountChannelLimitExceededException"),
                Code::ResourceExhausted,
            ),
            (
                kvs(400, "UnsupportedStreamMediaTypeException"),
                Code::FailedPrecondition,
            ),
            (kvs(401, "NotAuthorizedException"), Code::PermissionDenied),
            (
                kvs_saying(
                    400,
                    "ClientLimitExceededException",
                    "The maximum number of viewers connected to the session has been reached",
                ),
                Code::ResourceExhausted,
            ),
            (
                Error::RetryQuotaExhausted(Box::new(kvs(400, "ClientLimitExceededException"))),
                Code::ResourceExhausted,
            ),
            (
                Error::RetryQuotaExhausted(Box::new(kvs(503, ""))),
                Code::Unavailable,
            ),
            (
                Error::RateLimited {
                    operation: "GetSignalingChannelEndpoint",
                },
                Code::ResourceExhausted,
            ),
            (
                Error::StreamPaced {
                    operation: "ListFragments",
                },
                Code::ResourceExhausted,
            ),
            (Error::Transport("reset".into()), Code::Unavailable),
            (Error::DeadlineExceeded, Code::DeadlineExceeded),
            (
                Error::Endpoint(EndpointError::FipsUnsupported),
                Code::FailedPrecondition,
            ),
            (Error::Credentials("none".into()), Code::Unavailable),
            (
                Error::CredentialsDenied("no role".into()),
                Code::PermissionDenied,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(kvs_code(&err), want, "{err:?}");
            assert_eq!(code(&CallError::Upstream(err)), want);
        }
    }

    #[test]
    fn maps_each_refusal_of_the_sidecars() {
        use super::super::error::{Late, SessionRefused, Shed};
        let session = |refusal| {
            CallError::Session(SessionRefused {
                refusal,
                channel: ChannelArn::for_tests("porch"),
                client_id: String::new(),
            })
        };
        let cases = [
            (
                CallError::Invalid(ValidationError::Empty.of("channel_arn")),
                Code::InvalidArgument,
            ),
            (
                CallError::NotAllowed(ChannelArn::for_tests("porch")),
                Code::PermissionDenied,
            ),
            (CallError::Shed(Shed::Calls(1)), Code::ResourceExhausted),
            (CallError::Late(Late::Request), Code::DeadlineExceeded),
            (
                session(SessionRefusal::AlreadyMaintained),
                Code::AlreadyExists,
            ),
            (
                session(SessionRefusal::AtCapacity(1)),
                Code::ResourceExhausted,
            ),
            (session(SessionRefusal::StoreUnavailable), Code::Unavailable),
            (
                CallError::SessionEnded(SessionEnded::LeaseLost),
                Code::Unavailable,
            ),
            (
                CallError::from(EnsureError::Disabled),
                Code::PermissionDenied,
            ),
            (
                CallError::from(EnsureError::Precondition("p".into())),
                Code::FailedPrecondition,
            ),
            (CallError::from(EnsureError::Busy), Code::ResourceExhausted),
            (
                CallError::from(PlaybackError::NothingToPlay("n".into())),
                Code::FailedPrecondition,
            ),
            (
                CallError::from(RecordingRefusal::TooManyWindows),
                Code::ResourceExhausted,
            ),
            (
                CallError::from(crate::idempotency::LedgerError::KeyReused),
                Code::InvalidArgument,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(code(&err), want, "{err:?}");
            assert_eq!(to_status(&err).message(), err.to_string());
        }
        // A capability's KVS error is KVS's, with its details.
        let from_storage = CallError::from(EnsureError::Kvs(kvs(404, "ResourceNotFoundException")));
        assert_eq!(
            to_status(&from_storage)
                .metadata()
                .get("x-amzn-requestid")
                .unwrap(),
            "rid-7"
        );
    }

    #[test]
    fn carries_request_id_and_message_in_details() {
        let status = kvs_status(&kvs(404, "ResourceNotFoundException"));
        assert_eq!(status.metadata().get("x-amzn-requestid").unwrap(), "rid-7");
        assert!(status.message().contains("ResourceNotFoundException"));
        assert!(status.message().contains(": m"));
        let details = status.get_error_details();
        assert_eq!(details.request_info().unwrap().request_id, "rid-7");
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "ResourceNotFoundException");
        assert_eq!(info.metadata["http_status"], "404");
    }

    #[test]
    fn the_viewer_limit_has_its_own_reason() {
        let status = kvs_status(&kvs_saying(
            400,
            "ClientLimitExceededException",
            "The maximum number of viewers connected to the session has been reached",
        ));
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "ViewerLimitReached");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let status = to_status(&CallError::Invalid(ValidationError::Empty.of("client_id")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "client_id: is empty");
    }
}
