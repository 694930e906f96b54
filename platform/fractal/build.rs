//! Compiles the platform's own contracts (`proto/fractal/...`) with a pure-Rust protobuf
//! compiler, so building needs no `protoc`, and keeps their descriptor set for programs that
//! read payloads by their descriptors (the bridge, the CLI).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("fractal/platform/v1/envelope.proto"),
        root.join("fractal/platform/v1/fault.proto"),
        root.join("fractal/platform/v1/view.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("fractal.platform.v1.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&descriptors))?;
    prost_build::Config::new()
        .enable_type_names()
        // The payload is handed to handlers without copying it.
        .bytes([".fractal.platform.v1.Envelope.payload"])
        .compile_fds(descriptors)?;
    Ok(())
}
