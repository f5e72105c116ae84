//! The gRPC side: the service, its status mapping, deadlines and metrics.

pub(crate) mod buffer_request;
mod call_log;
pub(crate) mod codec;
pub(crate) mod deadline;
pub(crate) mod error;
pub(crate) mod observe;
mod recording;
pub(crate) mod request_deadline;
pub(crate) mod require_http2;
mod service;
mod session;
pub(crate) mod status;

/// The storage service's streams. One lives as long as its caller keeps it
/// open, so the bounds of a unary call (a deadline on the whole request,
/// reading it whole, a call slot) do not fit it; it has its own
/// (`--max-maintained-sessions`, a deadline on its first message).
///
/// WatchRecording is not one of them: its request is one message, read
/// whole under the call's deadline like a unary call's (a caller that opens
/// it and sends nothing holds nothing long); only its answer is a stream,
/// bounded by the watchers' limit (`recording.rs`).
const STREAMS: &[&str] = &["MaintainStorageSession"];

/// The paths of the calls that live as long as their callers want, for the
/// serving layer, which counts them apart from calls and bounds them in a
/// drain (`serve::Settings::long_lived`): sessions and recording watchers.
pub(crate) const LONG_LIVED: &[&str] = &[
    "/kvs.webrtcstorage.v1.WebRtcStorageService/MaintainStorageSession",
    "/kvs.webrtcstorage.v1.WebRtcStorageService/WatchRecording",
];

/// The method `path` names on the storage service (by the generated
/// service name), if it names one.
pub(super) fn storage_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(crate::pb::web_rtc_storage_service_server::SERVICE_NAME)?
        .strip_prefix('/')
}

/// Whether `path` is a unary call of the storage service: the calls read
/// whole before they are served.
pub(crate) fn is_unary_storage_call(path: &str) -> bool {
    storage_method(path).is_some_and(|method| !STREAMS.contains(&method))
}

/// Whether `path` is a long-lived stream.
pub(crate) fn is_stream(path: &str) -> bool {
    storage_method(path).is_some_and(|method| STREAMS.contains(&method))
}

pub(crate) use self::service::{CallLimits, WebRtcStorage};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_paths_are_told_apart_by_the_generated_service_name() {
        let storage = "/kvs.webrtcstorage.v1.WebRtcStorageService/";
        assert!(is_unary_storage_call(&format!(
            "{storage}JoinStorageSession"
        )));
        assert!(!is_stream(&format!("{storage}JoinStorageSession")));
        assert!(is_stream(&format!("{storage}MaintainStorageSession")));
        assert!(!is_unary_storage_call(&format!(
            "{storage}MaintainStorageSession"
        )));
        for other in [
            "/grpc.health.v1.Health/Check",
            "/kvs.webrtcstorage.v1.WebRtcStorageServiceX/JoinStorageSession",
            "kvs.webrtcstorage.v1.WebRtcStorageService/JoinStorageSession",
            "/",
        ] {
            assert!(
                !is_unary_storage_call(other) && !is_stream(other),
                "{other}"
            );
        }
    }

    #[test]
    fn long_lived_paths_are_streams_of_the_storage_service() {
        for path in LONG_LIVED {
            let kind = observe::method(path).map(|m| m.kind);
            assert!(
                matches!(kind, Some("server_stream" | "bidi_stream")),
                "{path}: {kind:?}"
            );
        }
        for method in STREAMS {
            assert!(
                LONG_LIVED.iter().any(|p| storage_method(p) == Some(method)),
                "{method}"
            );
        }
    }
}
