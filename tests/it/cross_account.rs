//! Cross-account channels: `--assume-role ACCOUNT=ROLE_ARN` makes every
//! request about a channel of ACCOUNT (discovery, joins, readiness,
//! presigning) sign with keys from STS AssumeRole, which the emulator hands
//! out and then accepts; other accounts keep the default chain's keys.

use crate::common;
use crate::common::{ARN, Sidecar, join};
use kvs_sidecar::pb::{GetSignalingConnectionRequest, SignalingRole};
use tonic::Code;

const ROLE: &str = "arn:aws:iam::111122223333:role/kvs-recorder";

fn other_account(name: &str) -> String {
    format!("arn:aws:kinesisvideo:eu-central-1:111122223333:channel/{name}/1700000000000")
}

/// The access key that signed each request received for `account`'s
/// channels (by body), and for the others.
fn signers(fake: &common::Emulator, account: &str) -> (Vec<String>, Vec<String>) {
    let mut mapped = Vec::new();
    let mut other = Vec::new();
    for r in fake.received().iter().filter(|r| r.path != "/") {
        let key = r.signature.clone().expect("verified").access_key;
        if String::from_utf8_lossy(&r.body).contains(account) {
            mapped.push(key);
        } else {
            other.push(key);
        }
    }
    (mapped, other)
}

#[tokio::test]
async fn a_mapped_accounts_channels_are_signed_with_the_assumed_roles_keys() {
    let fake = common::kvs().await;
    let role = format!("111122223333={ROLE},external-id=ext-7");
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--assume-role", &role],
        &[("AWS_ENDPOINT_URL_STS", &fake.url())],
    );
    let mut client = sidecar.client().await;
    client
        .join_storage_session(join(&other_account("cam")))
        .await
        .unwrap();
    client.join_storage_session(join(ARN)).await.unwrap();

    let roles = fake.assumed_roles();
    assert!(!roles.is_empty(), "the sidecar assumed the role");
    assert!(roles.iter().all(|r| r.role_arn == ROLE
        && r.external_id.as_deref() == Some("ext-7")
        && r.session_name == "kvs-sidecar"));
    let assumed: Vec<_> = roles
        .iter()
        .map(|r| r.credentials.access_key_id.clone())
        .collect();
    let (mapped, other) = signers(&fake, "111122223333");
    assert_eq!(mapped.len(), 2, "discovery and join of the mapped channel");
    assert!(
        mapped.iter().all(|k| assumed.contains(k)),
        "{mapped:?} vs {assumed:?}"
    );
    assert_eq!(other.len(), 2, "discovery and join of the unmapped channel");
    assert!(
        other.iter().all(|k| k == &fake.credentials().access_key_id),
        "the unmapped account keeps the default chain's keys"
    );

    // The presigned URL too, and the emulator accepts it.
    let url = client
        .get_signaling_connection(GetSignalingConnectionRequest {
            channel_arn: other_account("cam"),
            role: SignalingRole::Master as i32,
            client_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .websocket_url;
    let credential = url
        .split("X-Amz-Credential=")
        .nth(1)
        .and_then(|c| c.split("%2F").next())
        .unwrap();
    assert!(assumed.iter().any(|k| k == credential), "{credential}");
    let (_socket, answer) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    assert_eq!(answer.status(), 101);

    let (_, metrics) = sidecar.admin_get("/metrics");
    let series = format!(r#"kvs_credential_refreshes_total{{outcome="success",role="{ROLE}"}}"#);
    assert!(
        common::metric(&metrics, &series).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // The assumed keys' secrets never reach the logs.
    for line in sidecar.output() {
        for r in &roles {
            assert!(!line.contains(&r.credentials.secret_access_key), "{line}");
        }
    }
}

#[tokio::test]
async fn a_refused_assume_role_is_permission_denied_and_nothing_reaches_kvs() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[
            "--assume-role",
            "111122223333=arn:aws:iam::111122223333:role/denied-recorder",
        ],
        &[("AWS_ENDPOINT_URL_STS", &fake.url())],
    );
    let mut client = sidecar.client().await;
    let status = client
        .join_storage_session(join(&other_account("cam")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("assume the role"), "{status:?}");
    let (mapped, _) = signers(&fake, "111122223333");
    assert!(mapped.is_empty(), "nothing was sent to KVS for the channel");
    // Unmapped accounts are unaffected.
    client.join_storage_session(join(ARN)).await.unwrap();
    assert!(fake.assumed_roles().is_empty());
}

/// Issue 22, finding 8: a refused or throttled AssumeRole is not asked
/// again on every call: the failure is held (jittered, growing), and calls
/// meanwhile get it without a request to STS.
#[tokio::test]
async fn a_refused_or_throttled_assume_role_is_not_asked_again_on_every_call() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[
            "--assume-role",
            "111122223333=arn:aws:iam::111122223333:role/denied-recorder",
        ],
        &[("AWS_ENDPOINT_URL_STS", &fake.url())],
    );
    let mut client = sidecar.client().await;
    for _ in 0..50 {
        let status = client
            .join_storage_session(join(&other_account("cam")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let asked = fake.received_on("/").len();
    assert!(asked <= 4, "STS asked {asked} times for 50 refused joins");

    // Throttled: every answer is `Throttling`; each load is the SDK's
    // attempts, and loads are spaced by the hold.
    let fake = common::kvs().await;
    fake.script(
        "/",
        (0..300).map(|_| common::Reply::error(400, "Throttling")),
    );
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--assume-role", &format!("111122223333={ROLE}")],
        &[("AWS_ENDPOINT_URL_STS", &fake.url())],
    );
    let mut client = sidecar.client().await;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let status = client
            .join_storage_session(join(&other_account("cam")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let asked = fake.received_on("/").len();
    // Within a few seconds: the warm-up's load and at most a few more, of
    // at most 3 attempts each.
    assert!(
        asked <= 3 * (2 + started.elapsed().as_secs() as usize),
        "STS asked {asked} times for 30 joins in {:?}",
        started.elapsed()
    );
}
