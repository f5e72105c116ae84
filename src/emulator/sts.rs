//! STS `AssumeRole` as the emulator answers it (query protocol, XML), and
//! the keys it hands out, which the emulator then accepts like its own, so
//! tests can see which key signed what.
//!
//! A role whose name begins with `denied-` is refused (`AccessDenied`), as
//! STS refuses a role whose trust policy does not name the caller.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::{Emulator, EmulatorCredentials};

type Answer = Response<Full<Bytes>>;

/// Assumed keys kept: a bound on memory, whatever the callers do; the
/// oldest are forgotten first (and then refused, like expired keys).
const ASSUMED_KEPT: usize = 256;

/// A role the emulator let someone assume.
#[derive(Debug, Clone)]
pub struct AssumedRole {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    pub credentials: EmulatorCredentials,
}

// === impl Emulator ===

impl Emulator {
    /// The keys with this access key id: the emulator's own or assumed ones.
    pub(super) fn keys(&self, access_key_id: &str) -> Option<EmulatorCredentials> {
        if access_key_id == self.credentials.access_key_id {
            return Some((*self.credentials).clone());
        }
        self.lock()
            .assumed
            .iter()
            .find(|a| a.credentials.access_key_id == access_key_id)
            .map(|a| a.credentials.clone())
    }

    /// Roles assumed so far (the most recent 256), oldest first.
    pub fn assumed_roles(&self) -> Vec<AssumedRole> {
        self.lock().assumed.iter().cloned().collect()
    }

    /// Answers an STS query-protocol request (`Action=AssumeRole`).
    pub(super) fn sts(&self, body: &[u8]) -> Answer {
        let form = parse_form(body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("Action").as_deref() != Some("AssumeRole") {
            return sts_error(400, "InvalidAction", "only AssumeRole is emulated");
        }
        let (Some(role_arn), Some(session_name)) = (get("RoleArn"), get("RoleSessionName")) else {
            return sts_error(
                400,
                "ValidationError",
                "RoleArn and RoleSessionName are required",
            );
        };
        let role_name = role_arn.rsplit('/').next().unwrap_or_default().to_owned();
        if !role_arn.contains(":role/") {
            return sts_error(400, "ValidationError", "RoleArn is not a role ARN");
        }
        if role_name.starts_with("denied-") {
            let message = format!(
                "User: arn:aws:sts::000000000000:assumed-role/emulated is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            );
            return sts_error(403, "AccessDenied", &message);
        }
        let mut credentials = EmulatorCredentials::generate();
        credentials.access_key_id = credentials.access_key_id.replacen("ASIAEMU", "ASIAROL", 1);
        let account = role_arn.split(':').nth(4).unwrap_or_default().to_owned();
        let expiry = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let xml = format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEMULATED:{session_name}</AssumedRoleId>
      <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>{}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#,
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token.as_deref().unwrap_or_default(),
            humantime::format_rfc3339_seconds(expiry),
            super::request_id(),
        );
        {
            let mut state = self.lock();
            if state.assumed.len() == ASSUMED_KEPT {
                state.assumed.pop_front();
            }
            state.assumed.push_back(AssumedRole {
                role_arn,
                session_name,
                external_id: get("ExternalId"),
                credentials,
            });
        }
        xml_answer(200, xml)
    }
}

/// An STS error, in its XML form.
pub(super) fn sts_error(status: u16, code: &str, message: &str) -> Answer {
    let xml = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{}</RequestId></ErrorResponse>"#,
        super::request_id()
    );
    xml_answer(status, xml)
}

/// A scripted fault for STS (its code, as STS would answer it), or `then`.
pub(super) fn sts_error_or(
    scripted: Option<super::Reply>,
    then: impl FnOnce() -> Answer,
) -> Answer {
    match scripted {
        Some(super::Reply::Error { status, code, .. }) => sts_error(status, code, "emulated"),
        _ => then(),
    }
}

fn xml_answer(status: u16, xml: String) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(xml)))
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded`, decoded.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::with_capacity(s.len());
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            let hex = |c: Option<u8>| c.and_then(|c| (c as char).to_digit(16));
            match b {
                b'%' => match (hex(bytes.next()), hex(bytes.next())) {
                    (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                    _ => out.push(b'?'),
                },
                b => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_form_body() {
        let form = parse_form(b"Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&X=a+b");
        assert_eq!(form[1].1, "arn:aws:iam::1:role/r");
        assert_eq!(form[2].1, "a b");
    }
}
