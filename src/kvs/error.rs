//! What can go wrong on the way to KVS and back, and what each KVS answer
//! means. Every KVS error answer is classified once, here, into a
//! [`ErrorKind`]; retries, rate adaptation, endpoint invalidation, metrics and
//! the gRPC status table (`crate::grpc::status`) all match on that enum and
//! never on KVS's strings.

use std::{sync::Arc, time::Duration};

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};

use super::redact;

pub use crate::BoxError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The endpoint rules found no control-plane endpoint for the channel's
    /// region under the configured FIPS / dual-stack settings.
    #[error("no KVS endpoint for the channel's region: {0}")]
    Endpoint(super::endpoint::EndpointError),
    /// KVS answered with an error.
    #[error("{0}")]
    Service(ServiceError),
    /// The exchange failed after the request may have been written (a reset,
    /// a dead pooled connection, a body cut short): KVS may have acted on it.
    #[error("could not reach KVS: {0}")]
    Transport(Arc<str>),
    /// Connecting failed (refused, unreachable, TLS handshake, proxy): the
    /// request was never written, so KVS cannot have acted on it.
    #[error("could not connect to KVS: {0}")]
    Connect(Arc<str>),
    #[error("KVS did not answer within the attempt timeout of {0:?}")]
    AttemptTimeout(Duration),
    #[error("the call's deadline passed")]
    DeadlineExceeded,
    /// The client-side rate limit for an operation has no token the call
    /// could get before its deadline (or its queue holds a second's worth
    /// already); nothing was sent.
    #[error(
        "the client-side rate for {operation} is exhausted (KVS has been throttling this account); retry with backoff"
    )]
    RateLimited { operation: &'static str },
    /// KVS allows 5 `operation` requests a second per stream, and no slot
    /// of this stream's is free before the call's deadline (or the pacer
    /// tracks as many streams as it may); nothing was sent.
    #[error(
        "KVS allows 5 {operation} requests a second per stream, and this stream's are taken until after the call's deadline; retry later"
    )]
    StreamPaced { operation: &'static str },
    /// The process-wide retry quota is empty (KVS is failing broadly), so
    /// the sidecar stopped retrying; the attempt's own error is kept.
    #[error(
        "retry quota exhausted: KVS has been failing, so the sidecar stopped retrying to spare it; last error: {0}"
    )]
    RetryQuotaExhausted(Box<Error>),
    /// The credential provider failed; the text is the provider's reason,
    /// which never holds secret material.
    #[error("could not load AWS credentials: {0}")]
    Credentials(String),
    /// STS refused to let the sidecar assume the role mapped to the
    /// channel's account; nothing was sent to KVS.
    #[error("could not assume the role for this channel's account: {0}")]
    CredentialsDenied(String),
    #[error("could not sign the request: {0}")]
    Signing(String),
    /// KVS answered 2xx with something we could not use.
    #[error("KVS answered a malformed response: {0}")]
    MalformedResponse(String),
}

impl Error {
    /// A transport failure with its whole source chain as text.
    pub fn transport(err: &(dyn std::error::Error + 'static)) -> Self {
        Error::Transport(redact::redact(&chain(err)).into())
    }

    /// A connect failure with its whole source chain as text.
    pub fn connect(err: &(dyn std::error::Error + 'static)) -> Self {
        Error::Connect(redact::redact(&chain(err)).into())
    }

    /// Whether a repeat of the same request would meet the same error: the
    /// request itself is wrong, or refused for what it names (not found,
    /// denied, invalid, not allowed). Throttling, server faults, lost
    /// connections, timeouts and deadlines pass; so do credential and
    /// signing trouble, which a reload can fix. The idempotency ledger keeps
    /// only final outcomes: a retry after a passing failure makes a real
    /// attempt.
    pub fn is_final(&self) -> bool {
        match self {
            Error::Endpoint(_) | Error::CredentialsDenied(_) => true,
            Error::Service(e) => matches!(
                e.kind,
                ErrorKind::NotFound
                    | ErrorKind::AccessDenied
                    | ErrorKind::InvalidArgument
                    | ErrorKind::ResourceInUse
                    | ErrorKind::ViewerLimit
                    | ErrorKind::NoDataRetention
                    | ErrorKind::AccountLimit
                    | ErrorKind::NotPlayable
            ),
            // Our own bounds: a later try can succeed.
            Error::StreamPaced { .. }
            | Error::Transport(_)
            | Error::Connect(_)
            | Error::AttemptTimeout(_)
            | Error::DeadlineExceeded
            | Error::RateLimited { .. }
            | Error::RetryQuotaExhausted(_)
            | Error::Credentials(_)
            | Error::Signing(_)
            | Error::MalformedResponse(_) => false,
        }
    }

    /// Whether the failed request may have been acted on by KVS, which for
    /// a join means an SDP offer may have gone to the master. Throttling and
    /// authentication refusals happen before KVS acts; a connect failure
    /// happens before anything is written.
    pub fn may_have_reached_kvs(&self) -> bool {
        match self {
            Error::Service(e) => !matches!(
                e.kind,
                ErrorKind::Throttling
                    | ErrorKind::ViewerLimit
                    | ErrorKind::AuthRejected
                    | ErrorKind::ExpiredCredentials
                    | ErrorKind::ClockSkew
            ),
            Error::Transport(_) | Error::AttemptTimeout(_) => true,
            _ => false,
        }
    }
}

/// What a KVS error answer means for the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// KVS asked us to slow down (`ClientLimitExceededException`, the AWS
    /// throttling codes, HTTP 429).
    Throttling,
    /// `ClientLimitExceededException` saying the session already has the
    /// most viewers it allows: final, waiting does not help.
    ViewerLimit,
    /// A server fault or request timeout that is usually gone on the next
    /// attempt (HTTP 500/502/503/504, the AWS transient codes).
    Transient,
    NotFound,
    AccessDenied,
    InvalidArgument,
    /// The resource is in a state that does not allow the request.
    ResourceInUse,
    /// `VersionMismatchException`: the stream changed since it was read
    /// (a concurrent update); read it again before writing.
    VersionMismatch,
    /// `NoDataRetentionException`: the stream keeps no data, so it cannot
    /// store a channel's media (or be played back).
    NoDataRetention,
    /// The account's quota of streams or channels (or a stream's tags) is
    /// used up: no retry helps until the account's limit is raised or
    /// resources are deleted.
    AccountLimit,
    /// The stream's media cannot be played back (unsupported media type,
    /// missing or invalid codec private data).
    NotPlayable,
    /// The credentials expired: reload them and try once more.
    ExpiredCredentials,
    /// KVS refused the request's time: correct the clock, try once more.
    ClockSkew,
    /// KVS rejected the signature or the credentials outright.
    AuthRejected,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A bounded, stable label (metrics, `ErrorInfo` reasons of sidecar
    /// decisions).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttling => "throttling",
            ErrorKind::ViewerLimit => "viewer_limit",
            ErrorKind::Transient => "server_error",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::ResourceInUse => "resource_in_use",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::NoDataRetention => "no_data_retention",
            ErrorKind::AccountLimit => "account_limit",
            ErrorKind::NotPlayable => "not_playable",
            ErrorKind::ExpiredCredentials => "expired_credentials",
            ErrorKind::ClockSkew => "clock_skew",
            ErrorKind::AuthRejected => "auth_rejected",
            ErrorKind::Other => "other_error",
        }
    }

    /// The one classification of a KVS error answer.
    pub fn classify(http_status: u16, code: &str, message: &str) -> Self {
        const SKEW_CODES: &[&str] = &[
            "RequestTimeTooSkewed",
            "RequestExpired",
            "RequestInTheFuture",
        ];
        const EXPIRED_CODES: &[&str] = &["ExpiredTokenException", "ExpiredToken"];
        const AUTH_CODES: &[&str] = &[
            "InvalidSignatureException",
            "IncompleteSignature",
            "IncompleteSignatureException",
            "MissingAuthenticationToken",
            "MissingAuthenticationTokenException",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "AuthFailure",
        ];
        match code {
            // KVS's own throttling code; AWS's JS sample treats the viewer
            // variant as final.
            "ClientLimitExceededException" if names_the_viewer_limit(message) => {
                ErrorKind::ViewerLimit
            }
            "ClientLimitExceededException" => ErrorKind::Throttling,
            c if THROTTLING_ERRORS.contains(&c) => ErrorKind::Throttling,
            c if SKEW_CODES.contains(&c) => ErrorKind::ClockSkew,
            "InvalidSignatureException"
                if message.contains("Signature expired")
                    || message.contains("Signature not yet current") =>
            {
                ErrorKind::ClockSkew
            }
            c if EXPIRED_CODES.contains(&c) => ErrorKind::ExpiredCredentials,
            // STS-style: a token revoked early is named in a 403's message.
            _ if http_status == 403
                && message.contains("security token")
                && message.contains("expired") =>
            {
                ErrorKind::ExpiredCredentials
            }
            c if AUTH_CODES.contains(&c) => ErrorKind::AuthRejected,
            "ResourceNotFoundException" => ErrorKind::NotFound,
            // The archived-media APIs' refusal (HTTP 401) of a caller whose
            // policy does not allow the operation on the stream.
            "AccessDeniedException" | "NotAuthorizedException" => ErrorKind::AccessDenied,
            "InvalidArgumentException" => ErrorKind::InvalidArgument,
            "ResourceInUseException" => ErrorKind::ResourceInUse,
            "VersionMismatchException" => ErrorKind::VersionMismatch,
            "NoDataRetentionException" => ErrorKind::NoDataRetention,
            "AccountStreamLimitExceededException"
            | "AccountChannelLimitExceededException"
            | "DeviceStreamLimitExceededException"
            | "TagsPerResourceExceededLimitException" => ErrorKind::AccountLimit,
            "UnsupportedStreamMediaTypeException"
            | "MissingCodecPrivateDataException"
            | "InvalidCodecPrivateDataException" => ErrorKind::NotPlayable,
            c if TRANSIENT_ERRORS.contains(&c) => ErrorKind::Transient,
            _ if http_status == 429 => ErrorKind::Throttling,
            _ if matches!(http_status, 500 | 502 | 503 | 504) => ErrorKind::Transient,
            _ => ErrorKind::Other,
        }
    }
}

fn names_the_viewer_limit(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("maximum number of viewers")
}

/// An error answer from KVS, read from any of the dialects KVS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub http_status: u16,
    /// The error code with its namespace and suffix stripped, such as
    /// `ResourceNotFoundException`; `None` when KVS named none.
    pub code: Option<String>,
    pub kind: ErrorKind,
    /// KVS's message, made safe to show: signature and credential errors
    /// keep their first sentence only, and anything shaped like a key, a
    /// token, a signature or a credential scope is redacted.
    pub message: String,
    pub request_id: Option<String>,
    /// The server's `Date` header: its notion of now, for skew correction.
    pub server_date: Option<std::time::SystemTime>,
    /// `x-amz-retry-after`: how long KVS asked us to wait before retrying.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code.as_deref().unwrap_or("an error");
        write!(f, "KVS answered {code} (HTTP {})", self.http_status)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

// === impl ServiceError ===

impl ServiceError {
    /// Reads an error answer. KVS names the error in the `x-amzn-ErrorType`
    /// header (`Code:namespace-uri`), a JSON `code` or a JSON `__type`
    /// (`namespace#Code`), in that order of precedence, as the SDKs read
    /// restJson errors.
    pub fn from_response(http_status: u16, headers: &http::HeaderMap, body: &[u8]) -> Self {
        // Each spelling is its own field: serde aliases would reject a body
        // that carries both `message` and `Message`.
        #[derive(serde::Deserialize, Default)]
        struct Body {
            #[serde(rename = "__type")]
            ty: Option<String>,
            code: Option<String>,
            #[serde(rename = "Code")]
            code_upper: Option<String>,
            message: Option<String>,
            #[serde(rename = "Message")]
            message_upper: Option<String>,
            #[serde(rename = "errorMessage")]
            error_message: Option<String>,
        }
        let parsed: Body = serde_json::from_slice(body).unwrap_or_default();
        let header_code = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(sanitize_code);
        let code = header_code
            .or_else(|| {
                parsed
                    .code
                    .or(parsed.code_upper)
                    .as_deref()
                    .map(sanitize_code)
            })
            .or_else(|| parsed.ty.as_deref().map(sanitize_code))
            .filter(|c| !c.is_empty());
        let raw_message = parsed
            .message
            .or(parsed.message_upper)
            .or(parsed.error_message)
            .unwrap_or_default();
        let kind = ErrorKind::classify(http_status, code.as_deref().unwrap_or(""), &raw_message);
        Self {
            http_status,
            code,
            kind,
            message: redact::kvs_message(
                matches!(
                    kind,
                    ErrorKind::AuthRejected | ErrorKind::ExpiredCredentials | ErrorKind::ClockSkew
                ),
                &raw_message,
            ),
            request_id: request_id(headers),
            server_date: headers
                .get(http::header::DATE)
                .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok()),
            retry_after: headers
                .get("x-amz-retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_millis),
        }
    }

    /// An error answer as read earlier and kept (the idempotency ledger's
    /// records), classified again; `None` unless its parts have the shapes
    /// [`ServiceError::from_response`] gives them (an error status, a
    /// short code, a request id of AWS's shape).
    pub fn restore(
        http_status: u16,
        code: Option<String>,
        message: String,
        request_id: Option<String>,
    ) -> Option<Self> {
        let shaped = (400..=599).contains(&http_status)
            && code.as_deref().is_none_or(|c| is_token(c, MAX_CODE_LEN))
            && request_id.as_deref().is_none_or(is_request_id);
        shaped.then(|| Self {
            kind: ErrorKind::classify(http_status, code.as_deref().unwrap_or(""), &message),
            http_status,
            code,
            message,
            request_id,
            server_date: None,
            retry_after: None,
        })
    }

    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }
}

/// Longest request id kept. AWS's are 36 characters (a UUID) and S3-style
/// ones 16; anything longer is not an AWS request id. Request ids are kept
/// for as long as the idempotency window and sent back in trailers, so a
/// broken or hostile upstream must not choose their size.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Longest error code kept: KVS's longest is 39 characters
/// (`AccountStreamLimitExceededException`-like identifiers).
const MAX_CODE_LEN: usize = 64;

/// `x-amzn-RequestId`, falling back to the older `x-amz-request-id`; `None`
/// unless it looks like one (short, letters, digits, `-` and `_` only).
pub(super) fn request_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-requestid")
        .or_else(|| headers.get("x-amz-request-id"))
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_token(id, MAX_REQUEST_ID_LEN))
        .map(str::to_owned)
}

/// Whether `id` has the shape of an AWS request id (as far as it is kept).
pub(crate) fn is_request_id(id: &str) -> bool {
    is_token(id, MAX_REQUEST_ID_LEN)
}

/// Whether `s` is a non-empty identifier of at most `max` ASCII letters,
/// digits, `-`, `_` and `.`: what AWS's request ids and error codes are.
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `aws.protocoltests#FooError:http://...` → `FooError`; empty (no code)
/// when what is left is not a short identifier.
fn sanitize_code(raw: &str) -> String {
    let no_suffix = raw.split(':').next().unwrap_or(raw);
    let no_prefix = no_suffix.rsplit('#').next().unwrap_or(no_suffix);
    let code = no_prefix.trim();
    if is_token(code, MAX_CODE_LEN) {
        code.to_owned()
    } else {
        String::new()
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn reads_header_dialect_and_strips_suffix() {
        let h = headers(&[
            (
                "x-amzn-errortype",
                "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazonaws.kinesisvideo/",
            ),
            ("x-amzn-requestid", "req-1"),
        ]);
        let e = ServiceError::from_response(404, &h, br#"{"message":"no such channel"}"#);
        assert_eq!(e.code(), "ResourceNotFoundException");
        assert_eq!(e.message, "no such channel");
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
    }

    #[test]
    fn reads_type_dialect_and_strips_namespace() {
        let e = ServiceError::from_response(
            403,
            &http::HeaderMap::new(),
            br#"{"__type":"com.amazonaws.kinesisvideo#AccessDeniedException","Message":"nope"}"#,
        );
        assert_eq!(e.code(), "AccessDeniedException");
        assert_eq!(e.message, "nope");
        assert_eq!(e.request_id, None);
    }

    #[test]
    fn reads_code_dialect() {
        let e = ServiceError::from_response(
            400,
            &http::HeaderMap::new(),
            br#"{"code":"InvalidArgumentException","message":"bad"}"#,
        );
        assert_eq!(e.code(), "InvalidArgumentException");
    }

    #[test]
    fn header_wins_then_code_then_type_and_garbage_is_tolerated() {
        let h = headers(&[("x-amzn-errortype", "ClientLimitExceededException")]);
        let e = ServiceError::from_response(400, &h, b"<html>not json</html>");
        assert_eq!(e.code(), "ClientLimitExceededException");
        assert_eq!(e.message, "");
        let none = ServiceError::from_response(502, &http::HeaderMap::new(), b"");
        assert_eq!(none.code, None);
        let both = ServiceError::from_response(
            400,
            &http::HeaderMap::new(),
            br#"{"__type":"ns#ResourceInUseException","code":"InvalidArgumentException"}"#,
        );
        assert_eq!(
            both.code(),
            "InvalidArgumentException",
            "code before __type"
        );
    }

    #[test]
    fn a_body_with_both_message_spellings_still_parses() {
        let e = ServiceError::from_response(
            404,
            &http::HeaderMap::new(),
            br#"{"__type":"ResourceNotFoundException","message":"lower","Message":"upper"}"#,
        );
        assert_eq!(e.code(), "ResourceNotFoundException");
        assert_eq!(e.message, "lower");
    }

    #[test]
    fn reads_retry_after_in_milliseconds() {
        let h = headers(&[("x-amz-retry-after", "1500")]);
        let e = ServiceError::from_response(429, &h, b"");
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
        let bad = headers(&[("x-amz-retry-after", "soon")]);
        assert_eq!(
            ServiceError::from_response(429, &bad, b"").retry_after,
            None
        );
    }

    #[test]
    fn classifies_every_answer_once() {
        use ErrorKind::*;
        let cases = [
            (400, "ClientLimitExceededException", "", Throttling),
            (
                400,
                "ClientLimitExceededException",
                "The maximum number of viewers connected to the session has been reached.",
                ViewerLimit,
            ),
            (400, "ThrottlingException", "", Throttling),
            (400, "TooManyRequestsException", "", Throttling),
            (429, "", "", Throttling),
            (500, "", "", Transient),
            (502, "", "", Transient),
            (503, "ServiceUnavailable", "", Transient),
            (504, "", "", Transient),
            (408, "RequestTimeoutException", "", Transient),
            (501, "", "", Other),
            (404, "ResourceNotFoundException", "", NotFound),
            (403, "AccessDeniedException", "", AccessDenied),
            (400, "InvalidArgumentException", "", InvalidArgument),
            (400, "ResourceInUseException", "", ResourceInUse),
            (400, "VersionMismatchException", "", VersionMismatch),
            (400, "NoDataRetentionException", "", NoDataRetention),
            (400, "AccountStreamLimitExceededException", "", AccountLimit),
            (
                400,
                "AccountChannelLimitExceededException",
                "",
                AccountLimit,
            ),
            (400, "UnsupportedStreamMediaTypeException", "", NotPlayable),
            (400, "MissingCodecPrivateDataException", "", NotPlayable),
            (401, "NotAuthorizedException", "", AccessDenied),
            (403, "ExpiredTokenException", "", ExpiredCredentials),
            (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is expired",
                ExpiredCredentials,
            ),
            (
                403,
                "UnrecognizedClientException",
                "bad token",
                AuthRejected,
            ),
            (
                403,
                "InvalidSignatureException",
                "does not match",
                AuthRejected,
            ),
            (
                403,
                "InvalidSignatureException",
                "Signature expired: 20250101T000000Z is now earlier than 20250101T010000Z",
                ClockSkew,
            ),
            (403, "RequestTimeTooSkewed", "", ClockSkew),
            (409, "SomethingNew", "", Other),
        ];
        for (status, code, message, want) in cases {
            assert_eq!(
                ErrorKind::classify(status, code, message),
                want,
                "{status} {code} {message}"
            );
        }
    }

    #[test]
    fn secrets_in_kvs_text_never_reach_the_error() {
        let body = serde_json::json!({
            "message": "The request signature we calculated does not match the signature you provided.\nThe Canonical String for this request should have been\nx-amz-security-token:IQoJb3JpZ2luX2VjEJr0123456789abcdef"
        });
        let h = headers(&[("x-amzn-errortype", "InvalidSignatureException")]);
        let e = ServiceError::from_response(403, &h, body.to_string().as_bytes());
        assert_eq!(e.kind, ErrorKind::AuthRejected);
        assert!(!e.to_string().contains("IQoJ"), "{e}");
        assert!(!e.to_string().contains("Canonical"), "{e}");
    }
}
