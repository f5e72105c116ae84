//! AWS's partitions (`partitions.json`): which partition a region is in,
//! and each partition's DNS suffixes. Shared by the endpoint rules and by
//! the ARN check that refuses a channel ARN naming a region of another
//! partition.

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

#[cfg(test)]
mod tests {
    use super::*;

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
