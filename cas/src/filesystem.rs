use std::collections::HashMap;
use std::fs;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::blob_store::{single_chunk, BlobStore, BlobStream, ByteRange, Usage};

/// Chunk size of streamed reads.
const READ_CHUNK: usize = 1 << 20;

/// Blobs as files under a directory:
/// `blobs/{function}/{first two hex digits}/{hash}-{size}`.
///
/// Writes go to `tmp/` and are renamed into place only once complete and
/// synced, so a crash or a concurrent write of the same blob never leaves a
/// torn blob.
///
/// Opened with [`FilesystemStore::open`], one process owns the directory (an
/// exclusive advisory lock on `LOCK`) and an in-memory index, rebuilt by a
/// scan at open, answers `find_missing` and keeps exact byte accounts.
/// Opened with [`FilesystemStore::open_shared`], several processes (local
/// builds on one state dir) use it at once: the index only remembers blobs
/// seen, anything else is looked up on disk, and there are no byte accounts.
pub struct FilesystemStore {
    root: PathBuf,
    sync: bool,
    shared: bool,
    index: RwLock<Index>,
    _lock: fs::File,
}

/// A blob as [`FilesystemStore::list`] finds it on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    /// Bytes on disk.
    pub size: u64,
    /// When it was written or last [`BlobStore::mark_used`].
    pub last_used: SystemTime,
}

#[derive(Default)]
struct Index {
    sizes: HashMap<Digest, u64>,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, digest: Digest, size: u64) {
        let previous = self.sizes.insert(digest, size).unwrap_or(0);
        self.bytes = self.bytes - previous + size;
    }

    fn remove(&mut self, digest: &Digest) -> bool {
        match self.sizes.remove(digest) {
            Some(size) => {
                self.bytes -= size;
                true
            }
            None => false,
        }
    }
}

impl FilesystemStore {
    /// Opens (creating if needed) the store at `root`. With `sync`, blobs
    /// are flushed to disk before they become visible.
    pub async fn open(root: impl Into<PathBuf>, sync: bool) -> Result<Self> {
        Self::open_with(root.into(), sync, false).await
    }

    /// Opens the store for use by several processes at once (see the type's
    /// docs). A process holding it with [`FilesystemStore::open`] keeps
    /// others out, and the other way round.
    pub async fn open_shared(root: impl Into<PathBuf>, sync: bool) -> Result<Self> {
        Self::open_with(root.into(), sync, true).await
    }

    async fn open_with(root: PathBuf, sync: bool, shared: bool) -> Result<Self> {
        let context = format!("opening filesystem store {}", root.display());
        tokio::task::spawn_blocking(move || Self::open_blocking(root, sync, shared))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .context(context)
    }

    fn open_blocking(root: PathBuf, sync: bool, shared: bool) -> Result<Self> {
        fs::create_dir_all(&root)?;
        let lock = fs::File::options().create(true).truncate(false).write(true).open(root.join("LOCK"))?;
        let in_use = || Error::unavailable("the store is in use by another memobuild process".to_string());
        // Alone, a process may clear the temporary files of crashed writers;
        // a shared opener then downgrades its lock so others can join.
        let alone = lock.try_lock().is_ok();
        if !alone && !shared {
            return Err(in_use());
        }
        let tmp = root.join("tmp");
        if alone && tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let mut index = Index::default();
        for function in DigestFunction::ALL {
            let dir = root.join("blobs").join(function.name());
            // Shards are made in order: when the last is there, so are all
            // (a shared opener has nothing to scan).
            if shared && dir.join("ff").is_dir() {
                continue;
            }
            for prefix in 0..=255u8 {
                let shard = dir.join(format!("{prefix:02x}"));
                fs::create_dir_all(&shard)?;
                if !shared {
                    for blob in scan_shard(&shard, function)? {
                        index.insert(blob.digest, blob.size);
                    }
                }
            }
        }
        if shared {
            // Another shared opener may hold the lock exclusively for the
            // moment it clears `tmp/`; an exclusive owner keeps it for good.
            let mut attempts = 0;
            while lock.try_lock_shared().is_err() {
                attempts += 1;
                if attempts > 200 {
                    return Err(in_use());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(FilesystemStore { root, sync, shared, index: RwLock::new(index), _lock: lock })
    }

    /// Every blob on disk, read afresh (also what other processes wrote).
    pub async fn list(&self) -> Result<Vec<StoredBlob>> {
        let root = self.root.clone();
        let context = format!("listing filesystem store {}", root.display());
        tokio::task::spawn_blocking(move || -> Result<Vec<StoredBlob>> {
            let mut blobs = Vec::new();
            for function in DigestFunction::ALL {
                let dir = root.join("blobs").join(function.name());
                for prefix in 0..=255u8 {
                    blobs.extend(scan_shard(&dir.join(format!("{prefix:02x}")), function)?);
                }
            }
            Ok(blobs)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .context(context)
    }

    /// The blob's size from the index, or for a shared store from disk.
    fn size_of(&self, digest: &Digest) -> Option<u64> {
        if let Some(size) = self.index.read().sizes.get(digest) {
            return Some(*size);
        }
        if !self.shared {
            return None;
        }
        let size = fs::metadata(self.path(digest)).ok()?.len();
        self.index.write().insert(*digest, size);
        Some(size)
    }

    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs").join(digest.function().name()).join(&hex[..2]).join(format!("{hex}-{}", digest.size()))
    }

    /// Writes `data` to a new temporary file; returns its path and length.
    /// A blob that arrives in one chunk (as small blobs do) is written in one
    /// blocking call rather than one per step.
    async fn write_temp(&self, mut data: BlobStream) -> Result<(PathBuf, u64)> {
        let path = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let result = async {
            let first = data.next().await.transpose()?;
            let second = match first {
                Some(_) => data.next().await.transpose()?,
                None => None,
            };
            let Some(second) = second else {
                let (target, sync, first) = (path.clone(), self.sync, first.unwrap_or_default());
                let len = first.len() as u64;
                blocking(move || write_file(&target, &first, sync)).await?;
                return Ok(len);
            };
            let mut file = tokio::fs::File::create(&path).await?;
            let mut len = 0u64;
            let mut chunks = futures::stream::iter(first.into_iter().chain([second]).map(Ok)).chain(data);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                len += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            if self.sync {
                file.sync_data().await?;
            }
            Ok(len)
        }
        .await;
        match result {
            Ok(len) => Ok((path, len)),
            Err(e) => {
                // Best effort: the directory is emptied at the next open anyway.
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }
}

impl FilesystemStore {
    /// A failed read of `digest`'s file as an error; a file gone from disk
    /// is dropped from the index.
    fn read_error(&self, digest: &Digest, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            tracing::warn!(%digest, "blob vanished from disk; dropping it from the index");
            self.index.write().remove(digest);
            return Error::blob_not_found(digest);
        }
        Error::from(e).context(format!("reading blob {}", digest.subject()))
    }
}

/// Bytes `start..end` of the file at `path`.
fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = fs::File::open(path)?;
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let mut data = Vec::with_capacity((end - start) as usize);
    file.take(end - start).read_to_end(&mut data)?;
    Ok(data)
}

/// Creates the file at `path` holding `data`, synced with `sync`.
fn write_file(path: &Path, data: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = fs::File::create(path)?;
    file.write_all(data)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

/// The blobs of one shard directory.
fn scan_shard(shard: &Path, function: DigestFunction) -> Result<Vec<StoredBlob>> {
    let mut blobs = Vec::new();
    for entry in fs::read_dir(shard)? {
        let entry = entry?;
        let name = entry.file_name();
        let parsed = name.to_str().and_then(|n| n.split_once('-')).and_then(|(hash, size)| {
            let size = size.parse().ok()?;
            Digest::parse(function, hash, size).ok()
        });
        match parsed {
            Some(digest) => {
                let metadata = entry.metadata()?;
                blobs.push(StoredBlob { digest, size: metadata.len(), last_used: metadata.modified()? });
            }
            None => tracing::warn!(path = %entry.path().display(), "ignoring unexpected file in store"),
        }
    }
    Ok(blobs)
}

#[async_trait]
impl BlobStore for FilesystemStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        if self.shared {
            return Ok(digests.iter().filter(|d| self.size_of(d).is_none()).copied().collect());
        }
        let index = self.index.read();
        Ok(digests.iter().filter(|d| !index.sizes.contains_key(d)).copied().collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let size = self.size_of(digest).ok_or_else(|| Error::blob_not_found(digest))?;
        let (start, end) = range.bounds(digest, size)?;
        let path = self.path(digest);
        if end - start <= READ_CHUNK as u64 {
            // One chunk's worth is read in one blocking call rather than one per step.
            return match blocking(move || read_range(&path, start, end)).await {
                Ok(data) => Ok(single_chunk(data.into())),
                Err(e) => Err(self.read_error(digest, e)),
            };
        }
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(e) => return Err(self.read_error(digest, e)),
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start)).await?;
        }
        let digest = *digest;
        let stream = ReaderStream::with_capacity(file.take(end - start), READ_CHUNK)
            .map(move |r| r.map_err(|e| Error::from(e).context(format!("reading blob {}", digest.subject()))));
        Ok(stream.boxed())
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let (temp, len) = self.write_temp(data).await?;
        let path = self.path(digest);
        let mut index = self.index.write();
        if let Err(e) = fs::rename(&temp, &path) {
            drop(index);
            let _ = fs::remove_file(&temp);
            return Err(Error::from(e).context(format!("storing blob {}", digest.subject())));
        }
        index.insert(*digest, len);
        Ok(())
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let mut index = self.index.write();
        let present = index.remove(digest);
        match fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(present),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(present),
            Err(e) => Err(Error::from(e).context(format!("deleting blob {}", digest.subject()))),
        }
    }

    /// Sets the blob file's modification time to now: one system call.
    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        filetime::set_file_mtime(self.path(digest), filetime::FileTime::now())
            .map_err(|e| Error::from(e).context(format!("marking blob {} used", digest.subject())))
    }

    fn usage(&self) -> Option<Usage> {
        if self.shared {
            return None;
        }
        let index = self.index.read();
        Some(Usage { bytes: index.bytes, blobs: index.sizes.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesystemStore::open(dir.path(), false).await.unwrap();
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn blobs_and_accounts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = Bytes::from_static(b"persistent");
        let digest = Digest::of(DigestFunction::Blake3, &data);
        {
            let store = FilesystemStore::open(dir.path(), true).await.unwrap();
            store.put_bytes(&digest, data.clone()).await.unwrap();
        }
        // A leftover temporary file, as after a crash mid-write.
        fs::write(dir.path().join("tmp/partial"), b"half a blo").unwrap();
        let store = FilesystemStore::open(dir.path(), true).await.unwrap();
        assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
        assert_eq!(store.usage(), Some(Usage { bytes: 10, blobs: 1 }));
        assert!(!dir.path().join("tmp/partial").exists());
    }

    #[tokio::test]
    async fn shared_openers_see_each_others_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let a = FilesystemStore::open_shared(dir.path(), false).await.unwrap();
        let b = FilesystemStore::open_shared(dir.path(), false).await.unwrap();
        crate::conformance::run(&a).await;
        let data = Bytes::from_static(b"written by a");
        let digest = Digest::of(DigestFunction::Sha256, &data);
        assert_eq!(b.find_missing(&[digest]).await.unwrap(), vec![digest]);
        a.put_bytes(&digest, data.clone()).await.unwrap();
        assert!(b.find_missing(&[digest]).await.unwrap().is_empty());
        assert_eq!(b.get_bytes(&digest).await.unwrap(), data);
        let e = FilesystemStore::open(dir.path(), false).await.err().unwrap();
        assert!(e.message().contains("in use by another memobuild process"), "{e}");
    }

    #[tokio::test]
    async fn list_shows_every_blob_and_mark_used_refreshes_it() {
        let dir = tempfile::tempdir().unwrap();
        let writer = FilesystemStore::open_shared(dir.path(), false).await.unwrap();
        let lister = FilesystemStore::open_shared(dir.path(), false).await.unwrap();
        let data = Bytes::from_static(b"an entry");
        let digest = Digest::of(DigestFunction::Sha256, &data);
        writer.put_bytes(&digest, data).await.unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        filetime::set_file_mtime(writer.path(&digest), filetime::FileTime::from_system_time(old)).unwrap();
        let listed = lister.list().await.unwrap();
        assert_eq!(listed, vec![StoredBlob { digest, size: 8, last_used: old }]);
        lister.mark_used(&digest).await.unwrap();
        let listed = lister.list().await.unwrap();
        assert!(listed[0].last_used > old + std::time::Duration::from_secs(3600), "{listed:?}");
        let absent = Digest::of(DigestFunction::Sha256, b"absent");
        assert!(lister.mark_used(&absent).await.unwrap_err().message().contains(&absent.subject()));
    }

    #[tokio::test]
    async fn second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _store = FilesystemStore::open(dir.path(), false).await.unwrap();
        let e = FilesystemStore::open(dir.path(), false).await.err().unwrap();
        assert!(e.message().contains("in use by another memobuild process"), "{e}");
    }
}
