use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use memobuild_proto::{Digest, Error, Result};
use parking_lot::RwLock;

use crate::blob_store::{collect, single_chunk, BlobStore, BlobStream, ByteRange, Usage};

/// Blobs in a hash map. For tests and small embedded caches.
#[derive(Default)]
pub struct MemoryStore {
    blobs: RwLock<HashMap<Digest, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let blobs = self.blobs.read();
        Ok(digests.iter().filter(|d| !blobs.contains_key(d)).copied().collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let data = self.blobs.read().get(digest).cloned().ok_or_else(|| Error::blob_not_found(digest))?;
        let (start, end) = range.bounds(digest, data.len() as u64)?;
        Ok(single_chunk(data.slice(start as usize..end as usize)))
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let data = collect(data).await?;
        self.blobs.write().insert(*digest, data);
        Ok(())
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.write().remove(digest).is_some())
    }

    fn usage(&self) -> Option<Usage> {
        let blobs = self.blobs.read();
        Some(Usage { bytes: blobs.values().map(|b| b.len() as u64).sum(), blobs: blobs.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run(&MemoryStore::new()).await;
    }
}
