//! Where requests go: the partition-aware control-plane endpoint, the
//! roles a channel's endpoints are discovered for, and the endpoints one
//! discovery finds (cached in `endpoint_cache`).

use http::Uri;

use super::{Error, arn::ChannelArn, partition::partition};

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

/// The control-plane endpoint for a channel. (An ARN naming a region of
/// another partition never gets here: `ChannelArn::parse` refuses it.)
pub fn control_plane(arn: &ChannelArn, settings: &EndpointSettings) -> Result<Uri, Error> {
    resolve(Some(arn.region()), settings).map_err(Error::Endpoint)
}

/// A channel's endpoints for one role, as one `GetSignalingChannelEndpoint`
/// asking for WSS, HTTPS and WEBRTC answered them. Each is checked when
/// discovered (`client::parse_endpoints`); one KVS did not list is `None`,
/// and only the call that needs it fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Where the joins go.
    pub webrtc: Option<Uri>,
    /// The signaling WebSocket, presigned for masters and viewers.
    pub wss: Option<Uri>,
    /// Where `GetIceServerConfig` goes.
    pub https: Option<Uri>,
}

impl Endpoints {
    /// The endpoint for `protocol`, or why there is none.
    pub fn get(&self, protocol: Protocol) -> Result<&Uri, Error> {
        let found = match protocol {
            Protocol::Webrtc => &self.webrtc,
            Protocol::Wss => &self.wss,
            Protocol::Https => &self.https,
        };
        found.as_ref().ok_or_else(|| {
            Error::MalformedResponse(format!(
                "GetSignalingChannelEndpoint answered no {} endpoint",
                protocol.as_str()
            ))
        })
    }
}

/// The protocols the sidecar discovers endpoints for, all in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Webrtc,
    Wss,
    Https,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Wss, Protocol::Https, Protocol::Webrtc];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Webrtc => "WEBRTC",
            Protocol::Wss => "WSS",
            Protocol::Https => "HTTPS",
        }
    }
}

/// The role a channel endpoint was discovered for. KVS may answer different
/// endpoints for each, so they are cached apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Viewer,
}

/// Who a join or a signaling connection is for: the channel's master, or
/// one of its viewers by client id. The one encoding of master/viewer above
/// the wire (the endpoint cache keys on its [`Role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer<'a> {
    Master,
    Viewer(&'a str),
}

impl<'a> Peer<'a> {
    /// The peer a client id names: a master has none (empty).
    pub fn from_client_id(client_id: &'a str) -> Self {
        match client_id {
            "" => Peer::Master,
            id => Peer::Viewer(id),
        }
    }

    pub fn role(self) -> Role {
        match self {
            Peer::Master => Role::Master,
            Peer::Viewer(_) => Role::Viewer,
        }
    }

    /// The viewer's client id; `None` for the master.
    pub fn client_id(self) -> Option<&'a str> {
        match self {
            Peer::Master => None,
            Peer::Viewer(id) => Some(id),
        }
    }
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
}
