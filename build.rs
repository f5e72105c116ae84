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

    link_in_run_order()?;
    Ok(())
}

/// Has lld lay out the release binary's functions in the order
/// `release/symbol-order.txt` gives (written by `bench/symbol-order`): what
/// a pod runs at idle first, then the join path. The kernel maps text 64
/// KiB around each page fault, so functions scattered over 16 MB of text
/// kept most of it resident; packed, idle RSS fell from 15.0 to 8.7 MiB
/// (docs/performance.md, "Functions linked in the order they run"). Only
/// where Rust links with lld by default (x86_64 Linux, Rust 1.90 on) and
/// the build names no linker of its own; a name the binary no longer has is
/// skipped, so a stale file costs memory, never a build.
fn link_in_run_order() -> Result<(), env::VarError> {
    let order = "release/symbol-order.txt";
    println!("cargo:rerun-if-changed={order}");
    if env::var("PROFILE")? != "release" || env::var("TARGET")? != "x86_64-unknown-linux-gnu" {
        return Ok(());
    }
    // A build that chooses its own linker may not link with lld.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if env::var_os("RUSTC_LINKER").is_some() || flags.contains("linker") {
        return Ok(());
    }
    let path = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join(order);
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        path.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
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
