//! The whole storage flow as a backend runs it, with real sockets: the
//! sidecar binary, the KVS emulator, and a real WebSocket client.
//! CheckStorageReadiness → GetSignalingConnection → open the presigned
//! WebSocket → join → the SDP offer arrives on the socket; and every way a
//! URL or a request is refused.

use crate::common;
use std::time::{Duration, SystemTime};

use crate::common::{Emulator, Sidecar, Socket, arn, next_message};
use base64::Engine;
use futures_util::StreamExt;
use kvs_sidecar::pb::{
    CheckStorageReadinessRequest, GetSignalingConnectionRequest, GetSignalingConnectionResponse,
    JoinStorageSessionAsViewerRequest, JoinStorageSessionRequest, SignalingRole,
    web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Error as WsError, Message},
};
use tonic::{Code, transport::Channel};

fn master(channel_arn: &str) -> GetSignalingConnectionRequest {
    GetSignalingConnectionRequest {
        channel_arn: channel_arn.into(),
        role: SignalingRole::Master as i32,
        client_id: String::new(),
    }
}

fn viewer(channel_arn: &str, client_id: &str) -> GetSignalingConnectionRequest {
    GetSignalingConnectionRequest {
        channel_arn: channel_arn.into(),
        role: SignalingRole::Viewer as i32,
        client_id: client_id.into(),
    }
}

async fn connection(
    client: &mut WebRtcStorageServiceClient<Channel>,
    req: GetSignalingConnectionRequest,
) -> GetSignalingConnectionResponse {
    client
        .get_signaling_connection(req)
        .await
        .expect("GetSignalingConnection")
        .into_inner()
}

async fn open(url: &str) -> Socket {
    let (socket, answer) = tokio::time::timeout(Duration::from_secs(5), connect_async(url))
        .await
        .expect("handshake within 5 s")
        .expect("the emulator accepts the presigned URL");
    assert_eq!(answer.status(), 101);
    socket
}

/// The HTTP status a refused handshake answered.
async fn refused(url: &str) -> u16 {
    match tokio::time::timeout(Duration::from_secs(5), connect_async(url))
        .await
        .expect("handshake within 5 s")
    {
        Err(WsError::Http(answer)) => answer.status().as_u16(),
        Err(other) => panic!("refused otherwise than by HTTP status: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

/// Checks an SDP offer in KVS's format and returns its RTCSessionDescription.
fn sdp_offer(message: &serde_json::Value) -> serde_json::Value {
    assert_eq!(message["messageType"], "SDP_OFFER", "{message}");
    assert!(
        message["senderClientId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(message["messagePayload"].as_str().expect("payload"))
        .expect("base64 payload");
    let description: serde_json::Value = serde_json::from_slice(&payload).expect("JSON payload");
    assert_eq!(description["type"], "offer");
    assert!(description["sdp"].as_str().unwrap().starts_with("v=0\r\n"));
    description
}

fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

async fn started(args: &[&str]) -> (Emulator, Sidecar, WebRtcStorageServiceClient<Channel>) {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, args);
    let client = sidecar.client().await;
    (fake, sidecar, client)
}

#[tokio::test]
async fn a_master_connected_with_the_presigned_url_receives_the_offer_of_each_join() {
    let (fake, _sidecar, mut client) = started(&[]).await;
    let channel = arn("front-door");
    // As a backend starts: is the channel set up to record at all?
    let readiness = client
        .check_storage_readiness(CheckStorageReadinessRequest {
            channel_arn: channel.clone(),
        })
        .await
        .expect("CheckStorageReadiness")
        .into_inner();
    assert!(readiness.ready, "{readiness:?}");
    let before = SystemTime::now();
    let answer = connection(&mut client, master(&channel)).await;

    // The URL: the emulator's WSS endpoint, presigned for 300 s with the
    // session token, naming the channel and no client id.
    let url = &answer.websocket_url;
    assert!(url.starts_with(&format!(
        "ws://{}/?",
        fake.url().trim_start_matches("http://")
    )));
    assert_eq!(query_param(url, "X-Amz-Expires"), Some("300"));
    assert!(query_param(url, "X-Amz-Security-Token").is_some());
    assert!(query_param(url, "X-Amz-ChannelARN").is_some());
    assert_eq!(query_param(url, "X-Amz-ClientId"), None);
    let expires_at = SystemTime::try_from(answer.expires_at.expect("expires_at")).unwrap();
    let validity = expires_at.duration_since(before).unwrap();
    assert!(
        validity > Duration::from_secs(290) && validity <= Duration::from_secs(302),
        "{validity:?}"
    );
    // ICE: the region's KVS STUN server, then the emulator's TURN server.
    let ice = &answer.ice_servers;
    assert_eq!(ice.len(), 2, "{ice:?}");
    assert_eq!(
        ice[0].urls,
        ["stun:stun.kinesisvideo.eu-central-1.amazonaws.com:443"]
    );
    assert!(ice[0].username.is_empty() && ice[0].credential.is_empty());
    assert!(ice[1].urls.iter().all(|u| u.starts_with("turn")));
    assert!(!ice[1].username.is_empty() && !ice[1].credential.is_empty());
    assert_eq!(ice[1].ttl.as_ref().map(|t| t.seconds), Some(300));

    let mut socket = open(url).await;
    assert_eq!(fake.signaling_connections(), 1);
    for _ in 0..2 {
        client
            .join_storage_session(JoinStorageSessionRequest {
                channel_arn: channel.clone(),
                ..Default::default()
            })
            .await
            .expect("join");
        sdp_offer(&next_message(&mut socket).await);
    }
    // One discovery (WSS, HTTPS and WEBRTC at once) served signaling and
    // both joins.
    let discoveries = fake.received_on("/getSignalingChannelEndpoint");
    assert_eq!(discoveries.len(), 1);
    let protocols = &discoveries[0].json()["SingleMasterChannelEndpointConfiguration"];
    assert_eq!(
        protocols["Protocols"],
        serde_json::json!(["WSS", "HTTPS", "WEBRTC"])
    );
    assert_eq!(protocols["Role"], "MASTER");
    // GetIceServerConfig went through the signed stack with the channel.
    let ice_requests = fake.received_on("/v1/get-ice-server-config");
    assert_eq!(ice_requests.len(), 1);
    assert!(ice_requests[0].signature.is_ok());
    assert_eq!(ice_requests[0].json()["ChannelARN"], channel.as_str());
    assert_eq!(ice_requests[0].json()["Service"], "TURN");
    assert!(ice_requests[0].json().get("ClientId").is_none());
}

#[tokio::test]
async fn a_viewer_receives_the_offer_of_its_own_join_only() {
    let (fake, _sidecar, mut client) = started(&[]).await;
    let channel = arn("porch");
    let answer = connection(&mut client, viewer(&channel, "viewer-1")).await;
    assert_eq!(
        query_param(&answer.websocket_url, "X-Amz-ClientId"),
        Some("viewer-1")
    );
    let mut socket = open(&answer.websocket_url).await;
    let other = connection(&mut client, viewer(&channel, "viewer-2")).await;
    let mut other_socket = open(&other.websocket_url).await;

    client
        .join_storage_session_as_viewer(JoinStorageSessionAsViewerRequest {
            channel_arn: channel.clone(),
            client_id: "viewer-1".into(),
            ..Default::default()
        })
        .await
        .expect("viewer join");
    sdp_offer(&next_message(&mut socket).await);
    // viewer-2 got nothing: its next message is the offer of its own join.
    client
        .join_storage_session_as_viewer(JoinStorageSessionAsViewerRequest {
            channel_arn: channel.clone(),
            client_id: "viewer-2".into(),
            ..Default::default()
        })
        .await
        .expect("viewer join");
    sdp_offer(&next_message(&mut other_socket).await);
    let ice = fake.received_on("/v1/get-ice-server-config");
    assert_eq!(ice[0].json()["ClientId"], "viewer-1");
    let discovery = &fake.received_on("/getSignalingChannelEndpoint")[0];
    assert_eq!(
        discovery.json()["SingleMasterChannelEndpointConfiguration"]["Role"],
        "VIEWER"
    );
}

#[tokio::test]
async fn a_second_master_replaces_the_first() {
    let (_fake, _sidecar, mut client) = started(&[]).await;
    let channel = arn("garage");
    let first = connection(&mut client, master(&channel)).await;
    let mut first_socket = open(&first.websocket_url).await;
    let second = connection(&mut client, master(&channel)).await;
    let mut second_socket = open(&second.websocket_url).await;

    // The first is closed by the emulator, as KVS does.
    let closed = tokio::time::timeout(Duration::from_secs(5), first_socket.next())
        .await
        .expect("the first master's socket ends within 5 s");
    assert!(
        matches!(closed, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{closed:?}"
    );
    client
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: channel.clone(),
            ..Default::default()
        })
        .await
        .expect("join");
    sdp_offer(&next_message(&mut second_socket).await);
}

#[tokio::test]
async fn tampered_other_channel_and_expired_urls_are_refused_at_the_handshake() {
    let (fake, _sidecar, mut client) = started(&["--signaling-url-expiry", "2s"]).await;
    let channel = arn("front-door");
    let url = connection(&mut client, master(&channel))
        .await
        .websocket_url;
    assert_eq!(query_param(&url, "X-Amz-Expires"), Some("2"));

    // A changed signature, another channel, another client id, no token.
    let signature = query_param(&url, "X-Amz-Signature").unwrap();
    let flipped = if signature.ends_with('0') { "1" } else { "0" };
    let tampered = url.replace(
        signature,
        &format!("{}{flipped}", &signature[..signature.len() - 1]),
    );
    let encoded_channel = query_param(&url, "X-Amz-ChannelARN").unwrap();
    let other_channel = url.replace(
        encoded_channel,
        &encoded_channel.replace("front-door", "back-door"),
    );
    let as_viewer = format!("{url}&X-Amz-ClientId=intruder");
    let token = query_param(&url, "X-Amz-Security-Token").unwrap();
    let without_token = url.replace(&format!("&X-Amz-Security-Token={token}"), "");
    for bad in [&tampered, &other_channel, &as_viewer, &without_token] {
        assert_eq!(refused(bad).await, 403, "{bad}");
    }
    assert_eq!(fake.signaling_connections(), 0);

    // The genuine URL works until it expires, then is refused.
    drop(open(&url).await);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(refused(&url).await, 403);
    let handshakes = fake.received_on("/");
    let reason = handshakes.last().unwrap().signature.clone().unwrap_err();
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn bad_signaling_requests_are_refused_naming_the_field_and_nothing_is_sent() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &["--allowed-channels", &arn("allowed-*")]);
    let mut client = sidecar.client().await;
    let allowed = arn("allowed-1");
    let cases = [
        (
            GetSignalingConnectionRequest {
                role: SignalingRole::Unspecified as i32,
                ..master(&allowed)
            },
            Code::InvalidArgument,
            "role: ",
        ),
        (
            GetSignalingConnectionRequest {
                role: 9,
                ..master(&allowed)
            },
            Code::InvalidArgument,
            "role: ",
        ),
        (
            GetSignalingConnectionRequest {
                client_id: "v-1".into(),
                ..master(&allowed)
            },
            Code::InvalidArgument,
            "client_id: must be empty",
        ),
        (
            viewer(&allowed, ""),
            Code::InvalidArgument,
            "client_id: is empty",
        ),
        (
            viewer(&allowed, "bad id"),
            Code::InvalidArgument,
            "client_id: ",
        ),
        (
            master("arn:aws:s3:::bucket"),
            Code::InvalidArgument,
            "channel_arn: ",
        ),
        (
            master(&arn("other")),
            Code::PermissionDenied,
            "channel_arn: ",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.get_signaling_connection(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(message), "{status:?}");
    }
    assert!(fake.received().is_empty(), "nothing was sent to KVS");
}

#[tokio::test]
async fn kvs_errors_of_discovery_and_ice_map_like_the_joins() {
    let (fake, _sidecar, mut client) = started(&["--max-attempts", "1"]).await;
    let missing = client
        .get_signaling_connection(master(&arn("missing-cam")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let denied = client
        .get_signaling_connection(master(&arn("denied-cam")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    fake.script(
        "/v1/get-ice-server-config",
        [common::Reply::error(400, "ClientLimitExceededException")],
    );
    let throttled = client
        .get_signaling_connection(master(&arn("busy")))
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");
    // The next call is served from the cached endpoints.
    connection(&mut client, master(&arn("busy"))).await;
    assert_eq!(
        fake.received_on("/getSignalingChannelEndpoint").len(),
        3,
        "missing, denied and busy were each discovered once"
    );
}
