//! Signaling connections: what a master or viewer process needs to connect
//! to a channel's KVS signaling WebSocket without AWS credentials.
//!
//! One connection is a WSS URL presigned by the client
//! ([`KvsClient::presign_signaling`]: the channel's endpoint for the role,
//! from the discovery the joins share, signed with the credentials of the
//! channel's account and KVS's clock), the region's KVS STUN server, and
//! the TURN servers of `GetIceServerConfig`, sent through the stack like
//! every KVS request.

use std::{sync::Arc, time::Duration, time::SystemTime};

use crate::kvs::{
    Call, Error, KvsClient, TurnServer,
    arn::ChannelArn,
    endpoint::Peer,
    partition::partition,
    presign::{MAX_EXPIRY, PresignedUrl},
};

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
    url_expiry: Duration,
}

// === impl Signaling ===

impl Signaling {
    /// `url_expiry` is clamped to KVS's maximum, [`MAX_EXPIRY`].
    pub fn new(client: Arc<KvsClient>, url_expiry: Duration) -> Self {
        Self {
            client,
            url_expiry: url_expiry.min(MAX_EXPIRY),
        }
    }

    /// A connection for `peer` on the channel (a viewer's client id is
    /// validated by the caller). Bounded by the call's deadline, discovery
    /// and credential loading included.
    pub async fn connection(
        &self,
        call: &Call,
        arn: &ChannelArn,
        peer: Peer<'_>,
    ) -> Result<Connection, Error> {
        // The URL and the TURN servers at once; one discovery serves both.
        let (presigned, turn) = tokio::join!(
            self.client
                .presign_signaling(call, arn, peer, self.url_expiry),
            self.client.ice_server_config(call, arn, peer),
        );
        let (websocket_url, expires_at) = presigned?;
        Ok(Connection {
            websocket_url,
            expires_at,
            stun: stun_server(arn),
            turn: turn?,
        })
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
