//! Signaling connections: what a master or viewer process needs to connect
//! to a channel's KVS signaling WebSocket without AWS credentials.
//!
//! One connection is the channel's endpoints for the role (the discovery
//! the joins share, from the endpoint cache), a WSS URL presigned locally
//! ([`presign`]) with the credentials the stack signs the channel's requests
//! with (its account's: an assumed role's or the default chain's) and the
//! skew-corrected clock, the region's KVS STUN server, and the TURN servers of
//! `GetIceServerConfig`, sent through the stack like every KVS request.

pub mod presign;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    clock::{Clock, SkewCorrectedClock},
    kvs::{
        Call, Error, KvsClient, TurnServer,
        arn::ChannelArn,
        credentials::Identities,
        endpoint::{Protocol, Role},
        partition::partition,
    },
};

use self::presign::{Presign, PresignedUrl};

/// Everything a process needs to connect to signaling. Its Debug hides the
/// URL's signature and the TURN passwords: those fields' own types redact
/// themselves.
#[derive(Debug)]
pub struct Connection {
    pub websocket_url: PresignedUrl,
    /// When the URL stops being accepted, by this host's clock.
    pub expires_at: SystemTime,
    /// `stun:stun.kinesisvideo.{region}.{dns suffix}:443`.
    pub stun: String,
    pub turn: Vec<TurnServer>,
}

pub struct Signaling {
    client: Arc<KvsClient>,
    identities: Arc<Identities>,
    clock: Arc<SkewCorrectedClock>,
    url_expiry: Duration,
}

// === impl Signaling ===

impl Signaling {
    /// `url_expiry` is clamped to KVS's maximum, [`presign::MAX_EXPIRY`].
    pub fn new(
        client: Arc<KvsClient>,
        identities: Arc<Identities>,
        clock: Arc<SkewCorrectedClock>,
        url_expiry: Duration,
    ) -> Self {
        Self {
            client,
            identities,
            clock,
            url_expiry: url_expiry.min(presign::MAX_EXPIRY),
        }
    }

    /// A connection for `role` on the channel; `client_id` is the viewer's
    /// (validated by the caller), `None` for a master. Bounded by the call's
    /// deadline, discovery and credential loading included.
    pub async fn connection(
        &self,
        call: &Call,
        arn: &ChannelArn,
        role: Role,
        client_id: Option<&str>,
    ) -> Result<Connection, Error> {
        let stun = stun_server(arn);
        let work = async {
            let endpoints = self.client.discover_endpoints(call, arn, role).await?;
            let wss = endpoints.get(Protocol::Wss)?;
            // The TURN request and the credentials (usually cached) in
            // parallel: the credentials never wait on KVS.
            let (turn, credentials) = tokio::join!(
                self.client.ice_server_config(call, arn, role, client_id),
                self.identities.for_channel(arn).get(),
            );
            let credentials = credentials?;
            let signed_at = self.clock.now();
            let local_now = self.clock.uncorrected();
            let websocket_url = Presign {
                endpoint: wss,
                arn,
                client_id,
                credentials: &credentials,
                time: signed_at,
                expires_in: self.url_expiry,
            }
            .sign()?;
            // The URL's session token stops working when the credentials
            // expire, whatever X-Amz-Expires says.
            let mut expires_at = local_now + self.url_expiry;
            if let Some(expiry) = credentials.expiry() {
                expires_at = expires_at.min(expiry);
            }
            Ok(Connection {
                websocket_url,
                expires_at,
                stun,
                turn: turn?,
            })
        };
        call.bound(work).await
    }
}

/// KVS's STUN server for the channel's region, in the region's partition.
fn stun_server(arn: &ChannelArn) -> String {
    let suffix = partition(arn.region()).dns_suffix;
    format!("stun:stun.kinesisvideo.{}.{suffix}:443", arn.region())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_server_follows_region_and_partition() {
        let arn = |s: &str| ChannelArn::parse(s).unwrap();
        assert_eq!(
            stun_server(&arn("arn:aws:kinesisvideo:eu-central-1:1:channel/c/1")),
            "stun:stun.kinesisvideo.eu-central-1.amazonaws.com:443"
        );
        assert_eq!(
            stun_server(&arn("arn:aws-cn:kinesisvideo:cn-north-1:1:channel/c/1")),
            "stun:stun.kinesisvideo.cn-north-1.amazonaws.com.cn:443"
        );
    }
}
