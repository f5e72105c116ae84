//! What can go wrong on the way to KVS and back. The mapping to gRPC status
//! codes lives in one place, `crate::grpc::status`.

use std::time::Duration;

use super::arn::ValidationError;

/// A boxed error from the HTTP client: connect failures, resets, dead pooled
/// connections.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's request is malformed; nothing was sent.
    #[error("{field}: {reason}")]
    InvalidRequest {
        field: &'static str,
        reason: ValidationError,
    },
    /// The channel is outside the sidecar's allow-list; nothing was sent.
    #[error("channel_arn: this sidecar is not allowed to act on {0}")]
    ChannelNotAllowed(String),
    /// The endpoint rules found no control-plane endpoint for the channel's
    /// region under the configured FIPS / dual-stack settings.
    #[error("no KVS endpoint for the channel's region: {0}")]
    Endpoint(super::endpoint::EndpointError),
    /// KVS answered with an error.
    #[error("{0}")]
    Service(ServiceError),
    #[error("could not reach KVS: {}", chain(.0.as_ref()))]
    Transport(#[source] BoxError),
    #[error("KVS did not answer within the attempt timeout of {0:?}")]
    AttemptTimeout(Duration),
    #[error("the call's deadline passed")]
    DeadlineExceeded,
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
    #[error("could not sign the request: {0}")]
    Signing(String),
    /// KVS answered 2xx with something we could not use.
    #[error("KVS answered a malformed response: {0}")]
    MalformedResponse(String),
}

/// An error answer from KVS, read from any of the dialects KVS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub http_status: u16,
    /// The error code with its namespace and suffix stripped, such as
    /// `ResourceNotFoundException`; `None` when KVS named none.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
    /// The server's `Date` header: its notion of now, for skew correction.
    pub server_date: Option<std::time::SystemTime>,
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
    /// header (`Code:namespace-uri`), a JSON `__type` (`namespace#Code`) or a
    /// JSON `code`; the header wins because proxies rewrite bodies less often.
    pub fn from_response(http_status: u16, headers: &http::HeaderMap, body: &[u8]) -> Self {
        #[derive(serde::Deserialize, Default)]
        struct Body {
            #[serde(rename = "__type")]
            ty: Option<String>,
            #[serde(alias = "Code")]
            code: Option<String>,
            #[serde(alias = "Message", alias = "errorMessage")]
            message: Option<String>,
        }
        let parsed: Body = serde_json::from_slice(body).unwrap_or_default();
        let header_code = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(sanitize_code);
        let code = header_code
            .or_else(|| parsed.ty.as_deref().map(sanitize_code))
            .or_else(|| parsed.code.as_deref().map(sanitize_code))
            .filter(|c| !c.is_empty());
        Self {
            http_status,
            code,
            message: parsed.message.unwrap_or_default(),
            request_id: request_id(headers),
            server_date: headers
                .get(http::header::DATE)
                .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok()),
        }
    }

    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }
}

/// `x-amzn-RequestId`, falling back to the older `x-amz-request-id`.
pub fn request_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-requestid")
        .or_else(|| headers.get("x-amz-request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `aws.protocoltests#FooError:http://...` → `FooError`.
fn sanitize_code(raw: &str) -> String {
    let no_suffix = raw.split(':').next().unwrap_or(raw);
    let no_prefix = no_suffix.rsplit('#').next().unwrap_or(no_suffix);
    no_prefix.trim().to_owned()
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
    fn header_wins_over_body_and_garbage_body_is_tolerated() {
        let h = headers(&[("x-amzn-errortype", "ClientLimitExceededException")]);
        let e = ServiceError::from_response(400, &h, b"<html>not json</html>");
        assert_eq!(e.code(), "ClientLimitExceededException");
        assert_eq!(e.message, "");
        let none = ServiceError::from_response(502, &http::HeaderMap::new(), b"");
        assert_eq!(none.code, None);
    }
}
