//! `GetHLSStreamingSessionURL` and `GetDASHStreamingSessionURL` as the
//! emulator answers them (botocore's kinesis-video-archived-media model),
//! and the playback sessions they open, served on the emulator's own port.
//!
//! A request names the stream by `StreamARN` or `StreamName` (streams as
//! `storage.rs` knows them) and is checked as KVS checks it: the members
//! the model declares and no others, `PlaybackMode`, a fragment selector
//! whose `TimestampRange` fits the mode (none for LIVE; a start for
//! LIVE_REPLAY; both ends, in order and at most 24 hours apart, for
//! ON_DEMAND), `Expires` from 300 to 43200 seconds. A stream that keeps no
//! data answers `NoDataRetentionException`; one without fragments in the
//! range (LIVE: within the last 30 seconds) `ResourceNotFoundException`
//! ("No fragments found"). The fragments are those the emulator records
//! after each master join of the channel the stream is linked to
//! (`fragments.rs`). Each stream takes at most 5 requests a second per API
//! (`ClientLimitExceededException` beyond; [`Emulator::playback_throttled`]
//! counts them).
//!
//! Each answer is a new session: a URL on this emulator
//! (`/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=...`,
//! `/dash/v1/getDASHManifest.mpd?SessionToken=...`) that a player can
//! fetch until it expires: a small playlist or manifest listing the
//! fragments (the fragments themselves are not served). As in KVS, a stream
//! keeps at most [`SESSIONS_PER_STREAM`] live sessions and the oldest is
//! ended when an 11th opens; at most [`SESSIONS_KEPT`] sessions are kept in
//! all.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;

use super::{
    Dialect, Emulator,
    handler::{Answer, error, invalid, ok},
    sigv4,
    storage::Refusal,
};

/// Live sessions KVS keeps per stream.
pub const SESSIONS_PER_STREAM: usize = 10;
/// Sessions kept in all (the oldest go first).
pub const SESSIONS_KEPT: usize = 4096;
/// Requests a stream takes per second and API.
const REQUESTS_PER_SECOND: usize = 5;
/// Streams whose request times are kept.
const PACED_STREAMS_KEPT: usize = 4096;
/// LIVE plays what was recorded within this long.
const LIVE_WINDOW: Duration = Duration::from_secs(30);
/// The longest ON_DEMAND range.
const MAX_RANGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
struct Session {
    token: String,
    stream_arn: String,
    /// The name the stream's recordings are kept under.
    recording: String,
    dash: bool,
    live: bool,
    from: SystemTime,
    to: Option<SystemTime>,
    expires: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Playback {
    /// Oldest first.
    sessions: VecDeque<Session>,
    /// Recent request times per (stream, API).
    requests: HashMap<(String, bool), VecDeque<Instant>>,
    throttled: u64,
}

impl Playback {
    /// Whether the stream may take one more request of the API now.
    fn admit(&mut self, stream: &str, dash: bool, now: Instant) -> bool {
        if self.requests.len() >= PACED_STREAMS_KEPT
            && !self.requests.contains_key(&(stream.to_owned(), dash))
        {
            // Streams idle for a second carry nothing worth keeping.
            self.requests.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
            });
        }
        let times = self.requests.entry((stream.to_owned(), dash)).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            times.pop_front();
        }
        if times.len() >= REQUESTS_PER_SECOND {
            self.throttled += 1;
            return false;
        }
        times.push_back(now);
        true
    }

    fn open(&mut self, session: Session, now: Instant) {
        self.sessions.retain(|s| s.expires > now);
        let live: Vec<usize> = self
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.stream_arn == session.stream_arn)
            .map(|(i, _)| i)
            .collect();
        if live.len() >= SESSIONS_PER_STREAM {
            self.sessions.remove(live[0]);
        }
        if self.sessions.len() >= SESSIONS_KEPT {
            self.sessions.pop_front();
        }
        self.sessions.push_back(session);
    }

    fn find(&self, token: &str, now: Instant) -> Option<&Session> {
        self.sessions
            .iter()
            .find(|s| s.token == token && s.expires > now)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Selector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<Range>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Range {
    start_timestamp: Option<f64>,
    end_timestamp: Option<f64>,
}

/// Both inputs' members, as the model names them; DASH's and HLS's own
/// members are checked against the API below.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "StreamName")]
    stream_name: Option<String>,
    #[serde(rename = "PlaybackMode")]
    playback_mode: Option<String>,
    #[serde(rename = "HLSFragmentSelector")]
    hls_selector: Option<Selector>,
    #[serde(rename = "DASHFragmentSelector")]
    dash_selector: Option<Selector>,
    #[serde(rename = "Expires")]
    expires: Option<i64>,
    #[serde(rename = "ContainerFormat")]
    container_format: Option<String>,
    #[serde(rename = "DiscontinuityMode")]
    discontinuity_mode: Option<String>,
    #[serde(rename = "DisplayFragmentTimestamp")]
    _display_fragment_timestamp: Option<String>,
    #[serde(rename = "DisplayFragmentNumber")]
    display_fragment_number: Option<String>,
    #[serde(rename = "MaxMediaPlaylistFragmentResults")]
    max_media_playlist: Option<i64>,
    #[serde(rename = "MaxManifestFragmentResults")]
    max_manifest: Option<i64>,
}

fn at(seconds: f64) -> Option<SystemTime> {
    (seconds.is_finite() && seconds >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

// === impl Emulator ===

impl Emulator {
    /// Requests refused with `ClientLimitExceededException` by the
    /// per-stream limit of the playback-URL APIs.
    pub fn playback_throttled(&self) -> u64 {
        self.lock().playback.throttled
    }

    /// `POST /getHLSStreamingSessionURL` or `/getDASHStreamingSessionURL`
    /// on the data endpoint; `None` for any other path.
    pub(super) fn playback_operation(
        &self,
        path: &str,
        body: &[u8],
        scope: &sigv4::Scope,
    ) -> Option<Answer> {
        let dash = match path {
            "/getHLSStreamingSessionURL" => false,
            "/getDASHStreamingSessionURL" => true,
            _ => return None,
        };
        Some(self.session_url(dash, body, scope))
    }

    fn session_url(&self, dash: bool, body: &[u8], scope: &sigv4::Scope) -> Answer {
        let Ok(input) = serde_json::from_slice::<Input>(body) else {
            return invalid("the request body is not a streaming session URL input");
        };
        let foreign = if dash {
            input.hls_selector.is_some()
                || input.container_format.is_some()
                || input.discontinuity_mode.is_some()
                || input.max_media_playlist.is_some()
        } else {
            input.dash_selector.is_some()
                || input.display_fragment_number.is_some()
                || input.max_manifest.is_some()
        };
        if foreign {
            return invalid("the request has members of the other protocol's input");
        }
        let selector = if dash {
            input.dash_selector
        } else {
            input.hls_selector
        };
        let mode = input.playback_mode.as_deref().unwrap_or("LIVE");
        if !matches!(mode, "LIVE" | "LIVE_REPLAY" | "ON_DEMAND") {
            return invalid("Value at 'playbackMode' failed to satisfy constraint");
        }
        let expires = input.expires.unwrap_or(300);
        if !(300..=43_200).contains(&expires) {
            return invalid(
                "Value at 'expires' failed to satisfy constraint: Member must have value between 300 and 43200",
            );
        }
        if selector.as_ref().is_some_and(|s| {
            !matches!(
                s.fragment_selector_type.as_deref(),
                None | Some("SERVER_TIMESTAMP" | "PRODUCER_TIMESTAMP")
            )
        }) {
            return invalid("Value at 'fragmentSelectorType' failed to satisfy constraint");
        }
        let range = selector.and_then(|s| s.timestamp_range);
        let (start, end) = match &range {
            Some(r) => (r.start_timestamp.map(at), r.end_timestamp.map(at)),
            None => (None, None),
        };
        if start.is_some_and(|s| s.is_none()) || end.is_some_and(|e| e.is_none()) {
            return invalid("TimestampRange holds an invalid timestamp");
        }
        let (start, end) = (start.flatten(), end.flatten());
        let now = self.now();
        let (from, to) = match (mode, range.is_some(), start, end) {
            ("LIVE", false, _, _) => (now.checked_sub(LIVE_WINDOW).unwrap_or(UNIX_EPOCH), None),
            ("LIVE", true, _, _) => {
                return invalid("TimestampRange must not be set when PlaybackMode is LIVE");
            }
            ("LIVE_REPLAY", _, Some(start), end) => (start, end),
            ("LIVE_REPLAY", _, None, _) => {
                return invalid("StartTimestamp is required when PlaybackMode is LIVE_REPLAY");
            }
            ("ON_DEMAND", _, Some(start), Some(end)) => (start, Some(end)),
            _ => {
                return invalid(
                    "StartTimestamp and EndTimestamp are required when PlaybackMode is ON_DEMAND",
                );
            }
        };
        if let Some(to) = to {
            let Ok(span) = to.duration_since(from) else {
                return invalid("EndTimestamp must be later than StartTimestamp");
            };
            if span.is_zero() {
                return invalid("EndTimestamp must be later than StartTimestamp");
            }
            if mode == "ON_DEMAND" && span > MAX_RANGE {
                return invalid("The requested time range exceeds 24 hours");
            }
        }
        let account = self.account_of(&scope.access_key);
        let stream = match self.playable_stream(
            input.stream_arn.as_deref(),
            input.stream_name.as_deref(),
            &account,
            &scope.region,
        ) {
            Ok(stream) => stream,
            Err(refusal) => return *refusal,
        };
        let (stream_arn, recording) = stream;
        let started = Instant::now();
        let mut state = self.lock();
        if !state.playback.admit(&stream_arn, dash, started) {
            return error(
                400,
                "ClientLimitExceededException",
                "Request rate for the streaming session URL on this stream exceeds the limit of 5 per second.",
                Dialect::Header,
            );
        }
        let live = mode != "ON_DEMAND";
        let fragments = state
            .recordings
            .fragments(&recording, now, false, from, to.unwrap_or(now));
        if fragments.is_empty() {
            return error(
                404,
                "ResourceNotFoundException",
                "No fragments found in the stream for the streaming request.",
                Dialect::Header,
            );
        }
        let token = session_token();
        state.playback.open(
            Session {
                token: token.clone(),
                stream_arn,
                recording,
                dash,
                live,
                from,
                to,
                expires: started + Duration::from_secs(expires as u64),
            },
            started,
        );
        drop(state);
        let (member, path) = if dash {
            ("DASHStreamingSessionURL", "/dash/v1/getDASHManifest.mpd")
        } else {
            (
                "HLSStreamingSessionURL",
                "/hls/v1/getHLSMasterPlaylist.m3u8",
            )
        };
        let url = format!("{}{path}?SessionToken={token}", self.url());
        ok(serde_json::json!({ member: url }))
    }

    /// The stream's ARN and the name its recordings are kept under (the
    /// channel it is linked to records there), or KVS's refusal.
    fn playable_stream(
        &self,
        stream_arn: Option<&str>,
        stream_name: Option<&str>,
        account: &str,
        region: &str,
    ) -> Result<(String, String), Refusal> {
        let stream = self.stream_for_playback(stream_arn, stream_name, account, region)?;
        if stream.1 == 0 {
            return Err(Box::new(error(
                400,
                "NoDataRetentionException",
                "The Stream data retention in hours is equal to zero.",
                Dialect::Header,
            )));
        }
        let recording = self.recorded_under(Some(&stream.0), &stream.2, account, region);
        Ok((stream.0, recording))
    }

    /// A GET of a playback session's playlist or manifest, or `None` for
    /// any other path. Needs no signature: the token is the credential.
    pub(super) fn playback_get(&self, path: &str, query: Option<&str>) -> Option<Answer> {
        let dash = match path {
            "/hls/v1/getHLSMasterPlaylist.m3u8" | "/hls/v1/getHLSMediaPlaylist.m3u8" => false,
            "/dash/v1/getDASHManifest.mpd" => true,
            _ => return None,
        };
        let token = query
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("SessionToken="))
            .unwrap_or_default();
        let now = self.now();
        let state = self.lock();
        let Some(session) = state
            .playback
            .find(token, Instant::now())
            .filter(|s| s.dash == dash)
            .cloned()
        else {
            return Some(error(
                403,
                "NotAuthorizedException",
                "The session token is not valid, or the session has expired.",
                Dialect::Header,
            ));
        };
        let fragments = state.recordings.fragments(
            &session.recording,
            now,
            false,
            session.from,
            session.to.unwrap_or(now),
        );
        drop(state);
        let text = match path {
            "/hls/v1/getHLSMasterPlaylist.m3u8" => format!(
                "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.42e01f,mp4a.40.2\"\ngetHLSMediaPlaylist.m3u8?SessionToken={}\n",
                session.token
            ),
            "/hls/v1/getHLSMediaPlaylist.m3u8" => {
                let mut text = String::from(
                    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n",
                );
                for f in &fragments {
                    text.push_str(&format!(
                        "#EXTINF:{:.3},\ngetMP4MediaFragment.mp4?FragmentNumber={}&SessionToken={}\n",
                        f.length.as_secs_f64(),
                        f.number,
                        session.token
                    ));
                }
                if !session.live {
                    text.push_str("#EXT-X-ENDLIST\n");
                }
                text
            }
            _ => {
                let seconds: f64 = fragments.iter().map(|f| f.length.as_secs_f64()).sum();
                let kind = if session.live { "dynamic" } else { "static" };
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"{kind}\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" mediaPresentationDuration=\"PT{seconds:.3}S\" minBufferTime=\"PT2S\">\n  <Period id=\"0\"><AdaptationSet mimeType=\"video/mp4\" codecs=\"avc1.42e01f\"><Representation id=\"0\" bandwidth=\"2000000\"/></AdaptationSet></Period>\n</MPD>\n"
                )
            }
        };
        let content_type = if dash {
            "application/dash+xml"
        } else {
            "application/vnd.apple.mpegurl"
        };
        Some(
            Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default(),
        )
    }
}

/// A session token shaped like KVS's (base64 of an opaque blob).
fn session_token() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let body: String = (0..96)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect();
    format!("CiA{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stream: &str, token: &str, now: Instant) -> Session {
        Session {
            token: token.into(),
            stream_arn: stream.into(),
            recording: stream.into(),
            dash: false,
            live: true,
            from: UNIX_EPOCH,
            to: None,
            expires: now + Duration::from_secs(300),
        }
    }

    #[test]
    fn a_stream_keeps_ten_live_sessions_and_the_oldest_goes() {
        let now = Instant::now();
        let mut playback = Playback::default();
        for i in 0..11 {
            playback.open(session("s", &format!("t{i}"), now), now);
        }
        playback.open(session("other", "o", now), now);
        assert!(playback.find("t0", now).is_none(), "the oldest was ended");
        assert!(playback.find("t1", now).is_some());
        assert!(playback.find("t10", now).is_some());
        assert!(playback.find("o", now).is_some());
        assert!(
            playback
                .find("t1", now + Duration::from_secs(301))
                .is_none(),
            "expired"
        );
    }

    #[test]
    fn sessions_and_paced_streams_are_bounded() {
        let now = Instant::now();
        let mut playback = Playback::default();
        for i in 0..SESSIONS_KEPT + 10 {
            playback.open(session(&format!("s{i}"), &format!("t{i}"), now), now);
        }
        assert_eq!(playback.sessions.len(), SESSIONS_KEPT);
        for i in 0..PACED_STREAMS_KEPT + 10 {
            assert!(playback.admit(&format!("s{i}"), false, now));
        }
        assert!(playback.requests.len() <= PACED_STREAMS_KEPT + 10);
        let later = now + Duration::from_secs(2);
        assert!(playback.admit("fresh", false, later));
        assert_eq!(playback.requests.len(), 1, "idle streams were dropped");
    }

    #[test]
    fn five_requests_a_second_per_stream_and_api() {
        let now = Instant::now();
        let mut playback = Playback::default();
        for _ in 0..5 {
            assert!(playback.admit("s", false, now));
        }
        assert!(!playback.admit("s", false, now));
        assert!(playback.admit("s", true, now), "DASH is counted apart");
        assert!(playback.admit("s", false, now + Duration::from_secs(1)));
        assert_eq!(playback.throttled, 1);
    }
}
