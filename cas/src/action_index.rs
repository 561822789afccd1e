use async_trait::async_trait;
use bytes::Bytes;
use memobuild_proto::{Digest, Result};

/// The action cache's entries (encoded ActionResults) in the metadata
/// database, beside the blobs they name: SQLite embedded, PostgreSQL in a
/// cluster, shared by every CAS replica. Keys are what
/// [`crate::ActionCache`] stores results under.
#[async_trait]
pub trait ActionIndex: Send + Sync + 'static {
    /// The entry under `key`, if any.
    async fn get_entry(&self, key: &Digest) -> Result<Option<Bytes>>;

    /// Stores (or replaces) the entry under `key`.
    async fn put_entry(&self, key: &Digest, value: &[u8], now_ms: i64) -> Result<()>;

    /// Removes the entry; `false` when there was none.
    async fn delete_entry(&self, key: &Digest) -> Result<bool>;

    /// The keys among `keys` that have an entry.
    async fn find_entries(&self, keys: &[Digest]) -> Result<Vec<Digest>>;

    /// Moves the last use of an entry forward.
    async fn touch_entry(&self, key: &Digest, now_ms: i64) -> Result<()>;
}
