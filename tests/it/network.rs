//! Locked-down networks and the SDKs' endpoint settings, end to end: a real
//! forward proxy (Debian's tinyproxy) on loopback, the KVS emulator over TLS
//! under a CA made for this run, and a loopback stand-in proxy that records
//! which host the sidecar asked to reach (it never forwards, so nothing
//! leaves the machine).

use crate::common;
use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::{ARN, Emulator, EmulatorCredentials, Sidecar, unused_port, wait_for};
use kvs_sidecar::pb::JoinStorageSessionRequest;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::Code;

/// A directory of this test's files, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kvs-sidecar-net-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, file: &str, contents: &str) -> String {
        let path = self.0.join(file);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and a certificate it issued for 127.0.0.1 (an IP address SAN,
/// since the emulator's URL is `https://127.0.0.1:PORT`).
struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kvs-sidecar network test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    async fn emulator(&self) -> Emulator {
        Emulator::start_tls(
            EmulatorCredentials::generate(),
            &self.cert_pem,
            &self.key_pem,
        )
        .await
        .expect("start the TLS emulator")
    }
}

/// tinyproxy on a loopback port, in the foreground, logging to a file.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Tinyproxy {
    /// `allow`: the one client address let in; `connect_port`: the one port
    /// CONNECT may reach.
    fn start(allow: &str, connect_port: u16) -> Self {
        Self::start_with(allow, connect_port, None)
    }

    /// As `start`, demanding `user:password` (Basic) when `auth` is given.
    fn start_with(allow: &str, connect_port: u16, auth: Option<(&str, &str)>) -> Self {
        let binary = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "tinyproxy is not installed: `apt-get install tinyproxy-bin` (.ci/run installs it)"
                )
            });
        let dir = TempDir::new("tinyproxy");
        let log = dir.0.join("tinyproxy.log");
        let port = unused_port();
        let conf = dir.write(
            "tinyproxy.conf",
            &format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 10\nMaxClients 20\n\
                 LogFile \"{}\"\nLogLevel Info\nAllow {allow}\nConnectPort {connect_port}\n{}",
                log.display(),
                auth.map(|(u, p)| format!("BasicAuth {u} {p}\n"))
                    .unwrap_or_default()
            ),
        );
        let child = Command::new(binary)
            .args(["-d", "-c", &conf])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let mut proxy = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        // Ready once it accepts connections (bounded: 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("tinyproxy exited at start ({status}): {}", proxy.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in proxy: records each request line (`CONNECT host:443 ...`)
/// and refuses it with 403, so the sidecar's target host is seen without
/// any traffic leaving loopback.
struct Recorder {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        std::thread::spawn(move || {
            // Ends with the test process; each connection is bounded by its
            // read timeout.
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    seen.lock().unwrap().push(line.trim().to_owned());
                }
                let _ = (&stream).write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            }
        });
        Self { port, lines }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

async fn join(sidecar: &Sidecar) -> Result<(), tonic::Status> {
    let mut client = sidecar.client().await;
    let mut request = tonic::Request::new(JoinStorageSessionRequest {
        channel_arn: ARN.into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    client.join_storage_session(request).await.map(drop)
}

/// Nothing secret in a status the caller sees.
fn assert_no_secrets(status: &tonic::Status, keys: &EmulatorCredentials) {
    let text = format!("{status:?}");
    assert!(!text.contains(&keys.secret_access_key), "{text}");
    if let Some(token) = &keys.session_token {
        assert!(!text.contains(token), "{text}");
    }
}

#[tokio::test]
async fn kvs_calls_go_through_an_http_proxy_unless_no_proxy_exempts_them() {
    let fake = common::kvs().await;
    let proxy = Tinyproxy::start_with("127.0.0.1", fake.addr().port(), Some(("kvs", "pw1")));

    // The proxy's credentials ride on each absolute-form request.
    let with_auth = format!("http://kvs:pw1@127.0.0.1:{}", proxy.port);
    let sidecar = Sidecar::start_with_env(&fake, &[], &[("HTTP_PROXY", &with_auth)]);
    join(&sidecar).await.expect("a join through the proxy");
    // tinyproxy marks what it forwards with a Via header, and logs it.
    let received = fake.received();
    assert_eq!(received.len(), 2, "discovery and join");
    for r in &received {
        let via = r.headers.get("via").map(|v| v.to_str().unwrap().to_owned());
        assert!(
            via.as_deref().is_some_and(|v| v.contains("tinyproxy")),
            "{} reached KVS without the proxy: {:?}",
            r.path,
            r.headers
        );
        r.signature
            .as_ref()
            .expect("the signature survives the proxy");
    }
    let log = wait_for(|| {
        let log = proxy.log();
        log.contains("/joinStorageSession").then_some(log)
    })
    .await;
    assert!(log.contains("/getSignalingChannelEndpoint"), "{log}");
    drop(sidecar);

    // Without the credentials the same proxy turns the call away.
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--max-attempts", "1"],
        &[("HTTP_PROXY", &proxy.url())],
    );
    join(&sidecar)
        .await
        .expect_err("the proxy wants credentials");
    assert!(fake.received().is_empty());
    drop(sidecar);

    // NO_PROXY (lower case here) exempts the emulator's address.
    let fake = common::kvs().await;
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[("http_proxy", &proxy.url()), ("no_proxy", "127.0.0.1")],
    );
    join(&sidecar).await.expect("a direct join");
    for r in fake.received() {
        assert!(r.headers.get("via").is_none(), "{:?}", r.headers);
    }
    assert!(!proxy.log().contains(&fake.addr().port().to_string()));
}

#[tokio::test]
async fn https_goes_through_a_connect_tunnel_and_trusts_aws_ca_bundle() {
    let ca = TestCa::new();
    let fake = ca.emulator().await;
    let dir = TempDir::new("tunnel");
    let bundle = dir.write("ca.pem", &ca.ca_pem);
    let proxy = Tinyproxy::start_with("127.0.0.1", fake.addr().port(), Some(("kvs", "pw2")));

    // The proxy's credentials ride on the CONNECT.
    let with_auth = format!("http://kvs:pw2@127.0.0.1:{}", proxy.port);
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[("HTTPS_PROXY", &with_auth), ("AWS_CA_BUNDLE", &bundle)],
    );
    join(&sidecar).await.expect("a join through the tunnel");
    assert_eq!(fake.received().len(), 2);
    let log = wait_for(|| {
        let log = proxy.log();
        log.contains("CONNECT").then_some(log)
    })
    .await;
    assert!(
        log.contains(&format!("127.0.0.1:{}", fake.addr().port())),
        "{log}"
    );
}

#[tokio::test]
async fn a_proxy_that_refuses_is_unavailable_naming_it_without_credentials() {
    // Nothing listens on the proxy's port.
    let fake = common::kvs().await;
    let port = unused_port();
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--max-attempts", "1"],
        &[(
            "HTTP_PROXY",
            &format!("http://kvs:hunter2@127.0.0.1:{port}"),
        )],
    );
    let status = join(&sidecar).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("through proxy http://127.0.0.1:{port}")),
        "{status:?}"
    );
    assert!(!status.message().contains("hunter2"), "{status:?}");
    assert_no_secrets(&status, fake.credentials());
    assert!(fake.received().is_empty());
    drop(sidecar);

    // tinyproxy that lets in only another address refuses the CONNECT.
    let ca = TestCa::new();
    let fake = ca.emulator().await;
    let dir = TempDir::new("refused");
    let bundle = dir.write("ca.pem", &ca.ca_pem);
    let proxy = Tinyproxy::start("127.0.0.2", fake.addr().port());
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--max-attempts", "1"],
        &[
            (
                "HTTPS_PROXY",
                &format!("http://kvs:hunter2@127.0.0.1:{}", proxy.port),
            ),
            ("AWS_CA_BUNDLE", &bundle),
        ],
    );
    let status = join(&sidecar).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("through proxy {}", proxy.url())),
        "{status:?}"
    );
    assert!(!status.message().contains("hunter2"), "{status:?}");
    assert_no_secrets(&status, fake.credentials());
    assert!(fake.received().is_empty());
    for line in sidecar.output() {
        assert!(!line.contains("hunter2"), "{line}");
    }
}

#[tokio::test]
async fn kvs_over_tls_needs_its_ca_trusted() {
    let ca = TestCa::new();
    let fake = ca.emulator().await;
    let dir = TempDir::new("ca");
    let bundle = dir.write("ca.pem", &ca.ca_pem);

    // Not trusted: a TLS error, retried like any transport failure.
    let sidecar = Sidecar::start_with_env(&fake, &["--max-attempts", "1"], &[]);
    let status = join(&sidecar).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("certificate"), "{status:?}");
    assert_no_secrets(&status, fake.credentials());
    assert!(fake.received().is_empty());
    drop(sidecar);

    // Trusted through each of the ways to add a CA.
    for (args, env) in [
        (vec![], vec![("AWS_CA_BUNDLE", bundle.as_str())]),
        (vec!["--ca-bundle", bundle.as_str()], vec![]),
        (vec![], vec![("KVS_SIDECAR_CA_BUNDLE", bundle.as_str())]),
        // The platform store, as OpenSSL-style tools read it.
        (vec![], vec![("SSL_CERT_FILE", bundle.as_str())]),
    ] {
        let before = fake.received_on("/joinStorageSession").len();
        let sidecar = Sidecar::start_with_env(&fake, &args, &env);
        join(&sidecar)
            .await
            .unwrap_or_else(|s| panic!("{args:?} {env:?}: {s:?}"));
        assert_eq!(fake.received_on("/joinStorageSession").len(), before + 1);
    }
}

#[tokio::test]
async fn a_ca_bundle_that_cannot_be_used_stops_the_sidecar_at_start() {
    let fake = common::kvs().await;
    let dir = TempDir::new("bad-ca");
    let empty = dir.write("empty.pem", "not a certificate\n");
    for (args, env, says) in [
        (
            vec![],
            vec![("AWS_CA_BUNDLE", "/nonexistent/ca.pem")],
            "/nonexistent/ca.pem (from AWS_CA_BUNDLE) cannot be read",
        ),
        (
            vec!["--ca-bundle", empty.as_str()],
            vec![],
            "(from --ca-bundle) holds no PEM certificate",
        ),
    ] {
        let output = Sidecar::try_launch(&fake.url(), fake.credentials(), &args, &env, &[])
            .err()
            .unwrap_or_else(|| panic!("{args:?} {env:?} started"));
        assert!(
            output.iter().any(|l| l.contains(says)),
            "{says:?} not in {output:#?}"
        );
    }
}

#[tokio::test]
async fn an_unusable_proxy_setting_stops_the_sidecar_without_echoing_it() {
    let fake = common::kvs().await;
    let output = Sidecar::try_launch(
        &fake.url(),
        fake.credentials(),
        &[],
        &[("HTTPS_PROXY", "socks5://kvs:hunter2@127.0.0.1:1080")],
        &[],
    )
    .err()
    .expect("a socks proxy is refused");
    assert!(
        output
            .iter()
            .any(|l| l.contains("HTTPS_PROXY is not an http:// proxy URL")),
        "{output:#?}"
    );
    assert!(!output.iter().any(|l| l.contains("hunter2")), "{output:#?}");
}

#[tokio::test]
async fn an_empty_endpoint_variable_counts_as_unset() {
    let fake = common::kvs().await;
    // Empty, the service variable falls through to AWS_ENDPOINT_URL.
    let sidecar = Sidecar::try_launch(
        "",
        fake.credentials(),
        &[],
        &[("AWS_ENDPOINT_URL", &fake.url())],
        &[],
    )
    .expect("an empty AWS_ENDPOINT_URL_KINESIS_VIDEO does not stop the sidecar");
    join(&sidecar).await.expect("a join via AWS_ENDPOINT_URL");
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test]
async fn a_profile_services_section_sets_the_endpoint() {
    let fake = common::kvs().await;
    let dir = TempDir::new("profile");
    let config = dir.write(
        "config",
        &format!(
            "[default]\nservices = local-kvs\n\n[services local-kvs]\nkinesis_video =\n  endpoint_url = {}\n",
            fake.url()
        ),
    );
    let sidecar = Sidecar::start_with_env(
        &fake,
        &[],
        &[
            ("AWS_ENDPOINT_URL_KINESIS_VIDEO", ""),
            ("AWS_CONFIG_FILE", &config),
        ],
    );
    join(&sidecar).await.expect("a join via the profile");
    assert_eq!(fake.received().len(), 2);
}

/// Which host the sidecar asks the proxy for, under the SDKs' settings.
#[tokio::test]
async fn fips_dual_stack_and_ignored_overrides_choose_the_host() {
    let fake = common::kvs().await;
    // Canary: an https endpoint on loopback must reach the recorder first.
    // Were proxies bypassed, the AWS hosts below would be dialled for
    // real; this stops the test before that.
    let canary = Recorder::start();
    let port = unused_port();
    let sidecar = Sidecar::start_with_env(
        &fake,
        &["--max-attempts", "1"],
        &[
            (
                "AWS_ENDPOINT_URL_KINESIS_VIDEO",
                &format!("https://127.0.0.1:{port}"),
            ),
            ("HTTPS_PROXY", &canary.url()),
        ],
    );
    join(&sidecar).await.unwrap_err();
    assert_eq!(
        canary.lines(),
        [format!("CONNECT 127.0.0.1:{port} HTTP/1.1")],
        "https is not going through HTTPS_PROXY; not trying AWS hosts"
    );
    drop(sidecar);

    let dir = TempDir::new("fips");
    let fips_profile = dir.write("config", "[default]\nuse_fips_endpoint = true\n");
    let unset_override = ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[unset_override, ("AWS_USE_FIPS_ENDPOINT", "true")],
            "kinesisvideo-fips.eu-central-1.amazonaws.com:443",
        ),
        (
            &[unset_override, ("AWS_USE_DUALSTACK_ENDPOINT", "true")],
            "kinesisvideo.eu-central-1.api.aws:443",
        ),
        (
            &[
                unset_override,
                ("AWS_USE_FIPS_ENDPOINT", "true"),
                ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
            ],
            "kinesisvideo-fips.eu-central-1.api.aws:443",
        ),
        (
            &[unset_override, ("AWS_CONFIG_FILE", &fips_profile)],
            "kinesisvideo-fips.eu-central-1.amazonaws.com:443",
        ),
        // The emulator's URL stays in AWS_ENDPOINT_URL_KINESIS_VIDEO, and is
        // ignored.
        (
            &[("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")],
            "kinesisvideo.eu-central-1.amazonaws.com:443",
        ),
    ];
    for (env, host) in cases {
        let recorder = Recorder::start();
        let mut env = env.to_vec();
        let url = recorder.url();
        env.push(("HTTPS_PROXY", &url));
        let sidecar = Sidecar::start_with_env(&fake, &["--max-attempts", "1"], &env);
        let status = join(&sidecar).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{env:?}: {status:?}");
        assert_eq!(
            recorder.lines(),
            [format!("CONNECT {host} HTTP/1.1")],
            "{env:?}"
        );
    }
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn fips_with_an_endpoint_override_stops_the_sidecar_at_start() {
    let fake = common::kvs().await;
    let output = Sidecar::try_launch(
        &fake.url(),
        fake.credentials(),
        &[],
        &[("AWS_USE_FIPS_ENDPOINT", "true")],
        &[],
    )
    .err()
    .expect("FIPS and an override contradict each other");
    assert!(
        output
            .iter()
            .any(|l| l.contains("FIPS and custom endpoint are not supported")),
        "{output:#?}"
    );
    let output = Sidecar::try_launch(
        &fake.url(),
        fake.credentials(),
        &[],
        &[("AWS_USE_FIPS_ENDPOINT", "yes")],
        &[],
    )
    .err()
    .expect("a FIPS setting that is not a boolean");
    assert!(
        output
            .iter()
            .any(|l| l.contains("AWS_USE_FIPS_ENDPOINT is \\\"yes\\\", neither true nor false")),
        "{output:#?}"
    );
}

#[tokio::test]
async fn an_arn_whose_partition_contradicts_its_region_is_refused_before_sending() {
    let fake = common::kvs().await;
    let sidecar = Sidecar::start(&fake, &[]);
    let mut client = sidecar.client().await;
    let status = client
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: "arn:aws:kinesisvideo:cn-north-1:123456789012:channel/cam/1700000000000"
                .into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "channel_arn: partition \"aws\" does not hold region \"cn-north-1\", which is in \"aws-cn\""
    );
    assert!(fake.received().is_empty());
}
