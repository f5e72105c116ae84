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

    std::fs::write(out.join("call_spans.rs"), call_spans(&fds))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-call buffers than tonic's 8 KiB (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::SmallBuffers")
        .compile_fds(fds)?;
    Ok(())
}

/// A function that opens the span of a call to one of the contract's
/// methods. `tracing` names a span at its callsite, so each method needs a
/// callsite of its own: generated from the contract, so no method is listed
/// by hand (`src/grpc/observe.rs` includes it).
fn call_spans(fds: &prost_types::FileDescriptorSet) -> String {
    let mut arms = String::new();
    for service in fds.file.iter().flat_map(|f| &f.service) {
        for method in &service.method {
            let name = method.name();
            arms.push_str(&format!(
                "        {name:?} => tracing::info_span!({name:?}, channel = tracing::field::Empty, otel.kind = tracing::field::Empty),\n"
            ));
        }
    }
    format!(
        "/// The span of a call to `method` of the storage service, if it has one.\n\
         fn storage_call_span(method: &str) -> Option<tracing::Span> {{\n    \
         Some(match method {{\n{arms}        _ => return None,\n    }})\n}}\n"
    )
}
