//! Moving blobs between the store, files and blocking readers and writers.

use std::io::{self, Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use memobuild_cas::{BlobStore, ByteRange};
use memobuild_proto::{Digest, DigestFunction, DigestHasher, Error, Result};
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

/// Manifests, indexes and configs are small; anything bigger is refused.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;

/// The most bytes one layer may decompress to unless configured otherwise
/// (64 GiB, the CAS's largest blob by default): pulls and imports refuse a
/// layer that decompresses to more.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 64 << 30;

/// The blob as a blocking reader, for use inside `spawn_blocking`.
pub(crate) async fn blob_reader(store: &dyn BlobStore, digest: &Digest) -> Result<impl Read + Send + 'static> {
    let stream = store.get(digest, ByteRange::ALL).await?;
    Ok(SyncIoBridge::new(StreamReader::new(stream.map_err(io::Error::other))))
}

/// The whole blob in memory, refused when it is bigger than `limit` bytes.
pub(crate) async fn small_blob(store: &dyn BlobStore, digest: &Digest, limit: u64, what: &str) -> Result<Bytes> {
    if digest.size() > limit {
        return Err(Error::invalid_argument(format!(
            "{what} sha256:{} is {} bytes, more than the {limit} allowed",
            digest.hex(),
            digest.size()
        )));
    }
    store.get_bytes(digest).await.map_err(|e| e.context(format!("reading {what} sha256:{}", digest.hex())))
}

/// Stores the content of `file` (from its start) under `digest`.
pub(crate) async fn put_file(store: &dyn BlobStore, digest: &Digest, mut file: std::fs::File) -> Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let stream = ReaderStream::new(tokio::fs::File::from_std(file)).map_err(Error::from).boxed();
    store.put(digest, stream).await
}

/// Turns an I/O error back into the [`Error`] it carries, if any.
pub(crate) fn io_error(e: io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(inner) => inner.clone(),
        None => Error::from(e),
    }
}

/// Runs blocking work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}

/// A writer that hashes (SHA-256) and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: DigestHasher,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: DigestHasher::new(DigestFunction::Sha256) }
    }

    pub(crate) fn finish(self) -> (W, Digest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes (SHA-256) what is read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: DigestHasher,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader { inner, hasher: DigestHasher::new(DigestFunction::Sha256) }
    }

    /// Reads what is left (such as a tar's end padding) and returns the digest.
    pub(crate) fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A reader that fails with `error` as soon as `inner` yields more than
/// `limit` bytes: what a small compressed blob turns into is bounded by
/// this, not by the blob.
pub(crate) struct CappedReader<R> {
    inner: R,
    left: u64,
    error: Error,
}

impl<R: Read> CappedReader<R> {
    pub(crate) fn new(inner: R, limit: u64, error: Error) -> Self {
        CappedReader { inner, left: limit, error }
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit is enough to know it is passed.
        let room = usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let n = self.inner.read(&mut buf[..len])?;
        if n as u64 > self.left {
            return Err(io::Error::other(self.error.clone()));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `sha256:<hex>`.
pub(crate) fn oci_digest(digest: &Digest) -> String {
    format!("sha256:{}", digest.hex())
}

/// Parses `sha256:<hex>` with the size a descriptor gives.
pub(crate) fn parse_oci_digest(text: &str, size: i64) -> Result<Digest> {
    match text.split_once(':') {
        Some(("sha256", hex)) => Digest::parse(DigestFunction::Sha256, hex, size),
        Some((algorithm, _)) => {
            Err(Error::invalid_argument(format!("digest {text}: unsupported algorithm {algorithm}, only sha256")))
        }
        None => Err(Error::invalid_argument(format!("digest {text}: expected sha256:<hex>"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_capped_reader_passes_the_limit_exactly_and_fails_past_it() {
        let data = vec![7u8; 10_000];
        let mut out = Vec::new();
        CappedReader::new(&data[..], 10_000, Error::invalid_argument("too big")).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let err = CappedReader::new(&data[..], 9_999, Error::invalid_argument("too big"))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(io_error(err), Error::invalid_argument("too big"));
    }
}
