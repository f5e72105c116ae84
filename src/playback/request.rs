//! What a GetPlaybackUrl call asks for, validated before anything is sent,
//! and the body of `GetHLSStreamingSessionURL` / `GetDASHStreamingSessionURL`
//! as botocore's `kinesis-video-archived-media` 2017-09-30 model has it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{
    kvs::arn::{InvalidField, ValidationError},
    pb::{GetPlaybackUrlRequest, PlaybackMode, PlaybackProtocol},
};

/// The model's `Expires` range, and the default.
pub(crate) const MIN_EXPIRES: Duration = Duration::from_secs(300);
pub(crate) const MAX_EXPIRES: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    Hls,
    Dash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Live,
    LiveReplay,
    OnDemand,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "LIVE",
            Mode::LiveReplay => "LIVE_REPLAY",
            Mode::OnDemand => "ON_DEMAND",
        }
    }
}

/// A valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Playback {
    pub protocol: Protocol,
    pub mode: Mode,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub expires: Duration,
}

fn invalid(field: &'static str, rule: &'static str) -> InvalidField {
    ValidationError::Constraint(rule).of(field)
}

impl Playback {
    /// The request's fields, checked against each other (the channel ARN
    /// is checked by the caller).
    pub(crate) fn parse(msg: &GetPlaybackUrlRequest) -> Result<Self, InvalidField> {
        let protocol = match PlaybackProtocol::try_from(msg.protocol) {
            Ok(PlaybackProtocol::Unspecified | PlaybackProtocol::Hls) => Protocol::Hls,
            Ok(PlaybackProtocol::Dash) => Protocol::Dash,
            Err(_) => {
                return Err(invalid(
                    "protocol",
                    "must be PLAYBACK_PROTOCOL_HLS or PLAYBACK_PROTOCOL_DASH",
                ));
            }
        };
        let mode = match PlaybackMode::try_from(msg.mode) {
            Ok(PlaybackMode::Unspecified | PlaybackMode::Live) => Mode::Live,
            Ok(PlaybackMode::LiveReplay) => Mode::LiveReplay,
            Ok(PlaybackMode::OnDemand) => Mode::OnDemand,
            Err(_) => {
                return Err(invalid(
                    "mode",
                    "must be PLAYBACK_MODE_LIVE, PLAYBACK_MODE_LIVE_REPLAY or PLAYBACK_MODE_ON_DEMAND",
                ));
            }
        };
        let start = msg
            .start
            .map(|t| time(t).ok_or_else(|| invalid("start", "is not a valid time after 1970")))
            .transpose()?;
        let end = msg
            .end
            .map(|t| time(t).ok_or_else(|| invalid("end", "is not a valid time after 1970")))
            .transpose()?;
        match (mode, start, end) {
            (Mode::Live, Some(_), _) => {
                return Err(invalid("start", "must be unset for PLAYBACK_MODE_LIVE"));
            }
            (Mode::Live | Mode::LiveReplay, _, Some(_)) => {
                return Err(invalid("end", "is only for PLAYBACK_MODE_ON_DEMAND"));
            }
            (Mode::LiveReplay | Mode::OnDemand, None, _) => {
                return Err(invalid(
                    "start",
                    "is required for PLAYBACK_MODE_LIVE_REPLAY and PLAYBACK_MODE_ON_DEMAND",
                ));
            }
            (Mode::OnDemand, _, None) => {
                return Err(invalid("end", "is required for PLAYBACK_MODE_ON_DEMAND"));
            }
            (_, Some(start), Some(end)) if end <= start => {
                return Err(invalid("end", "must be after start"));
            }
            _ => {}
        }
        let expires = match msg.expires {
            None => MIN_EXPIRES,
            Some(d) => {
                let within = d.nanos == 0
                    && (MIN_EXPIRES.as_secs() as i64..=MAX_EXPIRES.as_secs() as i64)
                        .contains(&d.seconds);
                if !within {
                    return Err(invalid(
                        "expires",
                        "must be whole seconds from 5 minutes to 12 hours",
                    ));
                }
                Duration::from_secs(d.seconds as u64)
            }
        };
        Ok(Self {
            protocol,
            mode,
            start,
            end,
            expires,
        })
    }

    /// The request body for the stream: `StreamARN`, `PlaybackMode`, the
    /// fragment selector when a range is given (`SERVER_TIMESTAMP`, epoch
    /// seconds), and `Expires`.
    pub(crate) fn body(&self, stream_arn: &str) -> bytes::Bytes {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Range {
            start_timestamp: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            end_timestamp: Option<f64>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Selector {
            fragment_selector_type: &'static str,
            timestamp_range: Range,
        }
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
            hls: Option<Selector>,
            #[serde(
                rename = "DASHFragmentSelector",
                skip_serializing_if = "Option::is_none"
            )]
            dash: Option<Selector>,
            expires: u64,
        }
        let selector = self.start.map(|start| Selector {
            fragment_selector_type: "SERVER_TIMESTAMP",
            timestamp_range: Range {
                start_timestamp: epoch_seconds(start),
                end_timestamp: self.end.map(epoch_seconds),
            },
        });
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

fn time(t: prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
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

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn request(mode: PlaybackMode, start: i64, end: i64) -> GetPlaybackUrlRequest {
        GetPlaybackUrlRequest {
            mode: mode as i32,
            start: (start > 0).then(|| ts(start)).flatten(),
            end: (end > 0).then(|| ts(end)).flatten(),
            ..Default::default()
        }
    }

    fn refused_field(msg: &GetPlaybackUrlRequest) -> &'static str {
        match Playback::parse(msg) {
            Err(InvalidField { field, .. }) => field,
            other => panic!("{msg:?}: {other:?}"),
        }
    }

    #[test]
    fn ranges_must_fit_the_mode() {
        use PlaybackMode::*;
        let live = Playback::parse(&GetPlaybackUrlRequest::default()).unwrap();
        assert_eq!((live.protocol, live.mode), (Protocol::Hls, Mode::Live));
        assert_eq!(live.expires, MIN_EXPIRES);
        Playback::parse(&request(LiveReplay, 100, 0)).unwrap();
        Playback::parse(&request(OnDemand, 100, 200)).unwrap();
        assert_eq!(refused_field(&request(Live, 100, 0)), "start");
        assert_eq!(refused_field(&request(Live, 0, 100)), "end");
        assert_eq!(refused_field(&request(LiveReplay, 0, 0)), "start");
        assert_eq!(refused_field(&request(LiveReplay, 100, 200)), "end");
        assert_eq!(refused_field(&request(OnDemand, 0, 200)), "start");
        assert_eq!(refused_field(&request(OnDemand, 100, 0)), "end");
        assert_eq!(refused_field(&request(OnDemand, 200, 100)), "end");
        assert_eq!(refused_field(&request(OnDemand, 200, 200)), "end");
        let bad_mode = GetPlaybackUrlRequest {
            mode: 9,
            ..Default::default()
        };
        assert_eq!(refused_field(&bad_mode), "mode");
        let bad_protocol = GetPlaybackUrlRequest {
            protocol: -1,
            ..Default::default()
        };
        assert_eq!(refused_field(&bad_protocol), "protocol");
    }

    #[test]
    fn expires_is_five_minutes_to_twelve_hours() {
        let with = |seconds, nanos| GetPlaybackUrlRequest {
            expires: Some(prost_types::Duration { seconds, nanos }),
            ..Default::default()
        };
        assert_eq!(
            Playback::parse(&with(43_200, 0)).unwrap().expires,
            MAX_EXPIRES
        );
        Playback::parse(&with(300, 0)).unwrap();
        for (s, n) in [(299, 0), (43_201, 0), (-1, 0), (600, 5), (0, 0)] {
            assert_eq!(refused_field(&with(s, n)), "expires", "{s} {n}");
        }
    }

    #[test]
    fn bodies_follow_the_archived_media_model() {
        let on_demand = Playback::parse(&GetPlaybackUrlRequest {
            channel_arn: String::new(),
            protocol: PlaybackProtocol::Dash as i32,
            mode: PlaybackMode::OnDemand as i32,
            start: ts(1_700_000_000),
            end: ts(1_700_000_060),
            expires: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .unwrap();
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
        let live = Playback::parse(&GetPlaybackUrlRequest::default()).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&live.body("arn:s")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"StreamARN": "arn:s", "PlaybackMode": "LIVE", "Expires": 300})
        );
    }
}
