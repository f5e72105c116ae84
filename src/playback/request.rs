//! What a GetPlaybackUrl call asks for, validated before anything is sent
//! (the request KVS gets is `kvs::playback`'s).

use std::time::{Duration, SystemTime};

use crate::{
    kvs::{
        arn::{InvalidField, ValidationError},
        playback::{Mode, Protocol, SessionUrlRequest},
    },
    pb::{GetPlaybackUrlRequest, PlaybackMode, PlaybackProtocol},
};

/// The model's `Expires` range, and the default.
pub(crate) const MIN_EXPIRES: Duration = Duration::from_secs(300);
pub(crate) const MAX_EXPIRES: Duration = Duration::from_secs(12 * 3600);

fn invalid(field: &'static str, rule: &'static str) -> InvalidField {
    ValidationError::Constraint(rule).of(field)
}

/// The request's fields, checked against each other (the channel ARN
/// is checked by the caller).
pub(crate) fn parse(msg: &GetPlaybackUrlRequest) -> Result<SessionUrlRequest, InvalidField> {
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
    Ok(SessionUrlRequest {
        protocol,
        mode,
        start,
        end,
        expires,
    })
}

fn time(t: prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
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
        match parse(msg) {
            Err(InvalidField { field, .. }) => field,
            other => panic!("{msg:?}: {other:?}"),
        }
    }

    #[test]
    fn ranges_must_fit_the_mode() {
        use PlaybackMode::*;
        let live = parse(&GetPlaybackUrlRequest::default()).unwrap();
        assert_eq!((live.protocol, live.mode), (Protocol::Hls, Mode::Live));
        assert_eq!(live.expires, MIN_EXPIRES);
        parse(&request(LiveReplay, 100, 0)).unwrap();
        parse(&request(OnDemand, 100, 200)).unwrap();
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
        assert_eq!(parse(&with(43_200, 0)).unwrap().expires, MAX_EXPIRES);
        parse(&with(300, 0)).unwrap();
        for (s, n) in [(299, 0), (43_201, 0), (-1, 0), (600, 5), (0, 0)] {
            assert_eq!(refused_field(&with(s, n)), "expires", "{s} {n}");
        }
    }
}
