//! FindMissingBlobs of 1,000 known digests, p50/p99, against the real
//! services `scripts/services.sh` starts (moto, PostgreSQL, Redis): two S3
//! shards asked directly (one HEAD per digest), and ExistenceCached in front
//! of them with and without Redis. Also counts the S3 requests per call.
//!
//! `cargo bench -p memobuild-cas --bench find_missing`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use futures::StreamExt;
use memobuild_cas::{
    connect_postgres, BlobStore, ExistenceCachedStore, MeteredStore, PostgresMetadata, RedisIndex, S3Settings, S3Store,
    Shard, ShardedStore, StoreMetrics, SystemClock,
};
use memobuild_proto::{Digest, DigestFunction};
use prometheus::Registry;

const DIGESTS: usize = 1000;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn measure(name: &str, store: &dyn BlobStore, digests: &[Digest], rounds: usize, metrics: &StoreMetrics) {
    let s3_requests = || -> u64 {
        // A HEAD per digest asked, a request per read or write.
        ["get", "put"].iter().map(|op| metrics.requests.with_label_values(&["s3", op, "ok"]).get()).sum::<u64>()
            + metrics.digests.with_label_values(&["s3", "present"]).get()
            + metrics.digests.with_label_values(&["s3", "missing"]).get()
    };
    // One warm-up call, then the measured ones.
    assert!(store.find_missing(digests).await.unwrap().is_empty());
    let before = s3_requests();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let missing = store.find_missing(digests).await.unwrap();
        times.push(started.elapsed());
        assert!(missing.is_empty());
    }
    let s3_per_call = (s3_requests() - before) as f64 / rounds as f64;
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<44} rounds {rounds:>4}  p50 {:>8.2} ms  p99 {:>8.2} ms  S3 requests/call {s3_per_call:>6.0}",
        ms(at(0.5)),
        ms(at(0.99))
    );
}

#[tokio::main]
async fn main() {
    let metrics = StoreMetrics::register(&Registry::new()).unwrap();
    let settings = S3Settings {
        endpoint: Some(env("MEMOBUILD_TEST_S3", "http://127.0.0.1:9455")),
        region: Some("us-east-1".into()),
        path_style: true,
        create_bucket: true,
        ..S3Settings::default()
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut shards = Vec::new();
    for i in 0..2 {
        let bucket = format!("bench-{i}-{id}");
        let credentials = Credentials::new("bench", "bench", None, None, "bench");
        let store = S3Store::connect_with(bucket.clone(), settings.clone(), Some(credentials)).await.unwrap();
        shards.push(Shard { name: bucket, weight: 1.0, store: Arc::new(store) });
    }
    let s3: Arc<dyn BlobStore> =
        Arc::new(MeteredStore::new(Arc::new(ShardedStore::new(shards).unwrap()), "s3", metrics.clone()));

    let postgres = env("MEMOBUILD_TEST_POSTGRES", "postgres://postgres:postgres@127.0.0.1:5432/test");
    let schema = format!("bench_{id}");
    let index = Arc::new(PostgresMetadata::connect(&postgres, Some(&schema)).await.unwrap());
    let hot = RedisIndex::new(
        &env("MEMOBUILD_TEST_REDIS", "redis://127.0.0.1:6379"),
        format!("bench:{id}:"),
        Duration::from_secs(600),
    )
    .unwrap();
    let cached = ExistenceCachedStore::new(s3.clone(), index.clone(), Some(hot), Arc::new(SystemClock));
    let postgres_only = ExistenceCachedStore::new(s3.clone(), index, None, Arc::new(SystemClock));

    let blobs = (0..DIGESTS).map(|i| {
        let data = Bytes::from(format!("find-missing bench blob {i}"));
        (Digest::of(DigestFunction::Sha256, &data), data)
    });
    let digests: Vec<Digest> = futures::stream::iter(blobs)
        .map(|(digest, data)| {
            let cached = &cached;
            async move {
                cached.put_bytes(&digest, data).await.unwrap();
                digest
            }
        })
        .buffered(16)
        .collect()
        .await;

    println!("FindMissingBlobs, {DIGESTS} digests, all present");
    measure("S3 x2 shards, HEAD per digest (no cache)", s3.as_ref(), &digests, 10, &metrics).await;
    measure("ExistenceCached: PostgreSQL only (no Redis)", &postgres_only, &digests, 200, &metrics).await;
    measure("ExistenceCached: Redis + PostgreSQL", &cached, &digests, 200, &metrics).await;

    let pool = connect_postgres(&postgres, None, 1, "bench cleanup").await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
}
