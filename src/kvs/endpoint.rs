//! Where requests go: the partition-aware control-plane endpoint, and the
//! roles a channel's WEBRTC endpoint is discovered for (cached in
//! `endpoint_cache`).

use http::Uri;

use super::{
    Error,
    arn::{ChannelArn, ValidationError},
};

/// How the AWS environment asks for the control-plane endpoint to be chosen:
/// the SDKs' `use_fips_endpoint`, `use_dualstack_endpoint` and configured
/// endpoint URL, read by the composition root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSettings {
    pub use_fips: bool,
    pub use_dual_stack: bool,
    /// A configured endpoint (`--kvs-endpoint-url`,
    /// `AWS_ENDPOINT_URL_KINESIS_VIDEO`, ...), used as it is for every region.
    pub override_url: Option<Uri>,
}

impl EndpointSettings {
    /// The settings, refused when they contradict each other the way the
    /// SDKs' rules refuse them (on every request; we refuse once, at start).
    pub fn new(
        use_fips: bool,
        use_dual_stack: bool,
        override_url: Option<Uri>,
    ) -> Result<Self, EndpointError> {
        let settings = Self {
            use_fips,
            use_dual_stack,
            override_url,
        };
        settings.check_override()?;
        Ok(settings)
    }

    fn check_override(&self) -> Result<(), EndpointError> {
        match (&self.override_url, self.use_fips, self.use_dual_stack) {
            (Some(_), true, _) => Err(EndpointError::FipsWithOverride),
            (Some(_), _, true) => Err(EndpointError::DualStackWithOverride),
            _ => Ok(()),
        }
    }
}

/// Why no endpoint could be chosen. The texts are those of the kinesisvideo
/// endpoint rule set, so they match what an SDK would say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("Invalid Configuration: FIPS and custom endpoint are not supported")]
    FipsWithOverride,
    #[error("Invalid Configuration: Dualstack and custom endpoint are not supported")]
    DualStackWithOverride,
    #[error("Invalid Configuration: Missing Region")]
    MissingRegion,
    #[error("FIPS and DualStack are enabled, but this partition does not support one or both")]
    FipsDualStackUnsupported,
    #[error("FIPS is enabled but this partition does not support FIPS")]
    FipsUnsupported,
    #[error("DualStack is enabled but this partition does not support DualStack")]
    DualStackUnsupported,
    #[error("region {0:?} cannot be part of a host name")]
    InvalidRegion(String),
}

/// One AWS partition, as AWS's `partitions.json` describes it (a copy, with
/// its origin, is in `tests/data/endpoints/`; a test keeps this table equal
/// to it).
#[derive(Debug, PartialEq, Eq)]
pub struct Partition {
    pub id: &'static str,
    pub dns_suffix: &'static str,
    pub dual_stack_dns_suffix: &'static str,
    pub supports_fips: bool,
    pub supports_dual_stack: bool,
    /// `regionRegex` is `^PREFIX\-\w+\-\d+$` for every partition; these are
    /// its alternatives for PREFIX.
    region_prefixes: &'static [&'static str],
    /// Regions listed by name that the regex does not match (the
    /// `*-global` pseudo-regions).
    named_regions: &'static [&'static str],
}

/// In `partitions.json` order: the SDKs try the regexes in this order, and
/// fall back to the first partition.
pub const PARTITIONS: [Partition; 8] = [
    Partition {
        id: "aws",
        dns_suffix: "amazonaws.com",
        dual_stack_dns_suffix: "api.aws",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx"],
        named_regions: &["aws-global"],
    },
    Partition {
        id: "aws-cn",
        dns_suffix: "amazonaws.com.cn",
        dual_stack_dns_suffix: "api.amazonwebservices.com.cn",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["cn"],
        named_regions: &["aws-cn-global"],
    },
    Partition {
        id: "aws-eusc",
        dns_suffix: "amazonaws.eu",
        dual_stack_dns_suffix: "api.amazonwebservices.eu",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["eusc-de"],
        named_regions: &[],
    },
    Partition {
        id: "aws-iso",
        dns_suffix: "c2s.ic.gov",
        dual_stack_dns_suffix: "api.aws.ic.gov",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["us-iso"],
        named_regions: &["aws-iso-global"],
    },
    Partition {
        id: "aws-iso-b",
        dns_suffix: "sc2s.sgov.gov",
        dual_stack_dns_suffix: "api.aws.scloud",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["us-isob"],
        named_regions: &["aws-iso-b-global"],
    },
    Partition {
        id: "aws-iso-e",
        dns_suffix: "cloud.adc-e.uk",
        dual_stack_dns_suffix: "api.cloud-aws.adc-e.uk",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["eu-isoe"],
        named_regions: &["aws-iso-e-global"],
    },
    Partition {
        id: "aws-iso-f",
        dns_suffix: "csp.hci.ic.gov",
        dual_stack_dns_suffix: "api.aws.hci.ic.gov",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["us-isof"],
        named_regions: &["aws-iso-f-global"],
    },
    Partition {
        id: "aws-us-gov",
        dns_suffix: "amazonaws.com",
        dual_stack_dns_suffix: "api.aws",
        supports_fips: true,
        supports_dual_stack: true,
        region_prefixes: &["us-gov"],
        named_regions: &["aws-us-gov-global"],
    },
];

/// The partition a region belongs to, as the SDKs' `aws.partition` finds
/// it: a region listed by name, else the first whose regex matches, else
/// `aws` (so a region launched after this table still resolves).
pub fn partition(region: &str) -> &'static Partition {
    let named = PARTITIONS
        .iter()
        .find(|p| p.named_regions.contains(&region));
    named
        .or_else(|| {
            let prefix = region_prefix(region)?;
            PARTITIONS
                .iter()
                .find(|p| p.region_prefixes.contains(&prefix))
        })
        .unwrap_or(&PARTITIONS[0])
}

/// PREFIX of a region shaped `PREFIX-WORD-DIGITS` (`\w+` cannot hold a
/// `-`, so WORD and DIGITS are the last two dash-separated parts).
fn region_prefix(region: &str) -> Option<&str> {
    let (rest, digits) = region.rsplit_once('-')?;
    let (prefix, word) = rest.rsplit_once('-')?;
    let is_word =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let digits_ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    (is_word(word) && digits_ok).then_some(prefix)
}

/// The kinesisvideo endpoint rule set: the override if configured, else the
/// regional (FIPS, dual-stack) host in the region's partition.
pub fn resolve(region: Option<&str>, settings: &EndpointSettings) -> Result<Uri, EndpointError> {
    if let Some(url) = &settings.override_url {
        settings.check_override()?;
        return Ok(url.clone());
    }
    let region = region.ok_or(EndpointError::MissingRegion)?;
    let p = partition(region);
    let (service, suffix) = match (settings.use_fips, settings.use_dual_stack) {
        (true, true) if p.supports_fips && p.supports_dual_stack => {
            ("kinesisvideo-fips", p.dual_stack_dns_suffix)
        }
        (true, true) => return Err(EndpointError::FipsDualStackUnsupported),
        (true, false) if p.supports_fips => ("kinesisvideo-fips", p.dns_suffix),
        (true, false) => return Err(EndpointError::FipsUnsupported),
        (false, true) if p.supports_dual_stack => ("kinesisvideo", p.dual_stack_dns_suffix),
        (false, true) => return Err(EndpointError::DualStackUnsupported),
        (false, false) => ("kinesisvideo", p.dns_suffix),
    };
    Uri::builder()
        .scheme("https")
        .authority(format!("{service}.{region}.{suffix}"))
        .path_and_query("/")
        .build()
        .map_err(|_| EndpointError::InvalidRegion(region.to_owned()))
}

/// The control-plane endpoint for a channel. The ARN's partition must be
/// its region's (`arn:aws:...:cn-north-1:...` names no real channel, and
/// signing it for one partition while sending it to another would fail
/// obscurely), so a contradiction is refused before anything is sent.
pub fn control_plane(arn: &ChannelArn, settings: &EndpointSettings) -> Result<Uri, Error> {
    let region_partition = partition(arn.region()).id;
    if region_partition != arn.partition() {
        return Err(Error::InvalidRequest {
            field: "channel_arn",
            reason: ValidationError::PartitionMismatch {
                partition: arn.partition().to_owned(),
                region: arn.region().to_owned(),
                region_partition,
            },
        });
    }
    resolve(Some(arn.region()), settings).map_err(Error::Endpoint)
}

/// The role a channel endpoint was discovered for. KVS may answer different
/// endpoints for each, so they are cached apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "MASTER",
            Role::Viewer => "VIEWER",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(region: &str, partition: &str) -> ChannelArn {
        ChannelArn::parse(&format!(
            "arn:{partition}:kinesisvideo:{region}:123456789012:channel/cam/1"
        ))
        .unwrap()
    }

    fn settings(fips: bool, dual: bool) -> EndpointSettings {
        EndpointSettings::new(fips, dual, None).unwrap()
    }

    #[test]
    fn control_plane_follows_partition_fips_and_dual_stack() {
        let cases = [
            (
                "aws",
                "eu-central-1",
                false,
                false,
                "kinesisvideo.eu-central-1.amazonaws.com",
            ),
            (
                "aws",
                "eu-central-1",
                true,
                false,
                "kinesisvideo-fips.eu-central-1.amazonaws.com",
            ),
            (
                "aws",
                "eu-central-1",
                false,
                true,
                "kinesisvideo.eu-central-1.api.aws",
            ),
            (
                "aws",
                "eu-central-1",
                true,
                true,
                "kinesisvideo-fips.eu-central-1.api.aws",
            ),
            (
                "aws-cn",
                "cn-north-1",
                false,
                false,
                "kinesisvideo.cn-north-1.amazonaws.com.cn",
            ),
            (
                "aws-cn",
                "cn-north-1",
                false,
                true,
                "kinesisvideo.cn-north-1.api.amazonwebservices.com.cn",
            ),
            (
                "aws-us-gov",
                "us-gov-west-1",
                true,
                false,
                "kinesisvideo-fips.us-gov-west-1.amazonaws.com",
            ),
            (
                "aws-iso",
                "us-iso-east-1",
                false,
                true,
                "kinesisvideo.us-iso-east-1.api.aws.ic.gov",
            ),
            (
                "aws-iso-b",
                "us-isob-east-1",
                true,
                false,
                "kinesisvideo-fips.us-isob-east-1.sc2s.sgov.gov",
            ),
            (
                "aws-iso-e",
                "eu-isoe-west-1",
                false,
                false,
                "kinesisvideo.eu-isoe-west-1.cloud.adc-e.uk",
            ),
            (
                "aws-iso-f",
                "us-isof-south-1",
                true,
                true,
                "kinesisvideo-fips.us-isof-south-1.api.aws.hci.ic.gov",
            ),
            (
                "aws-eusc",
                "eusc-de-east-1",
                false,
                false,
                "kinesisvideo.eusc-de-east-1.amazonaws.eu",
            ),
            (
                "aws-eusc",
                "eusc-de-east-1",
                false,
                true,
                "kinesisvideo.eusc-de-east-1.api.amazonwebservices.eu",
            ),
            // A region launched after this table falls to its regex's partition.
            (
                "aws",
                "mx-south-9",
                false,
                false,
                "kinesisvideo.mx-south-9.amazonaws.com",
            ),
            (
                "aws-cn",
                "cn-south-3",
                false,
                false,
                "kinesisvideo.cn-south-3.amazonaws.com.cn",
            ),
        ];
        for (partition, region, fips, dual, host) in cases {
            let got = control_plane(&arn(region, partition), &settings(fips, dual)).unwrap();
            assert_eq!(
                got.to_string(),
                format!("https://{host}/"),
                "{partition} {region} fips={fips} dual={dual}"
            );
        }
    }

    #[test]
    fn an_arn_whose_partition_contradicts_its_region_is_refused() {
        let local =
            EndpointSettings::new(false, false, Some("http://127.0.0.1:4566".parse().unwrap()))
                .unwrap();
        for (partition, region, region_partition) in [
            ("aws", "cn-north-1", "aws-cn"),
            ("aws-cn", "us-east-1", "aws"),
            ("aws-us-gov", "us-east-1", "aws"),
            ("aws", "us-gov-west-1", "aws-us-gov"),
            ("aws-mars", "us-east-1", "aws"),
        ] {
            // Refused with or without an override: the ARN itself is wrong.
            for settings in [settings(false, false), local.clone()] {
                let err = control_plane(&arn(region, partition), &settings).unwrap_err();
                let Error::InvalidRequest { field, reason } = &err else {
                    panic!("{err:?}");
                };
                assert_eq!(*field, "channel_arn");
                assert_eq!(
                    *reason,
                    ValidationError::PartitionMismatch {
                        partition: partition.into(),
                        region: region.into(),
                        region_partition,
                    }
                );
                assert!(err.to_string().starts_with("channel_arn: "), "{err}");
            }
        }
    }

    #[test]
    fn an_override_is_used_as_is_and_excludes_fips_and_dual_stack() {
        let local: Uri = "http://127.0.0.1:4566".parse().unwrap();
        let settings = EndpointSettings::new(false, false, Some(local.clone())).unwrap();
        assert_eq!(
            control_plane(&arn("cn-north-1", "aws-cn"), &settings).unwrap(),
            local
        );
        assert_eq!(
            EndpointSettings::new(true, false, Some(local.clone())),
            Err(EndpointError::FipsWithOverride)
        );
        assert_eq!(
            EndpointSettings::new(false, true, Some(local)),
            Err(EndpointError::DualStackWithOverride)
        );
    }

    #[test]
    fn regions_find_their_partition_as_the_sdks_do() {
        for (region, want) in [
            ("us-east-1", "aws"),
            ("aws-global", "aws"),
            ("il-central-1", "aws"),
            ("cn-northwest-1", "aws-cn"),
            ("aws-cn-global", "aws-cn"),
            ("us-gov-east-1", "aws-us-gov"),
            ("us-iso-west-1", "aws-iso"),
            ("us-isob-east-1", "aws-iso-b"),
            ("eu-isoe-west-1", "aws-iso-e"),
            ("us-isof-east-1", "aws-iso-f"),
            ("eusc-de-east-1", "aws-eusc"),
            // No regex matches: the SDKs fall back to the first partition.
            ("eusc-fr-east-1", "aws"),
            ("mars-north-1", "aws"),
            ("us-east", "aws"),
            ("local", "aws"),
        ] {
            assert_eq!(partition(region).id, want, "{region}");
        }
    }

    /// The table is AWS's `partitions.json` (copied with its origin into
    /// tests/data/endpoints/): same partitions in the same order, same
    /// outputs, and each `regionRegex` agreeing with the hand-written
    /// matcher on every listed region and on near misses.
    #[test]
    fn partition_table_matches_partitions_json() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/endpoints/partitions.json"))
                .unwrap();
        let published = data["partitions"].as_array().unwrap();
        assert_eq!(published.len(), PARTITIONS.len());
        let mut all_regions = Vec::new();
        for (p, ours) in published.iter().zip(&PARTITIONS) {
            let out = &p["outputs"];
            assert_eq!(p["id"], ours.id);
            assert_eq!(out["dnsSuffix"], ours.dns_suffix, "{}", ours.id);
            assert_eq!(
                out["dualStackDnsSuffix"], ours.dual_stack_dns_suffix,
                "{}",
                ours.id
            );
            assert_eq!(out["supportsFIPS"], ours.supports_fips, "{}", ours.id);
            assert_eq!(
                out["supportsDualStack"], ours.supports_dual_stack,
                "{}",
                ours.id
            );
            let regions: Vec<&str> = p["regions"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            for region in &regions {
                assert_eq!(partition(region).id, ours.id, "{region}");
                all_regions.push(region.to_string());
            }
        }
        // Near misses of every shape, to compare the regexes with ours.
        for extra in [
            "us-gov-1",
            "us-west",
            "us_west-1",
            "usx-east-1",
            "eusc-fr-east-1",
            "cn-north-1a",
            "eu-isoe-west-1",
            "us-isob-west-9",
            "ap-southeast-10",
            "aws-global-1",
            "",
        ] {
            all_regions.push(extra.to_owned());
        }
        for region in &all_regions {
            let by_regex = published
                .iter()
                .find(|p| {
                    regex::Regex::new(p["regionRegex"].as_str().unwrap())
                        .unwrap()
                        .is_match(region)
                })
                .map(|p| p["id"].as_str().unwrap());
            let named = published
                .iter()
                .find(|p| p["regions"].get(region.as_str()).is_some())
                .map(|p| p["id"].as_str().unwrap());
            let want = named.or(by_regex).unwrap_or("aws");
            assert_eq!(partition(region).id, want, "{region:?}");
        }
    }
}
