//! Keeps secrets out of what KVS (or anything on the way to it) says.
//!
//! AWS answers a signature mismatch with its canonical request and string
//! to sign, which list every signed header, `x-amz-security-token` among
//! them. Such text goes into gRPC statuses and log lines, so it is reduced
//! here before it is stored anywhere.

/// Longest KVS message kept; KVS's own are one or two sentences.
const MAX_MESSAGE_CHARS: usize = 256;
const REDACTED: &str = "[redacted]";

/// KVS's message as the sidecar may show it: the message of a signature or
/// credential error (`about_signing`) keeps its first sentence only (the
/// rest is where AWS puts the canonical request), then [`redact`] removes
/// anything secret-shaped.
pub(super) fn kvs_message(about_signing: bool, raw: &str) -> String {
    let text = if about_signing {
        first_sentence(raw)
    } else {
        raw
    };
    let mut safe = redact(text);
    if safe.chars().count() > MAX_MESSAGE_CHARS {
        safe = safe.chars().take(MAX_MESSAGE_CHARS).collect();
        safe.push('…');
    }
    safe
}

/// `text` with every value that looks like a credential redacted: the value
/// after a security-token, signature or credential name, access key ids,
/// and long runs that mix letters and digits (tokens, secrets, hex
/// signatures). Request ids (UUIDs) and ARNs keep their shape.
pub(super) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, name_len)) = find_secret_name(rest) {
        let value_start = start + name_len;
        out.push_str(&redact_runs(&rest[..value_start]));
        let value_len = rest[value_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '&' | '"' | '\''))
            .unwrap_or(rest.len() - value_start);
        if value_len > 0 {
            out.push_str(REDACTED);
        }
        rest = &rest[value_start + value_len..];
    }
    out.push_str(&redact_runs(rest));
    out
}

/// Names whose value is secret, matched case-insensitively with the `:` or
/// `=` that introduces the value.
const SECRET_NAMES: &[&str] = &[
    "x-amz-security-token:",
    "x-amz-security-token=",
    "x-amz-signature=",
    "x-amz-credential=",
    "signature=",
    "credential=",
    "authorization:",
];

/// The first secret name in `text`: its byte offset and length.
fn find_secret_name(text: &str) -> Option<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    SECRET_NAMES
        .iter()
        .filter_map(|name| lower.find(name).map(|at| (at, name.len())))
        .min_by_key(|(at, _)| *at)
}

/// Replaces each run of 16 or more characters of `[A-Za-z0-9+=]` that holds
/// both a letter and a digit: the shape of access key ids, secrets, session
/// tokens and signatures, but not of words, numbers, UUIDs (their dashes
/// break the run) or ARNs (their colons and slashes do). Values after a
/// secret's name are redacted whole by [`redact`], slashes included.
fn redact_runs(text: &str) -> String {
    const MIN_RUN: usize = 16;
    let is_run_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '=');
    let mut out = String::with_capacity(text.len());
    let mut run_start: Option<usize> = None;
    let flush = |out: &mut String, run: &str| {
        let secret_shaped = run.len() >= MIN_RUN
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic());
        out.push_str(if secret_shaped { REDACTED } else { run });
    };
    for (i, c) in text.char_indices() {
        match (is_run_char(c), run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(start)) => {
                flush(&mut out, &text[start..i]);
                run_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(start) = run_start {
        flush(&mut out, &text[start..]);
    }
    out
}

/// Up to the end of the first sentence or line.
fn first_sentence(text: &str) -> &str {
    let end = text
        .char_indices()
        .find(|&(i, c)| c == '\n' || (c == '.' && text[i + 1..].starts_with(char::is_whitespace)))
        .map_or(text.len(), |(i, c)| if c == '.' { i + 1 } else { i });
    text[..end].trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of AWS's answer to a signature mismatch (SigV4 docs'
    /// example values, with a session token).
    const CANONICAL_STRING_ANSWER: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'POST\n/joinStorageSession\n\ncontent-type:application/json\nhost:r-1.kinesisvideo.us-west-2.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJGMEQCIBRY+xyz\n\ncontent-type;host;x-amz-date;x-amz-security-token\n5f9a2b...'\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-west-2/kinesisvideo/aws4_request\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0'";

    #[test]
    fn signature_errors_keep_their_first_sentence_only() {
        let safe = kvs_message(true, CANONICAL_STRING_ANSWER);
        assert_eq!(
            safe,
            "The request signature we calculated does not match the signature you provided."
        );
    }

    #[test]
    fn secret_shaped_values_are_redacted_anywhere() {
        let safe = redact(CANONICAL_STRING_ANSWER);
        for secret in [
            "IQoJb3JpZ2luX2VjEJr",
            "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
        ] {
            assert!(!safe.contains(secret), "{secret} in {safe}");
        }
        let safe = redact(
            "Credential=ASIAEXAMPLE7Q4ZKXW2Y/20150830/us-east-1/kinesisvideo/aws4_request, Signature=abc, key AKIAIOSFODNN7EXAMPLE",
        );
        assert!(!safe.contains("ASIAEXAMPLE7Q4ZKXW2Y"), "{safe}");
        assert!(!safe.contains("AKIAIOSFODNN7EXAMPLE"), "{safe}");
        assert!(!safe.contains("abc"), "{safe}");
        assert!(
            safe.starts_with("Credential=[redacted], Signature=[redacted]"),
            "{safe}"
        );
    }

    #[test]
    fn ordinary_text_is_kept() {
        for text in [
            "The requested channel is not found or not active.",
            "request 1f0c6a4e-3d6b-4b8e-9a51-2f8d1c7e9b20 failed",
            "arn:aws:kinesisvideo:us-west-2:123456789012:channel/front-door/1700000000000",
            "",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn long_messages_are_truncated() {
        let long = "word ".repeat(200);
        let safe = kvs_message(false, &long);
        assert_eq!(safe.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
