//! `GrpcStore` against a real server over its gRPC port.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{data, TestServer};
use futures::StreamExt;
use memobuild_cas::conformance::{self, Options};
use memobuild_cas::{collect, BlobStore, BlobStream, ByteRange, GrpcStore};
use memobuild_proto::bytestream::ReadRequest;
use memobuild_proto::{Compressor, Digest, DigestFunction, Error, ResourceName};
use tonic::Code;

/// `data` in pieces of `chunk` bytes.
fn chunked(data: Bytes, chunk: usize) -> BlobStream {
    let pieces: Vec<_> =
        (0..data.len()).step_by(chunk).map(|i| Ok(data.slice(i..(i + chunk).min(data.len())))).collect();
    futures::stream::iter(pieces).boxed()
}

fn connect(server: &TestServer) -> (GrpcStore, String) {
    let endpoint = format!("grpc://{}", server.addr);
    (GrpcStore::connect(&endpoint, "").unwrap(), endpoint)
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_the_conformance_suite_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (store, _) = connect(&server);
    conformance::run_with(&store, Options { delete: false }).await;
    drop(store);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mib_blob_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (store, _) = connect(&server);
    let blob = data(20 << 20, 1);
    let digest = Digest::of(DigestFunction::Blake3, &blob);

    store.put(&digest, chunked(blob.clone(), 300_001)).await.unwrap();
    assert!(store.find_missing(&[digest]).await.unwrap().is_empty());
    assert_eq!(store.get_bytes(&digest).await.unwrap(), blob);
    let (offset, limit) = (19 << 20, 3 << 20);
    let tail = collect(store.get(&digest, ByteRange::new(offset, Some(limit))).await.unwrap()).await.unwrap();
    assert_eq!(tail, blob.slice(offset as usize..));

    // The server itself holds it, readable by any client.
    let name = ResourceName::read("", digest, Compressor::Identity).to_string();
    let request = ReadRequest { resource_name: name, read_offset: 5 << 20, read_limit: 10 };
    let mut responses = server.bytestream().read(request).await.unwrap().into_inner();
    let mut head = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        head.extend_from_slice(&response.data);
    }
    assert_eq!(head, blob[5 << 20..(5 << 20) + 10]);

    // Writing it again is a success without a second copy to verify.
    store.put_bytes(&digest, blob.clone()).await.unwrap();
    drop(store);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_data_is_rejected_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (store, endpoint) = connect(&server);
    // Through BatchUpdateBlobs (small) and ByteStream.Write (large); the
    // same length with other bytes, and too few bytes.
    for len in [1000, 3 << 20] {
        let good = data(len, 2);
        let digest = Digest::of(DigestFunction::Sha256, &good);
        for bad in [data(len, 3), good.slice(..len - 1)] {
            let e = store.put(&digest, chunked(bad, 64 * 1024)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{len}: {e}");
            assert!(e.message().contains(&digest.hex()), "{e}");
            assert!(e.message().contains(&endpoint), "{e}");
            assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest], "{len}");
        }
        store.put(&digest, chunked(good.clone(), 64 * 1024)).await.unwrap();
        assert_eq!(store.get_bytes(&digest).await.unwrap(), good);
    }
    drop(store);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_write_whose_input_fails_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (store, _) = connect(&server);
    let blob = data(5 << 20, 4);
    let digest = Digest::of(DigestFunction::Sha256, &blob);
    // Fails after more than a whole WriteRequest has gone to the server.
    let failing = chunked(blob.slice(..3 << 20), 256 * 1024)
        .chain(futures::stream::iter([Err(Error::unavailable("build context upload aborted"))]))
        .boxed();
    let e = store.put(&digest, failing).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains("build context upload aborted"), "{e}");
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
    assert_eq!(store.get(&digest, ByteRange::ALL).await.err().map(|e| e.code()), Some(Code::NotFound));

    store.put(&digest, chunked(blob.clone(), 1 << 20)).await.unwrap();
    assert_eq!(store.get_bytes(&digest).await.unwrap(), blob);
    drop(store);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_blob_and_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (store, endpoint) = connect(&server);
    let digest = Digest::of(DigestFunction::Blake3, b"never stored");

    let e = store.get(&digest, ByteRange::ALL).await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&digest.hex()) && e.message().contains(&endpoint), "{e}");

    let e = store.delete(&digest).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("no delete") && e.message().contains(&endpoint), "{e}");
    assert!(store.usage().is_none());
    drop(store);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn find_missing_spans_functions_and_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // A store over the test's own channel, with an instance name.
    let store = GrpcStore::new(server.channel.clone(), "main");
    let stored: Vec<Digest> = (0..3u32)
        .map(|i| {
            let function = if i % 2 == 0 { DigestFunction::Sha256 } else { DigestFunction::Blake3 };
            Digest::of(function, &data(100, 10 + i))
        })
        .collect();
    for (i, digest) in stored.iter().enumerate() {
        store.put_bytes(digest, data(100, 10 + i as u32)).await.unwrap();
    }
    // 25,000 absent digests of both functions (three batches of SHA-256),
    // with the stored ones and a duplicate mixed in.
    let mut asked: Vec<Digest> = (0..25_000u64)
        .map(|i| {
            let function = if i % 5 == 0 { DigestFunction::Blake3 } else { DigestFunction::Sha256 };
            Digest::of(function, &i.to_le_bytes())
        })
        .collect();
    asked.insert(7, stored[0]);
    asked.insert(12_345, stored[1]);
    asked.push(stored[2]);
    asked.push(asked[3]);
    let want: Vec<Digest> = asked.iter().filter(|d| !stored.contains(d)).copied().collect();
    assert_eq!(store.find_missing(&asked).await.unwrap(), want);
    drop(store);
    server.stop().await;
}
