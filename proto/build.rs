//! Generates `memobuild.build.v1` from its `.proto` file (messages and the
//! BuildService), and the gRPC glue of `memobuild.worker.v1.WorkerApi`, whose
//! messages are plain prost types in `src/worker.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=memobuild/build/v1/build.proto");
    tonic_prost_build::configure().compile_protos(&["memobuild/build/v1/build.proto"], &["."])?;

    let session = tonic_build::manual::Method::builder()
        .name("session")
        .route_name("Session")
        .input_type("crate::worker::WorkerMessage")
        .output_type("crate::worker::SchedulerMessage")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("WorkerApi")
        .package("memobuild.worker.v1")
        .method(session)
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    Ok(())
}
