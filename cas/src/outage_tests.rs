//! The cluster store when its services go away and come back: an S3
//! server killed in the middle of a multipart upload, Redis and PostgreSQL
//! restarted in the middle of a build. Each test starts its own server of
//! the kind it stops (on a port of its own), so no other test sees it.
#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use memobuild_proto::reapi::{ActionResult, OutputFile};
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use tonic::Code;

use crate::action_results::ActionResults;
use crate::test_services::{self, free_port, moto_on, redis_on, OwnPostgres};
use crate::{
    ActionCache, ActionIndexStore, BlobMetadata, BlobStore, EvictingStore, ExistenceCachedStore, PostgresMetadata,
    RedisIndex, S3Settings, S3Store, SystemClock,
};

async fn s3_at(endpoint: &str, bucket: &str, settings: S3Settings) -> S3Store {
    let settings = S3Settings {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: true,
        create_bucket: true,
        ..settings
    };
    let credentials = Credentials::new("memobuild-test", "memobuild-test", None, None, "tests");
    S3Store::connect_with(bucket.to_string(), settings, Some(credentials)).await.unwrap()
}

/// The cluster's composition: eviction over the existence index over S3,
/// and the action cache in the same PostgreSQL.
struct ClusterStore {
    store: Arc<dyn BlobStore>,
    cache: ActionCache,
    metadata: Arc<PostgresMetadata>,
}

impl ClusterStore {
    fn new(s3: S3Store, metadata: Arc<PostgresMetadata>, redis: Option<RedisIndex>) -> ClusterStore {
        let clock = Arc::new(SystemClock);
        let indexed = Arc::new(ExistenceCachedStore::new(Arc::new(s3), metadata.clone(), redis, clock.clone()));
        let store: Arc<dyn BlobStore> =
            Arc::new(EvictingStore::new(indexed, metadata.clone(), clock.clone(), u64::MAX, u64::MAX));
        let results = Arc::new(ActionIndexStore::new(metadata.clone(), clock));
        ClusterStore { cache: ActionCache::new(results, store.clone()), store, metadata }
    }
}

fn blob(what: &str, i: u32, nonce: &str) -> (Digest, Bytes) {
    let data = Bytes::from(format!("{what} {i} of build {nonce}\n").repeat(50));
    (Digest::of(DigestFunction::Sha256, &data), data)
}

fn result_naming(output: Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile { path: "out".into(), digest: Some(output.to_proto()), ..Default::default() }],
        ..Default::default()
    }
}

/// One step of a build, as a client and a worker do it: check the
/// inputs, upload the missing one, upload the output, cache the result.
async fn step(cluster: &ClusterStore, i: u32, nonce: &str) -> Result<(Digest, Digest)> {
    let (source, data) = blob("source", i, nonce);
    if !cluster.store.find_missing(&[source]).await?.is_empty() {
        cluster.store.put_bytes(&source, data).await?;
    }
    let (output, data) = blob("output", i, nonce);
    cluster.store.put_bytes(&output, data).await?;
    let action = blob("action", i, nonce).0;
    cluster.cache.update("", &action, &result_naming(output)).await?;
    Ok((action, output))
}

/// Everything the build's steps were told was stored is there, whole, and
/// every cached result is served.
async fn assert_nothing_lost(cluster: &ClusterStore, steps: u32, nonce: &str) {
    let mut expected = Vec::new();
    for i in 0..steps {
        for what in ["source", "output"] {
            expected.push(blob(what, i, nonce));
        }
    }
    let digests: Vec<Digest> = expected.iter().map(|(d, _)| *d).collect();
    assert_eq!(cluster.store.find_missing(&digests).await.unwrap(), vec![], "blobs were lost");
    for (digest, data) in &expected {
        assert_eq!(&cluster.store.get_bytes(digest).await.unwrap(), data, "blob {digest} is not intact");
    }
    for i in 0..steps {
        let action = blob("action", i, nonce).0;
        let output = blob("output", i, nonce).0;
        assert_eq!(cluster.cache.get("", &action).await.unwrap(), Some(result_naming(output)), "step {i}");
    }
    let bytes: u64 = digests.iter().map(Digest::size).sum();
    assert_eq!(cluster.metadata.stored_bytes().await.unwrap(), bytes, "stored bytes are counted once each");
}

/// moto killed while a multipart upload is under way: the write fails
/// with an error that names the bucket, no part of the blob is ever
/// visible, and once S3 is back the same blob is written and read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killed_mid_upload_fails_clearly_shows_nothing_and_recovers() {
    let mut moto = moto_on(free_port());
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let bucket = test_services::unique("kill-");
    let settings = S3Settings {
        multipart_threshold_bytes: 5 << 20,
        part_bytes: 5 << 20,
        part_concurrency: 2,
        max_attempts: 2,
        ..S3Settings::default()
    };
    let s3 = s3_at(&endpoint, &bucket, settings.clone()).await;
    let (metadata, schema) = crate::postgres_metadata::tests::fresh().await;
    let metadata = Arc::new(metadata);
    let cluster = ClusterStore::new(s3, metadata.clone(), None);

    let data: Bytes = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(DigestFunction::Sha256, &data);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes>>(1);
    let upload = {
        let store = cluster.store.clone();
        tokio::spawn(async move {
            let stream = futures::StreamExt::boxed(tokio_stream::wrappers::ReceiverStream::new(receiver));
            store.put(&digest, stream).await
        })
    };
    // 16 MiB taken by the store: parts of the multipart upload are on
    // their way. Then the server dies, and the client keeps sending.
    let chunks: Vec<Bytes> = (0..40).map(|i| data.slice(i << 20..(i + 1) << 20)).collect();
    for chunk in &chunks[..16] {
        sender.send(Ok(chunk.clone())).await.unwrap();
    }
    moto.kill();
    for chunk in &chunks[16..] {
        if sender.send(Ok(chunk.clone())).await.is_err() {
            break;
        }
    }
    drop(sender);
    let error: Error = upload.await.unwrap().expect_err("a write to a dead S3 server succeeded");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.message().contains(&bucket), "the error names the bucket: {error}");

    assert_eq!(cluster.store.find_missing(&[digest]).await.unwrap(), vec![digest], "a half blob is visible");
    assert_eq!(metadata.stored_bytes().await.unwrap(), 0, "a failed upload counts no byte");
    let read = cluster.store.get(&digest, crate::ByteRange::ALL).await.err().expect("a read served a half blob");
    assert_eq!(read.code(), Code::Unavailable, "with S3 down a read fails, retryable: {read}");
    assert!(read.message().contains(&bucket), "the error names the bucket: {read}");

    // S3 is back (moto keeps nothing: its bucket is made again).
    let moto = moto_on(moto.port);
    let s3 = s3_at(&endpoint, &bucket, settings).await;
    assert_eq!(s3.find_missing(&[digest]).await.unwrap(), vec![digest], "no part of the blob reached S3 whole");
    let cluster = ClusterStore::new(s3, metadata.clone(), None);
    cluster.store.put_bytes(&digest, data.clone()).await.unwrap();
    assert!(cluster.store.find_missing(&[digest]).await.unwrap().is_empty());
    assert!(cluster.store.get_bytes(&digest).await.unwrap() == data, "the blob comes back whole");
    assert_eq!(metadata.stored_bytes().await.unwrap(), digest.size());
    drop(moto);
    metadata.drop_schema(&schema).await;
}

/// Redis killed and started again (empty: it keeps nothing on disk) in
/// the middle of a build: every step succeeds, nothing is lost, and the
/// index fills again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_build_loses_nothing() {
    let mut redis = redis_on(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = test_services::unique("outage:");
    let index = RedisIndex::new(&url, prefix.clone(), Duration::from_secs(600)).unwrap();
    let s3 = test_services::s3_store(S3Settings::default()).await;
    let (metadata, schema) = crate::postgres_metadata::tests::fresh().await;
    let cluster = ClusterStore::new(s3, Arc::new(metadata), Some(index));
    let nonce = test_services::unique("");
    let steps = 24;
    for i in 0..steps {
        if i == 8 {
            redis.kill();
        }
        if i == 16 {
            redis = redis_on(redis.port);
        }
        step(&cluster, i, &nonce).await.unwrap_or_else(|e| panic!("step {i} failed with Redis down or back: {e}"));
    }
    assert_nothing_lost(&cluster, steps, &nonce).await;

    // The index is used again once its back-off after the failure is
    // over: blobs asked about are back in Redis.
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let outputs: Vec<Digest> = (0..steps).map(|i| blob("output", i, &nonce).0).collect();
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..50 {
        assert_eq!(cluster.store.find_missing(&outputs).await.unwrap(), vec![]);
        keys = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.unwrap();
        if !keys.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!keys.is_empty(), "the restarted Redis is not used as the index again");
    drop(redis);
    cluster.metadata.drop_schema(&schema).await;
}

/// PostgreSQL stopped (every session ended) in the middle of a build:
/// steps fail with UNAVAILABLE naming PostgreSQL while it is down and
/// nothing half-done is visible; once it is back the build carries on (the
/// pool reconnects), and every blob and cached result is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_build_fails_clearly_then_carries_on() {
    let postgres = OwnPostgres::init();
    let metadata = Arc::new(PostgresMetadata::connect(&postgres.url(), Some("outage")).await.unwrap());
    let s3 = test_services::s3_store(S3Settings::default()).await;
    let cluster = ClusterStore::new(s3, metadata.clone(), None);
    let nonce = test_services::unique("");
    let steps = 16;
    for i in 0..8 {
        step(&cluster, i, &nonce).await.unwrap();
    }
    postgres.stop();
    let error = step(&cluster, 8, &nonce).await.expect_err("a step succeeded with PostgreSQL down");
    assert_eq!(error.code(), Code::Unavailable, "{error}");
    assert!(error.message().contains("PostgreSQL"), "the error names PostgreSQL: {error}");
    postgres.start();
    // A client retries a step that failed UNAVAILABLE; the pool may hand
    // out a connection that died with the old server once.
    let mut attempts = 0;
    while let Err(e) = step(&cluster, 8, &nonce).await {
        attempts += 1;
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(attempts < 5, "the store did not recover after PostgreSQL came back: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 9..steps {
        step(&cluster, i, &nonce).await.unwrap();
    }
    assert_nothing_lost(&cluster, steps, &nonce).await;
}
