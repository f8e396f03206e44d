//! Generates the tonic/prost code from `proto/` with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(["baton/v1/baton.proto"])?;
    // The encoded set, for gRPC server reflection (`baton_proto::FILE_DESCRIPTOR_SET`).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("baton_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `WorkerService.Connect` would clash with the generated `connect` constructor:
        // clients are built with `XxxClient::new(channel)`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
