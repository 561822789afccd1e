use async_trait::async_trait;
use memobuild_proto::{Digest, Result};

/// Durable bookkeeping of which blobs a store holds, how big they are and
/// when each was last used: what LRU eviction needs. Embedded: SQLite;
/// cluster: PostgreSQL.
#[async_trait]
pub trait BlobMetadata: Send + Sync + 'static {
    /// Records that the blob is held (or about to be), used at `now_ms`.
    async fn record(&self, digest: &Digest, now_ms: i64) -> Result<()>;

    /// Moves the last-access time of known blobs forward.
    async fn touch(&self, accesses: &[(Digest, i64)]) -> Result<()>;

    /// Forgets the blob.
    async fn remove(&self, digest: &Digest) -> Result<()>;

    /// Up to `limit` blobs, least recently used first.
    async fn least_recent(&self, limit: usize) -> Result<Vec<Digest>>;

    /// The summed size of all recorded blobs.
    fn total_bytes(&self) -> u64;
}
