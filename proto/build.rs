//! Generates the tonic/prost code from `proto/` with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["baton/v1/baton.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `WorkerService.Connect` would clash with the generated `connect` constructor:
        // clients are built with `XxxClient::new(channel)`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
