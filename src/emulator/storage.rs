//! Streams and media storage as the emulator keeps them: what EnsureStorage
//! (and anyone provisioning through the AWS APIs) reads and changes.
//!
//! Every channel starts as the name-prefix rules say (README): storage
//! ENABLED, linked to a stream named after the channel
//! (`...:stream/NAME/ID`, 24 hours' retention), except `nostorage-*`
//! (DISABLED, no stream), with the `nostream-`, `denystream-`,
//! `creatingstream-` and `noretention-` streams. Those implicit streams are
//! looked up by ARN; a change to one (UpdateDataRetention) records it in
//! the state, which from then on answers for it.
//!
//! `CreateStream` makes a stream that is CREATING for a moment
//! ([`Emulator::set_stream_creation_delay`], 200 ms unless set), then
//! ACTIVE; its ARN is in the caller's account (the emulator's own keys
//! belong to [`ACCOUNT`]; a role assumed through the emulated STS belongs to
//! the role's account) and the signature's region. Streams and channel
//! links are bounded: past [`MAX_STREAMS`] streams CreateStream answers
//! `AccountStreamLimitExceededException`, as KVS does at the account's
//! quota, and past [`MAX_LINKS`] changed channels
//! UpdateMediaStorageConfiguration answers
//! `AccountChannelLimitExceededException`.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use super::{
    Dialect, Emulator,
    handler::{Answer, error, invalid, ok},
    sigv4,
};
use crate::kvs::arn::{ChannelArn, validate_stream_name};

/// KVS's error answer, boxed: it is large, and refusals are rare.
pub(super) type Refusal = Box<Answer>;

/// The account of the emulator's own keys: the account of the README's and
/// the tests' channel ARNs.
pub const ACCOUNT: &str = "123456789012";
/// Streams the emulated account may hold.
pub const MAX_STREAMS: usize = 1000;
/// Channels whose media storage configuration was changed, at most.
pub const MAX_LINKS: usize = 10_000;
/// KVS's longest retention: ten years.
const MAX_RETENTION_HOURS: u64 = 87_600;

#[derive(Debug, Clone)]
struct Stream {
    arn: String,
    name: String,
    /// CREATING until this instant, then ACTIVE.
    active_at: Instant,
    /// The implicit stream's status when it never becomes ACTIVE on its own
    /// (`creatingstream-*` stays CREATING).
    stuck_creating: bool,
    /// One of the streams every channel starts with (not created).
    implicit: bool,
    retention_hours: u64,
    version: String,
    media_type: Option<String>,
    created: SystemTime,
}

impl Stream {
    fn status(&self, now: Instant) -> &'static str {
        if self.stuck_creating || now < self.active_at {
            "CREATING"
        } else {
            "ACTIVE"
        }
    }

    fn info(&self, now: Instant) -> serde_json::Value {
        let created = self
            .created
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let mut info = serde_json::json!({
            "StreamARN": self.arn,
            "StreamName": self.name,
            "Status": self.status(now),
            "DataRetentionInHours": self.retention_hours,
            "CreationTime": created,
            "Version": self.version,
        });
        if let Some(media_type) = &self.media_type {
            info["MediaType"] = media_type.as_str().into();
        }
        info
    }
}

/// A channel's media storage configuration, once changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    Enabled(String),
    Disabled,
}

#[derive(Debug)]
pub(super) struct Storage {
    /// Streams created or changed, by ARN.
    streams: HashMap<String, Stream>,
    /// Channels whose configuration was changed, by channel ARN.
    links: HashMap<String, Link>,
    creation_delay: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            streams: HashMap::new(),
            links: HashMap::new(),
            creation_delay: Duration::from_millis(200),
        }
    }
}

/// A stream as a request names it: by ARN or by name.
#[derive(Debug, Default, Deserialize)]
struct StreamRef {
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(rename = "StreamName")]
    stream_name: Option<String>,
}

// === impl Emulator ===

impl Emulator {
    /// How long a created stream stays CREATING (200 ms unless set).
    pub fn set_stream_creation_delay(&self, delay: Duration) {
        self.lock().storage.creation_delay = delay;
    }

    /// The storage operations, or `None` for any other path. `region` and
    /// `account` are the caller's (the signature's scope, its keys).
    pub(super) fn storage_operation(
        &self,
        path: &str,
        body: &[u8],
        scope: &sigv4::Scope,
    ) -> Option<Answer> {
        let account = self.account_of(&scope.access_key);
        let region = scope.region.as_str();
        let answer = match path {
            "/createStream" => self.create_stream(body, &account, region),
            "/describeStream" => self.describe_stream(body, &account, region),
            "/updateDataRetention" => self.update_data_retention(body, &account, region),
            "/describeMappedResourceConfiguration" => {
                self.describe_mapped_resource(body, &account, region)
            }
            "/describeMediaStorageConfiguration" => self.describe_media_storage(body, region),
            "/updateMediaStorageConfiguration" => self.update_media_storage(body, region),
            _ => return None,
        };
        Some(answer)
    }

    /// The account the keys belong to.
    pub(super) fn account_of(&self, access_key: &str) -> String {
        self.lock()
            .assumed
            .iter()
            .find(|a| a.credentials.access_key_id == access_key)
            .and_then(|a| a.role_arn.split(':').nth(4).map(str::to_owned))
            .unwrap_or_else(|| ACCOUNT.to_owned())
    }

    fn create_stream(&self, body: &[u8], account: &str, region: &str) -> Answer {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Create {
            stream_name: String,
            media_type: Option<String>,
            data_retention_in_hours: Option<i64>,
        }
        let Ok(req) = serde_json::from_slice::<Create>(body) else {
            return invalid("StreamName is required");
        };
        if validate_stream_name(&req.stream_name).is_err() {
            return invalid("Value at 'streamName' failed to satisfy constraint");
        }
        if req.media_type.as_deref().is_some_and(|m| !is_media_type(m)) {
            return invalid("Value at 'mediaType' failed to satisfy constraint");
        }
        let retention = match req.data_retention_in_hours.unwrap_or(0) {
            h if !(0..=MAX_RETENTION_HOURS as i64).contains(&h) => {
                return invalid("DataRetentionInHours must be 0 to 87600");
            }
            h => h as u64,
        };
        let arn = format!(
            "arn:aws:kinesisvideo:{region}:{account}:stream/{}/{}",
            req.stream_name,
            now_millis()
        );
        let mut state = self.lock();
        let storage = &mut state.storage;
        let prefix = format!("arn:aws:kinesisvideo:{region}:{account}:stream/");
        if storage
            .streams
            .values()
            .any(|s| s.name == req.stream_name && s.arn.starts_with(&prefix))
        {
            return error(
                400,
                "ResourceInUseException",
                "The stream already exists.",
                Dialect::Header,
            );
        }
        if storage.streams.len() >= MAX_STREAMS {
            return error(
                400,
                "AccountStreamLimitExceededException",
                "The number of streams created for the account is too high.",
                Dialect::Header,
            );
        }
        let stream = Stream {
            arn: arn.clone(),
            name: req.stream_name,
            active_at: Instant::now() + storage.creation_delay,
            stuck_creating: false,
            implicit: false,
            retention_hours: retention,
            version: version(),
            media_type: req.media_type,
            created: SystemTime::now(),
        };
        storage.streams.insert(arn.clone(), stream);
        ok(serde_json::json!({ "StreamARN": arn }))
    }

    fn describe_stream(&self, body: &[u8], account: &str, region: &str) -> Answer {
        let Ok(req) = serde_json::from_slice::<StreamRef>(body) else {
            return invalid("StreamName or StreamARN is required");
        };
        match self.find_stream(&req, account, region) {
            Ok(stream) => ok(serde_json::json!({ "StreamInfo": stream.info(Instant::now()) })),
            Err(refusal) => *refusal,
        }
    }

    fn update_data_retention(&self, body: &[u8], account: &str, region: &str) -> Answer {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Update {
            #[serde(flatten)]
            stream: StreamRef,
            current_version: String,
            operation: String,
            data_retention_change_in_hours: i64,
        }
        let Ok(req) = serde_json::from_slice::<Update>(body) else {
            return invalid(
                "CurrentVersion, Operation and DataRetentionChangeInHours are required",
            );
        };
        if req.data_retention_change_in_hours < 1 {
            return invalid("DataRetentionChangeInHours must be at least 1");
        }
        let change = req.data_retention_change_in_hours as u64;
        let stream = match self.find_stream(&req.stream, account, region) {
            Ok(stream) => stream,
            Err(refusal) => return *refusal,
        };
        if stream.status(Instant::now()) != "ACTIVE" {
            return error(
                400,
                "ResourceInUseException",
                "The stream is not in Active status.",
                Dialect::Header,
            );
        }
        if req.current_version != stream.version {
            return error(
                400,
                "VersionMismatchException",
                "The stream version that you specified is not the latest version.",
                Dialect::Header,
            );
        }
        let retention = match req.operation.as_str() {
            "INCREASE_DATA_RETENTION" => stream.retention_hours + change,
            "DECREASE_DATA_RETENTION" if change <= stream.retention_hours => {
                stream.retention_hours - change
            }
            "DECREASE_DATA_RETENTION" => {
                return invalid("The retention cannot be decreased below 0 hours");
            }
            _ => {
                return invalid(
                    "Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION",
                );
            }
        };
        if retention > MAX_RETENTION_HOURS {
            return invalid("The retention cannot exceed 87600 hours");
        }
        let mut state = self.lock();
        let streams = &mut state.storage.streams;
        if !streams.contains_key(&stream.arn) && streams.len() >= MAX_STREAMS {
            return error(
                400,
                "AccountStreamLimitExceededException",
                "The number of streams changed in the emulated account is too high.",
                Dialect::Header,
            );
        }
        streams.insert(
            stream.arn.clone(),
            Stream {
                retention_hours: retention,
                version: version(),
                ..stream
            },
        );
        ok(serde_json::json!({}))
    }

    fn describe_mapped_resource(&self, body: &[u8], account: &str, region: &str) -> Answer {
        let Ok(req) = serde_json::from_slice::<StreamRef>(body) else {
            return invalid("StreamName or StreamARN is required");
        };
        let stream = match self.find_stream(&req, account, region) {
            Ok(stream) => stream,
            Err(refusal) => return *refusal,
        };
        let list: Vec<_> = self
            .mapped_channel(&stream.arn)
            .into_iter()
            .map(|channel| serde_json::json!({"Type": "SIGNALING_CHANNEL", "ARN": channel}))
            .collect();
        ok(serde_json::json!({ "MappedResourceConfigurationList": list }))
    }

    fn describe_media_storage(&self, body: &[u8], region: &str) -> Answer {
        let channel = match channel_of(body, region, "DescribeMediaStorageConfiguration") {
            Ok(channel) => channel,
            Err(refusal) => return *refusal,
        };
        let configuration = match self.link_of(&channel) {
            Link::Enabled(stream) => serde_json::json!({"Status": "ENABLED", "StreamARN": stream}),
            Link::Disabled => serde_json::json!({"Status": "DISABLED"}),
        };
        ok(serde_json::json!({ "MediaStorageConfiguration": configuration }))
    }

    fn update_media_storage(&self, body: &[u8], region: &str) -> Answer {
        #[derive(Deserialize)]
        struct Update {
            #[serde(rename = "MediaStorageConfiguration")]
            configuration: Configuration,
        }
        #[derive(Deserialize)]
        struct Configuration {
            #[serde(rename = "StreamARN")]
            stream_arn: Option<String>,
            #[serde(rename = "Status")]
            status: String,
        }
        let channel = match channel_of(body, region, "UpdateMediaStorageConfiguration") {
            Ok(channel) => channel,
            Err(refusal) => return *refusal,
        };
        let Ok(req) = serde_json::from_slice::<Update>(body) else {
            return invalid("MediaStorageConfiguration is required");
        };
        let name = channel.name();
        if name.starts_with("inactive-") {
            return error(
                400,
                "ResourceInUseException",
                "The channel is not in Active status.",
                Dialect::Header,
            );
        }
        if name.starts_with("fullmesh-") {
            return invalid("Media storage needs a SINGLE_MASTER channel");
        }
        let link = match (
            req.configuration.status.as_str(),
            req.configuration.stream_arn,
        ) {
            ("DISABLED", _) => Link::Disabled,
            ("ENABLED", Some(stream_arn)) => {
                let by_arn = StreamRef {
                    stream_arn: Some(stream_arn.clone()),
                    stream_name: None,
                };
                let stream = match self.find_stream(&by_arn, channel.account(), region) {
                    Ok(stream) => stream,
                    Err(refusal) => return *refusal,
                };
                if stream.status(Instant::now()) != "ACTIVE" {
                    return error(
                        400,
                        "ResourceInUseException",
                        "The stream is not in Active status.",
                        Dialect::Header,
                    );
                }
                if stream.retention_hours == 0 {
                    return error(
                        400,
                        "NoDataRetentionException",
                        "The Stream data retention in hours is equal to zero.",
                        Dialect::Header,
                    );
                }
                if self
                    .mapped_channel(&stream.arn)
                    .is_some_and(|other| other != channel.as_str())
                {
                    return error(
                        400,
                        "ResourceInUseException",
                        "The stream is already mapped to a different resource.",
                        Dialect::Header,
                    );
                }
                Link::Enabled(stream.arn)
            }
            ("ENABLED", None) => return invalid("StreamARN is required when Status is ENABLED"),
            _ => return invalid("Status must be ENABLED or DISABLED"),
        };
        let mut state = self.lock();
        let links = &mut state.storage.links;
        if !links.contains_key(channel.as_str()) && links.len() >= MAX_LINKS {
            return error(
                400,
                "AccountChannelLimitExceededException",
                "The emulator keeps the storage configuration of at most 10000 channels.",
                Dialect::Header,
            );
        }
        links.insert(channel.as_str().to_owned(), link);
        ok(serde_json::json!({}))
    }

    /// The channel's configuration: as changed, else as its name says.
    fn link_of(&self, channel: &ChannelArn) -> Link {
        if let Some(link) = self.lock().storage.links.get(channel.as_str()) {
            return link.clone();
        }
        if channel.name().starts_with("nostorage-") {
            Link::Disabled
        } else {
            Link::Enabled(implicit_stream_arn(channel.as_str()))
        }
    }

    /// The channel whose media storage links the stream.
    pub(super) fn mapped_channel(&self, stream_arn: &str) -> Option<String> {
        let state = self.lock();
        let links = &state.storage.links;
        if let Some((channel, _)) = links
            .iter()
            .find(|(_, link)| **link == Link::Enabled(stream_arn.to_owned()))
        {
            return Some(channel.clone());
        }
        // An implicit stream is linked to the channel it is named after,
        // unless that channel's configuration was changed.
        if is_created(&state.storage.streams, stream_arn) {
            return None;
        }
        let channel = stream_arn.replacen(":stream/", ":channel/", 1);
        let parsed = ChannelArn::parse(&channel).ok()?;
        let implicit = !parsed.name().starts_with("nostorage-")
            && stream_arn.contains(":stream/")
            && !links.contains_key(&channel);
        implicit.then_some(channel)
    }

    /// The ARN, retention and name of the stream a data-plane request
    /// names, or KVS's refusal.
    pub(super) fn stream_for_playback(
        &self,
        stream_arn: Option<&str>,
        stream_name: Option<&str>,
        account: &str,
        region: &str,
    ) -> Result<(String, u64, String), Refusal> {
        let by = StreamRef {
            stream_arn: stream_arn.map(str::to_owned),
            stream_name: stream_name.map(str::to_owned),
        };
        self.find_stream(&by, account, region)
            .map(|s| (s.arn, s.retention_hours, s.name))
    }

    /// The name a stream's recorded fragments are kept under: the linked
    /// channel's name (the emulator records a master's media under its
    /// channel's name, `fragments.rs`), else the stream's own `name`. A
    /// stream EnsureStorage created and linked thus lists what its
    /// channel's joins recorded.
    pub(super) fn recorded_under(
        &self,
        stream_arn: Option<&str>,
        name: &str,
        account: &str,
        region: &str,
    ) -> String {
        let arn = match stream_arn {
            Some(arn) => Some(arn.to_owned()),
            None => {
                let prefix = format!("arn:aws:kinesisvideo:{region}:{account}:stream/{name}/");
                let state = self.lock();
                state
                    .storage
                    .streams
                    .keys()
                    .find(|arn| arn.starts_with(&prefix))
                    .cloned()
            }
        };
        arn.and_then(|arn| self.mapped_channel(&arn))
            .and_then(|channel| super::fragments::stream_name_of(&channel).map(str::to_owned))
            .unwrap_or_else(|| name.to_owned())
    }

    /// The stream a request names, or KVS's refusal.
    fn find_stream(&self, req: &StreamRef, account: &str, region: &str) -> Result<Stream, Refusal> {
        let not_found = || {
            error(
                404,
                "ResourceNotFoundException",
                "The requested stream is not found or not active.",
                Dialect::Header,
            )
        };
        let state = self.lock();
        let streams = &state.storage.streams;
        match (req.stream_arn.as_deref(), req.stream_name.as_deref()) {
            (Some(arn), _) => {
                let Ok(parsed) = ChannelArn::parse(arn) else {
                    return Err(Box::new(invalid(
                        "Value at 'streamARN' failed to satisfy constraint",
                    )));
                };
                if parsed.region() != region {
                    return Err(Box::new(error(
                        403,
                        "InvalidSignatureException",
                        &format!("Credential should be scoped to a valid region, not '{region}'."),
                        Dialect::Header,
                    )));
                }
                if let Some(stream) = streams.get(arn) {
                    return Ok(stream.clone());
                }
                drop(state);
                implicit_stream(&parsed)
            }
            (None, Some(name)) => {
                if validate_stream_name(name).is_err() {
                    return Err(Box::new(invalid(
                        "Value at 'streamName' failed to satisfy constraint",
                    )));
                }
                let prefix = format!("arn:aws:kinesisvideo:{region}:{account}:stream/{name}/");
                streams
                    .values()
                    .find(|s| s.arn.starts_with(&prefix))
                    .cloned()
                    .ok_or_else(|| Box::new(not_found()))
            }
            (None, None) => Err(Box::new(invalid("StreamName or StreamARN is required"))),
        }
    }
}

/// Whether the stream was made by CreateStream (not one every channel
/// starts with).
fn is_created(streams: &HashMap<String, Stream>, stream_arn: &str) -> bool {
    streams.get(stream_arn).is_some_and(|s| !s.implicit)
}

/// The implicit stream with this ARN, as its name says, or KVS's refusal.
fn implicit_stream(arn: &ChannelArn) -> Result<Stream, Refusal> {
    let name = arn.name();
    let exists = arn.as_str().contains(":stream/")
        && !name.starts_with("nostream-")
        && !name.starts_with("nostorage-");
    if let Some(refusal) = refusal_by_name(arn, "DescribeStream") {
        return Err(Box::new(refusal));
    }
    if name.starts_with("denystream-") {
        let message = format!(
            "User: arn:aws:sts::000000000000:assumed-role/emulated is not authorized to perform: kinesisvideo:DescribeStream on resource: {arn}"
        );
        return Err(Box::new(error(
            403,
            "AccessDeniedException",
            &message,
            Dialect::Header,
        )));
    }
    if !exists {
        return Err(Box::new(error(
            404,
            "ResourceNotFoundException",
            "The requested stream is not found or not active.",
            Dialect::Header,
        )));
    }
    Ok(Stream {
        arn: arn.as_str().to_owned(),
        name: name.to_owned(),
        active_at: Instant::now(),
        stuck_creating: name.starts_with("creatingstream-"),
        implicit: true,
        retention_hours: if name.starts_with("noretention-") {
            0
        } else {
            24
        },
        // Every implicit stream starts at the same version, as it would
        // after its creation.
        version: "1".into(),
        media_type: Some("video/h264".into()),
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    })
}

fn implicit_stream_arn(channel: &str) -> String {
    channel.replacen(":channel/", ":stream/", 1)
}

/// The request's `ChannelARN`, checked as the other channel operations
/// check it, or the refusal.
fn channel_of(body: &[u8], region: &str, operation: &str) -> Result<ChannelArn, Refusal> {
    #[derive(Deserialize)]
    struct ByChannel {
        #[serde(rename = "ChannelARN")]
        channel_arn: String,
    }
    let Ok(req) = serde_json::from_slice::<ByChannel>(body) else {
        return Err(Box::new(invalid("ChannelARN is required")));
    };
    let Ok(arn) = ChannelArn::parse(&req.channel_arn) else {
        return Err(Box::new(invalid(
            "Value at 'channelARN' failed to satisfy constraint",
        )));
    };
    if arn.region() != region {
        return Err(Box::new(error(
            403,
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid region, not '{region}'."),
            Dialect::Header,
        )));
    }
    refusal_by_name(&arn, operation).map_or(Ok(arn), |r| Err(Box::new(r)))
}

/// The answer KVS gives for a `missing-*` (not found) or `denied-*` (not
/// allowed) resource, as for every other operation.
fn refusal_by_name(arn: &ChannelArn, operation: &str) -> Option<Answer> {
    if arn.name().starts_with("missing-") {
        return Some(error(
            404,
            "ResourceNotFoundException",
            "The requested resource is not found or not active.",
            Dialect::Header,
        ));
    }
    arn.name().starts_with("denied-").then(|| {
        let message = format!(
            "User: arn:aws:sts::000000000000:assumed-role/emulated is not authorized to perform: kinesisvideo:{operation} on resource: {arn}"
        );
        error(403, "AccessDeniedException", &message, Dialect::Header)
    })
}

/// The model's `MediaType` pattern:
/// `[\w\-\.\+]+/[\w\-\.\+]+(,[\w\-\.\+]+/[\w\-\.\+]+)*`, 1 to 128 characters.
fn is_media_type(m: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    };
    (1..=128).contains(&m.len())
        && m.split(',')
            .all(|t| t.split_once('/').is_some_and(|(a, b)| part(a) && part(b)))
}

/// A fresh stream version, `[a-zA-Z0-9]+` as the model says.
fn version() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| CHARS[fastrand::usize(..CHARS.len())] as char)
        .collect()
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_follow_the_model() {
        for good in ["video/h264", "video/h264,audio/aac", "video/x-matroska+1"] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in ["", "video", "video/", "/h264", "video/h264,", "a b/c"] {
            assert!(!is_media_type(bad), "{bad}");
        }
    }

    fn code(answer: &Answer) -> Option<String> {
        answer
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(':').next())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn streams_and_links_are_bounded_by_the_account_limits() {
        let emulator = Emulator::start(crate::emulator::EmulatorCredentials::generate())
            .await
            .unwrap();
        let region = "us-west-2";
        for i in 0..MAX_STREAMS {
            let body = serde_json::json!({"StreamName": format!("s-{i}")}).to_string();
            let answer = emulator.create_stream(body.as_bytes(), ACCOUNT, region);
            assert_eq!(answer.status(), 200, "stream {i}");
        }
        let body = serde_json::json!({"StreamName": "one-more"}).to_string();
        let refused = emulator.create_stream(body.as_bytes(), ACCOUNT, region);
        assert_eq!(
            code(&refused).as_deref(),
            Some("AccountStreamLimitExceededException")
        );
        // A name in use is refused as KVS refuses it.
        let body = serde_json::json!({"StreamName": "s-7"}).to_string();
        let taken = emulator.create_stream(body.as_bytes(), ACCOUNT, region);
        assert_eq!(code(&taken).as_deref(), Some("ResourceInUseException"));
        assert_eq!(emulator.lock().storage.streams.len(), MAX_STREAMS);

        let link = |name: String| {
            serde_json::json!({
                "ChannelARN": format!("arn:aws:kinesisvideo:{region}:{ACCOUNT}:channel/{name}/1"),
                "MediaStorageConfiguration": {"Status": "DISABLED"},
            })
            .to_string()
        };
        for i in 0..MAX_LINKS {
            let answer = emulator.update_media_storage(link(format!("c-{i}")).as_bytes(), region);
            assert_eq!(answer.status(), 200, "channel {i}");
        }
        let refused = emulator.update_media_storage(link("one-more".into()).as_bytes(), region);
        assert_eq!(
            code(&refused).as_deref(),
            Some("AccountChannelLimitExceededException")
        );
        // A channel already changed may still be changed.
        let again = emulator.update_media_storage(link("c-3".into()).as_bytes(), region);
        assert_eq!(again.status(), 200);
        assert_eq!(emulator.lock().storage.links.len(), MAX_LINKS);
    }
}
