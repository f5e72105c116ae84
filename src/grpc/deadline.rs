//! The caller's deadline, from the `grpc-timeout` request header.
//!
//! tonic's own server would enforce this header too, but it answers an
//! expired one with CANCELLED; reading it here lets the call end with
//! DEADLINE_EXCEEDED, as the gRPC spec asks.

use std::time::Duration;

use tokio::time::Instant;

/// The instant the call must be answered by: the caller's `grpc-timeout`
/// from `received`, capped at `max`.
pub(crate) fn deadline(headers: &http::HeaderMap, received: Instant, max: Duration) -> Instant {
    let timeout = timeout(headers).map_or(max, |t| t.min(max));
    received + timeout
}

/// The caller's `grpc-timeout`, if it sent a valid one.
pub(crate) fn timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get("grpc-timeout")
        .and_then(|v| parse_timeout(v.to_str().ok()?))
}

/// `grpc-timeout` is 1 to 8 ASCII digits and a unit: H, M, S, m, u or n.
pub(crate) fn parse_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_junk() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout("5n"), Some(Duration::from_nanos(5)));
        for junk in ["", "S", "123456789S", "1x", "-1S", "1.5S", "١S"] {
            assert_eq!(parse_timeout(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn caps_at_the_configured_maximum() {
        let now = Instant::now();
        let max = Duration::from_secs(30);
        let mut h = http::HeaderMap::new();
        assert_eq!(deadline(&h, now, max), now + max);
        h.insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        assert_eq!(deadline(&h, now, max), now + Duration::from_millis(100));
        h.insert("grpc-timeout", http::HeaderValue::from_static("1H"));
        assert_eq!(deadline(&h, now, max), now + max);
    }
}
