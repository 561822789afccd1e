//! `s3-shards`: upload and download MB/s of MemoBuild's sharded S3 store
//! (the `s3_shards` store of `deploy/config/cluster.toml`), with 1, 2, 4
//! ... shards of one bucket each, against any S3-compatible endpoint. It
//! measures the store itself, without a gRPC server in front: blobs go
//! through `ShardedStore` to `S3Store` (multipart above the threshold).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use memobuild_cas::{BlobStore, S3Settings, S3Store, Shard, ShardedStore};
use memobuild_proto::{Digest, DigestFunction};
use serde::Serialize;

pub struct S3ShardsOptions {
    pub endpoint: String,
    pub shard_counts: Vec<usize>,
    pub blob_bytes: u64,
    pub blobs: usize,
    pub concurrency: usize,
    pub seed: u64,
}

#[derive(Serialize)]
pub struct ShardRun {
    pub shards: usize,
    /// Blobs (and bytes) each shard got, by rendezvous hashing.
    pub blobs_per_shard: Vec<usize>,
    pub put_seconds: f64,
    pub get_seconds: f64,
    /// MB (10^6 bytes) per second over all shards.
    pub put_mb_per_s: f64,
    pub get_mb_per_s: f64,
    /// The same divided by the number of shards.
    pub put_mb_per_s_per_shard: f64,
    pub get_mb_per_s_per_shard: f64,
}

#[derive(Serialize)]
pub struct S3ShardsReport {
    pub endpoint: String,
    pub blob_bytes: u64,
    pub blobs: usize,
    pub concurrency: usize,
    pub runs: Vec<ShardRun>,
}

fn blob(seed: u64, i: usize, len: u64) -> (Digest, Bytes) {
    // Distinct per run and blob; cheap to make (not compressible by anyone on the way).
    let mut state = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut data = Vec::with_capacity(len as usize);
    while (data.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len as usize);
    let data = Bytes::from(data);
    (Digest::of(DigestFunction::Sha256, &data), data)
}

async fn sharded(options: &S3ShardsOptions, shards: usize) -> anyhow::Result<ShardedStore> {
    let settings = S3Settings {
        endpoint: Some(options.endpoint.clone()),
        region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
        path_style: true,
        create_bucket: true,
        ..S3Settings::default()
    };
    let mut list = Vec::new();
    for i in 0..shards {
        let bucket = format!("loadtest-{:x}-{shards}-{i}", options.seed);
        let store = S3Store::connect(bucket.clone(), settings.clone()).await.with_context(|| bucket.clone())?;
        list.push(Shard { name: bucket, weight: 1.0, store: Arc::new(store) });
    }
    Ok(ShardedStore::new(list)?)
}

pub async fn run(options: S3ShardsOptions) -> anyhow::Result<S3ShardsReport> {
    let mut runs = Vec::new();
    for &shards in &options.shard_counts {
        let store = Arc::new(sharded(&options, shards).await?);
        let seed = options.seed.wrapping_add(shards as u64);
        let blobs: Vec<(Digest, Bytes)> = (0..options.blobs).map(|i| blob(seed, i, options.blob_bytes)).collect();
        let mut blobs_per_shard = vec![0; shards];
        for (digest, _) in &blobs {
            blobs_per_shard[store.shard_of(digest)] += 1;
        }
        let started = Instant::now();
        futures::stream::iter(blobs.iter().cloned())
            .map(|(digest, data)| {
                let store = store.clone();
                async move { store.put_bytes(&digest, data).await.with_context(|| format!("writing {digest}")) }
            })
            .buffer_unordered(options.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let put_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        futures::stream::iter(blobs.iter().cloned())
            .map(|(digest, data)| {
                let store = store.clone();
                async move {
                    let read = store.get_bytes(&digest).await.with_context(|| format!("reading {digest}"))?;
                    anyhow::ensure!(read == data, "blob {digest} came back different");
                    Ok(())
                }
            })
            .buffer_unordered(options.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let get_seconds = started.elapsed().as_secs_f64();
        for (digest, _) in &blobs {
            store.delete(digest).await.with_context(|| format!("deleting {digest}"))?;
        }
        let mb = (options.blob_bytes * options.blobs as u64) as f64 / 1e6;
        runs.push(ShardRun {
            shards,
            blobs_per_shard,
            put_seconds,
            get_seconds,
            put_mb_per_s: mb / put_seconds,
            get_mb_per_s: mb / get_seconds,
            put_mb_per_s_per_shard: mb / put_seconds / shards as f64,
            get_mb_per_s_per_shard: mb / get_seconds / shards as f64,
        });
    }
    Ok(S3ShardsReport {
        endpoint: options.endpoint,
        blob_bytes: options.blob_bytes,
        blobs: options.blobs,
        concurrency: options.concurrency,
        runs,
    })
}
