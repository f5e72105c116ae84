//! SigV4 verification for the emulator, written from the AWS specification
//! with hmac and sha2 only. It shares nothing with `aws-sigv4`, which signs,
//! so every test that goes through the emulator checks the sidecar's
//! signatures against an independent implementation; it is itself checked
//! against AWS's published test vectors, header and query (presigned)
//! signing alike.

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
    let canonical_headers = canonical_headers(headers, &names)?;
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

/// A presigned request that verified: its scope, and its query parameters,
/// decoded.
#[derive(Debug, Clone)]
pub struct Presigned {
    pub scope: Scope,
    pub params: Vec<(String, String)>,
}

impl Presigned {
    /// The decoded value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Verifies a request presigned with SigV4 query parameters (a signaling
/// WebSocket URL) at `now`: the signature over the canonical query (every
/// parameter but `X-Amz-Signature`) and the signed headers, and that `now`
/// lies between `X-Amz-Date` (less 5 minutes of skew) and `X-Amz-Date +
/// X-Amz-Expires`. The payload is the empty one, as for a GET.
pub fn verify_presigned(
    method: &str,
    path: &str,
    query: &str,
    headers: &http::HeaderMap,
    secret: &str,
    now: std::time::SystemTime,
) -> Result<Presigned, String> {
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((decode(k)?, decode(v)?));
    }
    let get = |name: &str| -> Result<&str, String> {
        let mut found = params.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Ok(v.as_str()),
            (None, _) => Err(format!("no {name}")),
            (Some(_), Some(_)) => Err(format!("{name} is given twice")),
        }
    };
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err("X-Amz-Algorithm is not AWS4-HMAC-SHA256".into());
    }
    let credential = get("X-Amz-Credential")?;
    let amz_date = get("X-Amz-Date")?;
    let signed_headers = get("X-Amz-SignedHeaders")?;
    let signature = get("X-Amz-Signature")?;
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| "X-Amz-Expires is not a number of seconds")?;
    let c: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = c[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    if !amz_date.starts_with(date) {
        return Err("X-Amz-Date does not match the scope date".into());
    }
    let signed_at = parse_amz_date(amz_date).ok_or("X-Amz-Date is not YYYYMMDDTHHMMSSZ")?;
    if now > signed_at + std::time::Duration::from_secs(expires) {
        return Err("Request has expired".into());
    }
    if signed_at > now + std::time::Duration::from_secs(300) {
        return Err("Request is not yet valid: X-Amz-Date is in the future".into());
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if !names.contains(&"host") {
        return Err("host must be signed".into());
    }
    let canonical_headers = canonical_headers(headers, &names)?;
    let mut canonical_query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    canonical_query.sort();
    let canonical_query = canonical_query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{method}
{path}
{canonical_query}
{canonical_headers}
{signed_headers}
{}",
        hex::encode(Sha256::digest(b""))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256
{amz_date}
{scope}
{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    if hex::encode(hmac(&key, string_to_sign.as_bytes())) != signature {
        return Err(MISMATCH.into());
    }
    let scope = Scope {
        access_key: access_key.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
    };
    Ok(Presigned { scope, params })
}

/// `20150830T123600Z` → a time.
pub fn parse_amz_date(amz: &str) -> Option<std::time::SystemTime> {
    let b = amz.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &amz[0..4],
        &amz[4..6],
        &amz[6..8],
        &amz[9..11],
        &amz[11..13],
        &amz[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// SigV4's URI encoding: everything but the unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Percent-decoding of a query component.
fn decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|c| (c as char).to_digit(16));
            let lo = bytes.next().and_then(|c| (c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("bad percent-encoding in the query".into());
            };
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| "the query is not UTF-8".into())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The signed headers' canonical form: `name:values\n` each, in the order
/// they were signed; every signed header must be in the request.
fn canonical_headers(headers: &http::HeaderMap, names: &[&str]) -> Result<String, String> {
    let mut canonical = String::new();
    for name in names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| collapse(v.to_str().unwrap_or_default()))
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is not in the request"));
        }
        canonical.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Ok(canonical)
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

    /// AWS's published presigned (query) vector: `query-signed-request.txt`
    /// of `get-vanilla-query-order-key-case` in the aws-c-auth suite.
    #[test]
    fn agrees_with_the_published_query_vector() {
        let signed = std::fs::read_to_string(format!(
            "{}/tests/vectors/get-vanilla-query-order-key-case/query-signed-request.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let target = signed.lines().next().unwrap().split(' ').nth(1).unwrap();
        let (path, query) = target.split_once('?').unwrap();
        let headers: http::HeaderMap =
            [(http::header::HOST, "example.amazonaws.com".parse().unwrap())]
                .into_iter()
                .collect();
        let at =
            |s| parse_amz_date("20150830T123600Z").unwrap() + std::time::Duration::from_secs(s);
        let ok = verify_presigned("GET", path, query, &headers, SECRET, at(60)).unwrap();
        assert_eq!(ok.scope.access_key, "AKIDEXAMPLE");
        assert_eq!(ok.param("Param1"), Some("value1"));
        assert_eq!(ok.param("X-Amz-Expires"), Some("3600"));
        assert!(verify_presigned("GET", path, query, &headers, "other", at(60)).is_err());
        let moved = query.replace("value1", "value3");
        assert!(verify_presigned("GET", path, &moved, &headers, SECRET, at(60)).is_err());
        let expired = verify_presigned("GET", path, query, &headers, SECRET, at(3601));
        assert_eq!(expired.unwrap_err(), "Request has expired");
        let early = verify_presigned(
            "GET",
            path,
            query,
            &headers,
            SECRET,
            at(0) - std::time::Duration::from_secs(301),
        );
        assert!(early.unwrap_err().contains("future"));
    }
}
