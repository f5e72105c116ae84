//! What the AWS environment says, read the way the AWS SDKs read it: the
//! credential chain, how to choose the control-plane endpoint, the proxies
//! and the CA certificates to trust. The composition root (`server`) turns
//! it into the KVS client's plain settings.

use std::{borrow::Cow, collections::HashMap, path::Path, sync::Arc};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_runtime::env_config::{EnvConfigValue, file::EnvConfigFiles, section::EnvConfigSections};
use aws_types::os_shim_internal::{Env, Fs};
use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::kvs::{
    BoxError,
    endpoint::EndpointSettings,
    transport::{Network, webpki_roots},
};

/// The KVS service id as aws-runtime takes it: it derives the variable
/// `AWS_ENDPOINT_URL_{upper case, ' ' as '_'}` and the `services` section key
/// `{lower case, ' ' as '-'}`. AWS documents the key as `kinesis_video`,
/// while the Rust SDK reads `kinesis-video`; both are accepted, documented
/// spelling first.
const SERVICE_IDS: [&str; 2] = ["Kinesis_Video", "Kinesis Video"];

/// The AWS environment as the sidecar uses it.
#[derive(Debug)]
pub(crate) struct AwsEnv {
    /// The loaded SDK configuration: STS AssumeRole (`--assume-role`) is
    /// called with it, so it follows the same region, endpoint and
    /// credential settings as any SDK.
    pub sdk: aws_config::SdkConfig,
    pub credentials: SharedCredentialsProvider,
    pub endpoints: EndpointSettings,
    pub network: Network,
}

/// Settings from the sidecar's own flags that take part.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flags<'a> {
    /// `--kvs-endpoint-url`: set in code as far as the SDKs' rules are
    /// concerned, so `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` leaves it alone.
    pub endpoint_url: Option<&'a Uri>,
    /// `--ca-bundle`: trusted on top of the platform's and `AWS_CA_BUNDLE`.
    pub ca_bundle: Option<&'a Path>,
}

/// Reads the process environment and the shared config files. Fails on
/// settings that are present but unusable, so a typo never silently turns
/// FIPS, a proxy or a CA bundle off.
pub(crate) async fn load(flags: Flags<'_>) -> Result<AwsEnv, BoxError> {
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let credentials = sdk
        .credentials_provider()
        .ok_or("aws-config found no credential provider")?;

    let env = sdk_env(std::env::vars());
    let profiles = profiles(&env).await;
    let profiles = profiles.as_ref();
    // aws-config reads these two and ignores a value it cannot parse; the
    // check makes a bad value stop the sidecar instead.
    for (var, key) in [
        ("AWS_USE_FIPS_ENDPOINT", "use_fips_endpoint"),
        ("AWS_USE_DUALSTACK_ENDPOINT", "use_dualstack_endpoint"),
    ] {
        flag(&env, profiles, var, key)?;
    }
    let override_url = match flags.endpoint_url {
        Some(url) => Some(url.clone()),
        None => configured_endpoint(&env, profiles)?,
    };
    let endpoints = EndpointSettings::new(
        sdk.use_fips().unwrap_or(false),
        sdk.use_dual_stack().unwrap_or(false),
        override_url,
    )
    .map_err(|e| format!("endpoint settings: {e}"))?;

    let mut bundles = Vec::new();
    if let Some((path, source)) = ca_bundle_setting(&env, profiles) {
        bundles.push((path, source));
    }
    if let Some(path) = flags.ca_bundle {
        bundles.push((path.display().to_string(), "--ca-bundle".into()));
    }
    let network = Network {
        proxies: proxies(std::env::vars())?.map(Arc::new),
        roots: Arc::new(roots(&bundles)?),
    };
    // Only scheme and authority of an override: a URL may carry userinfo.
    let override_host = endpoints.override_url.as_ref().map(|u| {
        format!(
            "{}://{}",
            u.scheme_str().unwrap_or(""),
            u.host().unwrap_or("")
        )
    });
    tracing::info!(
        fips = endpoints.use_fips,
        dual_stack = endpoints.use_dual_stack,
        endpoint_override = override_host.as_deref().unwrap_or("none"),
        proxy = network.proxies.is_some(),
        "KVS endpoint settings"
    );
    Ok(AwsEnv {
        sdk,
        credentials,
        endpoints,
        network,
    })
}

/// The environment as the endpoint lookup sees it: an empty
/// `AWS_ENDPOINT_URL*` counts as unset (a manifest's `value: ""` must not
/// stop the sidecar or shadow the next source).
fn sdk_env(vars: impl Iterator<Item = (String, String)>) -> Env {
    let kept: HashMap<String, String> = vars
        .filter(|(k, v)| !(k.starts_with("AWS_ENDPOINT_URL") && v.trim().is_empty()))
        .collect();
    Env::from(kept)
}

/// The shared config and credentials files, with the profile `AWS_PROFILE`
/// selects. Unreadable or malformed files are skipped with a warning, as
/// aws-config does.
async fn profiles(env: &Env) -> Option<EnvConfigSections> {
    match aws_config::profile::load(&Fs::real(), env, &EnvConfigFiles::default(), None).await {
        Ok(profiles) => Some(profiles),
        Err(error) => {
            tracing::warn!(%error, "could not read the AWS config files; ignoring them");
            None
        }
    }
}

/// The configured control-plane endpoint, in the SDKs' order:
/// `AWS_ENDPOINT_URL_KINESIS_VIDEO`, `AWS_ENDPOINT_URL`, the profile's
/// `services` section (`kinesis_video = \n  endpoint_url = ...`), the
/// profile's `endpoint_url`; none of them when
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` (or the profile's
/// `ignore_configured_endpoint_urls`) is true.
fn configured_endpoint(
    env: &Env,
    profiles: Option<&EnvConfigSections>,
) -> Result<Option<Uri>, BoxError> {
    let ignore = flag(
        env,
        profiles,
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "ignore_configured_endpoint_urls",
    )?;
    if ignore == Some(true) {
        return Ok(None);
    }
    let from_env = EnvConfigValue::new()
        .env("AWS_ENDPOINT_URL")
        .service_id(SERVICE_IDS[0])
        .load(env, profiles);
    // Each spelling's lookup falls back to the profile's own endpoint_url,
    // so a service value is one that differs from it.
    let global = profiles.and_then(|p| p.get("endpoint_url"));
    let from_profile = || {
        let mut found = SERVICE_IDS.iter().filter_map(|id| {
            EnvConfigValue::new()
                .profile("endpoint_url")
                .service_id(id)
                .load(env, profiles)
                .map(|(value, _)| value.into_owned())
        });
        let first = found.next();
        let service = first
            .clone()
            .filter(|v| Some(v.as_str()) != global)
            .or_else(|| found.find(|v| Some(v.as_str()) != global));
        service.or(first)
    };
    let Some(value) = from_env
        .map(|(value, _)| value.into_owned())
        .or_else(from_profile)
        .map(|v| v.trim().to_owned())
    else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(None);
    }
    let source = source(
        env,
        &["AWS_ENDPOINT_URL_KINESIS_VIDEO", "AWS_ENDPOINT_URL"],
        &value,
        "endpoint_url (profile or its services section)",
    );
    let url: Uri = value
        .parse()
        .map_err(|e| format!("endpoint URL from {source}: {e}"))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(format!("endpoint URL from {source} is not an http(s) URL with a host").into());
    }
    Ok(Some(url))
}

/// Which of `vars` holds `value`, else `profile`: names a setting's origin
/// in an error (aws-runtime's own description shows the value instead).
fn source(env: &Env, vars: &[&str], value: &str, profile: &str) -> String {
    vars.iter()
        .find(|v| env.get(v).is_ok_and(|found| found.trim() == value))
        .map_or_else(|| format!("profile key {profile}"), |v| (*v).to_owned())
}

/// A boolean setting, from its variable or profile key, as the SDKs spell
/// it (`true` / `false`, any case).
fn flag(
    env: &Env,
    profiles: Option<&EnvConfigSections>,
    var: &str,
    key: &str,
) -> Result<Option<bool>, BoxError> {
    let Some((value, _)) = EnvConfigValue::new()
        .env(var)
        .profile(key)
        .load(env, profiles)
    else {
        return Ok(None);
    };
    let value = value.trim();
    match value.to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => {
            let source = source(env, &[var], value, key);
            Err(format!("{source} is {value:?}, neither true nor false").into())
        }
    }
}

/// `AWS_CA_BUNDLE` or the profile's `ca_bundle`, and which of them it was.
fn ca_bundle_setting(
    env: &Env,
    profiles: Option<&EnvConfigSections>,
) -> Option<(String, Cow<'static, str>)> {
    let (value, _) = EnvConfigValue::new()
        .env("AWS_CA_BUNDLE")
        .profile("ca_bundle")
        .load(env, profiles)?;
    let value = value.trim();
    let source = source(env, &["AWS_CA_BUNDLE"], value, "ca_bundle");
    (!value.is_empty()).then(|| (value.to_owned(), source.into()))
}

/// The variables curl and the SDKs read for proxies, upper case first.
const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The proxies the environment names (`NO_PROXY` / `no_proxy` exempt
/// hosts, domains and IP ranges), or `None` when it names none. A value that
/// is not an `http://` proxy URL is an error: hyper-util's matcher would
/// skip it silently and connect directly, which on a locked-down network
/// just times out. The value is not echoed, since it may hold a password.
fn proxies(vars: impl Iterator<Item = (String, String)>) -> Result<Option<Matcher>, BoxError> {
    let vars: HashMap<String, String> = vars.collect();
    let mut any = false;
    for name in PROXY_VARS {
        let Some(value) = vars.get(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        any = true;
        let probe = Matcher::builder().all(value.trim()).build();
        let usable = probe
            .intercept(&Uri::from_static("http://kvs.invalid"))
            .is_some_and(|i| i.uri().scheme_str() == Some("http"));
        if !usable {
            return Err(format!(
                "{name} is not an http:// proxy URL (only plain-http proxies are supported; https to the endpoint still runs end to end through CONNECT)"
            )
            .into());
        }
    }
    Ok(any.then(|| {
        let first = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| vars.get(*n).filter(|v| !v.trim().is_empty()))
                .map(|v| v.trim().to_owned())
        };
        let mut builder = Matcher::builder();
        if let Some(v) = first(["HTTPS_PROXY", "https_proxy"]) {
            builder = builder.https(v);
        }
        if let Some(v) = first(["HTTP_PROXY", "http_proxy"]) {
            builder = builder.http(v);
        }
        if let Some(v) = first(["ALL_PROXY", "all_proxy"]) {
            builder = builder.all(v);
        }
        if let Some(v) = first(["NO_PROXY", "no_proxy"]) {
            builder = builder.no(v);
        }
        builder.build()
    }))
}

/// The roots KVS's certificates may chain to: the bundled Mozilla roots,
/// the platform's store (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set), and each
/// explicit bundle. A bundle that cannot be read, or holds no certificate,
/// is an error: it was set for a reason (a TLS-inspecting proxy, a private
/// endpoint), and without it every call would fail later, less clearly.
fn roots(bundles: &[(String, Cow<'static, str>)]) -> Result<RootCertStore, BoxError> {
    let mut roots = webpki_roots();
    let bundled = roots.len();
    let platform = rustls_native_certs::load_native_certs();
    for error in &platform.errors {
        tracing::warn!(%error, "could not read part of the platform's CA store");
    }
    let (platform_added, platform_skipped) = roots.add_parsable_certificates(platform.certs);
    for (path, source) in bundles {
        let pem = std::fs::read(path)
            .map_err(|e| format!("CA bundle {path} (from {source}) cannot be read: {e}"))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| format!("CA bundle {path} (from {source}) is not PEM: {e}"))?;
            roots.add(cert).map_err(|e| {
                format!(
                    "CA bundle {path} (from {source}): certificate {} is unusable: {e}",
                    added + 1
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(
                format!("CA bundle {path} (from {source}) holds no PEM certificate").into(),
            );
        }
        tracing::info!(bundle = %path, from = %source, certificates = added, "trusting CA bundle");
    }
    tracing::debug!(
        bundled,
        platform = platform_added,
        platform_skipped,
        total = roots.len(),
        "trusted CA roots"
    );
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        sdk_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    async fn profile(text: &str, vars: &[(&str, &str)]) -> EnvConfigSections {
        let mut all = vec![
            ("AWS_CONFIG_FILE", "/cfg"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/none"),
        ];
        all.extend_from_slice(vars);
        let env = env(&all);
        let fs = Fs::from_slice(&[("/cfg", text)]);
        aws_config::profile::load(&fs, &env, &EnvConfigFiles::default(), None)
            .await
            .unwrap()
    }

    fn url(env: &Env, profiles: Option<&EnvConfigSections>) -> Option<String> {
        configured_endpoint(env, profiles)
            .unwrap()
            .map(|u| u.to_string())
    }

    #[test]
    fn service_variable_wins_and_empty_counts_as_unset() {
        let e = env(&[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://kvs.local:1"),
            ("AWS_ENDPOINT_URL", "http://all.local:2"),
        ]);
        assert_eq!(url(&e, None).as_deref(), Some("http://kvs.local:1/"));
        let e = env(&[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", ""),
            ("AWS_ENDPOINT_URL", "http://all.local:2"),
        ]);
        assert_eq!(url(&e, None).as_deref(), Some("http://all.local:2/"));
        let e = env(&[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", " "),
            ("AWS_ENDPOINT_URL", ""),
        ]);
        assert_eq!(url(&e, None), None);
    }

    #[test]
    fn ignore_flag_disables_every_configured_url() {
        for value in ["true", "TRUE"] {
            let e = env(&[
                ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://kvs.local:1"),
                ("AWS_ENDPOINT_URL", "http://all.local:2"),
                ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", value),
            ]);
            assert_eq!(url(&e, None), None);
        }
        let e = env(&[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://kvs.local:1"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "false"),
        ]);
        assert_eq!(url(&e, None).as_deref(), Some("http://kvs.local:1/"));
        let e = env(&[("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "yes")]);
        let err = configured_endpoint(&e, None).unwrap_err().to_string();
        assert!(err.contains("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"), "{err}");
    }

    #[test]
    fn a_bad_url_is_an_error_naming_its_source() {
        let e = env(&[("AWS_ENDPOINT_URL_KINESIS_VIDEO", "not a url")]);
        let err = configured_endpoint(&e, None).unwrap_err().to_string();
        assert!(err.contains("AWS_ENDPOINT_URL_KINESIS_VIDEO"), "{err}");
        let e = env(&[("AWS_ENDPOINT_URL", "ftp://x")]);
        assert!(configured_endpoint(&e, None).is_err());
    }

    #[tokio::test]
    async fn profile_services_section_and_ignore_key() {
        let text = "[profile default]\nservices = local\nendpoint_url = http://global.local:3\n\n\
                    [services local]\nkinesis_video =\n  endpoint_url = http://svc.local:4\n\n\
                    [profile quiet]\nservices = local\nignore_configured_endpoint_urls = true\n";
        let p = profile(text, &[]).await;
        let e = env(&[]);
        assert_eq!(url(&e, Some(&p)).as_deref(), Some("http://svc.local:4/"));
        // The environment still wins over the profile.
        let e = env(&[("AWS_ENDPOINT_URL", "http://env.local:5")]);
        assert_eq!(url(&e, Some(&p)).as_deref(), Some("http://env.local:5/"));

        // The Rust SDK's spelling of the key works too.
        let p = profile(&text.replace("kinesis_video", "kinesis-video"), &[]).await;
        assert_eq!(
            url(&env(&[]), Some(&p)).as_deref(),
            Some("http://svc.local:4/")
        );

        let p = profile(text, &[("AWS_PROFILE", "quiet")]).await;
        let e = env(&[("AWS_ENDPOINT_URL_KINESIS_VIDEO", "http://kvs.local:1")]);
        assert_eq!(url(&e, Some(&p)), None);
    }

    #[tokio::test]
    async fn ca_bundle_from_environment_or_profile() {
        let p = profile("[default]\nca_bundle = /from/profile.pem\n", &[]).await;
        let found = ca_bundle_setting(&env(&[]), Some(&p)).unwrap();
        assert_eq!(found.0, "/from/profile.pem");
        let e = env(&[("AWS_CA_BUNDLE", "/from/env.pem")]);
        let found = ca_bundle_setting(&e, Some(&p)).unwrap();
        assert_eq!(found.0, "/from/env.pem");
        assert!(found.1.contains("AWS_CA_BUNDLE"), "{}", found.1);
        assert!(ca_bundle_setting(&env(&[("AWS_CA_BUNDLE", "")]), None).is_none());
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn proxies_follow_scheme_and_no_proxy() {
        assert!(proxies(vars(&[("NO_PROXY", "*")])).unwrap().is_none());
        let m = proxies(vars(&[
            ("https_proxy", "http://user:secret@proxy.local:3128"),
            ("HTTP_PROXY", "proxy.local:8080"),
            ("no_proxy", "127.0.0.1,.internal"),
        ]))
        .unwrap()
        .unwrap();
        let via = |u: &'static str| {
            m.intercept(&Uri::from_static(u))
                .map(|i| i.uri().to_string())
        };
        assert_eq!(
            via("https://kinesisvideo.us-east-1.amazonaws.com").as_deref(),
            Some("http://proxy.local:3128/")
        );
        assert_eq!(
            via("http://kvs.example").as_deref(),
            Some("http://proxy.local:8080/")
        );
        assert_eq!(via("http://127.0.0.1:4566"), None);
        assert_eq!(via("https://kvs.internal"), None);
    }

    #[test]
    fn unusable_proxy_values_are_refused_without_echoing_them() {
        for value in [
            "socks5://user:hunter2@proxy:1080",
            "https://user:hunter2@proxy:443",
            "::",
        ] {
            let err = proxies(vars(&[("HTTPS_PROXY", value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("HTTPS_PROXY"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn bundles_must_exist_and_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("kvs-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let source: Cow<'static, str> = "AWS_CA_BUNDLE".into();

        let missing = roots(&[("/nonexistent/ca.pem".into(), source.clone())]).unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
        let none = roots(&[(empty.display().to_string(), source.clone())]).unwrap_err();
        assert!(
            none.to_string().contains("holds no PEM certificate"),
            "{none}"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let base = roots(&[]).unwrap().len();
        let with = roots(&[(good.display().to_string(), source)]).unwrap();
        assert_eq!(with.len(), base + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
