use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Result};
use tonic::Code;

use crate::blob_metadata::BlobMetadata;
use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};
use crate::clock::Clock;
use crate::redis_index::RedisIndex;

/// Answers `find_missing` without asking the store underneath (S3 HEAD
/// storms are what S3-backed caches pay most for): from the Redis hot index
/// first, then from the blob metadata (PostgreSQL in a cluster), which is the
/// truth. Blobs found in the metadata are put back into Redis.
///
/// A blob is marked stored only after the store underneath took it whole,
/// and forgotten before it is deleted, so the index never claims a blob
/// that a write has not finished. A read that finds the index wrong (the
/// blob vanished behind its back) corrects it.
pub struct ExistenceCachedStore {
    inner: Arc<dyn BlobStore>,
    index: Arc<dyn BlobMetadata>,
    hot: Option<RedisIndex>,
    clock: Arc<dyn Clock>,
}

impl ExistenceCachedStore {
    pub fn new(
        inner: Arc<dyn BlobStore>,
        index: Arc<dyn BlobMetadata>,
        hot: Option<RedisIndex>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ExistenceCachedStore { inner, index, hot, clock }
    }

    /// Which of `digests` Redis knows; none when it cannot say.
    async fn hot_known(&self, digests: &[Digest]) -> Vec<bool> {
        let Some(hot) = &self.hot else { return vec![false; digests.len()] };
        match hot.contains(digests).await {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!(error = %e, "Redis cannot say which blobs exist; asking the metadata");
                vec![false; digests.len()]
            }
        }
    }

    async fn warm(&self, digests: &[Digest]) {
        let Some(hot) = &self.hot else { return };
        if let Err(e) = hot.insert(digests).await {
            tracing::debug!(error = %e, "not remembering blobs in Redis");
        }
    }

    async fn forget(&self, digest: &Digest) -> Result<()> {
        self.index.remove(digest).await?;
        if let Some(hot) = &self.hot {
            if let Err(e) = hot.remove(digest).await {
                tracing::warn!(%digest, error = %e, "cannot forget a blob in Redis; its key expires by itself");
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for ExistenceCachedStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut known = self.hot_known(digests).await;
        let unknown: Vec<Digest> = digests.iter().zip(&known).filter(|(_, k)| !**k).map(|(d, _)| *d).collect();
        if !unknown.is_empty() {
            let stored: HashSet<Digest> = self.index.find_stored(&unknown).await?.into_iter().collect();
            let found: Vec<Digest> = unknown.into_iter().filter(|d| stored.contains(d)).collect();
            self.warm(&found).await;
            for (digest, known) in digests.iter().zip(known.iter_mut()) {
                *known = *known || stored.contains(digest);
            }
        }
        Ok(digests.iter().zip(known).filter(|(_, k)| !k).map(|(d, _)| *d).collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        match self.inner.get(digest, range).await {
            Err(e) if e.code() == Code::NotFound => {
                if !self.index.find_stored(&[*digest]).await?.is_empty() {
                    tracing::warn!(%digest, "the index listed a blob its store does not hold; forgetting it");
                    self.forget(digest).await?;
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        self.inner.put(digest, data).await?;
        let shard = self.inner.shard_name(digest).unwrap_or_default();
        self.index.mark_stored(digest, &shard, self.clock.now_ms()).await?;
        self.warm(&[*digest]).await;
        Ok(())
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.forget(digest).await?;
        self.inner.delete(digest).await
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.inner.mark_used(digest).await
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }

    fn shard_name(&self, digest: &Digest) -> Option<String> {
        self.inner.shard_name(digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::postgres_metadata::tests::fresh;
    use crate::store_metrics::StoreMetrics;
    use crate::{test_services, MeteredStore, S3Settings, SqliteMetadata, SystemClock};
    use bytes::Bytes;
    use memobuild_proto::DigestFunction;
    use prometheus::Registry;

    /// ExistenceCached over a metered S3 bucket of its own, a fresh
    /// PostgreSQL schema and a Redis key prefix of its own.
    async fn cluster_store() -> (ExistenceCachedStore, StoreMetrics) {
        let metrics = StoreMetrics::register(&Registry::new()).unwrap();
        let s3 =
            MeteredStore::new(Arc::new(test_services::s3_store(S3Settings::default()).await), "s3", metrics.clone());
        let (index, _schema) = fresh().await;
        let hot = RedisIndex::new(&test_services::redis_url(), test_services::unique("test:"), Duration::from_secs(60))
            .unwrap();
        (ExistenceCachedStore::new(Arc::new(s3), Arc::new(index), Some(hot), Arc::new(SystemClock)), metrics)
    }

    fn blobs(n: usize, seed: u8) -> Vec<(Digest, Bytes)> {
        (0..n)
            .map(|i| {
                let data = Bytes::from(format!("blob {seed} {i}"));
                (Digest::of(DigestFunction::Sha256, &data), data)
            })
            .collect()
    }

    fn s3_finds(metrics: &StoreMetrics) -> u64 {
        metrics.requests.with_label_values(&["s3", "find_missing", "ok"]).get()
    }

    #[tokio::test]
    async fn conformance_against_real_s3_postgres_and_redis() {
        crate::conformance::run(&cluster_store().await.0).await;
    }

    #[tokio::test]
    async fn conformance_with_sqlite_and_no_redis() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        let store = ExistenceCachedStore::new(Arc::new(crate::MemoryStore::new()), index, None, Arc::new(SystemClock));
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn known_blobs_are_answered_without_asking_s3() {
        let (store, metrics) = cluster_store().await;
        let present = blobs(50, 1);
        for (digest, data) in &present {
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        let absent: Vec<Digest> = blobs(20, 2).into_iter().map(|(d, _)| d).collect();
        let asked: Vec<Digest> = present.iter().map(|(d, _)| *d).chain(absent.iter().copied()).collect();
        assert_eq!(store.find_missing(&asked).await.unwrap(), absent);
        assert_eq!(s3_finds(&metrics), 0, "FindMissingBlobs went to S3");
    }

    /// Redis is only an index: FLUSHALL in the middle of a build's uploads
    /// and lookups loses no blob and gives no wrong answer.
    #[tokio::test]
    async fn redis_flushall_midway_loses_nothing() {
        let (store, metrics) = cluster_store().await;
        let first = blobs(30, 3);
        for (digest, data) in &first {
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        let first_digests: Vec<Digest> = first.iter().map(|(d, _)| *d).collect();
        assert!(store.find_missing(&first_digests).await.unwrap().is_empty());

        let mut redis =
            redis::Client::open(test_services::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();

        let second = blobs(30, 4);
        for (digest, data) in &second {
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        let all: Vec<Digest> = first_digests.iter().chain(second.iter().map(|(d, _)| d)).copied().collect();
        assert!(store.find_missing(&all).await.unwrap().is_empty(), "a blob was lost with Redis' keys");
        for (digest, data) in first.iter().chain(&second) {
            assert_eq!(&store.get_bytes(digest).await.unwrap(), data);
        }
        let absent = blobs(5, 5)[0].0;
        assert_eq!(store.find_missing(&[absent]).await.unwrap(), vec![absent]);
        assert_eq!(s3_finds(&metrics), 0, "the fallback after the flush went to S3, not PostgreSQL");
    }

    #[tokio::test]
    async fn redis_down_falls_back_to_the_metadata() {
        let (index, _schema) = fresh().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", closed.local_addr().unwrap());
        drop(closed);
        let hot = RedisIndex::new(&url, "down:", Duration::from_secs(60)).unwrap();
        let inner = Arc::new(test_services::s3_store(S3Settings::default()).await);
        let store = ExistenceCachedStore::new(inner, Arc::new(index), Some(hot), Arc::new(SystemClock));
        let (digest, data) = blobs(1, 6).remove(0);
        store.put_bytes(&digest, data.clone()).await.unwrap();
        let absent = blobs(2, 7)[1].0;
        assert_eq!(store.find_missing(&[digest, absent]).await.unwrap(), vec![absent]);
        assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
    }

    #[tokio::test]
    async fn an_index_entry_without_its_blob_is_corrected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        let inner = Arc::new(crate::MemoryStore::new());
        let store = ExistenceCachedStore::new(inner.clone(), index, None, Arc::new(SystemClock));
        let (digest, data) = blobs(1, 8).remove(0);
        store.put_bytes(&digest, data).await.unwrap();
        inner.delete(&digest).await.unwrap();
        assert!(store.find_missing(&[digest]).await.unwrap().is_empty(), "the index does not know yet");
        assert_eq!(store.get(&digest, ByteRange::ALL).await.err().unwrap().code(), Code::NotFound);
        assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
    }
}
