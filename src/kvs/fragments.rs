//! `ListFragments` (kinesis-video-archived-media): one page of a stream's
//! fragments whose server timestamps lie in a range, on the stream's
//! LIST_FRAGMENTS data endpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    Call, Error, Operation,
    arn::ChannelArn,
    data_endpoint::{ApiName, DataPlane},
};

/// Most fragments KVS answers per page (the model's `MaxResults` bound).
pub const MAX_PAGE: u32 = 1000;

/// One fragment as the status needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub number: String,
    /// When the fragment started, on KVS's clock.
    pub server_timestamp: SystemTime,
    pub length: Duration,
    pub size: u64,
}

/// A page, and the token of the next one if there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub fragments: Vec<Fragment>,
    pub next_token: Option<String>,
}

/// What to list: the first page of a range, or a page after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Range { from: SystemTime, to: SystemTime },
    After(String),
}

impl DataPlane {
    /// One page of `stream`'s fragments, paced with every other
    /// ListFragments of the stream.
    pub async fn list_fragments(
        &self,
        call: &Call,
        stream: &ChannelArn,
        listing: &Listing,
        page_size: u32,
    ) -> Result<Page, Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
            max_results: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            next_token: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            fragment_selector: Option<ServerTimestamps>,
        }
        let (next_token, fragment_selector) = match listing {
            Listing::Range { from, to } => (
                None,
                Some(ServerTimestamps::new(epoch(*from), Some(epoch(*to)))),
            ),
            Listing::After(token) => (Some(token.as_str()), None),
        };
        let body = super::client::json(&Body {
            stream_arn: stream.as_str(),
            max_results: page_size.clamp(1, MAX_PAGE),
            next_token,
            fragment_selector,
        });
        let answer = self
            .send(
                call,
                stream,
                ApiName::ListFragments,
                Operation::ListFragments,
                body,
            )
            .await?;
        parse_page(&answer.body)
    }
}

/// The archived-media APIs' fragment selector by server timestamps (epoch
/// seconds): ListFragments' `FragmentSelector`, the playback APIs'
/// `HLSFragmentSelector` and `DASHFragmentSelector`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServerTimestamps {
    fragment_selector_type: &'static str,
    timestamp_range: TimestampRange,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TimestampRange {
    start_timestamp: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_timestamp: Option<f64>,
}

impl ServerTimestamps {
    pub(super) fn new(start: f64, end: Option<f64>) -> Self {
        Self {
            fragment_selector_type: "SERVER_TIMESTAMP",
            timestamp_range: TimestampRange {
                start_timestamp: start,
                end_timestamp: end,
            },
        }
    }
}

fn epoch(t: SystemTime) -> f64 {
    // Milliseconds are all KVS keeps; fewer digits keep the body short.
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    ms as f64 / 1000.0
}

fn parse_page(body: &[u8]) -> Result<Page, Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        fragments: Vec<Listed>,
        next_token: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Listed {
        fragment_number: String,
        #[serde(default)]
        fragment_size_in_bytes: u64,
        server_timestamp: f64,
        #[serde(default)]
        fragment_length_in_milliseconds: u64,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| Error::MalformedResponse(format!("ListFragments: {e}")))?;
    let fragments = answer
        .fragments
        .into_iter()
        .map(|f| {
            if !(f.server_timestamp.is_finite() && f.server_timestamp >= 0.0) {
                return Err(Error::MalformedResponse(
                    "ListFragments: a fragment's ServerTimestamp is not a time".into(),
                ));
            }
            Ok(Fragment {
                number: f.fragment_number,
                server_timestamp: UNIX_EPOCH
                    + Duration::from_secs_f64(f.server_timestamp.min(1e11)),
                length: Duration::from_millis(f.fragment_length_in_milliseconds),
                size: f.fragment_size_in_bytes,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Page {
        fragments,
        next_token: answer.next_token.filter(|t| !t.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_page_as_the_model_has_it() {
        let body =
            br#"{"Fragments":[{"FragmentNumber":"91343852333181432392682062607743920146264669412",
            "FragmentSizeInBytes":150000,"ProducerTimestamp":1700000000.38,
            "ServerTimestamp":1700000000.5,"FragmentLengthInMilliseconds":2000}],
            "NextToken":"bmV4dA=="}"#;
        let page = parse_page(body).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("bmV4dA=="));
        let f = &page.fragments[0];
        assert_eq!(f.length, Duration::from_secs(2));
        assert_eq!(f.size, 150_000);
        assert_eq!(
            f.server_timestamp,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
        );
        let last = parse_page(br#"{"Fragments":[],"NextToken":null}"#).unwrap();
        assert_eq!(last, Page::default());
        assert!(parse_page(br#"{"Fragments":[{"FragmentNumber":"1"}]}"#).is_err());
        assert!(parse_page(b"<html>").is_err());
    }

    #[test]
    fn timestamps_go_as_epoch_seconds_to_the_millisecond() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(epoch(t), 1_700_000_000.123);
    }
}
