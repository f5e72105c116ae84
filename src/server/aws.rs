//! Where KVS is: AWS as the SDKs configure it (in `aws_env`), with an
//! AssumeRole provider per mapped account; or the emulator on loopback.

use aws_config::{BehaviorVersion, Region, sts::AssumeRoleProvider};
use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};

use crate::{
    BoxError,
    aws_env::AwsEnv,
    config::{AwsArgs, EmulatorArgs},
    emulator::{Emulator, EmulatorCredentials},
    kvs::{endpoint::EndpointSettings, transport::Network},
};

/// One AssumeRole provider per mapped account, on top of the default chain
/// (aws-config's provider; the credential cache in front of it refreshes
/// ahead of expiry): (account, role ARN, provider).
pub(super) async fn assumed_roles(
    config: &AwsArgs,
    sdk: &aws_config::SdkConfig,
) -> Vec<(String, String, SharedCredentialsProvider)> {
    let mut roles = Vec::new();
    for role in &config.assume_roles {
        let mut builder = AssumeRoleProvider::builder(&role.role_arn)
            .session_name(&config.assume_role_session_name)
            .configure(sdk);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id);
        }
        let provider = SharedCredentialsProvider::new(builder.build().await);
        roles.push((role.account.clone(), role.role_arn.clone(), provider));
    }
    roles
}

/// A KVS emulator on loopback and the throwaway keys it accepts; the
/// emulator answers STS too.
pub(super) async fn emulated_kvs(config: &EmulatorArgs) -> Result<AwsEnv, BoxError> {
    let emulator = Emulator::start(EmulatorCredentials::generate()).await?;
    emulator.set_session_lifetime(config.emulate_session_lifetime);
    emulator.drop_first_offers(config.emulate_drop_offers);
    let keys = emulator.credentials();
    let credentials = Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "kvs-sidecar-emulator",
    );
    tracing::info!(
        kvs = %emulator.url(),
        session_lifetime = ?config.emulate_session_lifetime,
        drop_offers = config.emulate_drop_offers,
        "emulating KVS on loopback: no AWS account is used"
    );
    // STS (`--assume-role`) goes to the emulator too.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(emulator.url())
        .credentials_provider(credentials.clone())
        .load()
        .await;
    Ok(AwsEnv {
        sdk,
        credentials: SharedCredentialsProvider::new(credentials),
        endpoints: EndpointSettings {
            override_url: Some(emulator.url().parse()?),
            ..EndpointSettings::default()
        },
        // The emulator is on loopback: no proxy, and plain http.
        network: Network::direct(),
    })
}
