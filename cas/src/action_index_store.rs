use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Error, Result};

use crate::action_index::ActionIndex;
use crate::blob_store::{collect_at_most, single_chunk, BlobStore, BlobStream, ByteRange};
use crate::clock::Clock;

/// The largest entry kept: ActionResults are small (digests and paths).
const MAX_ENTRY_BYTES: u64 = 16 << 20;

/// The [`BlobStore`] face of an [`ActionIndex`], for [`crate::ActionCache`]
/// to keep its results in the metadata database.
pub struct ActionIndexStore {
    index: Arc<dyn ActionIndex>,
    clock: Arc<dyn Clock>,
}

impl ActionIndexStore {
    pub fn new(index: Arc<dyn ActionIndex>, clock: Arc<dyn Clock>) -> Self {
        ActionIndexStore { index, clock }
    }
}

#[async_trait]
impl BlobStore for ActionIndexStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let present: HashSet<Digest> = self.index.find_entries(digests).await?.into_iter().collect();
        Ok(digests.iter().filter(|d| !present.contains(d)).copied().collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let value = self
            .index
            .get_entry(digest)
            .await?
            .ok_or_else(|| Error::not_found(format!("action cache entry {digest} not found")))?;
        let (start, end) = range.bounds(digest, value.len() as u64)?;
        Ok(single_chunk(value.slice(start as usize..end as usize)))
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let value = collect_at_most(data, MAX_ENTRY_BYTES, &format!("action cache entry {digest}")).await?;
        self.index.put_entry(digest, &value, self.clock.now_ms()).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.index.delete_entry(digest).await
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.index.touch_entry(digest, self.clock.now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{SqliteMetadata, SystemClock};

    #[tokio::test]
    async fn conformance_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        crate::conformance::run(&ActionIndexStore::new(index, Arc::new(SystemClock))).await;
    }

    #[tokio::test]
    async fn conformance_on_real_postgres() {
        let (index, schema) = crate::postgres_metadata::tests::fresh().await;
        let index = Arc::new(index);
        crate::conformance::run(&ActionIndexStore::new(index.clone(), Arc::new(SystemClock))).await;
        index.drop_schema(&schema).await;
    }

    /// The action cache in PostgreSQL over an evicting CAS whose metadata
    /// shares the database: once eviction takes an output, its entry is a
    /// miss, and an entry whose blobs stay is a hit.
    #[tokio::test]
    async fn an_entry_whose_blobs_were_evicted_is_not_served() {
        use crate::action_results::ActionResults;
        use crate::{ActionCache, EvictingStore, ManualClock, MemoryStore};
        use memobuild_proto::reapi::{ActionResult, OutputFile};
        use memobuild_proto::DigestFunction;

        let (meta, schema) = crate::postgres_metadata::tests::fresh().await;
        let meta = Arc::new(meta);
        let clock = Arc::new(ManualClock::new(1_000));
        let cas = Arc::new(EvictingStore::new(Arc::new(MemoryStore::new()), meta.clone(), clock.clone(), 2_500, 1_500));
        let cache = ActionCache::new(Arc::new(ActionIndexStore::new(meta.clone(), clock.clone())), cas.clone());
        let blob = |seed: u8| {
            let data = bytes::Bytes::from(vec![seed; 1000]);
            (Digest::of(DigestFunction::Sha256, &data), data)
        };
        let entry = |output: Digest| ActionResult {
            output_files: vec![OutputFile {
                path: "out".into(),
                digest: Some(output.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (old, old_data) = blob(1);
        let (action_old, action_new) = (blob(10).0, blob(11).0);
        cas.put_bytes(&old, old_data).await.unwrap();
        cache.update("", &action_old, &entry(old)).await.unwrap();
        assert_eq!(cache.get("", &action_old).await.unwrap(), Some(entry(old)), "served while its output is there");

        for seed in [2, 3] {
            clock.advance(10);
            let (digest, data) = blob(seed);
            cas.put_bytes(&digest, data).await.unwrap();
        }
        // 3,000 bytes > 2,500: eviction took the oldest outputs.
        assert_eq!(cas.find_missing(&[old]).await.unwrap(), vec![old]);
        let (kept, _) = blob(3);
        cache.update("", &action_new, &entry(kept)).await.unwrap();
        assert_eq!(cache.get("", &action_old).await.unwrap(), None, "an entry naming an evicted blob is a miss");
        assert_eq!(cache.get("", &action_new).await.unwrap(), Some(entry(kept)));
        meta.drop_schema(&schema).await;
    }
}
