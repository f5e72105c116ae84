//! The protobuf codec of the storage service (and its generated client),
//! with smaller buffers than tonic's.
//!
//! tonic gives every call an 8 KiB encode and an 8 KiB decode buffer, and a
//! stream keeps both for as long as it lives: most of the 26 KiB that each
//! `MaintainStorageSession` at rest cost (`kvs-bench at-rest`). This
//! service's messages are at most about 1.3 KiB (`--max-request-bytes`
//! bounds the largest) and most are under 200 bytes (a join with a typical
//! ARN, its answer, a session's events and reports), so 256-byte buffers
//! hold nearly every message and grow, once, for the rest.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Where a buffer starts; it grows for a larger message.
const BUFFER_SIZE: usize = 256;
/// tonic's default: how much is encoded before yielding to the runtime.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Named in `build.rs` (`codec_path`); the generated code makes one per
/// call with `Default`.
#[derive(Debug, Clone)]
pub(crate) struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
