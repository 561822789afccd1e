use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{future, stream, StreamExt};
use memobuild_proto::{Digest, Error, Result};
use parking_lot::Mutex;

use crate::blob_store::{single_chunk, BlobStore, BlobStream, ByteRange, Usage};

/// Makes a store content-addressed: every write is hashed and sized as it
/// streams, and a blob whose bytes do not match its digest is never stored.
/// The empty blob is always present, as the REAPI requires.
pub struct VerifiedStore {
    inner: Arc<dyn BlobStore>,
}

impl VerifiedStore {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        VerifiedStore { inner }
    }
}

/// Wraps `data` so that it fails (instead of ending) when its bytes do not
/// hash to `digest`, and fails as soon as it grows past the digest's size.
pub fn verify_stream(digest: Digest, data: BlobStream) -> BlobStream {
    let hasher = Arc::new(Mutex::new(digest.function().hasher()));
    let checked = {
        let hasher = hasher.clone();
        data.map(move |chunk| {
            let chunk = chunk?;
            let mut hasher = hasher.lock();
            if hasher.size() + chunk.len() as u64 > digest.size() {
                return Err(Error::invalid_argument(format!(
                    "blob {}: received more than {} bytes",
                    digest.subject(),
                    digest.size()
                )));
            }
            hasher.update(&chunk);
            Ok(chunk)
        })
    };
    let verdict = stream::once(async move {
        let hasher = std::mem::replace(&mut *hasher.lock(), digest.function().hasher());
        let actual = hasher.finish();
        if actual.size() != digest.size() {
            Err(Error::invalid_argument(format!(
                "blob {}: received {} bytes, the digest says {}",
                digest.subject(),
                actual.size(),
                digest.size()
            )))
        } else if actual != digest {
            Err(Error::invalid_argument(format!("blob {}: data hashes to {}", digest.subject(), actual.hex())))
        } else {
            Ok(Bytes::new())
        }
    })
    .filter(|r| future::ready(r.is_err()));
    checked.chain(verdict).boxed()
}

#[async_trait]
impl BlobStore for VerifiedStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let wanted: Vec<Digest> = digests.iter().filter(|d| d.size() > 0).copied().collect();
        if wanted.is_empty() {
            return Ok(wanted);
        }
        self.inner.find_missing(&wanted).await
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        if *digest == Digest::empty(digest.function()) {
            range.bounds(digest, 0)?;
            return Ok(single_chunk(Bytes::new()));
        }
        self.inner.get(digest, range).await
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let data = verify_stream(*digest, data);
        if digest.size() == 0 {
            // Nothing to store; only check that the data really is empty.
            return crate::blob_store::collect(data).await.map(drop);
        }
        self.inner.put(digest, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.inner.delete(digest).await
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
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
    use crate::MemoryStore;
    use memobuild_proto::DigestFunction;
    use tonic::Code;

    fn store() -> (Arc<MemoryStore>, VerifiedStore) {
        let inner = Arc::new(MemoryStore::new());
        (inner.clone(), VerifiedStore::new(inner))
    }

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run(&store().1).await;
    }

    #[tokio::test]
    async fn rejects_wrong_hash_and_size_and_stores_nothing() {
        let (inner, store) = store();
        let good = Digest::of(DigestFunction::Sha256, b"abc");
        for data in [&b"abd"[..], b"ab", b"abcd"] {
            let e = store.put_bytes(&good, Bytes::copy_from_slice(data)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains(&good.subject()), "{e}");
        }
        assert_eq!(inner.usage().unwrap().blobs, 0);
        store.put_bytes(&good, Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(store.get_bytes(&good).await.unwrap(), "abc");
    }

    #[tokio::test]
    async fn empty_blob_is_always_present() {
        let (_, store) = store();
        for f in DigestFunction::ALL {
            let empty = Digest::empty(f);
            assert!(store.find_missing(&[empty]).await.unwrap().is_empty());
            assert!(store.get_bytes(&empty).await.unwrap().is_empty());
            store.put_bytes(&empty, Bytes::new()).await.unwrap();
        }
    }
}
