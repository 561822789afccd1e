use std::any::Any;

use async_trait::async_trait;
use memobuild_proto::{Digest, DigestFunction, Error, Result};

/// Keeps blobs from eviction while something needs them: a queued or
/// running action, an unfinished build. Each pin has a holder (an operation
/// or build id) and an expiry, so pins of a holder that crashed lapse by
/// themselves; a live holder renews them.
#[async_trait]
pub trait BlobPins: Send + Sync + 'static {
    /// Keeps each holder's digests from eviction until it lets them go or
    /// `until_ms` passes, all at once. Blobs need not be recorded yet. A
    /// holder and digest appear at most once.
    async fn pin(&self, pins: &[(&str, &[Digest])], until_ms: i64) -> Result<()>;

    /// Moves the expiry of every pin of `holders` to `until_ms`.
    async fn renew(&self, holders: &[String], until_ms: i64) -> Result<()>;

    /// Drops every pin of `holders`.
    async fn unpin(&self, holders: &[String]) -> Result<()>;
}

/// A blob offered for eviction, with the access time it was listed at: if
/// it is used after that, it is no longer a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvictionCandidate {
    pub digest: Digest,
    pub last_access: i64,
}

/// Held while this process evicts: no other process sharing the metadata
/// evicts until it is dropped (a PostgreSQL advisory lock, released with
/// its transaction; ended with the connection, should the process die).
pub struct EvictionLock(#[allow(dead_code)] Box<dyn Any + Send>);

impl EvictionLock {
    pub(crate) fn new(held: impl Any + Send) -> Self {
        EvictionLock(Box::new(held))
    }
}

/// Durable bookkeeping of which blobs a store holds, how big they are, on
/// which shard, when each was last used and which are pinned: what LRU
/// eviction and the existence index need. Embedded: SQLite; cluster:
/// PostgreSQL, shared by every CAS replica.
///
/// A row is either *recorded* (a write is under way, or was: listed for
/// eviction, but not counted) or *stored* (the bytes are known to be in the
/// store: counted, and only these answer [`BlobMetadata::find_stored`]).
#[async_trait]
pub trait BlobMetadata: BlobPins {
    /// Records that the blob is held (or about to be) on `shard`, used at `now_ms`.
    async fn record(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()>;

    /// Records that the blob's bytes are in the store on `shard`, used at `now_ms`.
    async fn mark_stored(&self, digest: &Digest, shard: &str, now_ms: i64) -> Result<()>;

    /// The digests among `digests` whose bytes are recorded as stored.
    async fn find_stored(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// Moves the last-access time of known blobs forward.
    async fn touch(&self, accesses: &[(Digest, i64)]) -> Result<()>;

    /// Forgets the blob.
    async fn remove(&self, digest: &Digest) -> Result<()>;

    /// Up to `limit` blobs not pinned at `now_ms`, least recently used
    /// first: stored blobs, and recorded ones whose write began before
    /// `now_ms - WRITE_GRACE_MS` (a write that long under way has failed).
    async fn least_recent(&self, limit: usize, now_ms: i64) -> Result<Vec<EvictionCandidate>>;

    /// Forgets those of `candidates` that are still not pinned at `now_ms`
    /// and were not used since they were listed, atomically against
    /// [`BlobPins::pin`]: a blob pinned before this returns is never
    /// removed. Returns the removed blobs, each with whether its bytes were
    /// stored (so counted). Each is marked as being deleted, from `now_ms`
    /// until [`BlobMetadata::deleted`].
    async fn remove_unpinned(&self, candidates: &[EvictionCandidate], now_ms: i64) -> Result<Vec<(Digest, bool)>>;

    /// Ends the deletion of `digests` (their bytes are gone from the store),
    /// and of any whose deletion began before `stale_ms` (its evictor died).
    async fn deleted(&self, digests: &[Digest], stale_ms: i64) -> Result<()>;

    /// Whether the bytes of `digest` are being deleted by an eviction that
    /// began at `stale_ms` or later. A write of that blob waits until not,
    /// or the deletion could remove the bytes it has just written.
    async fn being_deleted(&self, digest: &Digest, stale_ms: i64) -> Result<bool>;

    /// Drops pins that expired before `now_ms` (their holders are gone).
    async fn drop_expired_pins(&self, now_ms: i64) -> Result<u64>;

    /// The eviction lock, if no other process holds it.
    async fn try_lock_eviction(&self) -> Result<Option<EvictionLock>>;

    /// The summed size of all stored blobs, read from the database (and
    /// this process's view of it brought up to date).
    async fn stored_bytes(&self) -> Result<u64>;

    /// Stored bytes per shard, by shard name (`""` for an unsharded store).
    async fn stored_bytes_by_shard(&self) -> Result<Vec<(String, u64)>>;

    /// This process's view of the summed size of all stored blobs: moved by
    /// its own writes at once, by other processes' when read back.
    fn total_bytes(&self) -> u64;
}

/// How long a write may take before its recorded row can be evicted.
pub const WRITE_GRACE_MS: i64 = 3_600_000;

/// A digest from the `(function, hash, size)` columns of a metadata row.
pub(crate) fn digest_from_columns(function: i64, hash: Vec<u8>, size: i64) -> Result<Digest> {
    let function = DigestFunction::from_proto(function as i32)?;
    let hash: [u8; 32] =
        hash.try_into().map_err(|_| Error::internal("blob metadata: a stored hash is not 32 bytes"))?;
    Ok(Digest::new(function, hash, size as u64))
}
