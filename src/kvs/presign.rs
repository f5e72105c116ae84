//! The signaling WebSocket URL, presigned with SigV4 query parameters.
//!
//! KVS checks a signaling connection's SigV4 signature when the WebSocket
//! opens, from the URL alone (browsers cannot set headers on a WebSocket),
//! so the URL carries the whole signature: `X-Amz-Algorithm`,
//! `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`
//! (`host`), `X-Amz-Security-Token` when the credentials have one, and
//! `X-Amz-Signature`. Signing sends nothing: it is `aws-sigv4` over a `GET`
//! of path `/` with `X-Amz-ChannelARN` (and `X-Amz-ClientId` for a viewer),
//! the hash of an empty payload, as AWS's KVS signaling SDKs sign.
//!
//! It is an operation of the client ([`KvsClient::presign_signaling`]):
//! the channel's WSS endpoint, its account's credentials and the
//! skew-corrected clock the stack signs with, as for any request.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use http::Uri;

use super::{
    Call, Error, KvsClient,
    arn::ChannelArn,
    endpoint::{Peer, Protocol},
    sign::SERVICE,
};
use crate::clock::Clock;

/// The longest validity KVS accepts for a presigned signaling URL, and the
/// sidecar's default.
pub const MAX_EXPIRY: Duration = Duration::from_secs(300);

// === impl KvsClient ===

impl KvsClient {
    /// The channel's signaling WebSocket URL for `peer`, presigned to be
    /// accepted for `expires_in` (at most [`MAX_EXPIRY`]); and when it stops
    /// being accepted, by this host's clock: the URL's session token stops
    /// working when the credentials expire, whatever `X-Amz-Expires` says.
    /// Nothing is sent but the discovery, if the endpoint is not cached.
    pub async fn presign_signaling(
        &self,
        call: &Call,
        arn: &ChannelArn,
        peer: Peer<'_>,
        expires_in: Duration,
    ) -> Result<(PresignedUrl, SystemTime), Error> {
        let expires_in = expires_in.min(MAX_EXPIRY);
        let work = async {
            // The endpoint and the credentials (usually cached) at once:
            // loading credentials never waits on KVS.
            let (endpoints, credentials) = tokio::join!(
                self.discover_endpoints(call, arn, peer.role()),
                self.identities().for_channel(arn).get(),
            );
            let (endpoints, credentials) = (endpoints?, credentials?);
            let clock = self.clock();
            let local_now = clock.uncorrected();
            let url = Presign {
                endpoint: endpoints.get(Protocol::Wss)?,
                arn,
                client_id: peer.client_id(),
                credentials: &credentials,
                time: clock.now(),
                expires_in,
            }
            .sign()?;
            let expires_at = credentials
                .expiry()
                .map_or(local_now + expires_in, |expiry| {
                    expiry.min(local_now + expires_in)
                });
            Ok((url, expires_at))
        };
        call.bound(work).await
    }
}

/// What one presigned URL needs: the signing step of
/// [`KvsClient::presign_signaling`] (public for the hot-path benchmark).
pub struct Presign<'a> {
    /// The channel's WSS endpoint for the role.
    pub endpoint: &'a Uri,
    pub arn: &'a ChannelArn,
    /// The viewer's client id; `None` for a master.
    pub client_id: Option<&'a str>,
    pub credentials: &'a Credentials,
    /// Signing time, AWS's notion of now.
    pub time: SystemTime,
    pub expires_in: Duration,
}

/// A presigned URL. Debug shows neither the signature nor the token.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedUrl(String);

impl PresignedUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.0.split('?').next().unwrap_or_default();
        write!(f, "PresignedUrl({base}?** redacted **)")
    }
}

// === impl Presign ===

impl Presign<'_> {
    pub fn sign(&self) -> Result<PresignedUrl, Error> {
        let scheme = self.endpoint.scheme_str().unwrap_or("wss");
        let authority = self
            .endpoint
            .authority()
            .ok_or_else(|| Error::Signing("the WSS endpoint has no host".into()))?;
        let mut query = format!("X-Amz-ChannelARN={}", encode(self.arn.as_str()));
        if let Some(id) = self.client_id {
            query.push_str(&format!("&X-Amz-ClientId={}", encode(id)));
        }
        let unsigned = format!("{scheme}://{authority}/?{query}");

        let identity: Identity = self.credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(self.expires_in);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.arn.region())
            .name(SERVICE)
            .time(self.time)
            .settings(settings)
            .build()
            .map_err(|e| Error::Signing(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "GET",
            unsigned.as_str(),
            std::iter::empty(),
            SignableBody::Bytes(&[]),
        )
        .map_err(|e| Error::Signing(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| Error::Signing(e.to_string()))?
            .into_parts();
        let mut request = http::Request::get(&unsigned)
            .body(())
            .map_err(|e| Error::Signing(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(PresignedUrl(request.uri().to_string()))
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters,
/// as SigV4 canonicalizes query values.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::sigv4;
    use std::time::UNIX_EPOCH;

    fn arn() -> ChannelArn {
        ChannelArn::parse("arn:aws:kinesisvideo:eu-central-1:123456789012:channel/cam/1").unwrap()
    }

    fn signed(client_id: Option<&str>, token: Option<&str>) -> (PresignedUrl, SystemTime) {
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let endpoint: Uri = "wss://m-1.kinesisvideo.eu-central-1.amazonaws.com"
            .parse()
            .unwrap();
        let credentials =
            Credentials::new("AKIDEXAMPLE", "SECRET", token.map(str::to_owned), None, "t");
        let url = Presign {
            endpoint: &endpoint,
            arn: &arn(),
            client_id,
            credentials: &credentials,
            time,
            expires_in: MAX_EXPIRY,
        }
        .sign()
        .unwrap();
        (url, time)
    }

    /// The emulator's verifier (written apart from aws-sigv4, checked
    /// against AWS's published query-signing vectors) accepts what we sign.
    fn verify(url: &PresignedUrl, now: SystemTime) -> Result<sigv4::Presigned, String> {
        let uri: Uri = url.as_str().parse().unwrap();
        let headers: http::HeaderMap = [(
            http::header::HOST,
            uri.authority().unwrap().as_str().parse().unwrap(),
        )]
        .into_iter()
        .collect();
        sigv4::verify_presigned(
            "GET",
            uri.path(),
            uri.query().unwrap_or_default(),
            &headers,
            "SECRET",
            now,
        )
    }

    #[test]
    fn a_master_url_verifies_with_its_channel_and_token() {
        let (url, time) = signed(None, Some("TOKEN/with+chars="));
        let checked = verify(&url, time + Duration::from_secs(10)).unwrap();
        assert_eq!(checked.scope.region, "eu-central-1");
        assert_eq!(checked.scope.service, "kinesisvideo");
        assert_eq!(checked.scope.access_key, "AKIDEXAMPLE");
        assert_eq!(checked.param("X-Amz-ChannelARN"), Some(arn().as_str()));
        assert_eq!(checked.param("X-Amz-ClientId"), None);
        assert_eq!(
            checked.param("X-Amz-Security-Token"),
            Some("TOKEN/with+chars=")
        );
        assert_eq!(checked.param("X-Amz-Expires"), Some("300"));
        assert!(
            url.as_str()
                .starts_with("wss://m-1.kinesisvideo.eu-central-1.amazonaws.com/?")
        );
    }

    #[test]
    fn a_viewer_url_carries_its_client_id() {
        let (url, time) = signed(Some("viewer-1"), None);
        let checked = verify(&url, time).unwrap();
        assert_eq!(checked.param("X-Amz-ClientId"), Some("viewer-1"));
        assert_eq!(checked.param("X-Amz-Security-Token"), None);
    }

    #[test]
    fn expiry_and_tampering_are_caught() {
        let (url, time) = signed(None, Some("TOKEN"));
        let late = verify(&url, time + MAX_EXPIRY + Duration::from_secs(1));
        assert!(late.unwrap_err().contains("expired"));
        let tampered = PresignedUrl(url.as_str().replace("channel%2Fcam", "channel%2Fcan"));
        assert!(verify(&tampered, time).is_err());
    }

    #[test]
    fn debug_hides_the_signature_and_token() {
        let (url, _) = signed(None, Some("TOKEN"));
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("Signature") && !shown.contains("TOKEN"),
            "{shown}"
        );
    }
}
