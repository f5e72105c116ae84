//! Typed control-plane operations on a channel's storage: the channel and
//! its media storage configuration, and the Kinesis video stream it records
//! into. Bodies follow botocore's `kinesisvideo` 2017-09-30 model (member
//! names, required members, enums); every request is signed for the
//! channel's region with the channel's account's credentials, through the
//! stack, within the call's deadline.

use serde::{Deserialize, Serialize};

use super::{Call, Error, ErrorKind, KvsClient, Operation, arn::ChannelArn};

/// What a stream created for WebRTC ingestion holds: KVS stores the
/// channel's H.264 video and AAC audio (the media types its WebRTC
/// ingestion accepts); the media type is descriptive metadata for players.
pub const INGESTION_MEDIA_TYPE: &str = "video/h264,audio/aac";

/// `DescribeSignalingChannel`'s `ChannelInfo`, the members we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelInfo {
    #[serde(default)]
    pub channel_type: String,
    #[serde(default)]
    pub channel_status: String,
}

/// `DescribeMediaStorageConfiguration`'s `MediaStorageConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MediaStorage {
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "StreamARN", default)]
    pub stream_arn: Option<String>,
}

impl MediaStorage {
    /// The linked stream, when storage is ENABLED and links one.
    pub fn enabled_stream(&self) -> Option<&str> {
        self.stream_arn
            .as_deref()
            .filter(|s| self.status == "ENABLED" && !s.is_empty())
    }
}

/// `DescribeStream`'s `StreamInfo`, the members we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamInfo {
    #[serde(rename = "StreamARN", default)]
    pub stream_arn: String,
    #[serde(default)]
    pub stream_name: String,
    #[serde(default)]
    pub status: String,
    /// Needed by `UpdateDataRetention` (`CurrentVersion`).
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub data_retention_in_hours: u32,
}

#[derive(Serialize)]
struct ByChannel<'a> {
    #[serde(rename = "ChannelARN")]
    channel_arn: &'a str,
}

#[derive(Serialize)]
struct ByStreamArn<'a> {
    #[serde(rename = "StreamARN")]
    stream_arn: &'a str,
}

// === impl KvsClient ===

impl KvsClient {
    pub async fn describe_signaling_channel(
        &self,
        call: &Call,
        arn: &ChannelArn,
    ) -> Result<ChannelInfo, Error> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "ChannelInfo")]
            info: ChannelInfo,
        }
        let body = ByChannel {
            channel_arn: arn.as_str(),
        };
        let answer = self
            .describe(call, arn, Operation::DescribeSignalingChannel, &body)
            .await?;
        Ok(parse::<Answer>(Operation::DescribeSignalingChannel, &answer)?.info)
    }

    pub async fn describe_media_storage_configuration(
        &self,
        call: &Call,
        arn: &ChannelArn,
    ) -> Result<MediaStorage, Error> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "MediaStorageConfiguration")]
            configuration: MediaStorage,
        }
        let op = Operation::DescribeMediaStorageConfiguration;
        let body = ByChannel {
            channel_arn: arn.as_str(),
        };
        let answer = self.describe(call, arn, op, &body).await?;
        Ok(parse::<Answer>(op, &answer)?.configuration)
    }

    /// The stream named `name` in the channel's account and region, or
    /// `None` when KVS knows none.
    pub async fn describe_stream_by_name(
        &self,
        call: &Call,
        arn: &ChannelArn,
        name: &str,
    ) -> Result<Option<StreamInfo>, Error> {
        #[derive(Serialize)]
        struct ByName<'a> {
            #[serde(rename = "StreamName")]
            stream_name: &'a str,
        }
        not_found_is_none(self.stream(call, arn, &ByName { stream_name: name }).await)
    }

    pub async fn describe_stream(
        &self,
        call: &Call,
        arn: &ChannelArn,
        stream_arn: &str,
    ) -> Result<StreamInfo, Error> {
        self.stream(call, arn, &ByStreamArn { stream_arn }).await
    }

    async fn stream(
        &self,
        call: &Call,
        arn: &ChannelArn,
        body: &impl Serialize,
    ) -> Result<StreamInfo, Error> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "StreamInfo")]
            info: StreamInfo,
        }
        let answer = self
            .describe(call, arn, Operation::DescribeStream, body)
            .await?;
        Ok(parse::<Answer>(Operation::DescribeStream, &answer)?.info)
    }

    /// Creates the stream (in the channel's account and region) and answers
    /// its ARN. KVS answers before the stream is ACTIVE: it is CREATING for
    /// a moment.
    pub async fn create_stream(
        &self,
        call: &Call,
        arn: &ChannelArn,
        name: &str,
        retention_hours: u32,
    ) -> Result<String, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            stream_name: &'a str,
            media_type: &'a str,
            data_retention_in_hours: u32,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "StreamARN")]
            stream_arn: String,
        }
        let body = Body {
            stream_name: name,
            media_type: INGESTION_MEDIA_TYPE,
            data_retention_in_hours: retention_hours,
        };
        let answer = self
            .describe(call, arn, Operation::CreateStream, &body)
            .await?;
        Ok(parse::<Answer>(Operation::CreateStream, &answer)?.stream_arn)
    }

    /// Raises the stream's retention by `increase_hours`, provided it is
    /// still at `current_version` (else `VersionMismatchException`).
    pub async fn increase_data_retention(
        &self,
        call: &Call,
        arn: &ChannelArn,
        stream_arn: &str,
        current_version: &str,
        increase_hours: u32,
    ) -> Result<(), Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
            current_version: &'a str,
            operation: &'a str,
            data_retention_change_in_hours: u32,
        }
        let body = Body {
            stream_arn,
            current_version,
            operation: "INCREASE_DATA_RETENTION",
            data_retention_change_in_hours: increase_hours,
        };
        self.describe(call, arn, Operation::UpdateDataRetention, &body)
            .await
            .map(drop)
    }

    /// Links the stream to the channel and enables storage. From then on
    /// KVS records the channel's joins into the stream, and ends direct
    /// master-viewer connections on the channel.
    pub async fn enable_media_storage(
        &self,
        call: &Call,
        arn: &ChannelArn,
        stream_arn: &str,
    ) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Configuration<'a> {
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
            #[serde(rename = "Status")]
            status: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "ChannelARN")]
            channel_arn: &'a str,
            #[serde(rename = "MediaStorageConfiguration")]
            configuration: Configuration<'a>,
        }
        let body = Body {
            channel_arn: arn.as_str(),
            configuration: Configuration {
                stream_arn,
                status: "ENABLED",
            },
        };
        self.describe(call, arn, Operation::UpdateMediaStorageConfiguration, &body)
            .await
            .map(drop)
    }

    /// The resource (a signaling channel) the stream is mapped to, if any.
    pub async fn mapped_resource(
        &self,
        call: &Call,
        arn: &ChannelArn,
        stream_arn: &str,
    ) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "MappedResourceConfigurationList", default)]
            list: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "ARN")]
            arn: Option<String>,
        }
        let op = Operation::DescribeMappedResourceConfiguration;
        let answer = self
            .describe(call, arn, op, &ByStreamArn { stream_arn })
            .await?;
        Ok(parse::<Answer>(op, &answer)?
            .list
            .into_iter()
            .find_map(|i| i.arn.filter(|a| !a.is_empty())))
    }
}

fn not_found_is_none<T>(answer: Result<T, Error>) -> Result<Option<T>, Error> {
    match answer {
        Ok(found) => Ok(Some(found)),
        Err(Error::Service(e)) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(op: Operation, body: &[u8]) -> Result<T, Error> {
    // serde's message names the field and position, never a value we care
    // to hide: these answers hold no secrets.
    serde_json::from_slice(body)
        .map_err(|e| Error::MalformedResponse(format!("{}: {e}", op.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_members_kvs_answers() {
        let body = br#"{"StreamInfo":{"StreamARN":"arn:aws:kinesisvideo:us-west-2:1:stream/s/1",
            "StreamName":"s","Status":"ACTIVE","Version":"abc1","DataRetentionInHours":24,
            "CreationTime":1.7E9,"MediaType":"video/h264"}}"#;
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "StreamInfo")]
            info: StreamInfo,
        }
        let info = parse::<Answer>(Operation::DescribeStream, body)
            .unwrap()
            .info;
        assert_eq!(info.version, "abc1");
        assert_eq!(info.data_retention_in_hours, 24);
        assert_eq!(info.stream_name, "s");
        let storage: MediaStorage =
            serde_json::from_str(r#"{"Status":"DISABLED","StreamARN":"arn:x"}"#).unwrap();
        assert_eq!(storage.enabled_stream(), None);
        let storage: MediaStorage =
            serde_json::from_str(r#"{"Status":"ENABLED","StreamARN":"arn:x"}"#).unwrap();
        assert_eq!(storage.enabled_stream(), Some("arn:x"));
    }
}
