//! GetPlaybackUrl: a new HLS or DASH playback URL for what a channel's
//! stream stored.
//!
//! The stream is the one the channel's media storage links (read through
//! the readiness cache, so playback shares its DescribeMediaStorage-
//! Configuration reads). The URL comes from `GetHLSStreamingSessionURL` or
//! `GetDASHStreamingSessionURL` on the stream's data endpoint for that API
//! (`kvs/data_endpoint.rs`: cached per stream and API, dropped after a
//! failure), every attempt paced to KVS's 5 requests a second per stream by
//! the shared per-stream pacer (`kvs/stack/pace.rs`): a call that cannot get
//! a slot before its deadline is RESOURCE_EXHAUSTED.
//!
//! Never cached or shared: KVS keeps at most 10 live playback sessions per
//! stream and ends the oldest beyond that, and a session belongs to one
//! player; every call makes a new one. For the same reason a request that
//! may have reached KVS is not retried (`kvs/retry.rs`): a retry would open
//! a second session and could end someone else's.
//!
//! The URL carries the session's token, a credential for the stream: it is
//! never logged, never in an error or a metric, and [`PlaybackUrl`]'s Debug
//! hides it.

mod request;

pub(crate) use self::request::parse as parse_request;

use std::{fmt, sync::Arc, time::SystemTime};

use crate::{
    kvs::{
        Call, Error, ErrorKind, arn::ChannelArn, data_endpoint::DataPlane,
        playback::SessionUrlRequest,
    },
    readiness::StorageReadiness,
};

/// Why no playback URL was made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaybackError {
    /// The channel has nothing to play, or stores nothing; the text says
    /// what to do (it names resources, never the URL).
    #[error("{0}")]
    NothingToPlay(String),
    #[error(transparent)]
    Kvs(#[from] Error),
}

/// A playback URL and when it stops working. Debug never shows the URL.
pub(crate) struct PlaybackUrl {
    pub url: String,
    pub expires_at: SystemTime,
}

impl fmt::Debug for PlaybackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaybackUrl")
            .field("url", &"** redacted **")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

pub(crate) struct Playback {
    data: Arc<DataPlane>,
}

// === impl Playback ===

impl Playback {
    pub(crate) fn new(data: Arc<DataPlane>) -> Self {
        Self { data }
    }

    /// A new URL for the channel's stream, as `request` asks.
    pub(crate) async fn url(
        &self,
        call: &Call,
        readiness: &StorageReadiness,
        channel: &ChannelArn,
        request: &SessionUrlRequest,
    ) -> Result<PlaybackUrl, PlaybackError> {
        let report = readiness.check(call, channel).await?;
        if report.media_storage_status != "ENABLED" || report.stream_arn.is_empty() {
            return Err(PlaybackError::NothingToPlay(
                "the channel stores no media (its media storage is not enabled, or the sidecar may not read it: see CheckStorageReadiness); enable it with EnsureStorage".into(),
            ));
        }
        let stream = ChannelArn::parse(&report.stream_arn).map_err(|e| {
            Error::MalformedResponse(format!(
                "DescribeMediaStorageConfiguration: the linked StreamARN {e}"
            ))
        })?;
        self.session_url(call, &stream, request).await
    }

    async fn session_url(
        &self,
        call: &Call,
        stream: &ChannelArn,
        request: &SessionUrlRequest,
    ) -> Result<PlaybackUrl, PlaybackError> {
        // KVS counts Expires from when it makes the session; asking first
        // errs on the early side.
        let asked = SystemTime::now();
        let url = self
            .data
            .streaming_session_url(call, stream, request)
            .await
            .map_err(nothing_to_play)?;
        Ok(PlaybackUrl {
            url,
            expires_at: asked + request.expires,
        })
    }
}

/// KVS answers ResourceNotFoundException when the stream has no fragments
/// in the range (LIVE: none in the last 30 seconds): the channel exists,
/// there is nothing to play yet.
fn nothing_to_play(err: Error) -> PlaybackError {
    match err {
        Error::Service(e) if e.kind == ErrorKind::NotFound => PlaybackError::NothingToPlay(format!(
            "nothing to play: KVS found no fragments in the channel's stream for this request (LIVE needs media recorded within the last 30 seconds){}",
            e.request_id
                .map(|id| format!(" (KVS request id {id})"))
                .unwrap_or_default()
        )),
        Error::Service(e) if e.kind == ErrorKind::NoDataRetention => PlaybackError::NothingToPlay(
            "nothing to play: the channel's stream keeps no data (DataRetentionInHours is 0); raise it with EnsureStorage".into(),
        ),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_url() {
        let url = "https://b-1.kinesisvideo.us-west-2.amazonaws.com/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=CiAzZWNyZXQ";
        let shown = format!(
            "{:?}",
            PlaybackUrl {
                url: url.into(),
                expires_at: SystemTime::UNIX_EPOCH
            }
        );
        assert!(!shown.contains("CiAz"), "{shown}");
    }
}
