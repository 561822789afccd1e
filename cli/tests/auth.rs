//! Authentication and authorization on the real `memobuild server` process:
//! a table of (principal, capability, instance, RPC) cases, token expiry
//! and revocation by rewriting the principals file, mTLS with a test CA, and
//! workers that try to take what is not theirs.
#![allow(clippy::unwrap_used)]

#[path = "common/bazel_workspace.rs"]
mod bazel_workspace;

#[path = "common/process_cluster.rs"]
mod process_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bazel_workspace::copy_workspace;
use memobuild_cas::{grpc_channel_with, ClientCredentials, GrpcChannel};
use memobuild_proto::build::build_service_client::BuildServiceClient;
use memobuild_proto::build::{BuildRequest, ListBuildsRequest, RegistryCredential, Secret};
use memobuild_proto::bytestream::byte_stream_client::ByteStreamClient;
use memobuild_proto::bytestream::{ReadRequest, WriteRequest};
use memobuild_proto::longrunning::operations_client::OperationsClient;
use memobuild_proto::longrunning::{GetOperationRequest, ListOperationsRequest};
use memobuild_proto::reapi::action_cache_client::ActionCacheClient;
use memobuild_proto::reapi::capabilities_client::CapabilitiesClient;
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{
    batch_update_blobs_request, Action, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    Command as ReapiCommand, Directory, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, FileNode,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest, UpdateActionResultRequest,
    WaitExecutionRequest,
};
use memobuild_proto::worker::worker_api_client::WorkerApiClient;
use memobuild_proto::worker::{scheduler_message, worker_message, Finished, Hello, SchedulerMessage, WorkerMessage};
use memobuild_proto::{Digest, DigestFunction};
use process_cluster::RoleProcess;
use prost::Message;
use tonic::{Code, Status};

const A: &str = "team-a/x";
const B: &str = "team-b/x";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `[[token]]` of the principals file.
struct TokenLine {
    principal: &'static str,
    token: String,
    capabilities: &'static [&'static str],
    instances: Option<&'static [&'static str]>,
    expires: Option<String>,
}

impl TokenLine {
    fn new(principal: &'static str, capabilities: &'static [&'static str]) -> Self {
        TokenLine { principal, token: format!("tok-{principal}"), capabilities, instances: None, expires: None }
    }

    fn instances(mut self, instances: &'static [&'static str]) -> Self {
        self.instances = Some(instances);
        self
    }

    fn text(&self) -> String {
        let quote = |list: &[&str]| list.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            "[[token]]\nprincipal = {:?}\nsha256 = \"{}\"\ncapabilities = [{}]\n",
            self.principal,
            hex(&memobuild_auth::hash_token(&self.token)),
            quote(self.capabilities)
        );
        if let Some(instances) = self.instances {
            text.push_str(&format!("instances = [{}]\n", quote(instances)));
        }
        if let Some(expires) = &self.expires {
            text.push_str(&format!("expires = {expires}\n"));
        }
        text
    }
}

/// A principals file of `lines`.
fn principals_file(lines: &[TokenLine]) -> String {
    lines.iter().map(TokenLine::text).collect::<Vec<_>>().join("\n")
}

/// Unix seconds as an RFC 3339 UTC time.
fn rfc3339(unix: i64) -> String {
    let (days, seconds) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", seconds / 3600, seconds % 3600 / 60, seconds % 60)
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A `memobuild server` process with `[auth]` (and `extra` config), no
/// worker: executed actions stay queued unless a test worker takes them.
struct AuthServer {
    process: RoleProcess,
    address: String,
    principals: PathBuf,
    dir: tempfile::TempDir,
}

impl AuthServer {
    fn start(principals_text: &str, extra: &str) -> Self {
        Self::start_logged(principals_text, extra, None)
    }

    /// [`AuthServer::start`] with `MEMOBUILD_LOG` set to `filter`.
    fn start_logged(principals_text: &str, extra: &str, filter: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let principals = dir.path().join("principals.toml");
        std::fs::write(&principals, principals_text).unwrap();
        let config = dir.path().join("server.toml");
        let text = format!(
            "[cas]\ntype = \"memory\"\n[action_cache]\ntype = \"memory\"\n\
             [scheduler]\nstore = {{ type = \"sqlite\", path = {:?} }}\n\
             [auth]\nprincipals_file = {:?}\n{extra}",
            dir.path().join("scheduler.db"),
            principals,
        );
        std::fs::write(&config, text).unwrap();
        let args = ["server", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"];
        let mut process = RoleProcess::spawn_with_env(&args, &[], dir.path().join("server.log"), filter);
        let address = process.listening_address();
        AuthServer { process, address, principals, dir }
    }

    fn endpoint(&self) -> String {
        format!("grpc://{}", self.address)
    }

    fn channel(&self, token: Option<&str>) -> GrpcChannel {
        let credentials = ClientCredentials { token: token.map(str::to_string), ..Default::default() };
        grpc_channel_with(&self.endpoint(), &credentials).unwrap()
    }
}

/// What the table's RPCs need to exist.
struct Fixtures {
    blob: Digest,
    tree: Digest,
    action: Digest,
    /// A queued operation in A and one in B.
    operations: [(String, String); 2],
    /// An action with a cached result in A and in B.
    cached: Digest,
}

async fn upload(channel: &GrpcChannel, instance: &str, blobs: &[Vec<u8>]) -> Vec<Digest> {
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(DigestFunction::Sha256, b)).collect();
    let requests = blobs
        .iter()
        .zip(&digests)
        .map(|(data, digest)| batch_update_blobs_request::Request {
            digest: Some(digest.to_proto()),
            data: data.clone(),
            compressor: 0,
        })
        .collect();
    let request = BatchUpdateBlobsRequest { instance_name: instance.into(), requests, ..Default::default() };
    let response = ContentAddressableStorageClient::new(channel.clone()).batch_update_blobs(request).await.unwrap();
    for r in response.into_inner().responses {
        assert_eq!(r.status.unwrap_or_default().code, 0);
    }
    digests
}

async fn execute(channel: &GrpcChannel, instance: &str, action: &Digest) -> Result<String, Status> {
    let request = ExecuteRequest {
        instance_name: instance.into(),
        action_digest: Some(action.to_proto()),
        skip_cache_lookup: true,
        ..Default::default()
    };
    let mut stream = ExecutionClient::new(channel.clone()).execute(request).await?.into_inner();
    let operation = stream.message().await?.ok_or_else(|| Status::internal("no operation"))?;
    Ok(operation.name)
}

/// An action running `argv`, uploaded with its command and input root.
async fn action(channel: &GrpcChannel, argv: &[&str]) -> (Digest, Digest) {
    let blob = b"auth test input".to_vec();
    let blob_digest = Digest::of(DigestFunction::Sha256, &blob);
    let tree = Directory {
        files: vec![FileNode { name: "input.txt".into(), digest: Some(blob_digest.to_proto()), ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    let command =
        ReapiCommand { arguments: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }.encode_to_vec();
    let digests = upload(channel, "", &[blob, tree, command]).await;
    let action = Action {
        command_digest: Some(digests[2].to_proto()),
        input_root_digest: Some(digests[1].to_proto()),
        ..Default::default()
    }
    .encode_to_vec();
    let action_digest = upload(channel, "", &[action]).await[0];
    (action_digest, digests[1])
}

async fn fixtures(admin: &GrpcChannel) -> Fixtures {
    let (action, tree) = action(admin, &["/bin/true"]).await;
    let blob = Digest::of(DigestFunction::Sha256, b"auth test input");
    let (cached, _) = self::action(admin, &["/bin/echo", "cached"]).await;
    for instance in [A, B] {
        let request = UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(cached.to_proto()),
            action_result: Some(ActionResult::default()),
            ..Default::default()
        };
        ActionCacheClient::new(admin.clone()).update_action_result(request).await.unwrap();
    }
    let in_a = execute(admin, A, &action).await.unwrap();
    let in_b = execute(admin, B, &action).await.unwrap();
    Fixtures { blob, tree, action, operations: [(A.into(), in_a), (B.into(), in_b)], cached }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    FindMissingBlobs,
    BatchReadBlobs,
    BatchUpdateBlobs,
    ByteStreamRead,
    ByteStreamWrite,
    GetTree,
    GetActionResult,
    UpdateActionResult,
    Execute,
    WaitExecution,
    GetOperation,
    ListBuilds,
    WorkerSession,
    GetCapabilities,
}

impl Rpc {
    const ALL: [Rpc; 14] = [
        Rpc::FindMissingBlobs,
        Rpc::BatchReadBlobs,
        Rpc::BatchUpdateBlobs,
        Rpc::ByteStreamRead,
        Rpc::ByteStreamWrite,
        Rpc::GetTree,
        Rpc::GetActionResult,
        Rpc::UpdateActionResult,
        Rpc::Execute,
        Rpc::WaitExecution,
        Rpc::GetOperation,
        Rpc::ListBuilds,
        Rpc::WorkerSession,
        Rpc::GetCapabilities,
    ];

    /// The capability the call needs (none: any authenticated caller).
    fn capability(self) -> Option<&'static str> {
        Some(match self {
            Rpc::FindMissingBlobs | Rpc::BatchReadBlobs | Rpc::ByteStreamRead | Rpc::GetTree => "read",
            Rpc::GetActionResult => "read",
            Rpc::BatchUpdateBlobs | Rpc::ByteStreamWrite => "write",
            Rpc::UpdateActionResult => "ac-write",
            Rpc::Execute | Rpc::WaitExecution | Rpc::GetOperation => "execute",
            Rpc::ListBuilds => "build",
            Rpc::WorkerSession => "worker",
            Rpc::GetCapabilities => return None,
        })
    }

    /// Calls that name no instance.
    fn instance_free(self) -> bool {
        matches!(self, Rpc::WorkerSession | Rpc::GetCapabilities)
    }

    /// Calls on another tenant's named thing: NOT_FOUND, not PERMISSION_DENIED.
    fn names_a_tenants_thing(self) -> bool {
        matches!(self, Rpc::WaitExecution | Rpc::GetOperation)
    }

    async fn call(self, channel: &GrpcChannel, instance: &str, f: &Fixtures, case: usize) -> Result<(), Status> {
        let cas = || ContentAddressableStorageClient::new(channel.clone());
        let operation = || f.operations.iter().find(|(i, _)| i == instance).unwrap().1.clone();
        match self {
            Rpc::FindMissingBlobs => {
                let request = FindMissingBlobsRequest {
                    instance_name: instance.into(),
                    blob_digests: vec![f.blob.to_proto()],
                    ..Default::default()
                };
                let missing = cas().find_missing_blobs(request).await?.into_inner().missing_blob_digests;
                assert!(missing.is_empty());
            }
            Rpc::BatchReadBlobs => {
                let request = BatchReadBlobsRequest {
                    instance_name: instance.into(),
                    digests: vec![f.blob.to_proto()],
                    ..Default::default()
                };
                let responses = cas().batch_read_blobs(request).await?.into_inner().responses;
                assert_eq!(responses[0].data, b"auth test input");
            }
            Rpc::BatchUpdateBlobs => {
                let data = format!("batch blob of case {case}").into_bytes();
                let digest = Digest::of(DigestFunction::Sha256, &data);
                let request = BatchUpdateBlobsRequest {
                    instance_name: instance.into(),
                    requests: vec![batch_update_blobs_request::Request {
                        digest: Some(digest.to_proto()),
                        data,
                        compressor: 0,
                    }],
                    ..Default::default()
                };
                let responses = cas().batch_update_blobs(request).await?.into_inner().responses;
                assert_eq!(responses[0].status.clone().unwrap_or_default().code, 0);
            }
            Rpc::ByteStreamRead => {
                let request = ReadRequest {
                    resource_name: format!("{instance}/blobs/{}/{}", f.blob.hex(), f.blob.size()),
                    ..Default::default()
                };
                let mut stream = ByteStreamClient::new(channel.clone()).read(request).await?.into_inner();
                let mut data = Vec::new();
                while let Some(message) = stream.message().await? {
                    data.extend(message.data);
                }
                assert_eq!(data, b"auth test input");
            }
            Rpc::ByteStreamWrite => {
                let data = format!("bytestream blob of case {case}").into_bytes();
                let digest = Digest::of(DigestFunction::Sha256, &data);
                let request = WriteRequest {
                    resource_name: format!(
                        "{instance}/uploads/{}/blobs/{}/{}",
                        uuid::Uuid::new_v4(),
                        digest.hex(),
                        digest.size()
                    ),
                    write_offset: 0,
                    finish_write: true,
                    data: data.clone(),
                };
                let response = ByteStreamClient::new(channel.clone()).write(futures::stream::iter([request])).await?;
                assert_eq!(response.into_inner().committed_size, data.len() as i64);
            }
            Rpc::GetTree => {
                let request = GetTreeRequest {
                    instance_name: instance.into(),
                    root_digest: Some(f.tree.to_proto()),
                    ..Default::default()
                };
                let mut stream = cas().get_tree(request).await?.into_inner();
                let page = stream.message().await?.unwrap();
                assert_eq!(page.directories.len(), 1);
            }
            Rpc::GetActionResult => {
                let request = GetActionResultRequest {
                    instance_name: instance.into(),
                    action_digest: Some(f.cached.to_proto()),
                    ..Default::default()
                };
                ActionCacheClient::new(channel.clone()).get_action_result(request).await?;
            }
            Rpc::UpdateActionResult => {
                let request = UpdateActionResultRequest {
                    instance_name: instance.into(),
                    action_digest: Some(
                        Digest::of(DigestFunction::Sha256, format!("case {case}").as_bytes()).to_proto(),
                    ),
                    action_result: Some(ActionResult { exit_code: 0, ..Default::default() }),
                    ..Default::default()
                };
                ActionCacheClient::new(channel.clone()).update_action_result(request).await?;
            }
            Rpc::Execute => {
                execute(channel, instance, &f.action).await?;
            }
            Rpc::WaitExecution => {
                let request = WaitExecutionRequest { name: operation() };
                let mut stream = ExecutionClient::new(channel.clone()).wait_execution(request).await?.into_inner();
                let first = stream.message().await?.unwrap();
                assert_eq!(first.name, operation());
            }
            Rpc::GetOperation => {
                let request = GetOperationRequest { name: operation() };
                let got = OperationsClient::new(channel.clone()).get_operation(request).await?.into_inner();
                assert_eq!(got.name, operation());
            }
            Rpc::ListBuilds => {
                let request = ListBuildsRequest { instance_name: instance.into(), limit: 0 };
                BuildServiceClient::new(channel.clone()).list_builds(request).await?;
            }
            Rpc::WorkerSession => {
                let (_sender, _stream) = session(channel, &format!("table-{case}"), Vec::new()).await?;
            }
            Rpc::GetCapabilities => {
                let request = GetCapabilitiesRequest { instance_name: instance.into() };
                CapabilitiesClient::new(channel.clone()).get_capabilities(request).await?;
            }
        }
        Ok(())
    }
}

type SessionStream = tonic::Streaming<SchedulerMessage>;

/// Opens a worker session announcing `name` and `running`; the sender
/// carries what the worker says next.
async fn session(
    channel: &GrpcChannel,
    name: &str,
    running: Vec<String>,
) -> Result<(tokio::sync::mpsc::Sender<WorkerMessage>, SessionStream), Status> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let hello = Hello { name: name.into(), slots: 1, properties: Vec::new(), running };
    sender.send(WorkerMessage { kind: Some(worker_message::Kind::Hello(hello)) }).await.unwrap();
    let stream = WorkerApiClient::new(channel.clone())
        .session(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((sender, stream))
}

/// One row of principals in the table.
struct Who {
    name: &'static str,
    token: Option<String>,
    /// The capabilities it effectively holds (admin and worker expanded).
    effective: &'static [&'static str],
    /// Sees only team-a/...
    team_a_only: bool,
    authenticated: bool,
}

impl Who {
    fn expected(&self, rpc: Rpc, instance: &str) -> Code {
        if !self.authenticated {
            return Code::Unauthenticated;
        }
        if let Some(capability) = rpc.capability() {
            if !self.effective.contains(&capability) {
                return Code::PermissionDenied;
            }
        }
        if rpc.instance_free() || !self.team_a_only || instance.starts_with("team-a/") {
            return Code::Ok;
        }
        if rpc.names_a_tenants_thing() {
            Code::NotFound
        } else {
            Code::PermissionDenied
        }
    }
}

const ALL_CAPABILITIES: &[&str] = &["read", "write", "ac-write", "execute", "build", "admin", "worker"];

fn table_principals() -> (String, Vec<Who>) {
    let mut expired = TokenLine::new("expired", &["admin"]);
    expired.expires = Some("2001-01-01T00:00:00Z".into());
    let lines = [
        TokenLine::new("admin", &["admin"]),
        expired,
        TokenLine::new("reader", &["read"]).instances(&["team-a"]),
        TokenLine::new("writer", &["read", "write"]).instances(&["team-a"]),
        TokenLine::new("ac-writer", &["ac-write"]).instances(&["team-a"]),
        TokenLine::new("executor", &["execute"]).instances(&["team-a"]),
        TokenLine::new("builder", &["build"]).instances(&["team-a"]),
        TokenLine::new("worker", &["worker"]),
        TokenLine::new("tenant-admin", &["admin"]).instances(&["team-a"]),
    ];
    let text = principals_file(&lines);
    let who = |name: &'static str, effective: &'static [&'static str], team_a_only: bool| Who {
        name,
        token: Some(format!("tok-{name}")),
        effective,
        team_a_only,
        authenticated: true,
    };
    let principals = vec![
        Who { name: "anonymous", token: None, effective: &[], team_a_only: false, authenticated: false },
        Who {
            name: "bogus",
            token: Some("not-a-token".into()),
            effective: &[],
            team_a_only: false,
            authenticated: false,
        },
        Who { authenticated: false, ..who("expired", ALL_CAPABILITIES, false) },
        who("admin", ALL_CAPABILITIES, false),
        who("reader", &["read"], true),
        who("writer", &["read", "write"], true),
        who("ac-writer", &["ac-write"], true),
        who("executor", &["execute"], true),
        who("builder", &["build"], true),
        who("worker", &["worker", "read", "write", "ac-write"], false),
        who("tenant-admin", ALL_CAPABILITIES, true),
    ];
    (text, principals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_capability_and_instance_for_every_principal() {
    let (text, principals) = table_principals();
    let server = AuthServer::start(&text, "");
    let admin = server.channel(Some("tok-admin"));
    let f = fixtures(&admin).await;
    let mut cases = 0;
    let mut failures = Vec::new();
    for who in &principals {
        let channel = server.channel(who.token.as_deref());
        for rpc in Rpc::ALL {
            for instance in [A, B] {
                cases += 1;
                let expected = who.expected(rpc, instance);
                let outcome = rpc.call(&channel, instance, &f, cases).await;
                let (code, message) = match &outcome {
                    Ok(()) => (Code::Ok, String::new()),
                    Err(status) => (status.code(), status.message().to_string()),
                };
                let explained = match code {
                    Code::PermissionDenied => message.contains(&format!("{:?}", who.name)),
                    Code::Unauthenticated => !message.is_empty(),
                    _ => true,
                };
                if code != expected || !explained {
                    failures.push(format!(
                        "{} {rpc:?} in {instance}: expected {expected:?}, got {code:?} {message:?}",
                        who.name
                    ));
                }
            }
        }
    }
    assert!(cases >= 300, "{cases} cases");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));

    // ListOperations shows a tenant its own operations only.
    let list = |token: &'static str| {
        let channel = server.channel(Some(token));
        async move {
            let request = ListOperationsRequest { page_size: 1000, ..Default::default() };
            let response = OperationsClient::new(channel).list_operations(request).await.unwrap().into_inner();
            response.operations.into_iter().map(|o| o.name).collect::<Vec<_>>()
        }
    };
    let seen_by_tenant = list("tok-executor").await;
    assert!(seen_by_tenant.contains(&f.operations[0].1), "{seen_by_tenant:?}");
    assert!(!seen_by_tenant.contains(&f.operations[1].1), "team-b's operation listed to team-a: {seen_by_tenant:?}");
    let seen_by_admin = list("tok-admin").await;
    assert!(seen_by_admin.contains(&f.operations[1].1));
}

async fn find_missing(channel: &GrpcChannel) -> Result<(), Status> {
    let request = FindMissingBlobsRequest { instance_name: A.into(), ..Default::default() };
    ContentAddressableStorageClient::new(channel.clone()).find_missing_blobs(request).await.map(|_| ())
}

/// Calls until `done` holds for the outcome or 10 s pass; returns it.
async fn poll_until(channel: &GrpcChannel, done: impl Fn(&Result<(), Status>) -> bool) -> Result<(), Status> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = find_missing(channel).await;
        if done(&outcome) || Instant::now() > deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_and_an_expired_one_too() {
    let mut soon = TokenLine::new("short-lived", &["read"]);
    soon.expires = Some(rfc3339(now_unix() + 3));
    let ci = TokenLine::new("ci", &["read"]);
    let server = AuthServer::start(&format!("{}\n{}", ci.text(), soon.text()), "");
    let ci_channel = server.channel(Some("tok-ci"));
    let soon_channel = server.channel(Some("tok-short-lived"));
    find_missing(&ci_channel).await.unwrap();
    find_missing(&soon_channel).await.unwrap();

    // Revoke ci and add a new token by rewriting the file.
    let fresh = TokenLine::new("fresh", &["read"]);
    std::fs::write(&server.principals, format!("{}\n{}", fresh.text(), soon.text())).unwrap();
    let outcome = poll_until(&ci_channel, |o| o.is_err()).await;
    let status = outcome.expect_err("the revoked token still works after 10 s");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("unknown or revoked"), "{}", status.message());
    find_missing(&server.channel(Some("tok-fresh"))).await.unwrap();

    // The short-lived token expires on its own.
    let status = poll_until(&soon_channel, |o| o.is_err()).await.expect_err("the token did not expire");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("\"short-lived\" expired"), "{}", status.message());

    // A file that does not parse keeps the previous principals, and says so.
    std::fs::write(&server.principals, "[[token]]\nthis is not toml").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    find_missing(&server.channel(Some("tok-fresh"))).await.unwrap();
    assert!(server.process.log_text().contains("the principals file was not reloaded; keeping the previous one"));
}

/// Waits for the next Assign on a worker session.
async fn next_assignment(stream: &mut SessionStream) -> String {
    let deadline = Duration::from_secs(20);
    loop {
        let message = tokio::time::timeout(deadline, stream.message()).await.expect("no assignment").unwrap().unwrap();
        if let Some(scheduler_message::Kind::Assign(assign)) = message.kind {
            return assign.operation;
        }
    }
}

/// Fails when the worker session is handed an action within half a second.
async fn assert_not_assigned(stream: &mut SessionStream, what: &str) {
    let handed = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(
        !matches!(&handed, Ok(Ok(Some(SchedulerMessage { kind: Some(scheduler_message::Kind::Assign(_)) })))),
        "{what}: {handed:?}"
    );
}

fn finished(operation: &str, exit_code: i32) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Finished(Finished {
            operation: operation.into(),
            result: Some(ActionResult { exit_code, ..Default::default() }),
            status: None,
        })),
    }
}

async fn operation_state(channel: &GrpcChannel, name: &str) -> (bool, i32, Option<i32>) {
    let request = GetOperationRequest { name: name.into() };
    let operation = OperationsClient::new(channel.clone()).get_operation(request).await.unwrap().into_inner();
    let stage = ExecuteOperationMetadata::decode(operation.metadata.unwrap().value.as_slice()).unwrap().stage;
    let exit = match operation.result {
        Some(memobuild_proto::longrunning::operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).unwrap().result.map(|r| r.exit_code)
        }
        _ => None,
    };
    (operation.done, stage, exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_worker_can_neither_finish_nor_steal_an_operation() {
    let text = principals_file(&[
        TokenLine::new("admin", &["admin"]),
        TokenLine::new("worker-1", &["worker"]),
        TokenLine::new("worker-2", &["worker"]),
        TokenLine::new("ci", &["execute", "read", "write"]),
    ]);
    let server = AuthServer::start(&text, "");
    let admin = server.channel(Some("tok-admin"));
    let (action, _) = action(&admin, &["/bin/true"]).await;

    // A client without the worker capability cannot open a session at all.
    let status = session(&server.channel(Some("tok-ci")), "box", Vec::new()).await.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let (honest, mut honest_stream) = session(&server.channel(Some("tok-worker-1")), "box", Vec::new()).await.unwrap();
    let name = execute(&server.channel(Some("tok-ci")), "", &action).await.unwrap();
    assert_eq!(next_assignment(&mut honest_stream).await, name);

    // Another worker principal takes the same worker name, claims the
    // operation as running, and reports it finished with its own result.
    let (forger, mut forged_stream) =
        session(&server.channel(Some("tok-worker-2")), "box", vec![name.clone()]).await.unwrap();
    forger.send(finished(&name, 99)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (done, stage, _) = operation_state(&admin, &name).await;
    assert!(!done, "the forged worker finished an operation it was never given");
    assert_eq!(stage, memobuild_proto::reapi::execution_stage::Value::Executing as i32);
    assert_not_assigned(&mut forged_stream, "the forged worker was handed work").await;

    // The worker that holds it is still connected, and its result counts.
    honest.send(finished(&name, 0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (done, _, exit) = operation_state(&admin, &name).await;
        if done {
            assert_eq!(exit, Some(0), "the result is not the assigned worker's");
            break;
        }
        assert!(Instant::now() < deadline, "the assigned worker's result was not taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((honest, forger));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_handed_only_actions_of_its_principals_instances() {
    let text = principals_file(&[
        TokenLine::new("admin", &["admin"]),
        TokenLine::new("worker-a", &["worker"]).instances(&["team-a"]),
        TokenLine::new("worker-any", &["worker"]),
    ]);
    let server = AuthServer::start(&text, "");
    let admin = server.channel(Some("tok-admin"));
    let (action, _) = action(&admin, &["/bin/true"]).await;
    let (team_a, mut team_a_stream) = session(&server.channel(Some("tok-worker-a")), "box", Vec::new()).await.unwrap();

    // With only team-a's worker registered, team-b's action fails at once, naming its instance.
    let status = execute(&admin, B, &action).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&format!("instance {B:?}")), "{}", status.message());
    let in_a = execute(&admin, A, &action).await.unwrap();
    assert_eq!(next_assignment(&mut team_a_stream).await, in_a);
    team_a.send(finished(&in_a, 0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !operation_state(&admin, &in_a).await.0 {
        assert!(Instant::now() < deadline, "team-a's worker's result was not taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both free, team-b's action goes to the worker that may take it
    // (team-a's would win the tie on its name).
    let (_any, mut any_stream) = session(&server.channel(Some("tok-worker-any")), "box", Vec::new()).await.unwrap();
    let in_b = execute(&admin, B, &action).await.unwrap();
    assert_eq!(next_assignment(&mut any_stream).await, in_b);
    assert_not_assigned(&mut team_a_stream, "team-a's worker was handed team-b's action").await;
}

/// A test CA, and certificates it signs.
struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, issuer: rcgen::Issuer::new(params, key) }
    }

    /// Writes `NAME.pem` and `NAME.key` signed by this CA; returns their paths.
    fn sign(&self, dir: &Path, file: &str, common_name: &str, sans: &[&str], client: bool) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![match client {
            true => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            false => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(format!("{file}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

/// A TLS server with a test CA; what its clients need.
pub struct TlsSetup {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub client: (PathBuf, PathBuf),
    pub stranger: (PathBuf, PathBuf),
    pub rogue: (PathBuf, PathBuf),
    pub principals: String,
    pub tls_config: String,
}

pub fn tls_setup() -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("memobuild test CA");
    let (server_cert, server_key) = ca.sign(dir.path(), "server", "memobuild", &["localhost", "127.0.0.1"], false);
    let client = ca.sign(dir.path(), "client", "ci-client", &[], true);
    let stranger = ca.sign(dir.path(), "stranger", "someone-else", &["unknown.example"], true);
    let rogue = TestCa::new("rogue CA").sign(dir.path(), "rogue", "ci-client", &[], true);
    let ca_path = ca.write(dir.path(), "ca");
    let principals = format!(
        "{}\n[[certificate]]\nname = \"ci-client\"\nprincipal = \"ci-by-certificate\"\ncapabilities = [\"read\", \"write\", \"ac-write\", \"execute\"]\n",
        TokenLine::new("ci", &["read", "write", "ac-write", "execute"]).text()
    );
    let tls_config = format!("[tls]\ncert = {server_cert:?}\nkey = {server_key:?}\nclient_ca = {ca_path:?}\n");
    TlsSetup { dir, ca: ca_path, client, stranger, rogue, principals, tls_config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_maps_a_client_certificate_to_a_principal() {
    let tls = tls_setup();
    let server = AuthServer::start(&tls.principals, &tls.tls_config);
    let endpoint = format!("grpcs://localhost:{}", server.address.rsplit(':').next().unwrap());
    let connect = |cert: Option<&(PathBuf, PathBuf)>, token: Option<&str>| {
        let credentials = ClientCredentials {
            token: token.map(str::to_string),
            tls_ca: Some(tls.ca.clone()),
            client_cert: cert.map(|c| c.0.clone()),
            client_key: cert.map(|c| c.1.clone()),
        };
        grpc_channel_with(&endpoint, &credentials).unwrap()
    };

    // The CA's client certificate is principal ci-by-certificate.
    find_missing(&connect(Some(&tls.client), None)).await.unwrap();
    let request = GetCapabilitiesRequest { instance_name: String::new() };
    CapabilitiesClient::new(connect(Some(&tls.client), None)).get_capabilities(request).await.unwrap();
    let status = BuildServiceClient::new(connect(Some(&tls.client), None))
        .list_builds(ListBuildsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("\"ci-by-certificate\" lacks the build capability"), "{}", status.message());

    // A certificate of the same CA that the file does not name.
    let status = find_missing(&connect(Some(&tls.stranger), None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("someone-else"), "{}", status.message());

    // Over TLS without a certificate: a token still works, nothing does not.
    find_missing(&connect(None, Some("tok-ci"))).await.unwrap();
    assert_eq!(find_missing(&connect(None, None)).await.unwrap_err().code(), Code::Unauthenticated);

    // A certificate of another CA fails the handshake; plain text gets nowhere.
    assert!(find_missing(&connect(Some(&tls.rogue), None)).await.is_err());
    let plain = grpc_channel_with(&format!("grpc://{}", server.address), &ClientCredentials::default()).unwrap();
    assert!(find_missing(&plain).await.is_err());

    // The CLI: grpcs://, --tls-ca and a client certificate, or a token.
    let cli = |extra: &[&str], token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        command.args(["remote", "ls", "--endpoint", &endpoint, "--tls-ca", tls.ca.to_str().unwrap()]).args(extra);
        command.env_remove("MEMOBUILD_TOKEN");
        if let Some(token) = token {
            command.env("MEMOBUILD_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, _, stderr) = cli(&[], None);
    assert!(!ok && stderr.contains("requires credentials"), "{stderr}");
    let (ok, _, stderr) = cli(&[], Some("tok-ci"));
    assert!(!ok && stderr.contains("\"ci\" lacks the build capability"), "{stderr}");
    let client =
        ["--tls-client-cert", tls.client.0.to_str().unwrap(), "--tls-client-key", tls.client.1.to_str().unwrap()];
    let (ok, _, stderr) = cli(&client, None);
    assert!(!ok && stderr.contains("\"ci-by-certificate\" lacks the build capability"), "{stderr}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_a_token_from_the_environment_or_a_file() {
    let text = principals_file(&[TokenLine::new("builder", &["build"]).instances(&["team-a"])]);
    let server = AuthServer::start(&text, "");
    let token_file = server.dir.path().join("token");
    std::fs::write(&token_file, "tok-builder\n").unwrap();
    let ls = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        command.args(["remote", "ls", "--endpoint", &server.endpoint()]).args(args).env_remove("MEMOBUILD_TOKEN");
        if let Some(token) = token {
            command.env("MEMOBUILD_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, text) = ls(&["--instance", "team-a/ci"], Some("tok-builder"));
    assert!(ok && text.contains("BUILD ID"), "{text}");
    let (ok, text) = ls(&["--instance", "team-a/ci", "--token-file", token_file.to_str().unwrap()], None);
    assert!(ok && text.contains("BUILD ID"), "{text}");
    let (ok, text) = ls(&["--instance", "team-b"], Some("tok-builder"));
    assert!(!ok && text.contains("may not use instance \"team-b\""), "{text}");
    let (ok, text) = ls(&["--instance", "team-a/ci"], None);
    assert!(!ok && text.contains("requires credentials"), "{text}");
    let (ok, text) = ls(&["--instance", "team-a/ci"], Some("tok-wrong"));
    assert!(!ok && text.contains("unknown or revoked bearer token") && !text.contains("tok-wrong"), "{text}");
}

/// Copies the Bazel test workspace (without its bazel-* links) to `to`.
/// Builds three chained genrules with Bazel (`startup` options, then the
/// build's `flags`), cleans, builds again: the second build must be all
/// remote cache hits. Returns the output of the first build.
fn bazel_round_trip(dir: &Path, startup: &[String], flags: &[String]) -> String {
    let workspace = dir.join("ws");
    copy_workspace(&workspace);
    let root = format!("--output_user_root={}", dir.join("bazel-root").display());
    let bazel = |args: &[&str]| {
        let output = Command::new("bazel")
            .arg(&root)
            .args(startup)
            .args(args)
            .args(if args[0] == "build" { flags } else { &[] })
            .current_dir(&workspace)
            .output()
            .expect("bazel is not installed: run scripts/test.sh, which installs Debian's bazel-bootstrap");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "bazel {args:?} failed:\n{text}");
        text
    };
    let cold = bazel(&["build", "//:chain_c", "//:indep_numbers"]);
    bazel(&["clean"]);
    let warm = bazel(&["build", "//:chain_c", "//:indep_numbers"]);
    bazel(&["shutdown"]);
    assert!(warm.contains("4 remote cache hit"), "not served by the remote cache:\n{warm}");
    cold
}

fn bazel_principals() -> String {
    TokenLine::new("bazel", &["read", "write", "ac-write"]).text()
}

#[test]
fn bazel_uses_the_cache_with_a_bearer_token() {
    let server = AuthServer::start(&bazel_principals(), "");
    let flags =
        [format!("--remote_cache={}", server.endpoint()), "--remote_header=Authorization=Bearer tok-bazel".to_string()];
    bazel_round_trip(server.dir.path(), &[], &flags);
    // Without the token, every upload is refused (Bazel warns and builds locally).
    let dir = tempfile::tempdir().unwrap();
    let cold = bazel_round_trip_refused(dir.path(), &server.endpoint());
    assert!(cold.contains("UNAUTHENTICATED"), "{cold}");
}

/// A cold Bazel build against `endpoint` without credentials; returns its output.
fn bazel_round_trip_refused(dir: &Path, endpoint: &str) -> String {
    let workspace = dir.join("ws");
    copy_workspace(&workspace);
    let root = format!("--output_user_root={}", dir.join("bazel-root").display());
    let output = Command::new("bazel")
        .arg(&root)
        .args(["build", "//:chain_a", &format!("--remote_cache={endpoint}")])
        .current_dir(&workspace)
        .output()
        .unwrap();
    let _ = Command::new("bazel").arg(&root).arg("shutdown").current_dir(&workspace).status();
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Startup options that let Debian's Bazel speak TLS. Its netty has no
/// ALPN on the JDK's TLS ("JDK provider does not support ALPN protocol"),
/// so its gRPC needs OpenSSL through netty-tcnative, which it loads as
/// `libnetty_tcnative.so` from java.library.path. Debian's
/// libnetty-tcnative-jni (scripts/install-deps.sh) ships it under another
/// name, and the library checks its own file name, so a copy is made.
fn bazel_tls_startup(dir: &Path) -> Vec<String> {
    let debian = format!("/usr/lib/{}-linux-gnu/jni/libnetty-tcnative.so", std::env::consts::ARCH);
    let libraries = dir.join("jni");
    std::fs::create_dir_all(&libraries).unwrap();
    std::fs::copy(&debian, libraries.join("libnetty_tcnative.so"))
        .unwrap_or_else(|e| panic!("{debian}: {e}: run scripts/install-deps.sh, which installs libnetty-tcnative-jni"));
    vec![format!("--host_jvm_args=-Djava.library.path={}", libraries.display())]
}

#[test]
fn bazel_uses_the_cache_over_tls_with_a_token_or_a_client_certificate() {
    let tls = tls_setup();
    let server = AuthServer::start(&tls.principals, &tls.tls_config);
    let endpoint = format!("grpcs://localhost:{}", server.address.rsplit(':').next().unwrap());
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let trusting = [format!("--remote_cache={endpoint}"), format!("--tls_certificate={}", path(&tls.ca))];

    let dir = tempfile::tempdir().unwrap();
    let with_token = [&trusting[..], &["--remote_header=Authorization=Bearer tok-ci".to_string()]].concat();
    bazel_round_trip(dir.path(), &bazel_tls_startup(dir.path()), &with_token);

    let dir = tempfile::tempdir().unwrap();
    let client = [
        format!("--tls_client_certificate={}", path(&tls.client.0)),
        format!("--tls_client_key={}", path(&tls.client.1)),
    ];
    bazel_round_trip(dir.path(), &bazel_tls_startup(dir.path()), &[&trusting[..], &client[..]].concat());
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).unwrap();
    assert!(!log.contains("TLS handshake failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let tls = tls_setup();
    let server = AuthServer::start(&tls.principals, &tls.tls_config);
    let endpoint = format!("grpcs://localhost:{}", server.address.rsplit(':').next().unwrap());
    let trusting = |ca: &Path| {
        let credentials = ClientCredentials {
            token: Some("tok-ci".to_string()),
            tls_ca: Some(ca.to_path_buf()),
            ..ClientCredentials::default()
        };
        grpc_channel_with(&endpoint, &credentials).unwrap()
    };
    find_missing(&trusting(&tls.ca)).await.unwrap();

    // The renewal comes from another CA, so which certificate a new
    // connection gets shows in which CA it must trust.
    let renewed = TestCa::new("renewed CA");
    let renewed_ca = renewed.write(tls.dir.path(), "renewed-ca");
    let (cert, key) = renewed.sign(tls.dir.path(), "renewed", "memobuild", &["localhost", "127.0.0.1"], false);
    std::fs::copy(&key, tls.dir.path().join("server.key")).unwrap();
    std::fs::copy(&cert, tls.dir.path().join("server.pem")).unwrap();
    let served = poll_until(&trusting(&renewed_ca), Result::is_ok).await;
    assert!(served.is_ok(), "the renewed certificate was not served: {served:?}");
    assert!(find_missing(&trusting(&tls.ca)).await.is_err(), "a new connection still got the old certificate");

    // A certificate file that does not parse leaves the last good one served.
    std::fs::write(tls.dir.path().join("server.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    find_missing(&trusting(&renewed_ca)).await.unwrap();
    let log = std::fs::read_to_string(server.dir.path().join("server.log")).unwrap();
    assert!(log.contains("the TLS certificate was not reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_roles_runs_actions_with_auth_on_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("principals.toml");
    let text = principals_file(&[
        TokenLine::new("scheduler", &["read", "write", "ac-write"]),
        TokenLine::new("worker-1", &["worker"]),
        TokenLine::new("ci", &["execute", "read", "write"]),
    ]);
    std::fs::write(&principals, text).unwrap();
    let principals = principals.to_str().unwrap();
    let token_file = |name: &str| {
        let path = dir.path().join(format!("{name}.token"));
        std::fs::write(&path, format!("tok-{name}\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (scheduler_token, worker_token) = (token_file("scheduler"), token_file("worker-1"));
    let state = |role: &str| dir.path().join(role).to_str().unwrap().to_string();
    let log = |role: &str| dir.path().join(format!("{role}.log"));

    let cas_args = ["cas", "--listen", "127.0.0.1:0", "--state-dir", &state("cas"), "--principals-file", principals];
    let mut cas = RoleProcess::spawn_with_env(&cas_args, &[], log("cas"), None);
    let cas_endpoint = format!("grpc://{}", cas.listening_address());
    let scheduler_args = [
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--cas",
        &cas_endpoint,
        "--state-dir",
        &state("scheduler"),
        "--principals-file",
        principals,
        "--token-file",
        &scheduler_token,
    ];
    let mut scheduler = RoleProcess::spawn_with_env(&scheduler_args, &[], log("scheduler"), None);
    let scheduler_endpoint = format!("grpc://{}", scheduler.listening_address());
    let worker_args = |token: &str| {
        vec![
            "worker".to_string(),
            "--scheduler".into(),
            scheduler_endpoint.clone(),
            "--cas".into(),
            cas_endpoint.clone(),
            "--state-dir".into(),
            state("worker"),
            "--no-dockerfile-steps".into(),
            "--token-file".into(),
            token.into(),
        ]
    };
    // A worker with a client's token is refused by the scheduler.
    let ci_token = token_file("ci");
    let args = worker_args(&ci_token);
    let mut impostor =
        RoleProcess::spawn_with_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[], log("impostor"), None);
    impostor.wait_for_line("the refusal", |l| l.contains("lacks the worker capability"));
    impostor.kill();
    let args = worker_args(&worker_token);
    let mut worker =
        RoleProcess::spawn_with_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[], log("worker"), None);
    worker.wait_for_line("connected", |l| l.contains("connected to the scheduler"));

    // A client uploads through the scheduler (which proxies the CAS with its
    // own token) and executes; the worker runs it and its result is cached.
    let credentials = ClientCredentials { token: Some("tok-ci".into()), ..Default::default() };
    let client = grpc_channel_with(&scheduler_endpoint, &credentials).unwrap();
    let (action, _) = action(&client, &["/bin/true"]).await;
    let request = ExecuteRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let mut stream = ExecutionClient::new(client.clone()).execute(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(operation) =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("no progress").unwrap()
    {
        last = Some(operation);
    }
    let operation = last.unwrap();
    assert!(operation.done);
    let Some(memobuild_proto::longrunning::operation::Result::Response(any)) = operation.result else {
        panic!("no response: {operation:?}")
    };
    let response = ExecuteResponse::decode(any.value.as_slice()).unwrap();
    assert_eq!(response.result.unwrap().exit_code, 0, "{}", response.message);
    let request = GetActionResultRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    ActionCacheClient::new(client.clone()).get_action_result(request).await.unwrap();

    // Straight to the CAS without a token: refused.
    let anonymous = grpc_channel_with(&cas_endpoint, &ClientCredentials::default()).unwrap();
    assert_eq!(find_missing(&anonymous).await.unwrap_err().code(), Code::Unauthenticated);
    drop((worker, scheduler, cas));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_worker_runs_actions_behind_auth_and_tls() {
    let tls = tls_setup();
    let work_dir = tls.dir.path().join("worker");
    let extra = format!("{}[worker]\nwork_dir = {work_dir:?}\ndockerfile_steps = false\n", tls.tls_config);
    let server = AuthServer::start(&tls.principals, &extra);
    let endpoint = format!("grpcs://localhost:{}", server.address.rsplit(':').next().unwrap());
    let credentials =
        ClientCredentials { token: Some("tok-ci".into()), tls_ca: Some(tls.ca.clone()), ..Default::default() };
    let client = grpc_channel_with(&endpoint, &credentials).unwrap();
    let (action, _) = action(&client, &["/bin/true"]).await;
    let request = ExecuteRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let mut stream = ExecutionClient::new(client).execute(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(operation) =
        tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("no progress").unwrap()
    {
        last = Some(operation);
    }
    let Some(memobuild_proto::longrunning::operation::Result::Response(any)) = last.unwrap().result else {
        panic!("the operation ended without a response")
    };
    let response = ExecuteResponse::decode(any.value.as_slice()).unwrap();
    assert_eq!(response.result.unwrap().exit_code, 0, "{}", response.message);
    // The server's own worker ran it: its name ends in the server's pid.
    let worker = format!(":{}: exit code", server.process.pid());
    assert!(response.message.contains(&worker), "{}", response.message);
}

/// Every byte under `dir`, file by file.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&entry.path()));
        } else if let Ok(data) = std::fs::read(entry.path()) {
            out.push((entry.path(), data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_and_secrets_of_a_build_are_neither_stored_nor_logged() {
    let text = TokenLine::new("builder", &["build", "read", "write"]).text();
    let server = AuthServer::start_logged(&text, "", Some("trace"));
    let (password, secret) = ("registry-password-7f3a91", "secret-value-c0ffee42");
    let request = BuildRequest {
        instance_name: "ci".into(),
        dockerfile_name: "Dockerfile".into(),
        dockerfile: "FROM scratch\nCOPY missing.txt /\n".into(),
        registry_credentials: vec![RegistryCredential {
            registry: "registry.example".into(),
            username: "bob".into(),
            password: password.into(),
        }],
        secrets: vec![Secret { id: "token".into(), value: secret.as_bytes().to_vec() }],
        ..Default::default()
    };
    let mut client = BuildServiceClient::new(server.channel(Some("tok-builder")));
    let mut events = client.build(request).await.unwrap().into_inner();
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(30), events.message()).await.unwrap() {
        count += 1;
    }
    assert!(count > 0, "the build sent no event");
    let listed = client.list_builds(ListBuildsRequest { instance_name: "ci".into(), limit: 0 }).await.unwrap();
    assert_eq!(listed.into_inner().builds.len(), 1, "the build was not recorded");
    // The process is stopped so its database and log are complete on disk.
    let AuthServer { mut process, dir, .. } = server;
    process.stop(Duration::from_secs(10));
    let files = files_under(dir.path());
    assert!(files.iter().any(|(p, _)| p.to_string_lossy().contains("scheduler.db")), "{files:?}");
    for (path, data) in &files {
        for needle in [password, secret] {
            let found = data.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{needle:?} found in {}", path.display());
        }
    }
}

#[test]
fn an_open_server_on_a_non_loopback_address_warns_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let mut open = RoleProcess::spawn_with_env(
        &["cas", "--listen", "0.0.0.0:0", "--admin-listen", "0.0.0.0:0", "--state-dir", state],
        &[],
        dir.path().join("open.log"),
        None,
    );
    open.listening_address();
    assert!(open.log_text().contains("NO AUTHENTICATION"), "{}", open.log_text());
    let admin_warned = || open.log_text().contains("ADMIN PORT WITHOUT AUTHENTICATION");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin_warned() {
        assert!(Instant::now() < deadline, "no warning about the admin port: {}", open.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    open.stop(Duration::from_secs(10));
    let mut local = RoleProcess::spawn_with_env(
        &["cas", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--state-dir", state],
        &[],
        dir.path().join("local.log"),
        None,
    );
    local.listening_address();
    assert!(!local.log_text().contains("NO AUTHENTICATION"), "{}", local.log_text());
    assert!(!local.log_text().contains("ADMIN PORT"), "{}", local.log_text());
}

#[test]
fn a_remote_build_runs_with_a_token_and_is_refused_without_one() {
    let text = TokenLine::new("builder", &["build", "read", "write"]).instances(&["team-a"]).text();
    let dir = tempfile::tempdir().unwrap();
    let work_dir = dir.path().join("worker");
    let server = AuthServer::start(&text, &format!("[worker]\nwork_dir = {work_dir:?}\n"));
    let context = dir.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY app.txt /app/\n").unwrap();
    std::fs::write(context.join("app.txt"), "built behind auth\n").unwrap();
    let out = dir.path().join("out");
    let build = |token: Option<&str>, instance: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        command
            .args(["remote", "build", "--progress", "plain", "--endpoint", &server.endpoint(), "--instance", instance])
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&context)
            .env_remove("MEMOBUILD_TOKEN")
            .env("MEMOBUILD_STATE_DIR", dir.path().join("client"));
        if let Some(token) = token {
            command.env("MEMOBUILD_TOKEN", token);
        }
        let output = command.output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (ok, stderr) = build(None, "team-a/ci");
    assert!(!ok && stderr.contains("requires credentials"), "{stderr}");
    let (ok, stderr) = build(Some("tok-builder"), "team-b");
    assert!(!ok && stderr.contains("may not use instance \"team-b\""), "{stderr}");
    let (ok, stderr) = build(Some("tok-builder"), "team-a/ci");
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("app/app.txt")).unwrap(), "built behind auth\n");
    // SIGTERM: the server's worker stops the private containerd it started.
    let mut server = server;
    server.process.stop(Duration::from_secs(15));
}
