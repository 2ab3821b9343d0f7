//! Generates the gRPC code of `proto/paddock/node/v1/node.proto` with protox (a protobuf
//! compiler in Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("paddock/node/v1/node.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Layer chunks are handed on without a copy.
        .bytes(".paddock.node.v1.LayerChunk.data")
        .bytes(".paddock.node.v1.BuildFilePart.data")
        .compile_fds(fds)?;
    Ok(())
}
