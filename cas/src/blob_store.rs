use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use memobuild_proto::{Digest, Error, Result};

/// A blob's bytes as a stream of chunks. An `Err` item aborts the transfer.
pub type BlobStream = BoxStream<'static, Result<Bytes>>;

/// A byte range of a blob: `offset` and at most `limit` bytes (all when `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub limit: Option<u64>,
}

impl ByteRange {
    pub const ALL: ByteRange = ByteRange { offset: 0, limit: None };

    pub fn new(offset: u64, limit: Option<u64>) -> Self {
        ByteRange { offset, limit }
    }

    /// The `[start, end)` this range selects from a blob of `size` bytes;
    /// OUT_OF_RANGE when the offset lies past the end.
    pub fn bounds(&self, digest: &Digest, size: u64) -> Result<(u64, u64)> {
        if self.offset > size {
            return Err(Error::out_of_range(format!(
                "blob {}: offset {} is past its end ({size} bytes)",
                digest.subject(),
                self.offset
            )));
        }
        let end = match self.limit {
            Some(limit) => size.min(self.offset.saturating_add(limit)),
            None => size,
        };
        Ok((self.offset, end))
    }
}

/// What a store holds, for stores that track it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub blobs: u64,
}

/// A store of blobs keyed by digest. Every backend (memory, filesystem, S3,
/// a remote CAS) implements it, and every feature (verification, eviction,
/// metrics) is a wrapper that implements it around another store.
///
/// Stores do not check that data matches its digest: the action cache keeps
/// arbitrary values under action digests. [`crate::VerifiedStore`] adds the
/// content-addressing checks.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The digests among `digests` that the store does not hold, in order.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// The bytes of `range` of the blob. NOT_FOUND when the store does not
    /// hold it, OUT_OF_RANGE when the offset is past its end.
    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream>;

    /// Stores the blob read from `data`, replacing any value under the same
    /// key. Readers see either the old value or the whole new one, never a
    /// part: when `data` yields an error, nothing is stored and that error is
    /// returned.
    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()>;

    /// Removes the blob. `Ok(false)` when it was not there.
    async fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Records that the blob was just used (an action-cache hit), for
    /// stores that keep last-use times. By default there is nothing to record.
    async fn mark_used(&self, _digest: &Digest) -> Result<()> {
        Ok(())
    }

    /// Bytes and blobs held, for stores that keep exact accounts.
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// The name of the shard that holds (or would hold) the blob, for
    /// sharded stores and the wrappers around one; `None` elsewhere.
    fn shard_name(&self, _digest: &Digest) -> Option<String> {
        None
    }

    /// The whole blob in memory. Callers bound the size they ask for.
    async fn get_bytes(&self, digest: &Digest) -> Result<Bytes> {
        collect(self.get(digest, ByteRange::ALL).await?).await
    }

    /// Stores a blob held in memory.
    async fn put_bytes(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.put(digest, single_chunk(data)).await
    }
}

/// A stream of one chunk.
pub fn single_chunk(data: Bytes) -> BlobStream {
    futures::stream::once(async move { Ok(data) }).boxed()
}

/// Reads a whole stream into memory.
pub async fn collect(stream: BlobStream) -> Result<Bytes> {
    collect_at_most(stream, u64::MAX, "a blob").await
}

/// The whole content-addressed blob in memory, for a blob that must be
/// small (a proto): refused before any read when its digest declares more
/// than `max_bytes`, and cut off should the store yield more.
pub async fn get_bytes_at_most(store: &dyn BlobStore, digest: &Digest, max_bytes: u64, what: &str) -> Result<Bytes> {
    if digest.size() > max_bytes {
        return Err(Error::invalid_argument(format!(
            "{what} {} declares {} bytes, over the {max_bytes}-byte limit of one {what}",
            digest.subject(),
            digest.size()
        )));
    }
    let what = format!("{what} {}", digest.subject());
    collect_at_most(store.get(digest, ByteRange::ALL).await?, max_bytes, &what).await
}

/// Reads a whole stream into memory, failing (INVALID_ARGUMENT naming the
/// limit) as soon as it yields more than `max_bytes`.
pub async fn collect_at_most(mut stream: BlobStream, max_bytes: u64, what: &str) -> Result<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total = total.saturating_add(chunk.len() as u64);
        if total > max_bytes {
            return Err(Error::invalid_argument(format!("{what} holds more than the {max_bytes}-byte limit")));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(prev) => {
                buf.extend_from_slice(&prev);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
