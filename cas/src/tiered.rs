use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Result};
use tonic::Code;

use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};
use crate::single_flight::SingleFlight;

/// A fast store (local disk) in front of a slow one (S3).
///
/// Reads try the fast store; a miss copies the whole blob from the slow
/// store into the fast one once, however many readers miss it at the same
/// time, then serves the range from there. Writes go through: a blob is
/// written to the fast store, then copied to the slow one, and the write
/// succeeds only when both hold it.
pub struct TieredStore {
    fast: Arc<dyn BlobStore>,
    slow: Arc<dyn BlobStore>,
    fills: SingleFlight,
}

impl TieredStore {
    pub fn new(fast: Arc<dyn BlobStore>, slow: Arc<dyn BlobStore>) -> Self {
        TieredStore { fast, slow, fills: SingleFlight::default() }
    }

    async fn fill(&self, digest: &Digest) -> Result<()> {
        let (fast, slow, digest) = (self.fast.clone(), self.slow.clone(), *digest);
        self.fills
            .run(digest, move || async move {
                if fast.find_missing(&[digest]).await?.is_empty() {
                    return Ok(());
                }
                fast.put(&digest, slow.get(&digest, ByteRange::ALL).await?).await
            })
            .await
    }
}

#[async_trait]
impl BlobStore for TieredStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let not_local = self.fast.find_missing(digests).await?;
        if not_local.is_empty() {
            return Ok(not_local);
        }
        self.slow.find_missing(&not_local).await
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        match self.fast.get(digest, range).await {
            Err(e) if e.code() == Code::NotFound => {}
            other => return other,
        }
        self.fill(digest).await?;
        match self.fast.get(digest, range).await {
            // Gone again already (a small, busy fast store): read through.
            Err(e) if e.code() == Code::NotFound => self.slow.get(digest, range).await,
            other => other,
        }
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        self.fast.put(digest, data).await?;
        let copied = async { self.slow.put(digest, self.fast.get(digest, ByteRange::ALL).await?).await }.await;
        if let Err(e) = copied {
            // The fast store caches the slow one; it must not hold what the slow one lacks.
            if let Err(cleanup) = self.fast.delete(digest).await {
                tracing::warn!(%digest, error = %cleanup, "cannot drop a blob the slow store refused");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let local = self.fast.delete(digest).await?;
        Ok(self.slow.delete(digest).await? || local)
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.fast.mark_used(digest).await?;
        self.slow.mark_used(digest).await
    }

    fn usage(&self) -> Option<Usage> {
        self.slow.usage()
    }

    fn shard_name(&self, digest: &Digest) -> Option<String> {
        self.slow.shard_name(digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store_metrics::StoreMetrics;
    use crate::{test_services, FilesystemStore, MemoryStore, MeteredStore, S3Settings};
    use bytes::Bytes;
    use memobuild_proto::DigestFunction;
    use prometheus::Registry;

    #[tokio::test]
    async fn conformance_filesystem_in_front_of_real_s3() {
        let dir = tempfile::tempdir().unwrap();
        let fast = Arc::new(FilesystemStore::open(dir.path(), false).await.unwrap());
        let slow = Arc::new(test_services::s3_store(S3Settings::default()).await);
        crate::conformance::run(&TieredStore::new(fast, slow)).await;
    }

    #[tokio::test]
    async fn concurrent_misses_read_the_slow_store_once() {
        let metrics = StoreMetrics::register(&Registry::new()).unwrap();
        let s3 = Arc::new(test_services::s3_store(S3Settings::default()).await);
        let data: Bytes = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(DigestFunction::Blake3, &data);
        s3.put_bytes(&digest, data.clone()).await.unwrap();
        let slow = Arc::new(MeteredStore::new(s3, "s3", metrics.clone()));
        let dir = tempfile::tempdir().unwrap();
        let fast = Arc::new(FilesystemStore::open(dir.path(), false).await.unwrap());
        let store = TieredStore::new(fast.clone(), slow);
        let reads = (0..8).map(|i| {
            let range = ByteRange::new(i * 1000, Some(10));
            let store = &store;
            async move { crate::collect(store.get(&digest, range).await.unwrap()).await.unwrap() }
        });
        let got = futures::future::join_all(reads).await;
        for (i, bytes) in got.iter().enumerate() {
            assert_eq!(bytes, &data.slice(i * 1000..i * 1000 + 10));
        }
        assert_eq!(metrics.requests.with_label_values(&["s3", "get", "ok"]).get(), 1);
        assert!(fast.find_missing(&[digest]).await.unwrap().is_empty(), "the blob was not kept locally");
    }

    #[tokio::test]
    async fn a_write_the_slow_store_refuses_leaves_nothing_locally() {
        let fast = Arc::new(MemoryStore::new());
        let refusing = Arc::new(
            test_services::s3_store_on(
                "no-such-bucket-for-tiered",
                S3Settings { max_attempts: 1, ..S3Settings::default() },
            )
            .await,
        );
        let store = TieredStore::new(fast.clone(), refusing);
        let data = Bytes::from_static(b"write through");
        let digest = Digest::of(DigestFunction::Sha256, &data);
        let e = store.put_bytes(&digest, data).await.unwrap_err();
        assert!(e.message().contains("no-such-bucket-for-tiered"), "{e}");
        assert_eq!(fast.find_missing(&[digest]).await.unwrap(), vec![digest]);
    }
}
