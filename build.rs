//! Compiles `proto/` with the pure-Rust `protox`, so no system `protoc` is
//! needed, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/kvs/webrtcstorage/v1/webrtc_storage.proto";
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kvs_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-call buffers than tonic's 8 KiB (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::SmallBuffers")
        .compile_fds(fds)?;
    Ok(())
}
