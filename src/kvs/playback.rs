//! The archived-media playback APIs: `GetHLSStreamingSessionURL` and
//! `GetDASHStreamingSessionURL`, with their bodies as botocore's
//! `kinesis-video-archived-media` 2017-09-30 model has them, sent to the
//! stream's data endpoint for the API ([`DataPlane`]), paced per stream.
//!
//! The answer's one value, the URL, carries the session's token: it is
//! never quoted in an error.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Call, Error, Operation,
    arn::ChannelArn,
    data_endpoint::{ApiName, DataPlane},
    fragments::ServerTimestamps,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Hls,
    Dash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    LiveReplay,
    OnDemand,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "LIVE",
            Mode::LiveReplay => "LIVE_REPLAY",
            Mode::OnDemand => "ON_DEMAND",
        }
    }
}

/// What a playback session is asked for (validated by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUrlRequest {
    pub protocol: Protocol,
    pub mode: Mode,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub expires: Duration,
}

impl SessionUrlRequest {
    /// The request body for the stream: `StreamARN`, `PlaybackMode`, the
    /// fragment selector when a range is given (`SERVER_TIMESTAMP`, epoch
    /// seconds), and `Expires`.
    fn body(&self, stream_arn: &str) -> bytes::Bytes {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
            playback_mode: &'static str,
            #[serde(
                rename = "HLSFragmentSelector",
                skip_serializing_if = "Option::is_none"
            )]
            hls: Option<ServerTimestamps>,
            #[serde(
                rename = "DASHFragmentSelector",
                skip_serializing_if = "Option::is_none"
            )]
            dash: Option<ServerTimestamps>,
            expires: u64,
        }
        let selector = self
            .start
            .map(|start| ServerTimestamps::new(epoch_seconds(start), self.end.map(epoch_seconds)));
        let (hls, dash) = match self.protocol {
            Protocol::Hls => (selector, None),
            Protocol::Dash => (None, selector),
        };
        let body = Body {
            stream_arn,
            playback_mode: self.mode.as_str(),
            hls,
            dash,
            expires: self.expires.as_secs(),
        };
        bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

// === impl DataPlane ===

impl DataPlane {
    /// A new streaming session's URL on `stream`, as `request` asks.
    pub async fn streaming_session_url(
        &self,
        call: &Call,
        stream: &ChannelArn,
        request: &SessionUrlRequest,
    ) -> Result<String, Error> {
        let (api, operation) = match request.protocol {
            Protocol::Hls => (
                ApiName::GetHlsStreamingSessionUrl,
                Operation::GetHlsStreamingSessionUrl,
            ),
            Protocol::Dash => (
                ApiName::GetDashStreamingSessionUrl,
                Operation::GetDashStreamingSessionUrl,
            ),
        };
        let answer = self
            .send(call, stream, api, operation, request.body(stream.as_str()))
            .await?;
        session_url(request.protocol, &answer.body)
    }
}

/// The URL in KVS's answer. A parse error names the position only: the
/// answer's one value is the secret.
fn session_url(protocol: Protocol, body: &[u8]) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "HLSStreamingSessionURL")]
        hls: Option<String>,
        #[serde(rename = "DASHStreamingSessionURL")]
        dash: Option<String>,
    }
    let (name, operation) = match protocol {
        Protocol::Hls => ("HLSStreamingSessionURL", "GetHLSStreamingSessionURL"),
        Protocol::Dash => ("DASHStreamingSessionURL", "GetDASHStreamingSessionURL"),
    };
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        Error::MalformedResponse(format!(
            "{operation} answer is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let url = match protocol {
        Protocol::Hls => answer.hls,
        Protocol::Dash => answer.dash,
    };
    url.filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .ok_or_else(|| Error::MalformedResponse(format!("{operation} answered no {name}")))
}

/// Seconds since 1970, with the fraction, as restJson writes a timestamp:
/// to the microsecond, the way botocore writes it (whole microseconds over
/// 10^6), so the same instant is the same number on the wire.
fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as f64 / 1e6)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_archived_media_model() {
        let at = |seconds| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        let on_demand = SessionUrlRequest {
            protocol: Protocol::Dash,
            mode: Mode::OnDemand,
            start: at(1_700_000_000),
            end: at(1_700_000_060),
            expires: Duration::from_secs(3600),
        };
        let body: serde_json::Value = serde_json::from_slice(&on_demand.body("arn:s")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "StreamARN": "arn:s",
                "PlaybackMode": "ON_DEMAND",
                "DASHFragmentSelector": {
                    "FragmentSelectorType": "SERVER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": 1_700_000_000.0, "EndTimestamp": 1_700_000_060.0},
                },
                "Expires": 3600,
            })
        );
        let live = SessionUrlRequest {
            protocol: Protocol::Hls,
            mode: Mode::Live,
            start: None,
            end: None,
            expires: Duration::from_secs(300),
        };
        let body: serde_json::Value = serde_json::from_slice(&live.body("arn:s")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"StreamARN": "arn:s", "PlaybackMode": "LIVE", "Expires": 300})
        );
    }

    #[test]
    fn reads_the_url_and_never_quotes_it() {
        let body = br#"{"HLSStreamingSessionURL":"https://b-1.kinesisvideo.us-west-2.amazonaws.com/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=CiAzZWNyZXQ"}"#;
        let url = session_url(Protocol::Hls, body).unwrap();
        assert!(url.ends_with("SessionToken=CiAzZWNyZXQ"));
        // The other protocol's member, garbage, or a value that is not a
        // URL: refused, without quoting the answer.
        for (protocol, body) in [
            (Protocol::Dash, &body[..]),
            (
                Protocol::Hls,
                br#"{"HLSStreamingSessionURL":"CiAzZWNyZXQ"}"#,
            ),
            (
                Protocol::Hls,
                br#"{"HLSStreamingSessionURL":7, "x":"CiAzZWNyZXQ"}"#,
            ),
        ] {
            let err = session_url(protocol, body).unwrap_err().to_string();
            assert!(!err.contains("CiAz"), "{err}");
        }
    }
}
