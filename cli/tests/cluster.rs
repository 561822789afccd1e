//! A cluster of real processes: `memobuild cas`, `memobuild scheduler` and
//! `memobuild worker`s. Workers and the scheduler are killed with SIGKILL
//! mid-build; the work must still complete.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memobuild_cas::{BlobStore, GrpcStore};
use memobuild_proto::longrunning::operations_client::OperationsClient;
use memobuild_proto::longrunning::{operation, CancelOperationRequest, Operation};
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{
    command, Action, Command as ReCommand, Directory, ExecuteRequest, ExecuteResponse, WaitExecutionRequest,
};
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;
use tonic::transport::Channel;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

/// Starts `memobuild ARGS`; with `listening`, waits for the gRPC address it logs.
fn spawn(args: &[&str], listening: bool) -> (Process, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memobuild")).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut address = String::new();
    if listening {
        address = loop {
            let line = lines.next().expect("exited before listening").unwrap();
            if line.contains("memobuild listening") {
                break line.rsplit("address=").next().unwrap().trim().to_string();
            }
        };
    }
    std::thread::spawn(move || for _ in lines {});
    (Process(child), address)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    dir: tempfile::TempDir,
    _cas: Process,
    cas_address: String,
    scheduler: Process,
    scheduler_port: u16,
    workers: Vec<Process>,
}

impl Cluster {
    fn start(workers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cas_state = dir.path().join("cas");
        let (cas, cas_address) =
            spawn(&["cas", "--listen", "127.0.0.1:0", "--state-dir", cas_state.to_str().unwrap()], true);
        let scheduler_port = free_port();
        let scheduler = Self::scheduler(dir.path(), &cas_address, scheduler_port);
        let workers = (0..workers).map(|i| Self::worker(dir.path(), i, &cas_address, scheduler_port)).collect();
        Cluster { dir, _cas: cas, cas_address, scheduler, scheduler_port, workers }
    }

    fn scheduler(dir: &Path, cas: &str, port: u16) -> Process {
        let state = dir.join("scheduler");
        let listen = format!("127.0.0.1:{port}");
        let cas = format!("grpc://{cas}");
        let args = [
            "scheduler",
            "--listen",
            &listen,
            "--cas",
            &cas,
            "--state-dir",
            state.to_str().unwrap(),
            "--lease-seconds",
            "3",
        ];
        spawn(&args, true).0
    }

    fn worker(dir: &Path, index: usize, cas: &str, port: u16) -> Process {
        let state = Self::worker_dir(dir, index);
        let scheduler = format!("grpc://127.0.0.1:{port}");
        let cas = format!("grpc://{cas}");
        let args = [
            "worker",
            "--scheduler",
            &scheduler,
            "--cas",
            &cas,
            "--state-dir",
            state.to_str().unwrap(),
            "--slots",
            "1",
        ];
        spawn(&args, false).0
    }

    fn worker_dir(dir: &Path, index: usize) -> PathBuf {
        dir.join(format!("worker-{index}"))
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.scheduler_port)).unwrap().connect_lazy()
    }

    /// Which worker is running an action right now.
    fn busy_worker(&self) -> Option<usize> {
        (0..self.workers.len()).find(|i| {
            // Action directories are reused: one with an input root is in use.
            std::fs::read_dir(Self::worker_dir(self.dir.path(), *i).join("worker/actions"))
                .map(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().join("root").exists())))
                .unwrap_or(false)
        })
    }
}

/// Uploads an action running `sh -c SCRIPT` that writes the file `out`.
async fn upload_action(cas: &GrpcStore, script: &str) -> Digest {
    async fn put<M: Message>(cas: &GrpcStore, message: &M) -> Digest {
        let data = Bytes::from(message.encode_to_vec());
        let digest = Digest::of(DigestFunction::Sha256, &data);
        cas.put_bytes(&digest, data).await.unwrap();
        digest
    }
    let command = ReCommand {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: vec!["out".into()],
        ..Default::default()
    };
    let command = put(cas, &command).await;
    let root = put(cas, &Directory::default()).await;
    put(
        cas,
        &Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        },
    )
    .await
}

/// Starts an execution; returns the operation name.
async fn start(channel: &Channel, action: Digest) -> String {
    let request =
        ExecuteRequest { action_digest: Some(action.to_proto()), skip_cache_lookup: true, ..Default::default() };
    let mut stream = ExecutionClient::new(channel.clone()).execute(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap().name
}

/// Waits for the operation to finish, riding out scheduler restarts.
async fn wait(channel: &Channel, name: &str) -> ExecuteResponse {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "operation {name} did not finish");
        let request = WaitExecutionRequest { name: name.to_string() };
        if let Ok(response) = ExecutionClient::new(channel.clone()).wait_execution(request).await {
            let mut stream = response.into_inner();
            while let Ok(Some(operation)) = stream.message().await {
                if let Some(response) = finished(&operation) {
                    return response;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn finished(operation: &Operation) -> Option<ExecuteResponse> {
    match &operation.result {
        Some(operation::Result::Response(any)) if operation.done => {
            Some(ExecuteResponse::decode(&any.value[..]).unwrap())
        }
        _ => None,
    }
}

async fn output_of(cas: &GrpcStore, response: &ExecuteResponse) -> String {
    let result = response.result.as_ref().unwrap_or_else(|| panic!("no result: {response:?}"));
    assert_eq!(result.exit_code, 0, "{response:?}");
    let file = result.output_files.iter().find(|f| f.path == "out").unwrap();
    let digest = Digest::from_proto(DigestFunction::Sha256, file.digest.as_ref().unwrap()).unwrap();
    String::from_utf8(cas.get_bytes(&digest).await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn an_action_survives_its_worker_being_killed() {
    let mut cluster = Cluster::start(2);
    let cas = GrpcStore::connect(&format!("grpc://{}", cluster.cas_address), "").unwrap();
    let channel = cluster.channel().await;
    let action = upload_action(&cas, "sleep 2; echo survived > out").await;
    let name = start(&channel, action).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        if let Some(worker) = cluster.busy_worker() {
            break worker;
        }
        assert!(Instant::now() < deadline, "no worker picked the action up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let survivor = cluster.workers[1 - victim].0.id();
    cluster.workers[victim].kill();
    let response = wait(&channel, &name).await;
    assert_eq!(output_of(&cas, &response).await, "survived\n");
    let ran_on = &response.result.as_ref().unwrap().execution_metadata.as_ref().unwrap().worker;
    assert!(ran_on.ends_with(&format!(":{survivor}")), "ran on {ran_on}, not on the surviving worker {survivor}");
}

#[tokio::test]
async fn a_build_survives_the_scheduler_being_killed() {
    let mut cluster = Cluster::start(2);
    let cas = GrpcStore::connect(&format!("grpc://{}", cluster.cas_address), "").unwrap();
    let channel = cluster.channel().await;
    let mut names = Vec::new();
    for i in 0..6 {
        let action = upload_action(&cas, &format!("sleep 1; echo {i} > out")).await;
        names.push(start(&channel, action).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.scheduler.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.scheduler = Cluster::scheduler(cluster.dir.path(), &cluster.cas_address, cluster.scheduler_port);
    for (i, name) in names.iter().enumerate() {
        let response = wait(&channel, name).await;
        assert_eq!(output_of(&cas, &response).await, format!("{i}\n"));
    }
}

#[tokio::test]
async fn cancel_stops_a_running_action() {
    let cluster = Cluster::start(1);
    let cas = Arc::new(GrpcStore::connect(&format!("grpc://{}", cluster.cas_address), "").unwrap());
    let channel = cluster.channel().await;
    let action = upload_action(&cas, "sleep 60; echo never > out").await;
    let name = start(&channel, action).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.busy_worker().is_none() {
        assert!(Instant::now() < deadline, "the action never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    OperationsClient::new(channel.clone())
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .unwrap();
    let response = wait(&channel, &name).await;
    assert_eq!(response.status.unwrap().code, tonic::Code::Cancelled as i32);
    // The worker stops the process and cleans up well before the sleep ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.busy_worker().is_some() {
        assert!(Instant::now() < deadline, "the cancelled action kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
