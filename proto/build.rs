//! Generates the gRPC glue of `memobuild.worker.v1.WorkerApi`. The messages
//! are plain prost types in `src/worker.rs`, so no protoc is needed.

fn main() {
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
}
