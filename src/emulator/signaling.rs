//! The emulator's signaling WebSocket, on the emulator's own port (`ws://`,
//! loopback only), which discovery answers as the WSS endpoint.
//!
//! A connection is accepted only as KVS accepts it: a `GET /` presigned
//! with SigV4 query parameters that the emulator's own verifier
//! ([`sigv4::verify_presigned`]) accepts at the emulator's clock, by the keys
//! it hands out, for service `kinesisvideo` in the channel's region, valid
//! for at most 300 s, naming an existing channel (`X-Amz-ChannelARN`) and,
//! for a viewer, a valid `X-Amz-ClientId`. Anything else is refused at the
//! handshake with KVS's 403 (or 400/404), before any WebSocket exists.
//!
//! A connected master receives an `SDP_OFFER` in KVS's format each time a
//! `JoinStorageSession` of its channel succeeds; a viewer, each time a
//! `JoinStorageSessionAsViewer` with its channel and client id succeeds,
//! unless the offer is scripted to be dropped (see `sessions.rs`, which
//! also models the storage sessions those joins start). A
//! second master of a channel (or a second viewer with the same client id)
//! replaces the first, whose socket is closed.

use std::{collections::HashMap, time::Duration};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::{Dialect, Emulator, Received, handler::error, sigv4};
use crate::kvs::arn::{ChannelArn, validate_client_id};

/// KVS's longest validity of a presigned signaling URL.
const MAX_EXPIRES_SECS: u64 = 300;
/// Open signaling connections, masters and viewers together: a bound on
/// the emulator's memory whatever its callers do. KVS limits these per
/// channel too.
const MAX_CONNECTIONS: usize = 1024;
/// Offers queued for a socket that does not read; more are dropped.
const QUEUE: usize = 16;

/// Who a signaling connection is: the channel's master, or a viewer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Peer {
    pub(super) channel_arn: String,
    pub(super) client_id: Option<String>,
}

impl Peer {
    pub(super) fn new(channel_arn: &str, client_id: Option<&str>) -> Self {
        Self {
            channel_arn: channel_arn.to_owned(),
            client_id: client_id.map(str::to_owned),
        }
    }
}

/// One open connection: its sequence number (so a replaced one does not
/// remove its successor on closing) and its outbox.
pub(super) struct Socket {
    id: u64,
    outbox: mpsc::Sender<String>,
}

#[derive(Default)]
pub(super) struct Peers {
    sockets: HashMap<Peer, Socket>,
    next_id: u64,
    /// Connections accepted so far.
    opened: usize,
}

type Answer = Response<Full<Bytes>>;

// === impl Peers ===

impl Peers {
    /// Registers a connection for `peer`, replacing (and so closing) the
    /// one it had, unless `cap` other peers are connected. Returns its id.
    fn admit(&mut self, peer: Peer, outbox: mpsc::Sender<String>, cap: usize) -> Option<u64> {
        if self.sockets.len() >= cap && !self.sockets.contains_key(&peer) {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        // Replacing drops the previous outbox, which closes that socket.
        self.sockets.insert(peer, Socket { id, outbox });
        self.opened += 1;
        Some(id)
    }

    /// Queues a storage session's SDP offer for `peer`'s socket; whether
    /// one was open to take it.
    pub(super) fn deliver_offer(&self, peer: &Peer) -> bool {
        self.sockets
            .get(peer)
            .is_some_and(|socket| socket.outbox.try_send(sdp_offer()).is_ok())
    }
}

// === impl Emulator ===

impl Emulator {
    /// Whether `req` opens a WebSocket (the signaling connection).
    pub(super) fn is_websocket(req: &Request<Incoming>) -> bool {
        req.headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }

    /// Checks the presigned URL, then upgrades and serves the connection.
    pub(super) fn signaling_handshake(&self, mut req: Request<Incoming>) -> Answer {
        let checked = self.check_presigned(&req);
        {
            let mut state = self.lock();
            if state.received.len() == super::RECEIVED_KEPT {
                state.received.pop_front();
            }
            state.received.push_back(Received {
                path: req.uri().path().to_owned(),
                headers: req.headers().clone(),
                body: Bytes::new(),
                signature: checked
                    .as_ref()
                    .map(|(_, scope)| scope.clone())
                    .map_err(|(_, _, message)| message.clone()),
            });
        }
        let peer = match checked {
            Ok((peer, _)) => peer,
            Err((status, code, message)) => {
                return error(status, code, &message, Dialect::Header);
            }
        };
        let Some(key) = req.headers().get("sec-websocket-key") else {
            return error(400, "BadRequest", "no Sec-WebSocket-Key", Dialect::Header);
        };
        let accept = derive_accept_key(key.as_bytes());
        let (outbox, inbox) = mpsc::channel(QUEUE);
        let admitted = self
            .lock()
            .signaling
            .admit(peer.clone(), outbox, MAX_CONNECTIONS);
        let Some(id) = admitted else {
            return error(
                400,
                "ClientLimitExceededException",
                "too many signaling connections",
                Dialect::Header,
            );
        };
        let emulator = self.clone();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                serve(ws, inbox).await;
            }
            let mut state = emulator.lock();
            if state
                .signaling
                .sockets
                .get(&peer)
                .is_some_and(|s| s.id == id)
            {
                state.signaling.sockets.remove(&peer);
            }
        });
        Response::builder()
            .status(101)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::default())
            .unwrap_or_default()
    }

    /// The peer a presigned URL names, or KVS's refusal: status, code and
    /// message.
    fn check_presigned(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(Peer, sigv4::Scope), (u16, &'static str, String)> {
        let deny = |code, message: &str| Err((403, code, message.to_owned()));
        if req.method() != http::Method::GET || req.uri().path() != "/" {
            return Err((400, "BadRequest", "signaling is GET /".into()));
        }
        let query = req.uri().query().unwrap_or_default();
        // Signed by the emulator's keys or by keys its STS handed out.
        let secret = query
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Credential="))
            .and_then(|c| c.split("%2F").next())
            .and_then(|key| self.keys(key))
            .map(|keys| keys.secret_access_key)
            .unwrap_or_else(|| self.credentials.secret_access_key.clone());
        let checked =
            match sigv4::verify_presigned("GET", "/", query, req.headers(), &secret, self.now()) {
                Ok(checked) => checked,
                Err(reason) if reason.contains("expired") || reason.contains("future") => {
                    return deny(
                        "AccessDeniedException",
                        &format!("Signature expired: {reason}"),
                    );
                }
                Err(_) => return deny("AccessDeniedException", sigv4::MISMATCH),
            };
        let keys = self.keys(&checked.scope.access_key);
        if keys.is_none_or(|k| checked.param("X-Amz-Security-Token") != k.session_token.as_deref())
        {
            return deny(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            );
        }
        if checked.scope.service != "kinesisvideo" {
            return deny(
                "AccessDeniedException",
                "Credential should be scoped to correct service: 'kinesisvideo'.",
            );
        }
        let expires: u64 = checked
            .param("X-Amz-Expires")
            .and_then(|e| e.parse().ok())
            .unwrap_or(u64::MAX);
        if expires > MAX_EXPIRES_SECS {
            return deny(
                "AccessDeniedException",
                "X-Amz-Expires must be at most 300 seconds",
            );
        }
        let Some(arn) = checked
            .param("X-Amz-ChannelARN")
            .and_then(|a| ChannelArn::parse(a).ok())
        else {
            return Err((
                400,
                "InvalidArgumentException",
                "no valid X-Amz-ChannelARN".into(),
            ));
        };
        if checked.scope.region != arn.region() {
            return deny(
                "AccessDeniedException",
                "Credential should be scoped to the channel's region",
            );
        }
        if arn.name().starts_with("missing-") {
            return Err((
                404,
                "ResourceNotFoundException",
                "The requested channel is not found or not active.".into(),
            ));
        }
        let client_id = checked.param("X-Amz-ClientId").map(str::to_owned);
        if arn.name().starts_with("denied-") {
            let action = if client_id.is_some() {
                "ConnectAsViewer"
            } else {
                "ConnectAsMaster"
            };
            return deny(
                "AccessDeniedException",
                &format!("not authorized to perform: kinesisvideo:{action}"),
            );
        }
        if client_id
            .as_deref()
            .is_some_and(|id| validate_client_id(id).is_err())
        {
            return Err((400, "InvalidArgumentException", "bad X-Amz-ClientId".into()));
        }
        let peer = Peer {
            channel_arn: arn.as_str().to_owned(),
            client_id,
        };
        Ok((peer, checked.scope))
    }

    /// Signaling connections accepted so far (refused handshakes excluded).
    pub fn signaling_connections(&self) -> usize {
        self.lock().signaling.opened
    }
}

/// Writes what the outbox gets until the peer leaves or is replaced.
async fn serve<S>(ws: WebSocketStream<S>, mut inbox: mpsc::Receiver<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            outgoing = inbox.recv() => match outgoing {
                Some(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let frame = CloseFrame {
                        code: CloseCode::Policy,
                        reason: "replaced by a newer connection".into(),
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        sink.send(Message::Close(Some(frame))),
                    )
                    .await;
                    return;
                }
            },
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// An `SDP_OFFER` as KVS sends it: the payload is the base64 of an
/// RTCSessionDescription in JSON.
fn sdp_offer() -> String {
    let session = fastrand::u64(..);
    let sdp = format!(
        "v=0\r\no=- {session} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:96 H264/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
    );
    let payload = serde_json::json!({ "type": "offer", "sdp": sdp }).to_string();
    serde_json::json!({
        "messageType": "SDP_OFFER",
        "senderClientId": format!("storage-session-{session:016x}"),
        "messagePayload": base64::engine::general_purpose::STANDARD.encode(payload),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(channel: &str, client_id: Option<&str>) -> Peer {
        Peer {
            channel_arn: channel.into(),
            client_id: client_id.map(str::to_owned),
        }
    }

    #[test]
    fn connections_are_bounded_and_a_second_master_replaces_the_first() {
        let mut peers = Peers::default();
        let outbox = || mpsc::channel(1);
        let (first, mut first_inbox) = outbox();
        let master = peers.admit(peer("a", None), first, 3).unwrap();
        assert!(peers.admit(peer("a", Some("v-1")), outbox().0, 3).is_some());
        assert!(peers.admit(peer("b", None), outbox().0, 3).is_some());
        assert_eq!(
            peers.admit(peer("c", None), outbox().0, 3),
            None,
            "a fourth peer is refused"
        );
        let replacement = peers.admit(peer("a", None), outbox().0, 3).unwrap();
        assert_ne!(master, replacement);
        assert_eq!(peers.sockets.len(), 3);
        // The replaced master's outbox is gone: its socket task closes it.
        assert!(first_inbox.try_recv().is_err() && first_inbox.is_closed());
    }
}
