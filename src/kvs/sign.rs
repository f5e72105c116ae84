//! SigV4 signing of one upstream attempt with `aws-sigv4`.
//!
//! Each attempt is signed anew, so a retry carries a fresh `x-amz-date`.
//! The settings are the SDKs' defaults for a JSON protocol: the payload hash
//! is part of the signature but not sent as `x-amz-content-sha256`, and the
//! session token, when there is one, is signed and sent as
//! `x-amz-security-token`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign as sigv4},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;

use super::Error;

/// The signing name of every KVS API, control plane and WEBRTC alike.
pub const SERVICE: &str = "kinesisvideo";

/// Signs `req` in place for `service` in `region` at `time`. The request must
/// have an absolute URI; a `Host` header is added from it so that what is
/// signed is exactly what is sent.
pub fn sign(
    req: &mut http::Request<Bytes>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), Error> {
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| Error::Signing("the request URI has no host".into()))?;
    let host = http::HeaderValue::from_str(host_header(req.uri().scheme_str(), authority))
        .map_err(|e| Error::Signing(e.to_string()))?;
    req.headers_mut().insert(http::header::HOST, host);

    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Error::Signing(e.to_string()))?
        .into();

    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri,
        headers,
        SignableBody::Bytes(req.body()),
    )
    .map_err(|e| Error::Signing(e.to_string()))?;
    let (instructions, _signature) = sigv4(signable, &params)
        .map_err(|e| Error::Signing(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

/// The `Host` header as HTTP clients send it: the port only when it is not
/// the scheme's default.
fn host_header<'a>(scheme: Option<&str>, authority: &'a http::uri::Authority) -> &'a str {
    let default_port = match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    if authority.port_u16().is_some() && authority.port_u16() == default_port {
        authority.host()
    } else {
        authority.as_str()
    }
}

#[cfg(test)]
mod tests {
    //! Checked against AWS's published SigV4 test suite (the vectors under
    //! `tests/vectors/`, from the aws-c-auth signing test suite), so our use
    //! of the signer, not only the signer, is what is tested.
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

    struct Vector {
        request: http::Request<Bytes>,
        credentials: Credentials,
        region: String,
        service: String,
        time: SystemTime,
        signed: String,
    }

    fn load(name: &str) -> Vector {
        let dir = format!("{VECTORS}/{name}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        let ctx: serde_json::Value = serde_json::from_str(&read("context.json")).unwrap();
        let raw = read("request.txt");
        let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let mut lines = head.lines();
        let mut start = lines.next().unwrap().split(' ');
        let (method, path) = (start.next().unwrap(), start.next().unwrap());
        let mut builder = http::Request::builder().method(method);
        let mut host = String::new();
        for line in lines {
            let (k, v) = line.split_once(':').unwrap();
            if k.eq_ignore_ascii_case("host") {
                host = v.to_owned();
            }
            builder = builder.header(k, v);
        }
        let request = builder
            .uri(format!("https://{host}{path}"))
            .body(Bytes::from(body.to_owned()))
            .unwrap();
        let creds = &ctx["credentials"];
        assert_eq!(ctx["timestamp"], "2015-08-30T12:36:00Z");
        Vector {
            request,
            credentials: Credentials::new(
                creds["access_key_id"].as_str().unwrap(),
                creds["secret_access_key"].as_str().unwrap(),
                creds["token"].as_str().map(str::to_owned),
                None,
                "vector",
            ),
            region: ctx["region"].as_str().unwrap().to_owned(),
            service: ctx["service"].as_str().unwrap().to_owned(),
            time: UNIX_EPOCH + Duration::from_secs(1_440_938_160),
            signed: read("header-signed-request.txt"),
        }
    }

    fn expected_header(signed: &str, name: &str) -> String {
        signed
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.to_owned())
            })
            .unwrap_or_else(|| panic!("vector has no {name}"))
    }

    fn check(name: &str) {
        let mut v = load(name);
        sign(
            &mut v.request,
            &v.credentials,
            &v.region,
            &v.service,
            v.time,
        )
        .unwrap();
        for header in ["authorization", "x-amz-date", "x-amz-security-token"] {
            let got = v
                .request
                .headers()
                .get(header)
                .map(|h| h.to_str().unwrap().to_owned());
            let want = v
                .signed
                .to_ascii_lowercase()
                .contains(&format!("\n{header}:"))
                .then(|| expected_header(&v.signed, header));
            assert_eq!(got, want, "{name}: {header}");
        }
    }

    #[test]
    fn matches_published_vector_post_vanilla() {
        check("post-vanilla");
    }

    #[test]
    fn matches_published_vector_with_session_token() {
        check("get-vanilla-with-session-token");
    }

    #[test]
    fn signs_for_the_given_region_and_service() {
        let mut req = http::Request::post("http://127.0.0.1:8443/joinStorageSession")
            .header("content-type", "application/json")
            .body(Bytes::from_static(br#"{"channelArn":"x"}"#))
            .unwrap();
        let creds = Credentials::new("AKID", "SECRET", None, None, "t");
        sign(
            &mut req,
            &creds,
            "eu-central-1",
            SERVICE,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20231114/eu-central-1/kinesisvideo/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="), "{auth}");
        assert_eq!(req.headers()["host"], "127.0.0.1:8443");
        assert!(!auth.contains("SECRET"));
    }

    #[test]
    fn host_header_drops_default_ports_only() {
        let a: http::uri::Authority = "example.com:443".parse().unwrap();
        assert_eq!(host_header(Some("https"), &a), "example.com");
        assert_eq!(host_header(Some("http"), &a), "example.com:443");
    }
}
