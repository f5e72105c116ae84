//! Which channels this sidecar may act on.
//!
//! An allow-list of channel ARN patterns: each field of the ARN (partition,
//! region, account, channel name, channel id) is matched on its own, and `*`
//! in a field matches any run of characters within that field only. So
//! `arn:aws:kinesisvideo:*:123456789012:channel/recorder-*/*` allows every
//! channel of account 123456789012 whose name starts with `recorder-`, in
//! any region, and nothing else. An empty list allows every channel.
//!
//! The check runs before anything is sent: a channel outside the list gets
//! PERMISSION_DENIED, so a compromised neighbour cannot drive any channel
//! the pod's IAM role happens to reach.

use std::{fmt, str::FromStr};

use crate::kvs::arn::ChannelArn;

#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelPolicy {
    patterns: Vec<ArnPattern>,
}

/// One allow-list entry: an ARN whose fields may hold `*` globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnPattern {
    raw: String,
    fields: [String; 5],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "channel pattern {0:?} is not arn:PARTITION:kinesisvideo:REGION:ACCOUNT:channel/NAME/ID (fields may use *)"
)]
pub struct PatternError(String);

// === impl ChannelPolicy ===

impl ChannelPolicy {
    pub(crate) fn new(patterns: Vec<ArnPattern>) -> Self {
        Self { patterns }
    }

    pub(crate) fn allows(&self, arn: &ChannelArn) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(arn))
    }
}

// === impl ArnPattern ===

impl ArnPattern {
    pub fn matches(&self, arn: &ChannelArn) -> bool {
        fields(arn.as_str()).is_some_and(|values| {
            self.fields
                .iter()
                .zip(values)
                .all(|(pattern, value)| glob(pattern, value))
        })
    }
}

impl FromStr for ArnPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = s.trim();
        let fields = fields(raw).ok_or_else(|| PatternError(raw.to_owned()))?;
        if fields.iter().any(|f| f.is_empty()) {
            return Err(PatternError(raw.to_owned()));
        }
        Ok(Self {
            raw: raw.to_owned(),
            fields: fields.map(str::to_owned),
        })
    }
}

impl fmt::Display for ArnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Partition, region, account, channel name and id of a channel ARN (or
/// pattern), or `None` if it is not shaped like one.
fn fields(arn: &str) -> Option<[&str; 5]> {
    let parts: Vec<&str> = arn.split(':').collect();
    let ["arn", partition, "kinesisvideo", region, account, resource] = parts[..] else {
        return None;
    };
    let mut resource = resource.splitn(3, '/');
    let (Some("channel"), Some(name), Some(id)) =
        (resource.next(), resource.next(), resource.next())
    else {
        return None;
    };
    Some([partition, region, account, name, id])
}

/// `*` matches any run of characters, including none.
fn glob(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(s: &str) -> ChannelArn {
        ChannelArn::parse(s).unwrap()
    }

    fn policy(patterns: &[&str]) -> ChannelPolicy {
        ChannelPolicy::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    #[test]
    fn globs_match_within_one_field() {
        assert!(glob("*", ""));
        assert!(glob("recorder-*", "recorder-1"));
        assert!(glob("*-cam", "front-cam"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(!glob("recorder-*", "other"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn allows_only_matching_channels() {
        let p = policy(&["arn:aws:kinesisvideo:*:123456789012:channel/recorder-*/*"]);
        assert!(p.allows(&arn(
            "arn:aws:kinesisvideo:eu-west-1:123456789012:channel/recorder-7/1"
        )));
        assert!(!p.allows(&arn(
            "arn:aws:kinesisvideo:eu-west-1:999999999999:channel/recorder-7/1"
        )));
        assert!(!p.allows(&arn(
            "arn:aws:kinesisvideo:eu-west-1:123456789012:channel/lobby/1"
        )));
        assert!(!p.allows(&arn(
            "arn:aws-cn:kinesisvideo:cn-north-1:123456789012:channel/recorder-7/1"
        )));
        // A glob never crosses a field: the name cannot absorb "/".
        let any_name = policy(&["arn:aws:kinesisvideo:us-east-1:1:channel/*/5"]);
        assert!(!any_name.allows(&arn("arn:aws:kinesisvideo:us-east-1:1:channel/a/6")));
        assert!(policy(&[]).allows(&arn("arn:aws:kinesisvideo:us-east-1:1:channel/a/6")));
    }

    #[test]
    fn refuses_malformed_patterns() {
        for bad in [
            "*",
            "arn:aws:kinesisvideo:*:*",
            "arn:aws:s3:*:*:channel/*/*",
            "arn:aws:kinesisvideo:*::channel/*/*",
        ] {
            assert!(bad.parse::<ArnPattern>().is_err(), "{bad}");
        }
    }
}
