//! The one place errors become gRPC statuses.
//!
//! When KVS answered, the status carries `google.rpc.ErrorInfo` (reason: the
//! KVS error code) and `google.rpc.RequestInfo` (request id: KVS's
//! `x-amzn-RequestId`), and the request id as `x-amzn-requestid` metadata,
//! for clients that do not decode rich error details.

use std::collections::HashMap;

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

use crate::kvs::{Error, ErrorKind, ServiceError};

/// The gRPC code for each error class.
pub(crate) fn code(err: &Error) -> Code {
    match err {
        Error::InvalidRequest { .. } => Code::InvalidArgument,
        // The sidecar's FIPS / dual-stack settings cannot reach this
        // partition: its setup, not the request, must change.
        Error::Endpoint(_) => Code::FailedPrecondition,
        Error::ChannelNotAllowed(_)
        | Error::CredentialsDenied(_)
        | Error::StorageChangesDisabled => Code::PermissionDenied,
        Error::Precondition(_) => Code::FailedPrecondition,
        Error::Busy(_) => Code::ResourceExhausted,
        Error::Service(e) => service_code(e),
        Error::Transport(_)
        | Error::Connect(_)
        | Error::AttemptTimeout(_)
        | Error::Credentials(_) => Code::Unavailable,
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        Error::RateLimited { .. } | Error::StreamPaced { .. } => Code::ResourceExhausted,
        // Out of retries while being throttled is still throttling.
        Error::RetryQuotaExhausted(last) => match code(last) {
            Code::ResourceExhausted => Code::ResourceExhausted,
            _ => Code::Unavailable,
        },
        Error::Signing(_) | Error::MalformedResponse(_) => Code::Internal,
        Error::Replayed { code, .. } => Code::from_i32(*code),
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

pub(crate) fn to_status(err: &Error) -> Status {
    let code = code(err);
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
    use crate::kvs::{arn::ValidationError, endpoint::EndpointError};

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
            (Error::StorageChangesDisabled, Code::PermissionDenied),
            (Error::Precondition("p".into()), Code::FailedPrecondition),
            (Error::Busy("b".into()), Code::ResourceExhausted),
            (
                Error::ChannelNotAllowed("arn".into()),
                Code::PermissionDenied,
            ),
            (
                Error::InvalidRequest {
                    field: "channel_arn",
                    reason: ValidationError::Empty,
                },
                Code::InvalidArgument,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(code(&err), want, "{err:?}");
        }
    }

    #[test]
    fn carries_request_id_and_message_in_details() {
        let status = to_status(&kvs(404, "ResourceNotFoundException"));
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
        let status = to_status(&kvs_saying(
            400,
            "ClientLimitExceededException",
            "The maximum number of viewers connected to the session has been reached",
        ));
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "ViewerLimitReached");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let status = to_status(&Error::InvalidRequest {
            field: "client_id",
            reason: ValidationError::Empty,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "client_id: is empty");
    }
}
