//! Where requests go: the partition-aware control-plane endpoint, the
//! roles a channel's endpoints are discovered for, and the endpoints one
//! discovery finds (cached in `endpoint_cache`).

use http::Uri;

use super::{Error, arn::ChannelArn};

/// The DNS suffix of each partition's regional endpoints.
pub fn dns_suffix(partition: &str) -> Option<&'static str> {
    Some(match partition {
        "aws" | "aws-us-gov" => "amazonaws.com",
        "aws-cn" => "amazonaws.com.cn",
        "aws-iso" => "c2s.ic.gov",
        "aws-iso-b" => "sc2s.sgov.gov",
        "aws-iso-e" => "cloud.adc-e.uk",
        "aws-iso-f" => "csp.hci.ic.gov",
        "aws-eusc" => "amazonaws.eu",
        _ => return None,
    })
}

/// The control-plane endpoint for a channel: the configured override (the
/// SDKs' `AWS_ENDPOINT_URL_KINESIS_VIDEO` / `AWS_ENDPOINT_URL`) if any, else
/// `https://kinesisvideo.{region}.{partition suffix}`.
pub fn control_plane(arn: &ChannelArn, override_url: Option<&Uri>) -> Result<Uri, Error> {
    if let Some(url) = override_url {
        return Ok(url.clone());
    }
    let suffix = dns_suffix(arn.partition())
        .ok_or_else(|| Error::UnknownPartition(arn.partition().to_owned()))?;
    format!("https://kinesisvideo.{}.{suffix}", arn.region())
        .parse()
        .map_err(|e| Error::MalformedResponse(format!("control-plane endpoint: {e}")))
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

    #[test]
    fn control_plane_is_partition_aware() {
        let cases = [
            (
                "aws",
                "eu-central-1",
                "https://kinesisvideo.eu-central-1.amazonaws.com/",
            ),
            (
                "aws-cn",
                "cn-north-1",
                "https://kinesisvideo.cn-north-1.amazonaws.com.cn/",
            ),
            (
                "aws-us-gov",
                "us-gov-west-1",
                "https://kinesisvideo.us-gov-west-1.amazonaws.com/",
            ),
        ];
        for (partition, region, want) in cases {
            let got = control_plane(&arn(region, partition), None).unwrap();
            assert_eq!(got.to_string(), want);
        }
        assert!(matches!(
            control_plane(&arn("us-east-1", "aws-mars"), None),
            Err(Error::UnknownPartition(p)) if p == "aws-mars"
        ));
        let local: Uri = "http://127.0.0.1:4566".parse().unwrap();
        assert_eq!(
            control_plane(&arn("us-east-1", "aws-mars"), Some(&local)).unwrap(),
            local
        );
    }
}
