//! REAPI actions whose platform names a `container-image` run in that
//! image's rootfs through containerd, on the real server with its
//! embedded worker, the image pulled from a real registry on loopback.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "image_build/harness.rs"]
mod harness;

use bytes::Bytes;
use common::TestServer;
use memobuild_cas::{BlobStore, GrpcStore};
use memobuild_proto::longrunning::operation;
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{
    command, platform, Action, Command, Directory, ExecuteRequest, ExecuteResponse, FileNode, Platform,
};
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;

/// An action to run: its shell script, inputs and platform.
struct Job<'a> {
    script: &'a str,
    /// `input.txt` in the input root.
    input: &'a [u8],
    properties: &'a [(&'a str, &'a str)],
}

/// The CAS of `server`, as a blob store.
fn cas(server: &TestServer) -> GrpcStore {
    GrpcStore::new(server.channel.clone(), "")
}

async fn put(cas: &GrpcStore, data: Vec<u8>) -> Digest {
    let digest = Digest::of(DigestFunction::Sha256, &data);
    cas.put_bytes(&digest, Bytes::from(data)).await.unwrap();
    digest
}

/// Runs `job` (no cache lookup); returns the response and `out/result`.
async fn run(server: &TestServer, job: &Job<'_>) -> (ExecuteResponse, Option<String>) {
    let cas = cas(server);
    let input = put(&cas, job.input.to_vec()).await;
    let root = Directory {
        files: vec![FileNode {
            name: "input.txt".into(),
            digest: Some(input.to_proto()),
            is_executable: false,
            node_properties: None,
        }],
        ..Default::default()
    };
    let platform = Platform {
        properties: job
            .properties
            .iter()
            .map(|(name, value)| platform::Property { name: name.to_string(), value: value.to_string() })
            .collect(),
    };
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), job.script.into()],
        environment_variables: vec![command::EnvironmentVariable { name: "PATH".into(), value: "/bin".into() }],
        output_paths: vec!["out/result".into()],
        ..Default::default()
    };
    let action = Action {
        command_digest: Some(put(&cas, command.encode_to_vec()).await.to_proto()),
        input_root_digest: Some(put(&cas, root.encode_to_vec()).await.to_proto()),
        platform: Some(platform),
        ..Default::default()
    };
    let action = put(&cas, action.encode_to_vec()).await;
    let request =
        ExecuteRequest { action_digest: Some(action.to_proto()), skip_cache_lookup: true, ..Default::default() };
    let response = match ExecutionClient::new(server.channel.clone()).execute(request).await {
        Ok(stream) => done(stream.into_inner()).await,
        // Refused before any operation: as the operation's status.
        Err(status) => ExecuteResponse {
            status: Some(memobuild_proto::rpc::Status {
                code: status.code() as i32,
                message: status.message().to_string(),
                details: Vec::new(),
            }),
            ..Default::default()
        },
    };
    let result = match response.result.as_ref().and_then(|r| r.output_files.first()) {
        Some(file) => {
            let digest = Digest::from_proto(DigestFunction::Sha256, file.digest.as_ref().unwrap()).unwrap();
            Some(String::from_utf8(cas.get_bytes(&digest).await.unwrap().to_vec()).unwrap())
        }
        None => None,
    };
    (response, result)
}

/// The response of the operation `stream` watches, once it is done.
async fn done(mut stream: tonic::Streaming<memobuild_proto::longrunning::Operation>) -> ExecuteResponse {
    loop {
        let operation = stream.message().await.unwrap().expect("the stream ended before the operation did");
        if let (true, Some(operation::Result::Response(any))) = (operation.done, &operation.result) {
            return ExecuteResponse::decode(&any.value[..]).unwrap();
        }
    }
}

/// The stderr of an action, as the CAS holds it.
async fn stderr(server: &TestServer, response: &ExecuteResponse) -> String {
    let digest = response.result.as_ref().and_then(|r| r.stderr_digest.as_ref()).unwrap();
    let digest = Digest::from_proto(DigestFunction::Sha256, digest).unwrap();
    String::from_utf8_lossy(&cas(server).get_bytes(&digest).await.unwrap()).into_owned()
}

/// The busybox test image pinned by digest, as Bazel's RBE configs name it.
fn pinned_image() -> String {
    let fixture = harness::fixture();
    let inspect = harness::sh("skopeo", &["inspect", "--tls-verify=false", &format!("docker://{}", fixture.base())]);
    let digest = serde_json::from_str::<serde_json::Value>(&inspect).unwrap()["Digest"].as_str().unwrap().to_string();
    format!("docker://{}/base/busybox@{digest}", fixture.registry)
}

const SCRIPT: &str = "mkdir -p out && { cat /etc/lower-file; id -u; pwd; cat input.txt; \
                      grep CapEff /proc/self/status; echo \"$BASE_VAR $PATH\"; } > out/result";

#[tokio::test(flavor = "multi_thread")]
async fn actions_run_in_their_image_without_privileges_and_cannot_touch_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let image = pinned_image();

    // The image's own files, the sandbox's unprivileged user, the input root
    // bound at its mount, no capabilities, the image's Env under the
    // action's variables (its PATH wins).
    let job = Job { script: SCRIPT, input: b"hello input\n", properties: &[("container-image", &image)] };
    let (response, result) = run(&server, &job).await;
    assert_eq!(response.status.as_ref().map(|s| s.code).unwrap_or(0), 0, "{response:?}");
    assert_eq!(
        result.as_deref(),
        Some("from the base image\n65532\n/memobuild/input\nhello input\nCapEff:\t0000000000000000\nfrom-base /bin\n"),
        "stderr: {}",
        stderr(&server, &response).await
    );

    // A tag works too; `dockerRunAsRoot` gives uid 0, still without
    // capabilities, so the input (the worker's cache file) stays read-only.
    let tagged = format!("docker://{}", harness::fixture().base());
    let root_job = Job {
        script: "echo changed >> input.txt",
        input: b"hello input\n",
        properties: &[("container-image", &tagged), ("dockerRunAsRoot", "true")],
    };
    let (response, _) = run(&server, &root_job).await;
    let result = response.result.as_ref().unwrap();
    assert_ne!(result.exit_code, 0, "root wrote an input file of the worker's cache");
    assert!(stderr(&server, &response).await.contains("Permission denied"), "{response:?}");
    let as_root = Job { script: "mkdir -p out && id -u > out/result && cat input.txt >> out/result", ..root_job };
    let (_, result) = run(&server, &as_root).await;
    assert_eq!(result.as_deref(), Some("0\nhello input\n"), "the input changed or root was not root");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_cannot_be_pulled_fails_the_action_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let missing = format!("docker://{}/no/such-image:1", harness::fixture().registry);
    let job = Job { script: SCRIPT, input: b"x", properties: &[("container-image", &missing)] };
    let (response, _) = run(&server, &job).await;
    let status = response.status.expect("a status");
    assert_ne!(status.code, 0);
    assert!(status.message.contains("no/such-image:1"), "{}", status.message);

    let bad = Job { script: SCRIPT, input: b"x", properties: &[("container-image", "docker://Not A Reference")] };
    let (response, _) = run(&server, &bad).await;
    let status = response.status.expect("a status");
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32, "{}", status.message);
    assert!(status.message.contains("container-image"), "{}", status.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_workers_with_containerd_are_offered_container_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = memobuild_cli::config::ServerConfig::embedded(dir.path());
    config.worker.as_mut().unwrap().dockerfile_steps = false;
    let server = TestServer::start_with(config).await;
    let image = pinned_image();
    let job = Job { script: SCRIPT, input: b"x", properties: &[("container-image", &image)] };
    let (response, _) = run(&server, &job).await;
    let status = response.status.expect("a status");
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32, "{}", status.message);
    assert!(status.message.contains(&format!("none offers container-image={image}")), "{}", status.message);

    // What the worker is, it offers: an action asking for more cores than
    // it has waits for none and is refused the same way.
    let cores = std::thread::available_parallelism().unwrap().get() + 1;
    let cores = cores.to_string();
    let job = Job { script: "true", input: b"x", properties: &[("ISA", "x86-64"), ("cores", &cores)] };
    let (response, _) = run(&server, &job).await;
    let status = response.status.expect("a status");
    assert!(status.message.contains(&format!("none offers cores={cores}")), "{}", status.message);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_over_the_memory_limit_in_an_image_fails_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = memobuild_cli::config::ServerConfig::embedded(dir.path());
    config.worker.as_mut().unwrap().sandbox.memory_bytes = Some(32 << 20);
    let server = TestServer::start_with(config).await;
    let image = pinned_image();
    // dd's 256 MiB buffer is touched as /dev/zero fills it.
    let hog = Job {
        script: "dd if=/dev/zero of=/dev/null bs=256M count=1",
        input: b"x",
        properties: &[("container-image", &image)],
    };
    let (response, _) = run(&server, &hog).await;
    assert_eq!(response.result.as_ref().map(|r| r.exit_code), Some(137), "{response:?}");
    let status = response.status.expect("a status");
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32, "{}", status.message);
    assert!(status.message.contains("memory limit of 32 MiB"), "{}", status.message);

    // Under the limit, the next action in the image is fine.
    let job = Job {
        script: "mkdir -p out && echo fine > out/result",
        input: b"x",
        properties: &[("container-image", &image)],
    };
    let (response, result) = run(&server, &job).await;
    assert_eq!(response.status.as_ref().map(|s| s.code).unwrap_or(0), 0, "{response:?}");
    assert_eq!(result.as_deref(), Some("fine\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_layer_over_the_workers_max_layer_bytes_fails_the_action_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = memobuild_cli::config::ServerConfig::embedded(dir.path());
    config.worker.as_mut().unwrap().max_layer_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let image = pinned_image();
    let job = Job { script: SCRIPT, input: b"x", properties: &[("container-image", &image)] };
    let (response, result) = run(&server, &job).await;
    let status = response.status.clone().expect("a status");
    assert_ne!(status.code, 0, "{response:?}");
    assert!(status.message.contains("decompresses to more than the 4096 bytes allowed"), "{}", status.message);
    assert!(status.message.contains("sha256:"), "the layer is not named: {}", status.message);
    assert_eq!(result, None);
    server.stop().await;
}
