//! The REAPI CAS, ByteStream and action cache through the real gRPC port.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{data, TestServer};
use memobuild_proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use memobuild_proto::reapi::{
    batch_update_blobs_request, compressor, digest_function, ActionResult, BatchReadBlobsRequest,
    BatchUpdateBlobsRequest, Directory, DirectoryNode, FileNode, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, GetTreeRequest, OutputFile, UpdateActionResultRequest,
};
use memobuild_proto::{Compressor, Digest, DigestFunction, ResourceName};
use prost::Message;
use tonic::Code;

fn write_requests(name: &str, data: &[u8], offset: usize, chunk: usize, finish: bool) -> Vec<WriteRequest> {
    let mut requests: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.to_string() } else { String::new() },
            write_offset: (offset + i * chunk) as i64,
            finish_write: false,
            data: piece.to_vec(),
        })
        .collect();
    if finish {
        match requests.last_mut() {
            Some(last) => last.finish_write = true,
            None => requests.push(WriteRequest {
                resource_name: name.to_string(),
                write_offset: offset as i64,
                finish_write: true,
                data: Vec::new(),
            }),
        }
    }
    requests
}

async fn write(server: &TestServer, name: &str, data: &[u8]) -> Result<i64, tonic::Status> {
    let requests = write_requests(name, data, 0, 256 * 1024, true);
    server.bytestream().write(futures::stream::iter(requests)).await.map(|r| r.into_inner().committed_size)
}

async fn read(server: &TestServer, name: &str, offset: i64, limit: i64) -> Result<Vec<u8>, tonic::Status> {
    let request = ReadRequest { resource_name: name.to_string(), read_offset: offset, read_limit: limit };
    let mut stream = server.bytestream().read(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

async fn put_batch(server: &TestServer, function: DigestFunction, blobs: &[Bytes]) -> Vec<Digest> {
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(function, b)).collect();
    let requests = blobs
        .iter()
        .zip(&digests)
        .map(|(b, d)| batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data: b.to_vec(),
            compressor: 0,
        })
        .collect();
    let request = BatchUpdateBlobsRequest { requests, digest_function: function.to_proto(), ..Default::default() };
    let response = server.cas().batch_update_blobs(request).await.unwrap().into_inner();
    for r in response.responses {
        assert_eq!(r.status.unwrap().code, 0);
    }
    digests
}

#[tokio::test]
async fn capabilities_advertise_digests_compression_and_batch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let caps = server.capabilities().get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert!(cache.digest_functions.contains(&(digest_function::Value::Sha256 as i32)));
    assert!(cache.digest_functions.contains(&(digest_function::Value::Blake3 as i32)));
    assert!(cache.supported_compressors.contains(&(compressor::Value::Zstd as i32)));
    assert!(cache.max_batch_total_size_bytes >= 4 << 20);
    assert!(cache.action_cache_update_capabilities.unwrap().update_enabled);
    server.stop().await;
}

#[tokio::test]
async fn batches_and_find_missing_for_both_digest_functions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    for function in DigestFunction::ALL {
        let blobs: Vec<Bytes> = (0..20).map(|i| data(100 + i, i as u32 + 1)).collect();
        let digests = put_batch(&server, function, &blobs).await;
        let absent = Digest::of(function, b"never uploaded");
        let mut query: Vec<_> = digests.iter().map(Digest::to_proto).collect();
        query.push(absent.to_proto());
        let request =
            FindMissingBlobsRequest { blob_digests: query, digest_function: function.to_proto(), ..Default::default() };
        let missing = server.cas().find_missing_blobs(request).await.unwrap().into_inner().missing_blob_digests;
        assert_eq!(missing, vec![absent.to_proto()]);

        let request = BatchReadBlobsRequest {
            digests: vec![digests[3].to_proto(), absent.to_proto()],
            acceptable_compressors: vec![compressor::Value::Zstd as i32],
            digest_function: function.to_proto(),
            ..Default::default()
        };
        let responses = server.cas().batch_read_blobs(request).await.unwrap().into_inner().responses;
        assert_eq!(responses[0].compressor, compressor::Value::Zstd as i32);
        assert_eq!(zstd::decode_all(&responses[0].data[..]).unwrap(), blobs[3]);
        assert_eq!(responses[1].status.as_ref().unwrap().code, Code::NotFound as i32);
    }
    server.stop().await;
}

#[tokio::test]
async fn batch_update_rejects_bad_blobs_individually_and_oversized_batches_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let good = data(50, 1);
    let good_digest = Digest::of(DigestFunction::Sha256, &good);
    let claimed = Digest::of(DigestFunction::Sha256, b"something else entirely");
    let compressed = zstd::encode_all(&data(70, 2)[..], 3).unwrap();
    let zstd_digest = Digest::of(DigestFunction::Sha256, &data(70, 2));
    let request = BatchUpdateBlobsRequest {
        requests: vec![
            batch_update_blobs_request::Request {
                digest: Some(good_digest.to_proto()),
                data: good.to_vec(),
                compressor: 0,
            },
            batch_update_blobs_request::Request {
                digest: Some(claimed.to_proto()),
                data: good.to_vec(),
                compressor: 0,
            },
            batch_update_blobs_request::Request {
                digest: Some(zstd_digest.to_proto()),
                data: compressed,
                compressor: compressor::Value::Zstd as i32,
            },
        ],
        ..Default::default()
    };
    let responses = server.cas().batch_update_blobs(request).await.unwrap().into_inner().responses;
    assert_eq!(responses[0].status.as_ref().unwrap().code, 0);
    let bad = responses[1].status.as_ref().unwrap();
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    assert!(bad.message.contains(&claimed.hex()), "{}", bad.message);
    assert_eq!(responses[2].status.as_ref().unwrap().code, 0);
    let request = FindMissingBlobsRequest {
        blob_digests: vec![good_digest.to_proto(), claimed.to_proto(), zstd_digest.to_proto()],
        ..Default::default()
    };
    let missing = server.cas().find_missing_blobs(request).await.unwrap().into_inner().missing_blob_digests;
    assert_eq!(missing, vec![claimed.to_proto()]);

    // Over the advertised batch limit (but under the message limit).
    let big = data(3 << 20, 3);
    let request = BatchUpdateBlobsRequest {
        requests: (0..2)
            .map(|_| batch_update_blobs_request::Request {
                digest: Some(Digest::of(DigestFunction::Sha256, &big).to_proto()),
                data: big.to_vec(),
                compressor: 0,
            })
            .collect(),
        ..Default::default()
    };
    let e = server.cas().batch_update_blobs(request).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("batch limit"), "{}", e.message());

    // Over the message limit: refused by the transport, server unharmed.
    let huge = vec![0u8; 32 << 20];
    let request = BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(Digest::of(DigestFunction::Sha256, &huge).to_proto()),
            data: huge,
            compressor: 0,
        }],
        ..Default::default()
    };
    let e = server.cas().batch_update_blobs(request).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    let request = FindMissingBlobsRequest { blob_digests: vec![good_digest.to_proto()], ..Default::default() };
    assert!(server.cas().find_missing_blobs(request).await.unwrap().into_inner().missing_blob_digests.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn bad_digests_and_functions_are_invalid_arguments_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let request = FindMissingBlobsRequest {
        blob_digests: vec![Digest::of(DigestFunction::Sha256, b"x").to_proto()],
        digest_function: digest_function::Value::Md5 as i32,
        ..Default::default()
    };
    let e = server.cas().find_missing_blobs(request).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("md5"), "{}", e.message());

    let bad = memobuild_proto::reapi::Digest { hash: "xyz".into(), size_bytes: 3 };
    let request = FindMissingBlobsRequest { blob_digests: vec![bad], ..Default::default() };
    let e = server.cas().find_missing_blobs(request).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("digest #0") && e.message().contains("xyz"), "{}", e.message());
    server.stop().await;
}

#[tokio::test]
async fn bytestream_round_trips_with_ranges_blake3_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let blob = data(10 << 20, 7);
    for function in DigestFunction::ALL {
        let digest = Digest::of(function, &blob);
        let name = ResourceName::write("ci", "u1", digest, Compressor::Identity).to_string();
        assert_eq!(write(&server, &name, &blob).await.unwrap(), blob.len() as i64);
        let read_name = ResourceName::read("ci", digest, Compressor::Identity).to_string();
        assert_eq!(read(&server, &read_name, 0, 0).await.unwrap(), blob);
        assert_eq!(read(&server, &read_name, 1000, 5000).await.unwrap(), blob[1000..6000]);
        assert_eq!(read(&server, &read_name, blob.len() as i64 - 10, 0).await.unwrap(), blob[blob.len() - 10..]);

        let zread = ResourceName::read("ci", digest, Compressor::Zstd).to_string();
        let compressed = read(&server, &zread, 0, 0).await.unwrap();
        assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), blob);
    }
    // A compressed upload of a new blob; the compressed offset space is used.
    let text: Bytes = "memobuild compresses well. ".repeat(100_000).into();
    let digest = Digest::of(DigestFunction::Blake3, &text);
    let compressed = zstd::encode_all(&text[..], 3).unwrap();
    let name = ResourceName::write("", "u2", digest, Compressor::Zstd).to_string();
    let requests = write_requests(&name, &compressed, 0, 1000, true);
    let committed =
        server.bytestream().write(futures::stream::iter(requests)).await.unwrap().into_inner().committed_size;
    assert_eq!(committed, -1);
    let plain = ResourceName::read("", digest, Compressor::Identity).to_string();
    assert_eq!(read(&server, &plain, 0, 0).await.unwrap(), text);
    server.stop().await;
}

#[tokio::test]
async fn bytestream_errors_name_the_problem_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let blob = data(100_000, 9);
    let digest = Digest::of(DigestFunction::Sha256, &blob);
    let read_name = ResourceName::read("", digest, Compressor::Identity).to_string();

    let e = read(&server, &read_name, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&digest.hex()), "{}", e.message());

    // Data that does not hash to the digest.
    let mut wrong = blob.to_vec();
    wrong[500] ^= 1;
    let name = ResourceName::write("", "w1", digest, Compressor::Identity).to_string();
    let e = write(&server, &name, &wrong).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains(&digest.hex()), "{}", e.message());
    // Too many bytes.
    let mut long = blob.to_vec();
    long.push(0);
    let e = write(&server, &name, &long).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // finish_write before all bytes arrived.
    let e = write(&server, &name, &blob[..5000]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("5000 bytes"), "{}", e.message());
    assert_eq!(read(&server, &read_name, 0, 0).await.unwrap_err().code(), Code::NotFound);

    for bad in ["", "blobs/abc/1", "uploads/x/blobs/sha1/abcd/1", &format!("uploads/x/blobs/{}/-5", digest.hex())] {
        let e = write(&server, bad, b"x").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("resource name"), "{}", e.message());
    }
    let e = read(&server, &format!("blobs/{}/notanumber", digest.hex()), 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Reads past the end, negative limits.
    let name = ResourceName::write("", "w2", digest, Compressor::Identity).to_string();
    write(&server, &name, &blob).await.unwrap();
    let e = read(&server, &read_name, blob.len() as i64 + 1, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("past its end"), "{}", e.message());
    assert_eq!(read(&server, &read_name, -1, 0).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(read(&server, &read_name, 0, -1).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(read(&server, &read_name, blob.len() as i64, 0).await.unwrap(), Vec::<u8>::new());

    // Rewriting an existing blob returns at once with its full size.
    assert_eq!(write(&server, &name, &[]).await.unwrap(), blob.len() as i64);
    server.stop().await;
}

#[tokio::test]
async fn interrupted_write_resumes_from_query_write_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let blob = data(3 << 20, 11);
    let digest = Digest::of(DigestFunction::Blake3, &blob);
    let name = ResourceName::write("", "resume-1", digest, Compressor::Identity).to_string();

    // The first stream ends after 1 MiB without finish_write.
    let first = write_requests(&name, &blob[..1 << 20], 0, 64 * 1024, false);
    let e = server.bytestream().write(futures::stream::iter(first)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let status = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest { resource_name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (1 << 20, false));
    let read_name = ResourceName::read("", digest, Compressor::Identity).to_string();
    assert_eq!(read(&server, &read_name, 0, 0).await.unwrap_err().code(), Code::NotFound);

    // A wrong offset is refused; the right one completes the blob.
    let wrong = write_requests(&name, &blob[(1 << 20) + 5..], (1 << 20) + 5, 64 * 1024, true);
    let e = server.bytestream().write(futures::stream::iter(wrong)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("write_offset"), "{}", e.message());
    // That failure dropped the upload: start again and resume properly.
    let first = write_requests(&name, &blob[..1 << 20], 0, 64 * 1024, false);
    server.bytestream().write(futures::stream::iter(first)).await.unwrap_err();
    let rest = write_requests(&name, &blob[1 << 20..], 1 << 20, 64 * 1024, true);
    let committed = server.bytestream().write(futures::stream::iter(rest)).await.unwrap().into_inner().committed_size;
    assert_eq!(committed, blob.len() as i64);
    assert_eq!(read(&server, &read_name, 0, 0).await.unwrap(), blob);
    let status = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest { resource_name: name })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (blob.len() as i64, true));
    let unknown = ResourceName::write("", "never", Digest::of(DigestFunction::Sha256, b"q"), Compressor::Identity);
    let e = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest { resource_name: unknown.to_string() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;
}

fn result_with_output(output: Digest, stdout: Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.txt".into(),
            digest: Some(output.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(stdout.to_proto()),
        exit_code: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn action_cache_serves_only_complete_results_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let blobs = [data(300, 1), Bytes::from_static(b"hello from stdout\n")];
    let digests = put_batch(&server, DigestFunction::Sha256, &blobs).await;
    let action = Digest::of(DigestFunction::Sha256, b"an action");
    let result = result_with_output(digests[0], digests[1]);
    let update = UpdateActionResultRequest {
        instance_name: "team-a".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    };
    server.action_cache().update_action_result(update).await.unwrap();

    let get = |instance: &str| GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.to_proto()),
        inline_stdout: true,
        ..Default::default()
    };
    let got = server.action_cache().get_action_result(get("team-a")).await.unwrap().into_inner();
    assert_eq!(got.output_files, result.output_files);
    assert_eq!(got.stdout_raw, blobs[1]);
    let e = server.action_cache().get_action_result(get("team-b")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&action.hex()), "{}", e.message());

    // A result naming a blob the CAS lacks is a miss, not a broken hit.
    let gone = Digest::of(DigestFunction::Sha256, b"evicted output");
    let update = UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result_with_output(gone, digests[1])),
        ..Default::default()
    };
    server.action_cache().update_action_result(update).await.unwrap();
    let e = server.action_cache().get_action_result(get("")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let update = UpdateActionResultRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let e = server.action_cache().update_action_result(update).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn get_tree_pages_through_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let file = data(10, 3);
    let file_digest = put_batch(&server, DigestFunction::Sha256, std::slice::from_ref(&file)).await[0];
    let mut level = Directory {
        files: vec![FileNode { name: "f".into(), digest: Some(file_digest.to_proto()), ..Default::default() }],
        ..Default::default()
    };
    let mut expected = Vec::new();
    for depth in 0..5 {
        let encoded = Bytes::from(level.encode_to_vec());
        let digest = put_batch(&server, DigestFunction::Sha256, &[encoded]).await[0];
        expected.insert(0, level.clone());
        level = Directory {
            directories: vec![DirectoryNode { name: format!("d{depth}"), digest: Some(digest.to_proto()) }],
            ..Default::default()
        };
    }
    let root = put_batch(&server, DigestFunction::Sha256, &[Bytes::from(level.encode_to_vec())]).await[0];
    expected.insert(0, level);

    let mut got = Vec::new();
    let mut token = String::new();
    loop {
        let request = GetTreeRequest {
            root_digest: Some(root.to_proto()),
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let mut stream = server.cas().get_tree(request).await.unwrap().into_inner();
        // Take only the first page of each call and continue from its token.
        let page = stream.message().await.unwrap().unwrap();
        assert!(page.directories.len() <= 2);
        got.extend(page.directories);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(got, expected);
    let request =
        GetTreeRequest { root_digest: Some(root.to_proto()), page_token: "nonsense".into(), ..Default::default() };
    assert_eq!(server.cas().get_tree(request).await.unwrap_err().code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart_and_metrics_count_it() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(2 << 20, 21);
    let digest = Digest::of(DigestFunction::Sha256, &blob);
    let action = Digest::of(DigestFunction::Sha256, b"restart action");
    {
        let server = TestServer::start(dir.path()).await;
        let name = ResourceName::write("", "r", digest, Compressor::Identity).to_string();
        write(&server, &name, &blob).await.unwrap();
        let update = UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result_with_output(digest, digest)),
            ..Default::default()
        };
        server.action_cache().update_action_result(update).await.unwrap();
        let health = server.admin_get("/healthz").await;
        assert!(health.contains("\"status\":\"ok\""), "{health}");
        let metrics = server.admin_get("/metrics").await;
        assert!(
            metrics.contains("memobuild_grpc_requests_total{code=\"Ok\",method=\"Write\",service=\"ByteStream\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains(&format!("memobuild_cas_stored_bytes {}", blob.len())), "{metrics}");
        assert!(metrics.contains(
            "memobuild_grpc_request_duration_seconds_count{method=\"UpdateActionResult\",service=\"ActionCache\"} 1"
        ));
        server.stop().await;
    }
    let server = TestServer::start(dir.path()).await;
    let read_name = ResourceName::read("", digest, Compressor::Identity).to_string();
    assert_eq!(read(&server, &read_name, 0, 0).await.unwrap(), blob);
    let get = GetActionResultRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let got = server.action_cache().get_action_result(get).await.unwrap().into_inner();
    assert_eq!(got.output_files[0].digest, Some(digest.to_proto()));
    server.stop().await;
}
