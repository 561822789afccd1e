use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Error, Result};
use parking_lot::Mutex;
use std::time::Duration;

use crate::blob_metadata::BlobMetadata;
use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};
use crate::clock::Clock;
use crate::eviction_metrics::EvictionMetrics;

/// Access times are buffered in memory and written in batches of this size.
const TOUCH_BATCH: usize = 4096;
/// How long an eviction may take to delete what it removed; a deletion
/// mark older than this is of an evictor that died, and writes ignore it.
const DELETION_GRACE_MS: i64 = 60_000;

/// Blobs removed per metadata query while evicting.
const EVICT_BATCH: usize = 256;

/// Keeps another store under a byte budget by evicting least recently used
/// blobs. When a write takes the total past `max_bytes` (the high
/// watermark), blobs go, oldest first, until the total is at or under
/// `low_watermark_bytes`. Pinned blobs never go.
///
/// The total is over everything the metadata knows (every shard of a
/// sharded store, and every replica sharing a PostgreSQL): one evictor at a
/// time over it all (the metadata's eviction lock, a PostgreSQL advisory
/// lock in a cluster), which reads the total from the database, so replicas
/// never evict on different views nor count one removal twice.
///
/// A blob is recorded in the metadata before it is written, so a crash in
/// between leaves a row without a blob (evicted in its turn) and never a
/// blob that eviction cannot see. Its size counts toward the budget only
/// once the write succeeded: a write that declares a huge size and stalls
/// evicts nothing. Access times are buffered and written in batches.
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
    metrics: Option<EvictionMetrics>,
}

/// What one eviction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Blobs removed (stored or only recorded).
    pub blobs: u64,
    /// Stored bytes freed: only bytes that were really stored count.
    pub freed_bytes: u64,
    /// The total before the pass, read from the metadata under the lock.
    pub total_before: u64,
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
            metrics: None,
        }
    }

    /// Counts what eviction removes into `metrics`.
    pub fn with_metrics(mut self, metrics: EvictionMetrics) -> Self {
        self.metrics = Some(metrics);
        self
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

    /// Returns once no eviction is deleting the bytes of `digest`, which
    /// is recorded already: an eviction that removed its row before that is
    /// still deleting, and would delete what this write is about to put.
    async fn wait_for_deletion(&self, digest: &Digest) -> Result<()> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(2);
        while self.metadata.being_deleted(digest, self.clock.now_ms() - DELETION_GRACE_MS).await? {
            if started.elapsed() > Duration::from_millis(DELETION_GRACE_MS as u64) {
                return Err(Error::unavailable(format!(
                    "blob {digest} is still being deleted by an eviction after {} s",
                    DELETION_GRACE_MS / 1000
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(())
    }

    async fn evict_if_needed(&self) -> Result<()> {
        if self.metadata.total_bytes() <= self.max_bytes {
            return Ok(());
        }
        self.evict().await.map(|_| ())
    }

    /// One eviction pass, if no other runs (in this process or another
    /// sharing the metadata) and the total is over the high watermark:
    /// removes unpinned blobs, least recently used first, until the stored
    /// total is at or under the low watermark.
    pub async fn evict(&self) -> Result<EvictionReport> {
        // One evictor at a time; writers that find it busy carry on.
        let Ok(_local) = self.evicting.try_lock() else {
            return Ok(EvictionReport::default());
        };
        let Some(_lock) = self.metadata.try_lock_eviction().await? else {
            tracing::debug!("another replica is evicting");
            return Ok(EvictionReport::default());
        };
        self.flush().await?;
        let now = self.clock.now_ms();
        self.metadata.drop_expired_pins(now).await?;
        // Under the lock, the database's total is the truth: another
        // replica may have evicted (or written) since this one last looked.
        let total_before = self.metadata.stored_bytes().await?;
        let mut report = EvictionReport { total_before, ..EvictionReport::default() };
        if total_before <= self.max_bytes {
            return Ok(report);
        }
        let to_free = total_before - self.low_watermark_bytes;
        let mut fruitless = 0;
        while report.freed_bytes < to_free && fruitless < 16 {
            let mut candidates = self.metadata.least_recent(EVICT_BATCH, now).await?;
            // Just enough, oldest first: stop once the stored bytes suffice.
            let mut planned = report.freed_bytes;
            let mut keep = 0;
            while keep < candidates.len() && planned < to_free {
                planned += candidates[keep].digest.size();
                keep += 1;
            }
            candidates.truncate(keep);
            if candidates.is_empty() {
                tracing::warn!(
                    total = total_before - report.freed_bytes,
                    low_watermark = self.low_watermark_bytes,
                    "cannot evict down to the low watermark: the rest is pinned"
                );
                break;
            }
            let removed = self.metadata.remove_unpinned(&candidates, now).await?;
            if removed.is_empty() {
                // Every candidate was pinned or used meanwhile: list again.
                fruitless += 1;
                continue;
            }
            fruitless = 0;
            for (digest, stored) in &removed {
                // Forgotten first, so the index never claims a blob being deleted.
                if let Err(e) = self.inner.delete(digest).await {
                    tracing::warn!(%digest, error = %e, "evicted blob could not be deleted from its store");
                }
                report.blobs += 1;
                if *stored {
                    report.freed_bytes += digest.size();
                }
            }
            let digests: Vec<Digest> = removed.iter().map(|(digest, _)| *digest).collect();
            self.metadata.deleted(&digests, self.clock.now_ms() - DELETION_GRACE_MS).await?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.blobs.inc_by(report.blobs);
            metrics.bytes.inc_by(report.freed_bytes);
        }
        tracing::info!(
            evicted = report.blobs,
            freed_bytes = report.freed_bytes,
            total_before,
            "evicted least recently used blobs"
        );
        Ok(report)
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
        let shard = self.inner.shard_name(digest).unwrap_or_default();
        self.metadata.record(digest, &shard, self.clock.now_ms()).await?;
        self.wait_for_deletion(digest).await?;
        if let Err(e) = self.inner.put(digest, data).await {
            if !self.inner.find_missing(&[*digest]).await?.is_empty() {
                self.metadata.remove(digest).await?;
            }
            return Err(e);
        }
        self.metadata.mark_stored(digest, &shard, self.clock.now_ms()).await?;
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

    fn shard_name(&self, digest: &Digest) -> Option<String> {
        self.inner.shard_name(digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::blob_metadata::BlobPins;
    use crate::clock::ManualClock;
    use crate::{MemoryStore, SqliteMetadata};
    use bytes::Bytes;
    use memobuild_proto::DigestFunction;
    use std::collections::HashSet;

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

    /// A memory store whose deletes wait for the test to let them go.
    #[derive(Default)]
    struct HeldDeletes {
        inner: MemoryStore,
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    #[async_trait]
    impl BlobStore for HeldDeletes {
        async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
            self.inner.find_missing(digests).await
        }
        async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
            self.inner.get(digest, range).await
        }
        async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
            self.inner.put(digest, data).await
        }
        async fn delete(&self, digest: &Digest) -> Result<bool> {
            self.entered.notify_one();
            self.release.notified().await;
            self.inner.delete(digest).await
        }
    }

    /// A blob written again while an eviction is deleting it: the write
    /// waits for the deletion, so the bytes it wrote stay, and are counted.
    async fn a_write_during_the_deletion_of_the_same_blob_is_kept(meta: Arc<dyn BlobMetadata>) {
        let clock = Arc::new(ManualClock::new(1_000));
        let inner = Arc::new(HeldDeletes::default());
        let writer = Arc::new(EvictingStore::new(inner.clone(), meta.clone(), clock.clone(), u64::MAX, u64::MAX));
        let evictor = EvictingStore::new(inner.clone(), meta.clone(), clock.clone(), 150, 100);
        let (old, old_data) = blob(1);
        writer.put_bytes(&old, old_data.clone()).await.unwrap();
        clock.advance(10);
        writer.put_bytes(&blob(2).0, blob(2).1).await.unwrap();
        clock.advance(10);

        let eviction = tokio::spawn(async move { evictor.evict().await.unwrap() });
        inner.entered.notified().await;
        let rewrite = {
            let writer = writer.clone();
            let data = old_data.clone();
            tokio::spawn(async move { writer.put_bytes(&old, data).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!rewrite.is_finished(), "the write waits while the eviction deletes the same blob");
        inner.release.notify_one();
        assert_eq!(eviction.await.unwrap().blobs, 1);
        rewrite.await.unwrap().unwrap();
        assert_eq!(writer.get_bytes(&old).await.unwrap(), old_data, "the rewritten bytes are there");
        assert_eq!(meta.find_stored(&[old]).await.unwrap(), vec![old]);
        assert_eq!(meta.stored_bytes().await.unwrap(), 200, "and counted");
    }

    #[tokio::test]
    async fn a_write_during_a_deletion_waits_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        a_write_during_the_deletion_of_the_same_blob_is_kept(meta).await;
    }

    #[tokio::test]
    async fn a_write_during_a_deletion_waits_on_postgres() {
        let (meta, schema) = crate::postgres_metadata::tests::fresh().await;
        let meta = Arc::new(meta);
        a_write_during_the_deletion_of_the_same_blob_is_kept(meta.clone()).await;
        meta.drop_schema(&schema).await;
    }

    /// Two replicas of a cluster: evicting stores over one sharded store,
    /// each with its own connection to one PostgreSQL schema.
    struct Replicas {
        shards: Vec<Arc<MemoryStore>>,
        sharded: Arc<crate::ShardedStore>,
        metadata: Vec<Arc<crate::PostgresMetadata>>,
        schema: String,
        clock: Arc<ManualClock>,
    }

    impl Replicas {
        async fn new(n: usize) -> Replicas {
            let shards: Vec<Arc<MemoryStore>> = (0..2).map(|_| Arc::new(MemoryStore::new())).collect();
            let sharded = Arc::new(
                crate::ShardedStore::new(
                    shards
                        .iter()
                        .enumerate()
                        .map(|(i, store)| crate::Shard {
                            name: format!("shard-{i}"),
                            weight: 1.0,
                            store: store.clone() as Arc<dyn BlobStore>,
                        })
                        .collect(),
                )
                .unwrap(),
            );
            let (first, schema) = crate::postgres_metadata::tests::fresh().await;
            let mut metadata = vec![Arc::new(first)];
            for _ in 1..n {
                let url = crate::test_services::postgres_url();
                metadata.push(Arc::new(crate::PostgresMetadata::connect(&url, Some(&schema)).await.unwrap()));
            }
            Replicas { shards, sharded, metadata, schema, clock: Arc::new(ManualClock::new(1_000)) }
        }

        fn store(&self, replica: usize, max: u64, low: u64) -> Arc<EvictingStore> {
            let metadata = self.metadata[replica].clone();
            Arc::new(EvictingStore::new(self.sharded.clone(), metadata, self.clock.clone(), max, low))
        }

        /// The bytes the shards really hold.
        fn held_bytes(&self) -> u64 {
            self.shards.iter().map(|s| s.usage().unwrap().bytes).sum()
        }
    }

    fn sized_blob(i: u32, len: usize) -> (Digest, Bytes) {
        let data = Bytes::from(format!("{i:08}").repeat(len / 8));
        (Digest::of(DigestFunction::Sha256, &data), data)
    }

    /// Over a sharded store, the total is over every shard: past the high
    /// watermark, the least recently used go until the stored bytes are
    /// at the low watermark, and the per-shard accounts match what each
    /// shard really holds.
    #[tokio::test]
    async fn watermarks_hold_over_all_shards_with_exact_accounts() {
        let replicas = Replicas::new(1).await;
        let store = replicas.store(0, 10_000, 6_000);
        let blobs: Vec<_> = (0..10).map(|i| sized_blob(i, 1000)).collect();
        for (digest, data) in &blobs {
            replicas.clock.advance(10);
            store.put_bytes(digest, data.clone()).await.unwrap();
        }
        replicas.clock.advance(10);
        store.get_bytes(&blobs[0].0).await.unwrap();
        replicas.clock.advance(10);
        let (digest, data) = sized_blob(10, 1000);
        store.put_bytes(&digest, data).await.unwrap();
        // 11,000 > 10,000: down to 6,000, oldest first, blob 0 read lately.
        let all: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        assert_eq!(store.find_missing(&all).await.unwrap(), all[1..6].to_vec());
        assert_eq!(replicas.held_bytes(), 6_000);
        let meta = &replicas.metadata[0];
        assert_eq!(meta.stored_bytes().await.unwrap(), 6_000);
        let by_shard = meta.stored_bytes_by_shard().await.unwrap();
        let real: Vec<(String, u64)> = replicas
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("shard-{i}"), s.usage().unwrap().bytes))
            .filter(|(_, bytes)| *bytes > 0)
            .collect();
        assert_eq!(by_shard, real, "each shard's account is what it holds");
        meta.drop_schema(&replicas.schema).await;
    }

    /// Two replicas evict at once, while a scheduler pins blobs (pin, then
    /// check that the blob is still known, as an Execute does): no blob
    /// pinned and found is removed, and the bytes freed are counted once
    /// (the total ends at the low watermark, not below it twice over).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_replicas_evicting_at_once_keep_pins_and_count_once() {
        let replicas = Replicas::new(3).await;
        let blob_bytes = 1000u64;
        let count = 60u32;
        let filler = replicas.store(0, u64::MAX, u64::MAX);
        let blobs: Vec<_> = (0..count).map(|i| sized_blob(i, blob_bytes as usize)).collect();
        for (digest, data) in &blobs {
            replicas.clock.advance(1);
            filler.put_bytes(digest, data.clone()).await.unwrap();
        }
        // Pinned from the start: every third blob, old ones included.
        let pinned: Vec<Digest> = blobs.iter().step_by(3).map(|(d, _)| *d).collect();
        replicas.metadata[2].pin(&[("operations/early", &pinned)], i64::MAX).await.unwrap();
        let (max, low) = (40_000, 25_000);
        let (a, b) = (replicas.store(0, max, low), replicas.store(1, max, low));
        // The pinner (a scheduler, on a third connection) races the
        // evictors, pinning blobs oldest first.
        let pinner = {
            let meta = replicas.metadata[2].clone();
            let unpinned = blobs.iter().map(|(d, _)| *d).filter(|d| !pinned.contains(d));
            let racing: Vec<Digest> = unpinned.skip(5).take(10).collect();
            tokio::spawn(async move {
                let mut kept = Vec::new();
                for digest in racing {
                    meta.pin(&[("operations/racing", &[digest])], i64::MAX).await.unwrap();
                    if !meta.find_stored(&[digest]).await.unwrap().is_empty() {
                        kept.push(digest);
                    }
                }
                kept
            })
        };
        let evictions: Vec<_> = [a.clone(), b.clone(), a, b]
            .into_iter()
            .map(|store| tokio::spawn(async move { store.evict().await.unwrap() }))
            .collect();
        let mut freed = 0;
        for report in futures::future::join_all(evictions).await {
            freed += report.unwrap().freed_bytes;
        }
        let kept = pinner.await.unwrap();

        let all: Vec<Digest> = blobs.iter().map(|b| b.0).collect();
        let missing: HashSet<Digest> = replicas.sharded.find_missing(&all).await.unwrap().into_iter().collect();
        for digest in pinned.iter().chain(&kept) {
            assert!(!missing.contains(digest), "pinned blob {digest} was evicted");
        }
        let total = replicas.metadata[0].stored_bytes().await.unwrap();
        assert_eq!(total, replicas.held_bytes(), "the metadata counts exactly what the shards hold");
        assert_eq!(total, u64::from(count) * blob_bytes - freed, "freed bytes are counted once");
        assert_eq!(missing.len() as u64 * blob_bytes, freed, "each evicted blob counted once");
        assert!(
            total <= max,
            "the total ends under the high watermark: {total} (freed {freed}, {} pinned while racing)",
            kept.len()
        );
        if total > low {
            // Pins left too little to evict: everything unpinned went.
            let left: Vec<&Digest> =
                all.iter().filter(|d| !missing.contains(d) && !pinned.contains(d) && !kept.contains(d)).collect();
            assert!(left.is_empty(), "stopped at {total} over the low watermark with unpinned blobs left: {left:?}");
        } else {
            assert!(total > low - blob_bytes, "evicted past the low watermark: {total} (freed twice?)");
        }
        replicas.metadata[0].drop_schema(&replicas.schema).await;
    }
}
