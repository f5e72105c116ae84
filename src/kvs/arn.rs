//! Channel ARNs and client ids, validated exactly as the KVS service model
//! declares them, before anything leaves the process.
//!
//! The model's pattern for `ChannelARN` is
//! `^arn:(aws[a-zA-Z-]*):kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+$`
//! (length 1 to 1024). It is checked by hand rather than with a regex so the
//! error can say which part is wrong; a property test keeps the two in step.

use std::fmt;

/// The longest `ChannelARN` the service model accepts.
pub const MAX_ARN_LEN: usize = 1024;
/// The longest `ClientId` the service model accepts.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Why a channel ARN or client id was refused. The text is what the caller
/// sees after the field name, so it says what is wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long, the limit is {1}")]
    TooLong(usize, usize),
    #[error("must start with \"arn:\"")]
    NotAnArn,
    #[error(
        "has {0} ':'-separated parts, expected 6 (arn:PARTITION:kinesisvideo:REGION:ACCOUNT:channel/NAME/ID)"
    )]
    WrongPartCount(usize),
    #[error("partition {0:?} is not aws[a-zA-Z-]*")]
    BadPartition(String),
    #[error("service is {0:?}, expected \"kinesisvideo\"")]
    BadService(String),
    #[error("region {0:?} is not [a-z0-9-]+")]
    BadRegion(String),
    #[error("account {0:?} is not [0-9]+")]
    BadAccount(String),
    #[error("resource {0:?} is not TYPE/NAME/ID")]
    BadResource(String),
    #[error("resource type {0:?} is not [a-z]+")]
    BadResourceType(String),
    #[error("channel name {0:?} is not [a-zA-Z0-9_.-]+")]
    BadChannelName(String),
    #[error("channel id {0:?} is not [0-9]+")]
    BadChannelId(String),
    #[error("contains a character outside [a-zA-Z0-9_.-] at position {0}")]
    BadChar(usize),
    /// Well formed, but the region lies in another partition than the ARN
    /// names.
    #[error(
        "partition {partition:?} does not hold region {region:?}, which is in {region_partition:?}"
    )]
    PartitionMismatch {
        partition: String,
        region: String,
        region_partition: &'static str,
    },
    /// A rule of the field beyond its syntax (a range, a field another
    /// one requires); the text says which, never echoing the value.
    #[error("{0}")]
    Constraint(&'static str),
    /// A number or duration outside its range.
    #[error("must be from {min}{unit} to {max}{unit}")]
    Between {
        min: u64,
        max: u64,
        unit: &'static str,
    },
}

/// A request field and what is wrong with it: the request is refused
/// with INVALID_ARGUMENT naming the field, before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: ValidationError,
}

impl ValidationError {
    /// This error, about `field`.
    pub fn of(self, field: &'static str) -> InvalidField {
        InvalidField {
            field,
            reason: self,
        }
    }

    /// What was wrong, without the rejected value: for log lines, where
    /// caller input must not be echoed.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::Empty => "empty",
            ValidationError::TooLong(..) => "too_long",
            ValidationError::NotAnArn => "not_an_arn",
            ValidationError::WrongPartCount(_) => "wrong_part_count",
            ValidationError::BadPartition(_) => "bad_partition",
            ValidationError::BadService(_) => "bad_service",
            ValidationError::BadRegion(_) => "bad_region",
            ValidationError::BadAccount(_) => "bad_account",
            ValidationError::BadResource(_) => "bad_resource",
            ValidationError::BadResourceType(_) => "bad_resource_type",
            ValidationError::BadChannelName(_) => "bad_channel_name",
            ValidationError::BadChannelId(_) => "bad_channel_id",
            ValidationError::BadChar(_) => "bad_char",
            ValidationError::PartitionMismatch { .. } => "partition_mismatch",
            ValidationError::Constraint(_) => "constraint",
            ValidationError::Between { .. } => "out_of_range",
        }
    }
}

/// A channel ARN that matches the service model's pattern. Cheap to clone;
/// the parts borrow from the one string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelArn {
    raw: Box<str>,
    partition_end: usize,
    region: (usize, usize),
}

// === impl ChannelArn ===

impl ChannelArn {
    /// The ARN of channel `name` in us-west-2, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str) -> Self {
        Self::parse(&format!(
            "arn:aws:kinesisvideo:us-west-2:123456789012:channel/{name}/1"
        ))
        .expect("a valid test ARN")
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() {
            return Err(ValidationError::Empty);
        }
        if s.len() > MAX_ARN_LEN {
            return Err(ValidationError::TooLong(s.len(), MAX_ARN_LEN));
        }
        if !s.starts_with("arn:") {
            return Err(ValidationError::NotAnArn);
        }
        // The resource part cannot hold ':', so a plain split is exact.
        let parts: Vec<&str> = s.split(':').collect();
        let [_, partition, service, region, account, resource] = parts[..] else {
            return Err(ValidationError::WrongPartCount(parts.len()));
        };
        let valid_partition = partition
            .strip_prefix("aws")
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-'));
        if !valid_partition {
            return Err(ValidationError::BadPartition(partition.to_owned()));
        }
        if service != "kinesisvideo" {
            return Err(ValidationError::BadService(service.to_owned()));
        }
        if !non_empty_all(region, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
        }) {
            return Err(ValidationError::BadRegion(region.to_owned()));
        }
        if !non_empty_all(account, |b| b.is_ascii_digit()) {
            return Err(ValidationError::BadAccount(account.to_owned()));
        }
        let mut segments = resource.splitn(3, '/');
        let (Some(kind), Some(name), Some(id)) =
            (segments.next(), segments.next(), segments.next())
        else {
            return Err(ValidationError::BadResource(resource.to_owned()));
        };
        if !non_empty_all(kind, |b| b.is_ascii_lowercase()) {
            return Err(ValidationError::BadResourceType(kind.to_owned()));
        }
        if !non_empty_all(name, is_name_byte) {
            return Err(ValidationError::BadChannelName(name.to_owned()));
        }
        if !non_empty_all(id, |b| b.is_ascii_digit()) {
            return Err(ValidationError::BadChannelId(id.to_owned()));
        }
        // `arn:aws:...:cn-north-1:...` names no real channel, and signing it
        // for one partition while sending it to another would fail
        // obscurely.
        let region_partition = super::partition::partition(region).id;
        if region_partition != partition {
            return Err(ValidationError::PartitionMismatch {
                partition: partition.to_owned(),
                region: region.to_owned(),
                region_partition,
            });
        }

        let partition_end = "arn:".len() + partition.len();
        let region_start = partition_end + ":kinesisvideo:".len();
        Ok(Self {
            raw: s.into(),
            partition_end,
            region: (region_start, region_start + region.len()),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The AWS partition: `aws`, `aws-cn`, `aws-us-gov`, ...
    pub fn partition(&self) -> &str {
        &self.raw["arn:".len()..self.partition_end]
    }

    /// The region the channel lives in, and so the region every call for it
    /// is signed for.
    pub fn region(&self) -> &str {
        &self.raw[self.region.0..self.region.1]
    }

    /// The AWS account that owns the channel.
    pub fn account(&self) -> &str {
        self.raw.split(':').nth(4).unwrap_or_default()
    }

    /// The channel's name: the middle of `channel/NAME/ID`.
    pub fn name(&self) -> &str {
        let resource = self.raw.rsplit(':').next().unwrap_or_default();
        resource.split('/').nth(1).unwrap_or_default()
    }
}

impl fmt::Display for ChannelArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for ChannelArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.raw, f)
    }
}

/// Checks a viewer's `ClientId`: 1 to 256 characters of `[a-zA-Z0-9_.-]`.
pub fn validate_client_id(s: &str) -> Result<(), ValidationError> {
    validate_token(s, MAX_CLIENT_ID_LEN)
}

/// The longest `StreamName` the service model accepts.
pub const MAX_STREAM_NAME_LEN: usize = 256;

/// Checks a `StreamName`: 1 to 256 characters of `[a-zA-Z0-9_.-]`.
pub fn validate_stream_name(s: &str) -> Result<(), ValidationError> {
    validate_token(s, MAX_STREAM_NAME_LEN)
}

/// An idempotency key: 1 to 128 characters of the client id's alphabet.
pub fn validate_idempotency_key(s: &str) -> Result<(), ValidationError> {
    const MAX_KEY_LEN: usize = 128;
    validate_token(s, MAX_KEY_LEN)
}

fn validate_token(s: &str, max_len: usize) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty);
    }
    if let Some(pos) = s.bytes().position(|b| !is_name_byte(b)) {
        return Err(ValidationError::BadChar(pos));
    }
    if s.len() > max_len {
        return Err(ValidationError::TooLong(s.len(), max_len));
    }
    Ok(())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn non_empty_all(s: &str, f: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.bytes().all(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MODEL_PATTERN: &str =
        r"^arn:(aws[a-zA-Z-]*):kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+$";

    fn model() -> regex::Regex {
        regex::Regex::new(MODEL_PATTERN).unwrap()
    }

    /// The service model's pattern, and a region of the partition it names.
    fn valid(s: &str) -> bool {
        let Some(parts) = model().captures(s) else {
            return false;
        };
        let region = s.split(':').nth(3).unwrap();
        crate::kvs::partition::partition(region).id == &parts[1]
    }

    #[test]
    fn an_arn_whose_partition_contradicts_its_region_is_refused() {
        for (partition, region, region_partition) in [
            ("aws", "cn-north-1", "aws-cn"),
            ("aws-cn", "us-east-1", "aws"),
            ("aws-us-gov", "us-east-1", "aws"),
            ("aws", "us-gov-west-1", "aws-us-gov"),
            ("aws-mars", "us-east-1", "aws"),
        ] {
            let arn = format!("arn:{partition}:kinesisvideo:{region}:123456789012:channel/a/1");
            assert!(model().is_match(&arn));
            let err = ChannelArn::parse(&arn).unwrap_err();
            assert_eq!(
                err,
                ValidationError::PartitionMismatch {
                    partition: partition.into(),
                    region: region.into(),
                    region_partition,
                }
            );
            assert_eq!(err.code(), "partition_mismatch");
        }
    }

    #[test]
    fn parses_parts() {
        let arn = ChannelArn::parse(
            "arn:aws-cn:kinesisvideo:cn-north-1:123456789012:channel/front_door.1-a/1700000000000",
        )
        .unwrap();
        assert_eq!(arn.partition(), "aws-cn");
        assert_eq!(arn.region(), "cn-north-1");
        assert_eq!(arn.name(), "front_door.1-a");
        assert_eq!(
            arn.as_str(),
            "arn:aws-cn:kinesisvideo:cn-north-1:123456789012:channel/front_door.1-a/1700000000000"
        );
    }

    #[test]
    fn refuses_each_malformed_part() {
        let cases = [
            ("", ValidationError::Empty),
            (
                "urn:aws:kinesisvideo:us-east-1:1:channel/a/1",
                ValidationError::NotAnArn,
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:channel/a/1:x",
                ValidationError::WrongPartCount(7),
            ),
            (
                "arn:azure:kinesisvideo:us-east-1:1:channel/a/1",
                ValidationError::BadPartition("azure".into()),
            ),
            (
                "arn:aws1:kinesisvideo:us-east-1:1:channel/a/1",
                ValidationError::BadPartition("aws1".into()),
            ),
            (
                "arn:aws:kinesis:us-east-1:1:channel/a/1",
                ValidationError::BadService("kinesis".into()),
            ),
            (
                "arn:aws:kinesisvideo:US-EAST-1:1:channel/a/1",
                ValidationError::BadRegion("US-EAST-1".into()),
            ),
            (
                "arn:aws:kinesisvideo::1:channel/a/1",
                ValidationError::BadRegion("".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:12a:channel/a/1",
                ValidationError::BadAccount("12a".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:channel/a",
                ValidationError::BadResource("channel/a".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:Channel/a/1",
                ValidationError::BadResourceType("Channel".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:channel/a b/1",
                ValidationError::BadChannelName("a b".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:channel/a/b/1",
                ValidationError::BadChannelId("b/1".into()),
            ),
            (
                "arn:aws:kinesisvideo:us-east-1:1:channel/a/1\n",
                ValidationError::BadChannelId("1\n".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(ChannelArn::parse(input), Err(want), "input {input:?}");
            assert!(!model().is_match(input), "model accepts {input:?}");
        }
    }

    #[test]
    fn refuses_overlong_arn() {
        let arn = format!(
            "arn:aws:kinesisvideo:us-east-1:1:channel/{}/1",
            "a".repeat(1000)
        );
        assert!(matches!(
            ChannelArn::parse(&arn),
            Err(ValidationError::TooLong(_, 1024))
        ));
    }

    #[test]
    fn client_id_rules() {
        assert_eq!(validate_client_id("viewer-1_a.b"), Ok(()));
        assert_eq!(validate_client_id(&"x".repeat(256)), Ok(()));
        assert_eq!(validate_client_id(""), Err(ValidationError::Empty));
        assert_eq!(
            validate_client_id(&"x".repeat(257)),
            Err(ValidationError::TooLong(257, 256))
        );
        assert_eq!(validate_client_id("a/b"), Err(ValidationError::BadChar(1)));
        assert_eq!(validate_client_id("é"), Err(ValidationError::BadChar(0)));
    }

    fn arn_like() -> impl Strategy<Value = String> {
        // Mostly near-valid ARNs, so the interesting boundaries are hit often.
        let part = |re: &'static str| proptest::string::string_regex(re).unwrap();
        (
            prop_oneof![part("aws[a-zA-Z-]{0,4}"), part("[a-z0-9:-]{0,5}")],
            prop_oneof![Just("kinesisvideo".to_string()), part("[a-z:]{0,12}")],
            part("[a-z0-9A-Z:-]{0,12}"),
            part("[0-9a:]{0,12}"),
            part("[a-zA-Z/]{0,8}"),
            part("[a-zA-Z0-9_./:\n -]{0,12}"),
            part("[0-9a/\n]{0,6}"),
        )
            .prop_map(|(p, s, r, a, t, n, i)| format!("arn:{p}:{s}:{r}:{a}:{t}/{n}/{i}"))
    }

    proptest! {
        #[test]
        fn agrees_with_model_regex_on_near_arns(s in arn_like()) {
            prop_assert_eq!(ChannelArn::parse(&s).is_ok(), valid(&s));
        }

        #[test]
        fn agrees_with_model_regex_on_any_string(s in "\\PC{0,80}") {
            prop_assert_eq!(ChannelArn::parse(&s).is_ok(), valid(&s));
        }

        #[test]
        fn client_id_agrees_with_pattern(s in "[a-zA-Z0-9_.\\- /é]{0,300}") {
            let re = regex::Regex::new(r"^[a-zA-Z0-9_.-]{1,256}$").unwrap();
            prop_assert_eq!(validate_client_id(&s).is_ok(), re.is_match(&s));
        }
    }
}
