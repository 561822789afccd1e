use async_trait::async_trait;
use memobuild_proto::{Digest, DigestFunction, Error, Result};

/// Durable bookkeeping of which blobs a store holds, how big they are, when
/// each was last used and which are pinned: what LRU eviction and the
/// existence index need. Embedded: SQLite; cluster: PostgreSQL, shared by
/// every CAS replica.
///
/// A row is either *recorded* (a write is under way, or was: counted, so
/// eviction sees it) or *stored* (the bytes are known to be in the store;
/// only these answer [`BlobMetadata::find_stored`]).
#[async_trait]
pub trait BlobMetadata: Send + Sync + 'static {
    /// Records that the blob is held (or about to be), used at `now_ms`.
    async fn record(&self, digest: &Digest, now_ms: i64) -> Result<()>;

    /// Records that the blob's bytes are in the store, used at `now_ms`.
    async fn mark_stored(&self, digest: &Digest, now_ms: i64) -> Result<()>;

    /// The digests among `digests` whose bytes are recorded as stored.
    async fn find_stored(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// Moves the last-access time of known blobs forward.
    async fn touch(&self, accesses: &[(Digest, i64)]) -> Result<()>;

    /// Forgets the blob.
    async fn remove(&self, digest: &Digest) -> Result<()>;

    /// Keeps `digests` from eviction until `holder` (an operation or build
    /// id) lets them go. Blobs need not be recorded yet.
    async fn pin(&self, holder: &str, digests: &[Digest]) -> Result<()>;

    /// Drops every pin of `holder`.
    async fn unpin(&self, holder: &str) -> Result<()>;

    /// Up to `limit` unpinned blobs, least recently used first.
    async fn least_recent(&self, limit: usize) -> Result<Vec<Digest>>;

    /// The summed size of all recorded blobs.
    fn total_bytes(&self) -> u64;
}

/// A digest from the `(function, hash, size)` columns of a metadata row.
pub(crate) fn digest_from_columns(function: i64, hash: Vec<u8>, size: i64) -> Result<Digest> {
    let function = DigestFunction::from_proto(function as i32)?;
    let hash: [u8; 32] =
        hash.try_into().map_err(|_| Error::internal("blob metadata: a stored hash is not 32 bytes"))?;
    Ok(Digest::new(function, hash, size as u64))
}
