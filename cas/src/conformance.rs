//! The conformance suite every [`BlobStore`] passes. Call [`run`] with a
//! fresh, empty store, or [`run_with`] for a store that opts out of a
//! capability it cannot offer.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use memobuild_proto::{Digest, DigestFunction, Error};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::blob_store::{collect, BlobStore, BlobStream, ByteRange};

/// What a store under test supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Whether `delete` removes blobs. A store without it (a remote CAS
    /// manages its own eviction) must refuse `delete` with an error.
    pub delete: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { delete: true }
    }
}

/// Runs every check against `store`, which must start empty.
pub async fn run(store: &dyn BlobStore) {
    run_with(store, Options::default()).await;
}

/// Runs every check that `options` allows against `store`, which must
/// start empty.
pub async fn run_with(store: &dyn BlobStore, options: Options) {
    round_trip(store).await;
    find_missing_keeps_order(store).await;
    missing_blob_is_not_found(store).await;
    ranges(store).await;
    failed_write_stores_nothing(store).await;
    partial_write_is_invisible(store).await;
    concurrent_writes_of_one_blob(store).await;
    if options.delete {
        delete(store).await;
    } else {
        delete_is_refused(store).await;
    }
    exact_usage(store, options).await;
}

fn blob(function: DigestFunction, len: usize, seed: u8) -> (Digest, Bytes) {
    let data: Bytes = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    (Digest::of(function, &data), data)
}

/// `data` as a stream of `chunk`-sized pieces that yields between pieces.
fn chunked(data: Bytes, chunk: usize) -> BlobStream {
    let pieces: Vec<Bytes> =
        (0..data.len()).step_by(chunk.max(1)).map(|i| data.slice(i..(i + chunk).min(data.len()))).collect();
    futures::stream::iter(pieces)
        .then(|piece| async move {
            tokio::task::yield_now().await;
            Ok(piece)
        })
        .boxed()
}

async fn round_trip(store: &dyn BlobStore) {
    for function in DigestFunction::ALL {
        for len in [1, 1000, 3 << 20] {
            let (digest, data) = blob(function, len, 1);
            store.put(&digest, chunked(data.clone(), 64 * 1024)).await.unwrap();
            assert_eq!(store.get_bytes(&digest).await.unwrap(), data, "{digest}");
        }
    }
}

async fn find_missing_keeps_order(store: &dyn BlobStore) {
    let (a, a_data) = blob(DigestFunction::Sha256, 10, 2);
    let (b, _) = blob(DigestFunction::Sha256, 11, 2);
    let (c, _) = blob(DigestFunction::Blake3, 12, 2);
    store.put_bytes(&a, a_data).await.unwrap();
    assert_eq!(store.find_missing(&[c, a, b]).await.unwrap(), vec![c, b]);
    assert!(store.find_missing(&[]).await.unwrap().is_empty());
}

async fn missing_blob_is_not_found(store: &dyn BlobStore) {
    let (digest, _) = blob(DigestFunction::Blake3, 5, 3);
    let e = store.get(&digest, ByteRange::ALL).await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&digest.hex()), "{e}");
}

async fn ranges(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Sha256, 2 << 20, 4);
    store.put_bytes(&digest, data.clone()).await.unwrap();
    let cases = [
        (0, None, 0..data.len()),
        (5, Some(10), 5..15),
        (1_500_000, None, 1_500_000..data.len()),
        (data.len() as u64 - 3, Some(100), data.len() - 3..data.len()),
        (data.len() as u64, None, data.len()..data.len()),
    ];
    for (offset, limit, want) in cases {
        let got = collect(store.get(&digest, ByteRange::new(offset, limit)).await.unwrap()).await.unwrap();
        assert_eq!(got, data.slice(want), "offset {offset} limit {limit:?}");
    }
    let e = store.get(&digest, ByteRange::new(data.len() as u64 + 1, None)).await.err().unwrap();
    assert_eq!(e.code(), Code::OutOfRange);
}

async fn failed_write_stores_nothing(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Sha256, 100_000, 5);
    let failing = chunked(data.slice(..50_000), 10_000)
        .chain(futures::stream::iter([Err(Error::unavailable("client went away"))]))
        .boxed();
    let e = store.put(&digest, failing).await.unwrap_err();
    assert!(e.message().contains("client went away"), "{e}");
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

async fn partial_write_is_invisible(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Blake3, 300_000, 6);
    let (tx, rx) = mpsc::channel(1);
    let stream = ReceiverStream::new(rx).boxed();
    let write = async {
        store.put(&digest, stream).await.unwrap();
    };
    let feed = async {
        tx.send(Ok(data.slice(..100_000))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
        assert_eq!(store.get(&digest, ByteRange::ALL).await.err().map(|e| e.code()), Some(Code::NotFound));
        tx.send(Ok(data.slice(100_000..))).await.unwrap();
        drop(tx);
    };
    tokio::join!(write, feed);
    assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
}

async fn concurrent_writes_of_one_blob(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Sha256, 1 << 20, 7);
    let before = store.usage();
    let writes = (0..8).map(|_| store.put(&digest, chunked(data.clone(), 32 * 1024)));
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
    if let (Some(before), Some(after)) = (before, store.usage()) {
        assert_eq!(after.bytes, before.bytes + data.len() as u64);
        assert_eq!(after.blobs, before.blobs + 1);
    }
}

async fn delete(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Blake3, 777, 8);
    store.put_bytes(&digest, data).await.unwrap();
    assert!(store.delete(&digest).await.unwrap());
    assert!(!store.delete(&digest).await.unwrap());
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

async fn delete_is_refused(store: &dyn BlobStore) {
    let (digest, data) = blob(DigestFunction::Blake3, 777, 8);
    store.put_bytes(&digest, data.clone()).await.unwrap();
    assert!(store.delete(&digest).await.is_err());
    assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
}

async fn exact_usage(store: &dyn BlobStore, options: Options) {
    let Some(before) = store.usage() else { return };
    let blobs: Vec<_> = (0..5).map(|i| blob(DigestFunction::Sha256, 1000 + i, 9)).collect();
    for (digest, data) in &blobs {
        store.put_bytes(digest, data.clone()).await.unwrap();
        store.put_bytes(digest, data.clone()).await.unwrap();
    }
    let after = store.usage().unwrap();
    assert_eq!(after.bytes - before.bytes, (1000..1005).sum::<u64>());
    assert_eq!(after.blobs - before.blobs, 5);
    if !options.delete {
        return;
    }
    store.delete(&blobs[0].0).await.unwrap();
    assert_eq!(store.usage().unwrap().bytes - before.bytes, (1001..1005).sum::<u64>());
}
