//! TLS and mutual TLS on the gRPC port, with certificates made by rcgen for
//! this run and a tonic client over rustls.

use std::path::{Path, PathBuf};

use crate::common::{ARN, Sidecar};
use kvs_sidecar::pb::{
    JoinStorageSessionRequest, web_rtc_storage_service_client::WebRtcStorageServiceClient,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    dir: PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1/localhost and a client
    /// certificate, written as PEM files where the sidecar can read them.
    fn new(name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kvs-sidecar test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let issue = |sans: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = issue(vec!["recorder.example".into()]);
        let dir =
            std::env::temp_dir().join(format!("kvs-sidecar-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert).unwrap();
        std::fs::write(dir.join("server.key"), server_key).unwrap();
        Self {
            dir,
            ca: ca.pem(),
            client_cert,
            client_key,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// `kvs-sidecar --emulate` serving TLS, and with `mutual` requiring a
    /// client certificate.
    fn sidecar(&self, mutual: bool) -> Sidecar {
        let (cert, key, ca) = (
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
        );
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        if mutual {
            args.extend(["--tls-client-ca", &ca]);
        }
        Sidecar::emulated(&args)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn call(channel: Channel) -> Result<(), tonic::Status> {
    WebRtcStorageServiceClient::new(channel)
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: ARN.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn connect(
    sidecar: &Sidecar,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{}", sidecar.grpc)).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

fn trusting(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost")
}

#[tokio::test]
async fn mutual_tls_admits_clients_with_a_certificate_from_the_ca_only() {
    let pki = Pki::new("mutual");
    let sidecar = pki.sidecar(true);

    let with_cert = trusting(&pki).identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    call(connect(&sidecar, Some(with_cert)).await.unwrap())
        .await
        .expect("a client with a CA-signed certificate is served");

    let refused = match connect(&sidecar, Some(trusting(&pki))).await {
        Ok(channel) => call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate is refused");

    let plaintext = match connect(&sidecar, None).await {
        Ok(channel) => call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(plaintext, "plaintext is refused on a TLS port");
    assert_eq!(
        sidecar.admin_get("/readyz").0,
        200,
        "refused handshakes do not hurt the server"
    );
}

#[tokio::test]
async fn server_tls_serves_clients_that_trust_the_ca() {
    let pki = Pki::new("server");
    let sidecar = pki.sidecar(false);
    call(connect(&sidecar, Some(trusting(&pki))).await.unwrap())
        .await
        .unwrap();
}

#[test]
fn unreadable_certificates_stop_the_sidecar_with_a_clear_error() {
    let missing = Path::new("/nonexistent/cert.pem").display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvs-sidecar"))
        .args([
            "--emulate",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--tls-cert", &missing, "--tls-key", &missing])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/nonexistent/cert.pem"), "{text}");
}
