//! EnsureStorage: puts a channel's media storage in place, so its joins
//! record: a Kinesis video stream that keeps at least the asked retention,
//! linked to the channel with storage ENABLED.
//!
//! It writes to the AWS account, so it is off unless the sidecar was started
//! with `--allow-storage-changes`; off, nothing is sent.
//!
//! Each step reads before it writes, so a call on a channel whose storage is
//! in place sends no write, and a call cut short (its deadline) is finished
//! by the next one. Calls for one channel run one at a time (single flight):
//! a second call waits, within its deadline, for the first to finish and
//! then finds everything in place, so concurrent calls make one set of
//! writes. The per-channel gates live only while calls hold them, and at
//! most [`MAX_CHANNELS_IN_FLIGHT`] channels have one; a call for a further
//! channel is refused (RESOURCE_EXHAUSTED) before anything is sent.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::kvs::{
    Call, Error, ErrorKind, KvsClient,
    arn::{ChannelArn, InvalidField, MAX_STREAM_NAME_LEN, ValidationError, validate_stream_name},
    streams::StreamInfo,
};

/// Why an EnsureStorage call did not put the storage in place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnsureError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Writing to the account is off in this sidecar: nothing was sent.
    #[error(
        "EnsureStorage changes the AWS account and is off in this sidecar: start it with --allow-storage-changes"
    )]
    Disabled,
    /// The channel or its stream is in a state no write of ours fixes; the
    /// text says what to fix (it names resources, never secrets).
    #[error("{0}")]
    Precondition(String),
    /// [`MAX_CHANNELS_IN_FLIGHT`] channels have a call in flight: nothing
    /// was sent.
    #[error(
        "EnsureStorage calls are in flight for {MAX_CHANNELS_IN_FLIGHT} channels, the sidecar's limit; retry with backoff"
    )]
    Busy,
    #[error(transparent)]
    Kvs(#[from] Error),
}

/// The retention of a stream EnsureStorage makes when the caller names none.
pub(crate) const DEFAULT_RETENTION_HOURS: u32 = 24;
/// KVS's longest retention: ten years.
pub(crate) const MAX_RETENTION_HOURS: u32 = 87_600;
/// Channels with an EnsureStorage call in flight, at most.
pub(crate) const MAX_CHANNELS_IN_FLIGHT: usize = 256;
/// First pause between DescribeStream reads while a created stream is
/// CREATING; doubled up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);

/// One change a call made, in the order it made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    StreamCreated,
    RetentionIncreased,
    StorageEnabled,
}

/// What the caller asked for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// `None`: the default, `{channel name}-storage`.
    pub stream_name: Option<String>,
    pub retention_hours: u32,
}

impl Wanted {
    /// The request's fields as the contract defines them: an empty name and
    /// a zero retention mean the defaults.
    pub(crate) fn parse(stream_name: &str, retention_hours: u32) -> Result<Self, InvalidField> {
        let stream_name = match stream_name {
            "" => None,
            name => {
                validate_stream_name(name).map_err(|r| r.of("stream_name"))?;
                Some(name.to_owned())
            }
        };
        let retention_hours = match retention_hours {
            0 => DEFAULT_RETENTION_HOURS,
            h if h > MAX_RETENTION_HOURS => {
                return Err(ValidationError::Constraint(
                    "must be 1 to 87600 hours (0: the default, 24)",
                )
                .of("retention_hours"));
            }
            h => h,
        };
        Ok(Self {
            stream_name,
            retention_hours,
        })
    }

    /// The stream's name for `channel`.
    fn name_for(&self, channel: &ChannelArn) -> Result<String, InvalidField> {
        if let Some(name) = &self.stream_name {
            return Ok(name.clone());
        }
        let name = format!("{}-storage", channel.name());
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(ValidationError::Constraint(
                "is required: the default, the channel's name and \"-storage\", is longer than 256 characters",
            )
            .of("stream_name"));
        }
        Ok(name)
    }
}

/// What a call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ensured {
    pub stream_arn: String,
    pub changes: Vec<Change>,
}

pub(crate) struct Storage {
    client: Arc<KvsClient>,
    allowed: bool,
    flights: Flights,
}

// === impl Storage ===

impl Storage {
    pub(crate) fn new(client: Arc<KvsClient>, allowed: bool) -> Self {
        Self {
            client,
            allowed,
            flights: Flights::new(MAX_CHANNELS_IN_FLIGHT),
        }
    }

    /// Puts the channel's storage in place, as [`Wanted`]; see the module.
    pub(crate) async fn ensure(
        &self,
        call: &Call,
        channel: &ChannelArn,
        wanted: &Wanted,
    ) -> Result<Ensured, EnsureError> {
        if !self.allowed {
            return Err(EnsureError::Disabled);
        }
        let name = wanted.name_for(channel)?;
        let gate = self.flights.enter(channel)?;
        let work = async {
            let _turn = gate.lock().await;
            Steps {
                client: &self.client,
                call,
                channel,
                changes: Vec::new(),
            }
            .run(&name, wanted.retention_hours)
            .await
        };
        call.bound(work).await
    }
}

/// One call's walk through the steps, with what it changed so far.
struct Steps<'a> {
    client: &'a KvsClient,
    call: &'a Call,
    channel: &'a ChannelArn,
    changes: Vec<Change>,
}

impl Steps<'_> {
    async fn run(mut self, name: &str, retention_hours: u32) -> Result<Ensured, EnsureError> {
        let (client, call, channel) = (self.client, self.call, self.channel);
        // Storage works only on ACTIVE SINGLE_MASTER channels: nothing is
        // written for any other.
        let (info, storage) = tokio::join!(
            client.describe_signaling_channel(call, channel),
            client.describe_media_storage_configuration(call, channel),
        );
        let info = info?;
        if info.channel_status != "ACTIVE" || info.channel_type != "SINGLE_MASTER" {
            return Err(EnsureError::Precondition(format!(
                "the channel is a {} channel in status {}; media storage needs an ACTIVE SINGLE_MASTER channel, nothing was changed",
                info.channel_type, info.channel_status
            )));
        }
        let storage = storage?;
        // A linked stream is kept, whatever name the caller gave; one that
        // no longer exists is replaced by the named one.
        let linked = match storage.enabled_stream() {
            Some(arn) => match client.describe_stream(call, channel, arn).await {
                Ok(stream) => Some(stream),
                Err(Error::Service(e)) if e.kind == ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let enabled = linked.is_some();
        let stream = match linked {
            Some(stream) => stream,
            None => self.named_stream(name, retention_hours).await?,
        };
        let stream = self.active(stream).await?;
        self.retention(stream.clone(), retention_hours).await?;
        if !enabled {
            self.enable(&stream.stream_arn).await?;
        }
        Ok(Ensured {
            stream_arn: stream.stream_arn,
            changes: self.changes,
        })
    }

    /// The stream called `name`, created when there is none.
    async fn named_stream(
        &mut self,
        name: &str,
        retention_hours: u32,
    ) -> Result<StreamInfo, Error> {
        let (client, call, channel) = (self.client, self.call, self.channel);
        if let Some(stream) = client.describe_stream_by_name(call, channel, name).await? {
            return Ok(stream);
        }
        match client
            .create_stream(call, channel, name, retention_hours)
            .await
        {
            Ok(stream_arn) => {
                self.changes.push(Change::StreamCreated);
                Ok(StreamInfo {
                    stream_arn,
                    stream_name: name.to_owned(),
                    status: "CREATING".into(),
                    ..StreamInfo::default()
                })
            }
            // Created meanwhile: by someone else, or by an attempt of ours
            // whose answer was lost and that the stack retried.
            Err(Error::Service(e)) if e.kind == ErrorKind::ResourceInUse => client
                .describe_stream_by_name(call, channel, name)
                .await?
                .ok_or(Error::Service(e)),
            Err(e) => Err(e),
        }
    }

    /// The stream once ACTIVE, read again until then (the call's deadline
    /// bounds the wait: a stream still CREATING then is finished by the
    /// next call).
    async fn active(&self, mut stream: StreamInfo) -> Result<StreamInfo, EnsureError> {
        let mut pause = POLL_FIRST;
        loop {
            match stream.status.as_str() {
                "ACTIVE" => return Ok(stream),
                "CREATING" | "UPDATING" => {}
                other => {
                    return Err(EnsureError::Precondition(format!(
                        "the stream {} is {other}; it needs to be ACTIVE",
                        stream.stream_arn
                    )));
                }
            }
            if Instant::now() + pause >= self.call.deadline() {
                return Err(Error::DeadlineExceeded.into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            stream = self
                .client
                .describe_stream(self.call, self.channel, &stream.stream_arn)
                .await?;
        }
    }

    /// Raises the stream's retention to `hours` when it keeps less. A
    /// concurrent update (VersionMismatchException) makes it read the
    /// stream again and try once more, if still needed.
    async fn retention(&mut self, mut stream: StreamInfo, hours: u32) -> Result<(), Error> {
        let (client, call, channel) = (self.client, self.call, self.channel);
        for attempt in 0..2 {
            if stream.data_retention_in_hours >= hours {
                return Ok(());
            }
            let increase = hours - stream.data_retention_in_hours;
            match client
                .increase_data_retention(
                    call,
                    channel,
                    &stream.stream_arn,
                    &stream.version,
                    increase,
                )
                .await
            {
                Ok(()) => {
                    self.changes.push(Change::RetentionIncreased);
                    return Ok(());
                }
                Err(Error::Service(e)) if e.kind == ErrorKind::VersionMismatch && attempt == 0 => {
                    stream = client
                        .describe_stream(call, channel, &stream.stream_arn)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Links the stream to the channel. A stream another channel records
    /// into is refused by KVS (ResourceInUseException); the refusal names
    /// that channel.
    async fn enable(&mut self, stream_arn: &str) -> Result<(), EnsureError> {
        let (client, call, channel) = (self.client, self.call, self.channel);
        match client.enable_media_storage(call, channel, stream_arn).await {
            Ok(()) => {
                self.changes.push(Change::StorageEnabled);
                Ok(())
            }
            Err(Error::Service(e)) if e.kind == ErrorKind::ResourceInUse => {
                match client.mapped_resource(call, channel, stream_arn).await {
                    Ok(Some(other)) if other != channel.as_str() => {
                        Err(EnsureError::Precondition(format!(
                            "the stream {stream_arn} already stores the media of channel {other}; a stream records one channel: name another stream_name"
                        )))
                    }
                    _ => Err(Error::Service(e).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The per-channel gates of calls in flight.
struct Flights {
    gates: Arc<Mutex<HashMap<ChannelArn, Arc<tokio::sync::Mutex<()>>>>>,
    capacity: usize,
}

/// A call's hold on its channel's gate; the gate is forgotten when the last
/// call holding it ends.
struct Flight {
    gates: Arc<Mutex<HashMap<ChannelArn, Arc<tokio::sync::Mutex<()>>>>>,
    channel: ChannelArn,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Flights {
    fn new(capacity: usize) -> Self {
        Self {
            gates: Arc::default(),
            capacity,
        }
    }

    fn enter(&self, channel: &ChannelArn) -> Result<Flight, EnsureError> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let gate = match gates.get(channel) {
            Some(gate) => gate.clone(),
            None if gates.len() >= self.capacity => {
                return Err(EnsureError::Busy);
            }
            None => gates.entry(channel.clone()).or_default().clone(),
        };
        Ok(Flight {
            gates: self.gates.clone(),
            channel: channel.clone(),
            gate,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.gates.lock().unwrap().len()
    }
}

impl Flight {
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made only under this lock: two references left are
        // the map's and ours, so no other call holds or waits on the gate.
        if Arc::strong_count(&self.gate) == 2 {
            gates.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_fields_and_their_defaults() {
        let wanted = Wanted::parse("", 0).unwrap();
        assert_eq!(wanted.retention_hours, 24);
        assert_eq!(
            wanted.name_for(&ChannelArn::for_tests("porch")).unwrap(),
            "porch-storage"
        );
        let named = Wanted::parse("clips_1.a-b", 87_600).unwrap();
        assert_eq!(
            named.name_for(&ChannelArn::for_tests("porch")).unwrap(),
            "clips_1.a-b"
        );
        for (name, hours, field) in [
            ("a b", 1, "stream_name"),
            ("x/y", 1, "stream_name"),
            (&"n".repeat(257) as &str, 1, "stream_name"),
            ("ok", 87_601, "retention_hours"),
        ] {
            match Wanted::parse(name, hours) {
                Err(InvalidField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{name} {hours}: {other:?}"),
            }
        }
        let long_channel = ChannelArn::for_tests(&"c".repeat(250));
        assert!(matches!(
            Wanted::parse("", 1).unwrap().name_for(&long_channel),
            Err(InvalidField {
                field: "stream_name",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn gates_live_while_held_and_are_bounded() {
        let flights = Flights::new(2);
        let a = flights.enter(&ChannelArn::for_tests("a")).unwrap();
        let a2 = flights.enter(&ChannelArn::for_tests("a")).unwrap();
        let b = flights.enter(&ChannelArn::for_tests("b")).unwrap();
        assert!(Arc::ptr_eq(&a.gate, &a2.gate), "one gate per channel");
        assert!(matches!(
            flights.enter(&ChannelArn::for_tests("c")),
            Err(EnsureError::Busy)
        ));
        assert_eq!(flights.len(), 2);
        drop(a);
        assert_eq!(flights.len(), 2, "a2 still holds a's gate");
        drop(a2);
        drop(b);
        assert_eq!(flights.len(), 0);
        flights.enter(&ChannelArn::for_tests("c")).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_call_waits_for_the_first_within_its_deadline() {
        let flights = Flights::new(4);
        let first = flights.enter(&ChannelArn::for_tests("a")).unwrap();
        let held = first.lock().await;
        let second = flights.enter(&ChannelArn::for_tests("a")).unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(1), second.lock()).await;
        assert!(waited.is_err(), "the gate is held");
        drop(held);
        let _turn = tokio::time::timeout(Duration::from_secs(1), second.lock())
            .await
            .expect("free once the first ends");
    }
}
