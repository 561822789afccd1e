use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Result};
use parking_lot::Mutex;

use crate::blob_metadata::BlobMetadata;
use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};
use crate::clock::Clock;

/// Access times are buffered in memory and written in batches of this size.
const TOUCH_BATCH: usize = 4096;
/// Blobs removed per metadata query while evicting.
const EVICT_BATCH: usize = 256;

/// Keeps another store under a byte budget by evicting least recently used
/// blobs. When a write takes the total past `max_bytes`, blobs go, oldest
/// first, until the total is at or under `low_watermark_bytes`.
///
/// A blob is recorded in the metadata before it is written, so a crash in
/// between leaves a row without a blob (evicted in its turn) and never a
/// blob that eviction cannot see. Its size counts toward the budget only
/// once the write succeeded: a write that declares a huge size and stalls
/// evicts nothing.
pub struct EvictingStore {
    inner: Arc<dyn BlobStore>,
    metadata: Arc<dyn BlobMetadata>,
    clock: Arc<dyn Clock>,
    max_bytes: u64,
    low_watermark_bytes: u64,
    touched: Arc<Mutex<HashMap<Digest, i64>>>,
    /// Whether a background flush of `touched` is running.
    flushing: Arc<AtomicBool>,
    evicting: tokio::sync::Mutex<()>,
}

impl EvictingStore {
    pub fn new(
        inner: Arc<dyn BlobStore>,
        metadata: Arc<dyn BlobMetadata>,
        clock: Arc<dyn Clock>,
        max_bytes: u64,
        low_watermark_bytes: u64,
    ) -> Self {
        EvictingStore {
            inner,
            metadata,
            clock,
            max_bytes,
            low_watermark_bytes: low_watermark_bytes.min(max_bytes),
            touched: Arc::default(),
            flushing: Arc::default(),
            evicting: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes buffered access times to the metadata.
    pub async fn flush(&self) -> Result<()> {
        let batch: Vec<(Digest, i64)> = self.touched.lock().drain().collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.metadata.touch(&batch).await
    }

    /// Buffers access times. A full buffer is written by one background
    /// task at a time, so no request waits on the database and writes never
    /// pile up: while one runs, the buffer keeps absorbing touches.
    fn touch(&self, digests: impl IntoIterator<Item = Digest>) {
        let now = self.clock.now_ms();
        let full = {
            let mut touched = self.touched.lock();
            touched.extend(digests.into_iter().map(|d| (d, now)));
            touched.len() >= TOUCH_BATCH
        };
        if !full || self.flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (touched, flushing, metadata) = (self.touched.clone(), self.flushing.clone(), self.metadata.clone());
        tokio::spawn(async move {
            loop {
                let batch: Vec<(Digest, i64)> = touched.lock().drain().collect();
                if let Err(e) = metadata.touch(&batch).await {
                    tracing::warn!(error = %e, "recording blob access times failed");
                }
                if touched.lock().len() < TOUCH_BATCH {
                    break;
                }
            }
            flushing.store(false, Ordering::SeqCst);
        });
    }

    async fn evict_if_needed(&self) -> Result<()> {
        if self.metadata.total_bytes() <= self.max_bytes {
            return Ok(());
        }
        // One evictor at a time; writers that find it busy carry on.
        let Ok(_guard) = self.evicting.try_lock() else {
            return Ok(());
        };
        self.flush().await?;
        let before = self.metadata.total_bytes();
        let mut evicted = 0u64;
        while self.metadata.total_bytes() > self.low_watermark_bytes {
            let victims = self.metadata.least_recent(EVICT_BATCH).await?;
            if victims.is_empty() {
                break;
            }
            for digest in victims {
                self.inner.delete(&digest).await?;
                self.metadata.remove(&digest).await?;
                evicted += 1;
                if self.metadata.total_bytes() <= self.low_watermark_bytes {
                    break;
                }
            }
        }
        tracing::info!(
            evicted,
            freed_bytes = before - self.metadata.total_bytes(),
            "evicted least recently used blobs"
        );
        Ok(())
    }
}

#[async_trait]
impl BlobStore for EvictingStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let missing = self.inner.find_missing(digests).await?;
        // What a client has just been told is present must not be the next to go.
        let absent: HashSet<&Digest> = missing.iter().collect();
        self.touch(digests.iter().filter(|d| !absent.contains(d)).copied());
        Ok(missing)
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let stream = self.inner.get(digest, range).await?;
        self.touch([*digest]);
        Ok(stream)
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        self.metadata.record(digest, self.clock.now_ms()).await?;
        if let Err(e) = self.inner.put(digest, data).await {
            if !self.inner.find_missing(&[*digest]).await?.is_empty() {
                self.metadata.remove(digest).await?;
            }
            return Err(e);
        }
        self.metadata.mark_stored(digest, self.clock.now_ms()).await?;
        self.evict_if_needed().await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let present = self.inner.delete(digest).await?;
        self.metadata.remove(digest).await?;
        Ok(present)
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.touch([*digest]);
        self.inner.mark_used(digest).await
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::ManualClock;
    use crate::{MemoryStore, SqliteMetadata};
    use bytes::Bytes;
    use memobuild_proto::DigestFunction;

    async fn store(dir: &std::path::Path, max: u64, low: u64) -> (Arc<ManualClock>, EvictingStore) {
        let clock = Arc::new(ManualClock::new(1_000));
        let meta = Arc::new(SqliteMetadata::open(&dir.join("meta.db")).await.unwrap());
        let store = EvictingStore::new(Arc::new(MemoryStore::new()), meta, clock.clone(), max, low);
        (clock, store)
    }

    fn blob(i: u8) -> (Digest, Bytes) {
        let data = Bytes::from(vec![i; 100]);
        (Digest::of(DigestFunction::Sha256, &data), data)
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run(&store(dir.path(), 1 << 40, 1 << 40).await.1).await;
    }

    #[tokio::test]
    async fn evicts_least_recently_used_down_to_the_low_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, store) = store(dir.path(), 1000, 600).await;
        let blobs: Vec<_> = (0..10).map(blob).collect();
        for (digest, data) in &blobs {
            clock.advance(10);
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        // Reading blob 0 makes it the most recently used.
        clock.advance(10);
        store.get_bytes(&blobs[0].0).await.unwrap();
        clock.advance(10);
        let (digest, data) = blob(10);
        store.put_bytes(&digest, data).await.unwrap();
        // 1100 bytes > 1000: evict down to 600, oldest first (1, 2, 3, 4, 5).
        let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let missing = store.find_missing(&all).await.unwrap();
        assert_eq!(missing, all[1..6].to_vec());
        assert_eq!(store.usage().unwrap().bytes, 600);
    }

    #[tokio::test]
    async fn a_stalled_write_of_a_huge_declared_size_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, store) = store(dir.path(), 1000, 600).await;
        let store = Arc::new(store);
        let blobs: Vec<_> = (0..5).map(blob).collect();
        for (digest, data) in &blobs {
            clock.advance(10);
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        let huge = Digest::new(DigestFunction::Sha256, [7; 32], 1 << 40);
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes>>(1);
        sender.send(Ok(Bytes::from_static(b"a few bytes"))).await.unwrap();
        let stalled = {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = futures::StreamExt::boxed(tokio_stream::wrappers::ReceiverStream::new(receiver));
                store.put(&huge, stream).await
            })
        };
        // Once the store has taken the first chunk, the write is under way.
        while sender.capacity() == 0 {
            tokio::task::yield_now().await;
        }
        let (digest, data) = blob(5);
        store.put_bytes(&digest, data).await.unwrap();
        let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        assert!(store.find_missing(&all).await.unwrap().is_empty(), "nothing was evicted");
        // The client goes away: the write fails and nothing of it counts.
        sender.send(Err(memobuild_proto::Error::unavailable("client gone"))).await.unwrap();
        assert!(stalled.await.unwrap().is_err());
        clock.advance(10);
        store.put_bytes(&blob(6).0, blob(6).1).await.unwrap();
        assert!(store.find_missing(&all).await.unwrap().is_empty(), "still nothing evicted");
    }
}
