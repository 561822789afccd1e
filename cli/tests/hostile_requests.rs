//! Hostile requests against the real server: each test sends what an
//! attacker would, checks the error names the limit or the fault, and then
//! checks that the server still serves and a blob stored before is intact.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{data, TestServer};
use memobuild_cli::config::ServerConfig;
use memobuild_proto::build::build_service_client::BuildServiceClient;
use memobuild_proto::build::{build_event, BlobDigest, BuildFailed, BuildRequest, PartialContext};
use memobuild_proto::bytestream::{ReadRequest, WriteRequest};
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{
    batch_update_blobs_request, compressor, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode,
    ExecuteRequest, FileNode, FindMissingBlobsRequest, GetCapabilitiesRequest, GetTreeRequest,
};
use memobuild_proto::{reapi, Digest, DigestFunction};
use prost::Message;
use tonic::{Code, Status};

/// The batch limit every server advertises, as its messages spell it.
const BATCH_LIMIT: &str = "4194304-byte batch limit";

/// A blob stored before the hostile request, checked after it.
struct Witness {
    digest: Digest,
    data: Bytes,
}

async fn start(dir: &std::path::Path) -> (TestServer, Witness) {
    start_with(ServerConfig::embedded(dir)).await
}

async fn start_with(config: ServerConfig) -> (TestServer, Witness) {
    let server = TestServer::start_with(config).await;
    let data = data(300_000, 42);
    let digest = Digest::of(DigestFunction::Sha256, &data);
    write(&server, &upload_name(&digest), &data).await.unwrap();
    (server, Witness { digest, data })
}

fn upload_name(digest: &Digest) -> String {
    format!("uploads/{}/blobs/{}/{}", uuid::Uuid::new_v4(), digest.hex(), digest.size())
}

/// The WriteRequests of `data` from `offset`, in 64 KiB pieces.
fn write_requests(name: &str, data: &[u8], offset: usize, finish: bool) -> Vec<WriteRequest> {
    const PIECE: usize = 64 << 10;
    let mut requests: Vec<WriteRequest> = data
        .chunks(PIECE)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.to_string() } else { String::new() },
            write_offset: (offset + i * PIECE) as i64,
            finish_write: false,
            data: piece.to_vec(),
        })
        .collect();
    if let Some(last) = requests.last_mut() {
        last.finish_write = finish;
    }
    requests
}

async fn write(server: &TestServer, name: &str, data: &[u8]) -> Result<i64, Status> {
    let requests = write_requests(name, data, 0, true);
    server.bytestream().write(futures::stream::iter(requests)).await.map(|r| r.into_inner().committed_size)
}

async fn read(server: &TestServer, digest: &Digest) -> Result<Vec<u8>, Status> {
    let request = ReadRequest {
        resource_name: format!("blobs/{}/{}", digest.hex(), digest.size()),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = server.bytestream().read(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

/// The server answers, takes a new blob, and still holds the witness whole.
async fn assert_still_serves(server: &TestServer, witness: &Witness) {
    server.capabilities().get_capabilities(GetCapabilitiesRequest::default()).await.unwrap();
    let fresh = data(1 << 20, 7);
    let digest = Digest::of(DigestFunction::Sha256, &fresh);
    write(server, &upload_name(&digest), &fresh).await.unwrap();
    assert_eq!(read(server, &digest).await.unwrap(), fresh);
    assert_eq!(read(server, &witness.digest).await.unwrap(), witness.data, "the witness blob is intact");
}

fn assert_refused(status: &Status, code: Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(status.message().contains(needle), "{needle:?} not in {:?}", status.message());
    }
}

fn proto_digest(hash: &str, size: i64) -> reapi::Digest {
    reapi::Digest { hash: hash.to_string(), size_bytes: size }
}

fn batch_update(entries: Vec<batch_update_blobs_request::Request>) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest { requests: entries, ..Default::default() }
}

fn zstd_entry(digest: reapi::Digest, data: &[u8]) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest),
        data: zstd::bulk::compress(data, 3).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    }
}

async fn put_directory(server: &TestServer, directory: &Directory) -> Digest {
    let encoded = directory.encode_to_vec();
    let digest = Digest::of(DigestFunction::Sha256, &encoded);
    // The empty blob (an empty directory) is always there.
    if !encoded.is_empty() {
        write(server, &upload_name(&digest), &encoded).await.unwrap();
    }
    digest
}

async fn get_tree(server: &TestServer, root: &Digest) -> Result<Vec<Directory>, Status> {
    let request = GetTreeRequest { root_digest: Some(root.to_proto()), ..Default::default() };
    let mut stream = server.cas().get_tree(request).await?.into_inner();
    let mut directories = Vec::new();
    while let Some(page) = stream.message().await? {
        directories.extend(page.directories);
    }
    Ok(directories)
}

#[tokio::test]
async fn zstd_batch_blob_declaring_a_terabyte_is_refused_before_decompression() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let terabyte = proto_digest(&"ab".repeat(32), 1 << 40);
    let e = server.cas().batch_update_blobs(batch_update(vec![zstd_entry(terabyte, b"tiny")])).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["blob sizes BatchUpdateBlobs declares", BATCH_LIMIT]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn zstd_data_that_inflates_past_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let claimed = Digest::of(DigestFunction::Sha256, &[0u8; 1000]);
    let bomb = vec![0u8; 64 << 20];
    let response = server
        .cas()
        .batch_update_blobs(batch_update(vec![zstd_entry(claimed.to_proto(), &bomb)]))
        .await
        .unwrap()
        .into_inner();
    let status = response.responses[0].status.clone().unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    assert!(status.message.contains("more than 1000 bytes") && status.message.contains(&claimed.hex()), "{status:?}");
    // The same bomb through ByteStream stops at the declared size too.
    let name = format!("uploads/{}/compressed-blobs/zstd/{}/1000", uuid::Uuid::new_v4(), claimed.hex());
    let e = write(&server, &name, &zstd::bulk::compress(&bomb, 3).unwrap()).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["received more than 1000 bytes"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn blob_over_the_maximum_size_is_refused_before_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let huge = Digest::new(DigestFunction::Sha256, [9; 32], 100 << 30);
    let e = write(&server, &upload_name(&huge), b"some bytes").await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["max_blob_bytes limit of 68719476736", &huge.hex()]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn abandoned_upload_declaring_a_huge_size_evicts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    // More than the embedded CAS's 20 GiB budget, less than the largest blob.
    let huge = Digest::new(DigestFunction::Sha256, [5; 32], 30 << 30);
    // Enough pieces that the store has taken some: the write is under way.
    let requests = write_requests(&upload_name(&huge), &data(40 * (64 << 10), 1), 0, false);
    let e = server.bytestream().write(futures::stream::iter(requests)).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["without finish_write"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn upload_table_is_bounded_and_frees_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::embedded(dir.path());
    config.limits.max_uploads = 2;
    let (server, witness) = start_with(config).await;
    let blobs: Vec<Bytes> = (0..3).map(|i| data(200_000, 100 + i)).collect();
    let names: Vec<String> = blobs.iter().map(|b| upload_name(&Digest::of(DigestFunction::Sha256, b))).collect();
    for (name, blob) in names.iter().zip(&blobs).take(2) {
        let half = write_requests(name, &blob[..100_000], 0, false);
        let e = server.bytestream().write(futures::stream::iter(half)).await.unwrap_err();
        assert_refused(&e, Code::InvalidArgument, &["without finish_write"]);
    }
    let e = write(&server, &names[2], &blobs[2]).await.unwrap_err();
    assert_refused(&e, Code::ResourceExhausted, &["max_uploads limit of 2"]);
    // Finishing a waiting upload frees its place.
    let rest = write_requests(&names[0], &blobs[0][100_000..], 100_000, true);
    server.bytestream().write(futures::stream::iter(rest)).await.unwrap();
    write(&server, &names[2], &blobs[2]).await.unwrap();
    for blob in [&blobs[0], &blobs[2]] {
        assert_eq!(read(&server, &Digest::of(DigestFunction::Sha256, blob)).await.unwrap(), blob.to_vec());
    }
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn batch_sizes_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let giant = [proto_digest(&"cd".repeat(32), i64::MAX), proto_digest(&"ef".repeat(32), i64::MAX)];
    let request = BatchReadBlobsRequest { digests: giant.to_vec(), ..Default::default() };
    let e = server.cas().batch_read_blobs(request).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["the blobs BatchReadBlobs asks for", BATCH_LIMIT]);
    let entries = giant.iter().map(|d| zstd_entry(d.clone(), b"x")).collect();
    let e = server.cas().batch_update_blobs(batch_update(entries)).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &[BATCH_LIMIT]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn batch_naming_too_many_blobs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let empty = Digest::empty(DigestFunction::Sha256).to_proto();
    let request = BatchReadBlobsRequest { digests: vec![empty.clone(); 10_001], ..Default::default() };
    let e = server.cas().batch_read_blobs(request).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["BatchReadBlobs names 10001 blobs", "max_batch_blobs limit of 10000"]);
    let entries = (0..10_001)
        .map(|_| batch_update_blobs_request::Request { digest: Some(empty.clone()), ..Default::default() })
        .collect();
    let e = server.cas().batch_update_blobs(batch_update(entries)).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["max_batch_blobs limit of 10000"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn message_with_a_huge_repeated_field_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let digests = (0..300_000u32).map(|i| Digest::of(DigestFunction::Sha256, &i.to_le_bytes()).to_proto()).collect();
    let request = FindMissingBlobsRequest { blob_digests: digests, ..Default::default() };
    let e = server.cas().find_missing_blobs(request).await.unwrap_err();
    assert_refused(&e, Code::ResourceExhausted, &["the limit is: 16777216 bytes"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn directories_with_unsafe_or_duplicate_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let leaf = put_directory(&server, &Directory::default()).await;
    let node = |name: &str| DirectoryNode { name: name.into(), digest: Some(leaf.to_proto()) };
    let file =
        |name: &str| FileNode { name: name.into(), digest: Some(witness.digest.to_proto()), ..Default::default() };
    let cases = [
        (Directory { directories: vec![node("..")], ..Default::default() }, ". or .."),
        (Directory { directories: vec![node("a/b")], ..Default::default() }, "contains a slash"),
        (Directory { files: vec![file("x"), file("x")], ..Default::default() }, "appears twice"),
        (Directory { files: vec![file("x")], directories: vec![node("x")], ..Default::default() }, "appears twice"),
    ];
    for (bad, why) in cases {
        let bad_digest = put_directory(&server, &bad).await;
        // Below a good root, so the walk reaches it on the way.
        let root = put_directory(
            &server,
            &Directory {
                directories: vec![
                    node("ok"),
                    DirectoryNode { name: "sub".into(), digest: Some(bad_digest.to_proto()) },
                ],
                ..Default::default()
            },
        )
        .await;
        let e = get_tree(&server, &root).await.unwrap_err();
        assert_refused(&e, Code::InvalidArgument, &[why, &bad_digest.hex()]);
    }
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn trees_through_digests_that_do_not_exist_end_there() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let absent = Digest::of(DigestFunction::Sha256, b"never stored");
    let root = Directory {
        directories: vec![DirectoryNode { name: "gone".into(), digest: Some(absent.to_proto()) }],
        ..Default::default()
    };
    let root_digest = put_directory(&server, &root).await;
    assert_eq!(get_tree(&server, &root_digest).await.unwrap(), vec![root]);
    let e = get_tree(&server, &absent).await.unwrap_err();
    assert_refused(&e, Code::NotFound, &[&absent.hex()]);
    // A directory too large to be one is refused before it is read.
    let big = data(17 << 20, 3);
    let big_digest = Digest::of(DigestFunction::Sha256, &big);
    write(&server, &upload_name(&big_digest), &big).await.unwrap();
    let e = get_tree(&server, &big_digest).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["16777216-byte limit of one directory", &big_digest.hex()]);
    let request =
        GetTreeRequest { root_digest: Some(root_digest.to_proto()), page_token: "7".into(), ..Default::default() };
    let e = server.cas().get_tree(request).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["page_token 7 is past the end"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_resource_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let hex = witness.digest.hex();
    let names = [
        String::new(),
        "blobs".to_string(),
        format!("blobs/{hex}"),
        format!("blobs/{hex}/-1"),
        format!("blobs/{hex}/many"),
        format!("blobs/{}/5", &hex[..10]),
        format!("blobs/sha256/{hex}/5"),
        format!("blobs/nosuchfunction/{hex}/5"),
        format!("compressed-blobs/gzip/{hex}/5"),
        format!("uploads/blobs/{hex}/5"),
        format!("/blobs/{hex}/5"),
        format!("blobs/{hex}/99999999999999999999999"),
    ];
    for name in &names {
        let request = ReadRequest { resource_name: name.clone(), read_offset: 0, read_limit: 0 };
        let e = server.bytestream().read(request).await.unwrap_err();
        assert_refused(&e, Code::InvalidArgument, &["read resource name"]);
        let e = write(&server, &format!("uploads/x/{name}"), b"abc").await.unwrap_err();
        assert_refused(&e, Code::InvalidArgument, &["write resource name"]);
    }
    // Names are kept while an upload waits: a long one is refused.
    let long = format!("{}/uploads/x/blobs/{hex}/{}", "i".repeat(10_000), witness.digest.size());
    let e = write(&server, &long, &witness.data).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["resource name of 10", "4096-byte limit"]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_digests_are_refused_and_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let hex = witness.digest.hex();
    let cases = [
        (proto_digest("zz", 1), "digest #1"),
        (proto_digest(&"zz".repeat(32), 1), "digest #1"),
        (proto_digest(&hex, -5), "digest #1"),
    ];
    for (bad, what) in cases {
        let request =
            FindMissingBlobsRequest { blob_digests: vec![witness.digest.to_proto(), bad], ..Default::default() };
        let e = server.cas().find_missing_blobs(request).await.unwrap_err();
        assert_refused(&e, Code::InvalidArgument, &[what]);
    }
    // Data that does not match its digest is stored under no name.
    let liar = batch_update_blobs_request::Request {
        digest: Some(witness.digest.to_proto()),
        data: b"not the witness".to_vec(),
        compressor: 0,
    };
    let response = server.cas().batch_update_blobs(batch_update(vec![liar])).await.unwrap().into_inner();
    let status = response.responses[0].status.clone().unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    assert!(status.message.contains(&hex), "{status:?}");
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

#[tokio::test]
async fn execute_of_an_action_declaring_a_huge_size_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let action = Digest::new(DigestFunction::Sha256, [3; 32], 1 << 30);
    let request = ExecuteRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let e = ExecutionClient::new(server.channel.clone()).execute(request).await.unwrap_err();
    assert_refused(&e, Code::InvalidArgument, &["16777216-byte limit of one action", &action.hex()]);
    assert_still_serves(&server, &witness).await;
    server.stop().await;
}

/// The failure a build request ends with (none if it succeeded).
async fn build_failure(server: &TestServer, request: BuildRequest) -> BuildFailed {
    let mut events = BuildServiceClient::new(server.channel.clone()).build(request).await.unwrap().into_inner();
    while let Some(event) = events.message().await.unwrap() {
        match event.kind {
            Some(build_event::Kind::BuildFailed(failed)) => return failed,
            Some(build_event::Kind::Result(_)) => panic!("the build succeeded"),
            _ => {}
        }
    }
    panic!("the build stream ended without a result")
}

/// A build request whose context part names too many patterns, a very
/// long one or one with a wildcard above its last element (what a client
/// never sends) fails with an error that names it, and the server goes
/// on serving.
#[tokio::test]
async fn build_requests_with_hostile_context_patterns_fail_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let (server, witness) = start(dir.path()).await;
    let root = BlobDigest::of(&Digest::of(DigestFunction::Blake3, &Directory::default().encode_to_vec()));
    let cases = [
        ((0..5_000).map(|n| format!("d{n}/*.json")).collect::<Vec<_>>(), "more than 1024 patterns"),
        (vec!["*".repeat(200_000)], "longer than 1024 bytes"),
        (vec!["*/package.json".to_string()], "only its last element may hold wildcards"),
    ];
    for (patterns, needle) in cases {
        let part = PartialContext { root: Some(root.clone()), paths: Vec::new(), patterns };
        let request = BuildRequest {
            dockerfile: "FROM scratch\nCOPY *.json /\n".into(),
            partial_context: Some(part),
            ..BuildRequest::default()
        };
        let failed = build_failure(&server, request).await;
        assert_eq!(failed.code, Code::InvalidArgument as i32, "{failed:?}");
        assert!(failed.message.contains(needle), "{needle:?} not in {:?}", failed.message);
    }
    assert_still_serves(&server, &witness).await;
}
