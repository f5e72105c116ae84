//! SigV4 verification for the emulator, written from the AWS specification
//! with hmac and sha2 only. It shares nothing with `aws-sigv4`, which signs,
//! so every test that goes through the emulator checks the sidecar's
//! signatures against an independent implementation; it is itself checked
//! against AWS's published test vectors.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

/// How AWS's answer to a signature that does not verify begins.
pub const MISMATCH: &str =
    "The request signature we calculated does not match the signature you provided.";

/// Verifies the `Authorization` header of a request. Returns the credential
/// scope it was signed for, or why it does not verify.
pub fn verify(
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    secret: &str,
) -> Result<Scope, String> {
    let auth = headers
        .get("authorization")
        .ok_or("no authorization header")?
        .to_str()
        .map_err(|e| e.to_string())?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=').ok_or("malformed authorization")?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(format!("unexpected authorization part {k}")),
        }
    }
    let (credential, signed_headers, signature) = (
        credential.ok_or("no Credential")?,
        signed_headers.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    let c: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = c[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    let amz_date = headers
        .get("x-amz-date")
        .ok_or("no x-amz-date")?
        .to_str()
        .map_err(|e| e.to_string())?;
    if !amz_date.starts_with(date) {
        return Err("x-amz-date does not match the scope date".into());
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err("host and x-amz-date must be signed".into());
    }
    if headers.contains_key("x-amz-security-token") && !names.contains(&"x-amz-security-token") {
        return Err("the session token is sent but not signed".into());
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| collapse(v.to_str().unwrap_or_default()))
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is not in the request"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical_request = format!(
        "{method}\n{path}\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    if expected != signature {
        // AWS's own answer, which echoes every signed header (the session
        // token among them): clients must not pass it on verbatim.
        return Err(format!(
            "{MISMATCH} Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical_request}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
        ));
    }
    Ok(Scope {
        access_key: access_key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    #[test]
    fn agrees_with_the_published_vectors() {
        for name in ["post-vanilla", "get-vanilla-with-session-token"] {
            let signed = std::fs::read_to_string(format!(
                "{}/tests/vectors/{name}/header-signed-request.txt",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let mut lines = signed.lines();
            let method = lines.next().unwrap().split(' ').next().unwrap().to_owned();
            let headers: http::HeaderMap = lines
                .take_while(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (
                        k.to_ascii_lowercase().parse::<http::HeaderName>().unwrap(),
                        v.parse().unwrap(),
                    )
                })
                .collect();
            let scope = verify(&method, "/", &headers, b"", SECRET).unwrap();
            assert_eq!(
                (scope.region.as_str(), scope.service.as_str()),
                ("us-east-1", "service")
            );
            assert!(
                verify(&method, "/", &headers, b"x", SECRET).is_err(),
                "{name}: body"
            );
            assert!(
                verify(&method, "/", &headers, b"", "other").is_err(),
                "{name}: secret"
            );
            assert!(
                verify("PUT", "/", &headers, b"", SECRET).is_err(),
                "{name}: method"
            );
        }
    }
}
