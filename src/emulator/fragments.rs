//! The media the emulator "records", and `ListFragments` over it.
//!
//! KVS sends nothing when WebRTC media reaches a stream; the only way to
//! see it is to list the stream's fragments. So after each successful join
//! of a channel's master, the emulator records fragments into the channel's
//! linked stream (the stream named after the channel, as DescribeMedia-
//! StorageConfiguration answers): one fragment every [`FRAGMENT_LENGTH`]
//! (2 s unless [`Emulator::set_fragment_length`]), each [`FRAGMENT_LENGTH`]
//! long, from [`MEDIA_STARTUP`] after the join (the peer connection's setup)
//! until the storage session ends: replaced by the next join (which starts a
//! new run after its own startup), or expired (`sessions.rs`). A channel
//! whose name begins with `nomedia-` records nothing (a session whose media
//! never arrives), one beginning `stalls-` stops recording [`STALLS_AFTER`]
//! after each join (media that stops while the session lives), and a join
//! whose SDP offer was dropped on purpose records nothing either.
//! [`Emulator::stop_media`] stops the current run early.
//!
//! `ListFragments` answers as KVS does (botocore's kinesis-video-archived-
//! media model): by `StreamARN` or `StreamName`, a `FragmentSelector` of
//! SERVER_TIMESTAMP or PRODUCER_TIMESTAMP with an inclusive `TimestampRange`
//! in epoch seconds, `MaxResults` (1 to 1000, 100 by default) per page and a
//! `NextToken`; the fragments come in no order, even across pages; a
//! fragment is listed only [`LISTING_DELAY`] after it ends (1 s unless
//! [`Emulator::set_listing_delay`]); and each stream takes at most 5
//! requests a second (`ClientLimitExceededException`, HTTP 400, beyond).
//!
//! Memory is bounded whatever callers do: runs are kept, not fragments (a
//! listing computes the fragments of the runs it overlaps), at most
//! [`RUNS_KEPT`] per stream, for at most [`STREAMS_KEPT`] streams (the one
//! touched longest ago goes first), and fragments older than the stream's
//! retention (24 h) are never listed.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::{
    Dialect, Emulator,
    handler::{Answer, error, invalid, respond},
    sigv4,
};
use crate::kvs::arn::ChannelArn;

/// Each fragment's length, and the time between fragment starts.
pub const FRAGMENT_LENGTH: Duration = Duration::from_secs(2);
/// How long after it ends a fragment shows in ListFragments.
pub const LISTING_DELAY: Duration = Duration::from_secs(1);
/// From a join to its first fragment's start.
pub const MEDIA_STARTUP: Duration = Duration::from_millis(500);
/// How long `stalls-` channels record after each join.
pub(super) const STALLS_AFTER: Duration = Duration::from_secs(10);
/// Runs of fragments kept per stream (older ones are forgotten).
pub(super) const RUNS_KEPT: usize = 64;
/// Streams with a record.
pub(super) const STREAMS_KEPT: usize = 4096;
/// ListFragments requests a stream takes per second.
pub(super) const REQUESTS_PER_SECOND: usize = 5;
/// Request times kept per stream for [`Emulator::list_fragments_requests`].
const REQUEST_TIMES_KEPT: usize = 256;
/// What a stream keeps (DescribeStream's DataRetentionInHours).
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The most fragments one listing considers.
const MAX_LISTED: usize = 100_000;

/// One uninterrupted run of media: fragments from `start`, one every
/// fragment length, until `end` (still running when `None`).
#[derive(Debug, Clone, Copy)]
struct Run {
    start: SystemTime,
    end: Option<SystemTime>,
    length: Duration,
}

/// One fragment as ListFragments describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub number: String,
    pub server_timestamp: SystemTime,
    pub producer_timestamp: SystemTime,
    pub length: Duration,
    pub size: u64,
}

/// What the emulator saw of a stream's ListFragments requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentRequests {
    /// Requests answered (throttled ones included).
    pub total: u64,
    /// Requests answered `ClientLimitExceededException`.
    pub throttled: u64,
    /// When the most recent requests (up to 256) arrived, oldest first.
    pub times: Vec<std::time::Instant>,
}

#[derive(Debug, Default)]
struct Stream {
    runs: VecDeque<Run>,
    requests: FragmentRequests,
    touched: u64,
}

#[derive(Debug)]
pub(super) struct Recordings {
    streams: HashMap<String, Stream>,
    fragment_length: Duration,
    listing_delay: Duration,
    /// Fragments per page at most, whatever MaxResults asks (KVS too may
    /// answer fewer than asked).
    page_limit: usize,
    clock: u64,
}

impl Default for Recordings {
    fn default() -> Self {
        Self {
            streams: HashMap::new(),
            fragment_length: FRAGMENT_LENGTH,
            listing_delay: LISTING_DELAY,
            page_limit: 1000,
            clock: 0,
        }
    }
}

/// The stream a channel's media goes to: named after the channel, as the
/// emulated DescribeMediaStorageConfiguration links it.
pub(super) fn stream_name_of(channel_arn: &str) -> Option<&str> {
    let resource = channel_arn.rsplit(':').next()?;
    let mut parts = resource.split('/');
    (parts.next()? == "channel").then_some(())?;
    parts.next()
}

// === impl Recordings ===

impl Recordings {
    /// A master's join succeeded at `now`: the run in progress ends and,
    /// unless `media` is false, a new one starts after the startup.
    pub(super) fn joined(&mut self, channel_arn: &str, now: SystemTime, media: bool) {
        let Some(name) = stream_name_of(channel_arn) else {
            return;
        };
        // A stream that keeps no data has nothing to list either.
        let no_media = name.starts_with("nomedia-") || name.starts_with("noretention-") || !media;
        if no_media && !self.streams.contains_key(name) {
            return;
        }
        let length = self.fragment_length;
        let stream = self.stream(name);
        end_run(stream, now);
        if no_media {
            return;
        }
        let start = now + MEDIA_STARTUP;
        let end = name.starts_with("stalls-").then(|| start + STALLS_AFTER);
        stream.runs.push_back(Run { start, end, length });
        while stream.runs.len() > RUNS_KEPT {
            stream.runs.pop_front();
        }
    }

    /// The channel's media stopped at `now` (its session ended, or a test
    /// said so).
    pub(super) fn stopped(&mut self, channel_arn: &str, now: SystemTime) {
        if let Some(stream) = stream_name_of(channel_arn).and_then(|n| self.streams.get_mut(n)) {
            end_run(stream, now);
        }
    }

    pub(super) fn set_fragment_length(&mut self, length: Duration) {
        self.fragment_length = length.max(Duration::from_millis(10));
    }

    pub(super) fn set_listing_delay(&mut self, delay: Duration) {
        self.listing_delay = delay;
    }

    /// Counts a ListFragments request for stream `name` at `now`; false when
    /// the stream already took its 5 in the last second.
    pub(super) fn admit(&mut self, name: &str, now: std::time::Instant) -> bool {
        let stream = self.stream(name);
        let requests = &mut stream.requests;
        requests.total += 1;
        let recent = requests
            .times
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < Duration::from_secs(1))
            .count();
        if recent >= REQUESTS_PER_SECOND {
            requests.throttled += 1;
            return false;
        }
        if requests.times.len() == REQUEST_TIMES_KEPT {
            requests.times.remove(0);
        }
        requests.times.push(now);
        true
    }

    pub(super) fn requests(&self, name: &str) -> FragmentRequests {
        self.streams
            .get(name)
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// The fragments of stream `name` listed as of `now` whose timestamp
    /// (`producer` or server) lies in `[from, to]`, by fragment number.
    pub(super) fn fragments(
        &self,
        name: &str,
        now: SystemTime,
        producer: bool,
        from: SystemTime,
        to: SystemTime,
    ) -> Vec<Fragment> {
        let Some(stream) = self.streams.get(name) else {
            return Vec::new();
        };
        let oldest = now.checked_sub(RETENTION).unwrap_or(UNIX_EPOCH);
        let mut found = Vec::new();
        for run in &stream.runs {
            let stop = run.end.map_or(now, |end| end.min(now));
            let mut start = run.start.max(from.checked_sub(run.length).unwrap_or(from));
            // Back to a fragment boundary of the run.
            let into = start.duration_since(run.start).unwrap_or_default();
            let skipped = (into.as_nanos() / run.length.as_nanos().max(1)) as u32;
            start = run.start + run.length * skipped;
            while start + run.length <= stop && found.len() < MAX_LISTED {
                let fragment = fragment(start, run.length);
                let at = if producer {
                    fragment.producer_timestamp
                } else {
                    fragment.server_timestamp
                };
                let listed = start + run.length + self.listing_delay <= now;
                if at > to {
                    break;
                }
                if listed && at >= from && start >= oldest {
                    found.push(fragment);
                }
                start += run.length;
            }
        }
        found
    }

    fn stream(&mut self, name: &str) -> &mut Stream {
        self.clock += 1;
        if !self.streams.contains_key(name) && self.streams.len() >= STREAMS_KEPT {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.touched)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.streams.remove(&oldest);
            }
        }
        let stream = self.streams.entry(name.to_owned()).or_default();
        stream.touched = self.clock;
        stream
    }
}

fn end_run(stream: &mut Stream, now: SystemTime) {
    if let Some(run) = stream.runs.back_mut() {
        run.end = Some(run.end.map_or(now, |end| end.min(now)));
    }
}

fn fragment(start: SystemTime, length: Duration) -> Fragment {
    let ms = start
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    Fragment {
        // KVS's numbers are long decimal strings, increasing with time.
        number: format!("9134385233318{ms:020}"),
        server_timestamp: start,
        // The producer's clock is a little behind the server's.
        producer_timestamp: start - Duration::from_millis(120),
        length,
        size: 120_000 + (ms / 7 % 40_000),
    }
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn from_epoch(secs: f64) -> Option<SystemTime> {
    (secs.is_finite() && secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e11)))
}

/// What a page token carries: the query (a request with a token need not
/// repeat it), when the listing was taken (so every page lists the same
/// fragments), the shuffle and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    producer: bool,
    from_ms: u64,
    to_ms: u64,
    as_of_ms: u64,
    seed: u64,
    offset: usize,
}

impl Token {
    fn encode(&self) -> String {
        let raw = format!(
            "{}:{}:{}:{}:{}:{}",
            u8::from(self.producer),
            self.from_ms,
            self.to_ms,
            self.as_of_ms,
            self.seed,
            self.offset
        );
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn decode(s: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.split(':');
        let mut next = || parts.next()?.parse::<u64>().ok();
        Some(Self {
            producer: next()? == 1,
            from_ms: next()?,
            to_ms: next()?,
            as_of_ms: next()?,
            seed: next()?,
            offset: usize::try_from(next()?).ok()?,
        })
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A ListFragments input, as botocore's model has it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub(super) struct ListFragmentsInput {
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_name: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
    fragment_selector: Option<Selector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Selector {
    fragment_selector_type: String,
    timestamp_range: Range,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Range {
    start_timestamp: f64,
    end_timestamp: f64,
}

/// An answer, or KVS's InvalidArgumentException message.
pub(super) type Listing = Result<String, &'static str>;

impl Recordings {
    /// One page of a ListFragments for stream `name` at `now`.
    pub(super) fn list(&self, name: &str, input: &ListFragmentsInput, now: SystemTime) -> Listing {
        let page = match input.max_results {
            None => 100,
            Some(n @ 1..=1000) => n as usize,
            Some(_) => return Err("MaxResults must be from 1 to 1000"),
        }
        .min(self.page_limit);
        let token = match (&input.next_token, &input.fragment_selector) {
            (Some(token), _) => Token::decode(token).ok_or("NextToken is not valid")?,
            (None, Some(selector)) => {
                let producer = match selector.fragment_selector_type.as_str() {
                    "SERVER_TIMESTAMP" => false,
                    "PRODUCER_TIMESTAMP" => true,
                    _ => {
                        return Err(
                            "FragmentSelectorType must be SERVER_TIMESTAMP or PRODUCER_TIMESTAMP",
                        );
                    }
                };
                let range = &selector.timestamp_range;
                let (Some(from), Some(to)) = (
                    from_epoch(range.start_timestamp),
                    from_epoch(range.end_timestamp),
                ) else {
                    return Err("TimestampRange holds an invalid timestamp");
                };
                if to < from {
                    return Err("EndTimestamp must not be before StartTimestamp");
                }
                Token {
                    producer,
                    from_ms: ms(from),
                    to_ms: ms(to),
                    as_of_ms: ms(now),
                    seed: fastrand::u64(..),
                    offset: 0,
                }
            }
            (None, None) => return Err("FragmentSelector is required without a NextToken"),
        };
        let mut fragments = self.fragments(
            name,
            at_ms(token.as_of_ms),
            token.producer,
            at_ms(token.from_ms),
            at_ms(token.to_ms),
        );
        // No order, even across pages: one shuffle per listing, kept by its
        // seed so that the pages partition it.
        fastrand::Rng::with_seed(token.seed).shuffle(&mut fragments);
        let end = (token.offset + page).min(fragments.len());
        let shown: Vec<_> = fragments
            .get(token.offset..end)
            .unwrap_or_default()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "FragmentNumber": f.number,
                    "FragmentSizeInBytes": f.size,
                    "ProducerTimestamp": epoch(f.producer_timestamp),
                    "ServerTimestamp": epoch(f.server_timestamp),
                    "FragmentLengthInMilliseconds": f.length.as_millis() as u64,
                })
            })
            .collect();
        let mut answer = serde_json::json!({ "Fragments": shown });
        if end < fragments.len() {
            let next = Token {
                offset: end,
                ..token
            };
            answer["NextToken"] = next.encode().into();
        }
        Ok(answer.to_string())
    }
}

// === impl Emulator ===

/// The APIs GetDataEndpoint knows (botocore's `APIName`).
const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

/// Which stream a data-plane request names, after KVS's checks; its name,
/// or KVS's refusal (large, but only built on the error path).
#[allow(clippy::result_large_err)]
fn named_stream(
    operation: &str,
    stream_arn: Option<&str>,
    stream_name: Option<&str>,
    scope: &sigv4::Scope,
) -> Result<String, Answer> {
    let not_found = || {
        error(
            404,
            "ResourceNotFoundException",
            "The requested stream is not found or not active.",
            Dialect::Header,
        )
    };
    let name = match (stream_arn, stream_name) {
        (Some(arn), _) => {
            let Ok(parsed) = ChannelArn::parse(arn) else {
                return Err(invalid("Value at 'streamARN' failed to satisfy constraint"));
            };
            if scope.region != parsed.region() {
                return Err(error(
                    403,
                    "InvalidSignatureException",
                    &format!(
                        "Credential should be scoped to a valid region, not '{}'.",
                        scope.region
                    ),
                    Dialect::Header,
                ));
            }
            if !arn.contains(":stream/") {
                return Err(not_found());
            }
            parsed.name().to_owned()
        }
        (None, Some(name))
            if !name.is_empty()
                && name.len() <= 256
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) =>
        {
            name.to_owned()
        }
        (None, Some(_)) => {
            return Err(invalid(
                "Value at 'streamName' failed to satisfy constraint",
            ));
        }
        (None, None) => return Err(invalid("StreamARN or StreamName must be specified")),
    };
    if name.starts_with("missing-") || name.starts_with("nostream-") {
        return Err(not_found());
    }
    if name.starts_with("denied-") || name.starts_with("denystream-") {
        let message = format!(
            "User: arn:aws:sts::000000000000:assumed-role/emulated is not authorized to perform: kinesisvideo:{operation} on resource: {name}"
        );
        // The archived-media APIs refuse with their own code and a 401.
        return Err(if operation == "ListFragments" {
            error(401, "NotAuthorizedException", &message, Dialect::Header)
        } else {
            error(403, "AccessDeniedException", &message, Dialect::Header)
        });
    }
    Ok(name)
}

impl Emulator {
    /// `POST /getDataEndpoint`: this emulator serves every data-plane API.
    pub(super) fn get_data_endpoint(&self, body: &[u8], scope: &sigv4::Scope) -> Answer {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Input {
            #[serde(rename = "StreamARN")]
            stream_arn: Option<String>,
            #[serde(rename = "StreamName")]
            stream_name: Option<String>,
            #[serde(rename = "APIName")]
            api_name: String,
        }
        let Ok(input) = serde_json::from_slice::<Input>(body) else {
            return invalid("the request body is not a GetDataEndpoint input");
        };
        if !API_NAMES.contains(&input.api_name.as_str()) {
            return invalid("Value at 'aPIName' failed to satisfy constraint");
        }
        if let Err(refusal) = named_stream(
            "GetDataEndpoint",
            input.stream_arn.as_deref(),
            input.stream_name.as_deref(),
            scope,
        ) {
            return refusal;
        }
        let body = serde_json::json!({ "DataEndpoint": self.url() }).to_string();
        respond(200)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    }

    /// `POST /listFragments` on the data endpoint.
    pub(super) fn list_fragments(&self, body: &[u8], scope: &sigv4::Scope) -> Answer {
        let Ok(input) = serde_json::from_slice::<ListFragmentsInput>(body) else {
            return invalid("the request body is not a ListFragments input");
        };
        let name = match named_stream(
            "ListFragments",
            input.stream_arn.as_deref(),
            input.stream_name.as_deref(),
            scope,
        ) {
            Ok(name) => name,
            Err(refusal) => return refusal,
        };
        // A stream linked by EnsureStorage lists its channel's recording.
        let account = self.account_of(&scope.access_key);
        let name = self.recorded_under(input.stream_arn.as_deref(), &name, &account, &scope.region);
        let now = self.now();
        let mut state = self.lock();
        if !state.recordings.admit(&name, std::time::Instant::now()) {
            return error(
                400,
                "ClientLimitExceededException",
                "Request rate for ListFragments on this stream exceeds the limit of 5 per second.",
                Dialect::Header,
            );
        }
        match state.recordings.list(&name, &input, now) {
            Ok(body) => respond(200)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default(),
            Err(message) => invalid(message),
        }
    }

    /// The length of the fragments recorded from now on (2 s unless set),
    /// so tests need not wait for real-sized ones.
    pub fn set_fragment_length(&self, length: Duration) {
        self.lock().recordings.set_fragment_length(length);
    }

    /// How long after its end a fragment shows in ListFragments (1 s unless
    /// set).
    pub fn set_listing_delay(&self, delay: Duration) {
        self.lock().recordings.set_listing_delay(delay);
    }

    /// Answers at most `n` fragments a page from now on (1000 unless set),
    /// so tests see pagination without thousands of fragments.
    pub fn set_list_page_limit(&self, n: usize) {
        self.lock().recordings.page_limit = n.clamp(1, 1000);
    }

    /// Stops the media of the channel's current session now; the session
    /// itself lives on (fragments stop: the recording stalls).
    pub fn stop_media(&self, channel_arn: &str) {
        let now = self.now();
        self.lock().recordings.stopped(channel_arn, now);
    }

    /// The fragments recorded for the channel's stream so far and listed
    /// by now, by fragment number (what ListFragments would page through).
    pub fn recorded_fragments(&self, channel_arn: &str) -> Vec<Fragment> {
        let now = self.now();
        let Some(name) = stream_name_of(channel_arn) else {
            return Vec::new();
        };
        self.lock()
            .recordings
            .fragments(name, now, false, UNIX_EPOCH, now)
    }

    /// The ListFragments requests the channel's stream received.
    pub fn list_fragments_requests(&self, channel_arn: &str) -> FragmentRequests {
        stream_name_of(channel_arn)
            .map(|name| self.lock().recordings.requests(name))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/porch/1";

    fn input(json: serde_json::Value) -> ListFragmentsInput {
        serde_json::from_value(json).unwrap()
    }

    fn page(r: &Recordings, input: &ListFragmentsInput, now: SystemTime) -> serde_json::Value {
        serde_json::from_str(&r.list("porch", input, now).unwrap()).unwrap()
    }

    #[test]
    fn records_from_each_join_until_the_next_and_lists_after_a_delay() {
        let mut r = Recordings::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        r.joined(CHANNEL, t0, true);
        let s = |n: u64| t0 + Duration::from_secs(n);
        // First fragment: 0.5 s to 2.5 s, listed from 3.5 s.
        assert!(r.fragments("porch", s(3), false, t0, s(100)).is_empty());
        let listed = r.fragments("porch", s(4), false, t0, s(100));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].server_timestamp, t0 + MEDIA_STARTUP);
        // A re-join at 10 s ends the first run (its fragment in progress is
        // cut) and starts another after the startup.
        r.joined(CHANNEL, s(10), true);
        let all = r.fragments("porch", s(30), false, t0, s(100));
        let starts: Vec<_> = all
            .iter()
            .map(|f| f.server_timestamp.duration_since(t0).unwrap().as_millis())
            .collect();
        assert_eq!(
            starts,
            [
                500, 2500, 4500, 6500, 10500, 12500, 14500, 16500, 18500, 20500, 22500, 24500,
                26500
            ]
        );
        let numbers: std::collections::HashSet<_> = all.iter().map(|f| &f.number).collect();
        assert_eq!(numbers.len(), all.len(), "numbers are unique");
        // Stopped: nothing more after.
        r.stopped(CHANNEL, s(30));
        assert_eq!(r.fragments("porch", s(100), false, t0, s(100)).len(), 13);
        // The range is inclusive, on server or producer timestamps.
        let one = r.fragments("porch", s(100), false, s(10) + MEDIA_STARTUP, s(11));
        assert_eq!(one.len(), 1);
        let producer = r.fragments("porch", s(100), true, s(10) + MEDIA_STARTUP, s(11));
        assert_eq!(producer.len(), 0, "the producer's timestamp is earlier");
    }

    #[test]
    fn nomedia_channels_and_dropped_offers_record_nothing() {
        let mut r = Recordings::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let nomedia = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/nomedia-x/1";
        r.joined(nomedia, t0, true);
        r.joined(CHANNEL, t0, false);
        let later = t0 + Duration::from_secs(60);
        assert!(r.fragments("nomedia-x", later, false, t0, later).is_empty());
        assert!(r.fragments("porch", later, false, t0, later).is_empty());
        let stalls = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/stalls-x/1";
        r.joined(stalls, t0, true);
        assert_eq!(r.fragments("stalls-x", later, false, t0, later).len(), 5);
    }

    #[test]
    fn pages_partition_a_shuffled_listing() {
        let mut r = Recordings::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        r.joined(CHANNEL, t0, true);
        let now = t0 + Duration::from_secs(101);
        let first = input(serde_json::json!({
            "StreamARN": "arn:aws:kinesisvideo:us-west-2:123456789012:stream/porch/1",
            "MaxResults": 7,
            "FragmentSelector": {"FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": epoch(t0), "EndTimestamp": epoch(now)}},
        }));
        let mut answer = page(&r, &first, now);
        let mut seen = Vec::new();
        loop {
            for f in answer["Fragments"].as_array().unwrap() {
                seen.push(f["FragmentNumber"].as_str().unwrap().to_owned());
            }
            let Some(token) = answer["NextToken"].as_str() else {
                break;
            };
            let next = input(serde_json::json!({"NextToken": token, "MaxResults": 7}));
            // Later pages list what the first one saw, even as time passes.
            answer = page(&r, &next, now + Duration::from_secs(30));
        }
        assert_eq!(seen.len(), 49);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 49, "no fragment twice");
        assert_ne!(sorted, seen, "not in order");
        for bad in [
            serde_json::json!({"StreamName": "porch"}),
            serde_json::json!({"StreamName": "porch", "MaxResults": 0, "NextToken": "MA=="}),
            serde_json::json!({"StreamName": "porch", "NextToken": "!!"}),
        ] {
            assert!(r.list("porch", &input(bad), now).is_err());
        }
    }

    #[test]
    fn five_requests_a_second_per_stream_and_memory_is_bounded() {
        let mut r = Recordings::default();
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            assert!(r.admit("a", t0));
        }
        assert!(!r.admit("a", t0 + Duration::from_millis(999)));
        assert!(r.admit("b", t0), "another stream has its own");
        assert!(r.admit("a", t0 + Duration::from_secs(1)));
        assert_eq!(r.requests("a").throttled, 1);
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for i in 0..(STREAMS_KEPT + 100) {
            let channel = format!("arn:aws:kinesisvideo:us-west-2:1:channel/c-{i}/1");
            for j in 0..(RUNS_KEPT as u64 + 10) {
                r.joined(&channel, wall + Duration::from_secs(j), true);
                if i > 3 {
                    break;
                }
            }
        }
        assert!(r.streams.len() <= STREAMS_KEPT);
        assert!(r.streams.values().all(|s| s.runs.len() <= RUNS_KEPT));
    }
}
