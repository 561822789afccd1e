use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use memobuild_cas::{get_bytes_at_most, BlobStore, ByteRange};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;

/// One cache entry: a blob's content with one of the two modes it can
/// have in an input root.
/// Blobs up to this size are downloaded into memory and written to the
/// cache in one blocking call (protos, small files); larger ones stream to
/// disk.
const IN_MEMORY_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub digest: Digest,
    pub executable: bool,
}

impl CacheKey {
    fn mode(&self) -> u32 {
        if self.executable {
            0o555
        } else {
            0o444
        }
    }
}

/// What the cache holds and how it has served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    /// Lookups served from disk.
    pub hits: u64,
    /// Lookups that fetched from the CAS (or copied the other mode's entry).
    pub misses: u64,
    pub evictions: u64,
}

/// A local content-addressed file cache in front of the CAS, bounded in
/// bytes with least-recently-used eviction. Input roots are built by
/// hardlinking its files, so a blob is fetched once per worker, not once
/// per action.
///
/// Entries are read-only (0444, or 0555 for executables: hardlinks share
/// their mode, so each mode is its own entry) and, when the worker is root,
/// owned by another user (`owner`): a sandboxed command without
/// capabilities then gets EACCES writing them and EPERM changing their
/// mode. Each entry's size, mode and mtime are checked before it is used
/// again; an entry that changed is thrown away and fetched anew.
///
/// Layout: `{root}/{first two hex digits}/{function}-{hash}-{size}[-x]`,
/// downloads in `{root}/tmp`. The index is rebuilt from disk at open.
#[derive(Clone)]
pub struct FileCache {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    cas: Arc<dyn BlobStore>,
    max_bytes: u64,
    owner: Option<(u32, u32)>,
    state: Mutex<State>,
    /// One lock per blob being fetched, so concurrent lookups of the same
    /// blob (in either mode, from any action) fetch it once.
    fetches: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    /// Last use -> key, oldest first.
    lru: BTreeMap<u64, CacheKey>,
    clock: u64,
    stats: CacheStats,
}

struct Entry {
    last_use: u64,
    pins: usize,
    mtime: Option<SystemTime>,
    /// Tells a re-fetched entry from the one it replaced, so that pins on
    /// the old one do not unpin the new one.
    generation: u64,
}

/// A pinned entry, with its bytes when they came along.
struct Held {
    pin: CachePin,
    data: Option<Bytes>,
}

/// Keeps an entry from being evicted while its file is being linked or read.
pub struct CachePin {
    cache: Arc<Inner>,
    key: CacheKey,
    generation: u64,
    path: PathBuf,
}

impl CachePin {
    /// The entry's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key(&self) -> CacheKey {
        self.key
    }
}

impl Drop for CachePin {
    fn drop(&mut self) {
        {
            let mut state = self.cache.state.lock();
            if let Some(entry) = state.entries.get_mut(&self.key) {
                if entry.generation == self.generation {
                    entry.pins = entry.pins.saturating_sub(1);
                }
            }
        }
        self.cache.evict();
    }
}

impl FileCache {
    /// Opens the cache at `root`, keeping the entries already there that are
    /// intact and evicting down to `max_bytes`. With `owner`, new entries are
    /// chowned to that uid and gid (root only).
    pub async fn open(
        root: PathBuf,
        cas: Arc<dyn BlobStore>,
        max_bytes: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<Self> {
        let scan_root = root.clone();
        let found = tokio::task::spawn_blocking(move || scan(&scan_root))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .with_context(|| format!("opening the file cache {}", root.display()))?;
        let mut state = State::default();
        for (key, mtime) in found {
            state.clock += 1;
            state.lru.insert(state.clock, key);
            state.entries.insert(key, Entry { last_use: state.clock, pins: 0, mtime, generation: state.clock });
            state.stats.entries += 1;
            state.stats.bytes += key.digest.size();
        }
        let cache = FileCache {
            inner: Arc::new(Inner { root, cas, max_bytes, owner, state: Mutex::new(state), fetches: Mutex::default() }),
        };
        cache.inner.evict();
        Ok(cache)
    }

    pub fn stats(&self) -> CacheStats {
        self.inner.state.lock().stats
    }

    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// The blob in memory, through the cache. `max_bytes` bounds what is read.
    pub async fn get_bytes(&self, digest: &Digest, max_bytes: u64) -> Result<Bytes> {
        if digest.size() > max_bytes {
            return Err(Error::invalid_argument(format!(
                "blob {} is larger than the {max_bytes} bytes allowed here",
                digest.subject()
            )));
        }
        let held = self.hold(CacheKey { digest: *digest, executable: false }, true).await?;
        match held.data {
            Some(data) => Ok(data),
            None => {
                let path = held.pin.path();
                let data = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
                Ok(data.into())
            }
        }
    }

    /// The entry for `key`, fetched from the CAS (or copied from the entry of
    /// the other mode) when the cache does not hold it. NOT_FOUND when the
    /// CAS does not hold the blob either.
    pub async fn ensure(&self, key: CacheKey) -> Result<CachePin> {
        Ok(self.hold(key, false).await?.pin)
    }

    /// [`FileCache::ensure`], with the entry's bytes when `read` asks for
    /// them and they come cheaply: read along with the check of an entry
    /// held, or kept from a download small enough to pass through memory.
    async fn hold(&self, key: CacheKey, read: bool) -> Result<Held> {
        if let Some(held) = self.lookup(key, false, read).await {
            return Ok(held);
        }
        let lock = self.inner.fetches.lock().entry(key.digest).or_default().clone();
        let result = {
            let _fetching = lock.lock().await;
            match self.lookup(key, true, read).await {
                Some(held) => Ok(held),
                None => self.fetch(key).await,
            }
        };
        let mut fetches = self.inner.fetches.lock();
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&lock) <= 2 {
            fetches.remove(&key.digest);
        }
        result
    }

    /// Fills the entry for `key`, copying the other mode's entry if the
    /// cache holds it, else downloading from the CAS: a small blob into
    /// memory (and its bytes are returned), a larger one straight to disk.
    async fn fetch(&self, key: CacheKey) -> Result<Held> {
        let other = CacheKey { digest: key.digest, executable: !key.executable };
        let source = self.lookup(other, true, false).await;
        self.inner.state.lock().stats.misses += 1;
        let tmp_dir = self.inner.root.join("tmp");
        let tmp = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
        if source.is_none() && key.digest.size() <= IN_MEMORY_BYTES {
            let data = self.download_bytes(&key.digest).await?;
            let pin = self.install(key, &tmp, Some(data.clone())).await?;
            return Ok(Held { pin, data: Some(data) });
        }
        tokio::fs::create_dir_all(&tmp_dir).await.with_context(|| format!("creating {}", tmp_dir.display()))?;
        let written = match source {
            Some(source) => tokio::fs::copy(source.pin.path(), &tmp)
                .await
                .map(|_| ())
                .with_context(|| format!("copying {}", source.pin.path().display())),
            None => self.download(&key.digest, &tmp).await,
        };
        match written {
            Ok(()) => Ok(Held { pin: self.install(key, &tmp, None).await?, data: None }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// A pin on `key` if the cache holds it intact, with its bytes if
    /// `read`. With `repair` (only while holding the blob's fetch lock, so
    /// that no fresh copy is being installed meanwhile), an entry that
    /// changed on disk is dropped.
    async fn lookup(&self, key: CacheKey, repair: bool, read: bool) -> Option<Held> {
        let pin = self.inner.pin(key)?;
        let expected = self.inner.state.lock().entries.get(&key).and_then(|e| e.mtime);
        let path = pin.path().to_path_buf();
        // One blocking call checks the entry and reads it.
        let checked = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Option<Vec<u8>>>> {
            let meta = std::fs::symlink_metadata(&path)?;
            let intact = meta.is_file()
                && meta.len() == key.digest.size()
                && meta.permissions().mode() & 0o7777 == key.mode()
                && meta.modified().ok() == expected;
            if !intact {
                return Ok(None);
            }
            Ok(Some(if read { Some(std::fs::read(&path)?) } else { None }))
        })
        .await;
        if let Ok(Ok(Some(data))) = checked {
            self.inner.state.lock().stats.hits += 1;
            return Some(Held { pin, data: data.map(Bytes::from) });
        }
        if repair {
            tracing::warn!(path = %pin.path().display(), "file cache entry changed on disk; fetching it again");
            self.inner.forget(key);
            let _ = tokio::fs::remove_file(pin.path()).await;
        }
        None
    }

    /// The blob from the CAS in memory, its digest checked.
    async fn download_bytes(&self, digest: &Digest) -> Result<Bytes> {
        get_checked(self.inner.cas.as_ref(), digest, digest.size()).await
    }

    /// Streams the blob from the CAS into `tmp`, checking its digest.
    async fn download(&self, digest: &Digest, tmp: &Path) -> Result<()> {
        let mut file = tokio::fs::File::create(tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
        let mut hasher = digest.function().hasher();
        if digest.size() > 0 {
            let mut stream = self.inner.cas.get(digest, ByteRange::ALL).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("reading blob {}", digest.subject()))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.with_context(|| format!("writing {}", tmp.display()))?;
            }
        }
        file.flush().await?;
        check_digest(digest, hasher.finish())
    }

    /// Writes `data` (when given) to `tmp`, makes it read-only, gives it to
    /// the owner and renames it into place.
    async fn install(&self, key: CacheKey, tmp: &Path, data: Option<Bytes>) -> Result<CachePin> {
        let path = self.inner.path(&key);
        let owner = self.inner.owner;
        let (tmp_owned, path_owned) = (tmp.to_path_buf(), path.clone());
        let prepared = tokio::task::spawn_blocking(move || -> std::io::Result<Option<SystemTime>> {
            if let Some(data) = data {
                if let Some(dir) = tmp_owned.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&tmp_owned, &data)?;
            }
            std::fs::set_permissions(&tmp_owned, std::fs::Permissions::from_mode(key.mode()))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&tmp_owned, Some(uid), Some(gid))?;
            }
            if let Some(parent) = path_owned.parent() {
                std::fs::create_dir_all(parent)?;
            }
            Ok(std::fs::symlink_metadata(&tmp_owned)?.modified().ok())
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        let mtime = match prepared {
            Ok(mtime) => mtime,
            Err(e) => {
                let _ = tokio::fs::remove_file(tmp).await;
                return Err(Error::from(e).context(format!("installing {} in the file cache", path.display())));
            }
        };
        let pin = {
            let mut state = self.inner.state.lock();
            // Renaming under the lock keeps the index and the disk in step
            // when two actions fetch the same blob at once.
            std::fs::rename(tmp, &path).with_context(|| format!("renaming into {}", path.display()))?;
            state.clock += 1;
            let clock = state.clock;
            let state = &mut *state;
            let generation = match state.entries.get_mut(&key) {
                Some(entry) => {
                    state.lru.remove(&entry.last_use);
                    entry.last_use = clock;
                    entry.mtime = mtime;
                    entry.pins += 1;
                    entry.generation
                }
                None => {
                    state.entries.insert(key, Entry { last_use: clock, pins: 1, mtime, generation: clock });
                    state.stats.entries += 1;
                    state.stats.bytes += key.digest.size();
                    clock
                }
            };
            state.lru.insert(clock, key);
            CachePin { cache: self.inner.clone(), key, generation, path }
        };
        self.inner.evict();
        Ok(pin)
    }
}

impl Inner {
    fn path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.digest.hex();
        let name = format!(
            "{}-{hex}-{}{}",
            key.digest.function().name(),
            key.digest.size(),
            if key.executable { "-x" } else { "" }
        );
        self.root.join(&hex[..2]).join(name)
    }

    /// Pins `key` and marks it used, if the index holds it.
    fn pin(self: &Arc<Self>, key: CacheKey) -> Option<CachePin> {
        let mut state = self.state.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(&key)?;
        let previous = entry.last_use;
        entry.last_use = clock;
        entry.pins += 1;
        let generation = entry.generation;
        state.lru.remove(&previous);
        state.lru.insert(clock, key);
        Some(CachePin { cache: self.clone(), key, generation, path: self.path(&key) })
    }

    /// Drops `key` from the index (its pins stay valid but unlink nothing).
    fn forget(&self, key: CacheKey) {
        let mut state = self.state.lock();
        if let Some(entry) = state.entries.remove(&key) {
            state.lru.remove(&entry.last_use);
            state.stats.entries -= 1;
            state.stats.bytes -= key.digest.size();
        }
    }

    /// Removes least recently used, unpinned entries until the cache fits.
    fn evict(&self) {
        let victims = {
            let mut state = self.state.lock();
            let mut victims = Vec::new();
            let mut candidates = Vec::new();
            let mut excess = state.stats.bytes.saturating_sub(self.max_bytes);
            for (&tick, key) in &state.lru {
                if excess == 0 {
                    break;
                }
                if state.entries.get(key).is_some_and(|e| e.pins == 0) {
                    candidates.push((tick, *key));
                    excess = excess.saturating_sub(key.digest.size().max(1));
                }
            }
            for (tick, key) in candidates {
                state.lru.remove(&tick);
                state.entries.remove(&key);
                state.stats.entries -= 1;
                state.stats.bytes -= key.digest.size();
                state.stats.evictions += 1;
                victims.push(self.path(&key));
            }
            victims
        };
        for path in victims {
            // Hardlinks in input roots keep the content alive for the actions
            // that use it.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "evicting a file cache entry");
            }
        }
    }
}

/// A blob of at most `max_bytes` from `cas` in memory, its digest checked
/// (DATA_LOSS when the CAS returns other bytes). The empty blob needs no CAS.
pub(crate) async fn get_checked(cas: &dyn BlobStore, digest: &Digest, max_bytes: u64) -> Result<Bytes> {
    if digest.size() == 0 {
        check_digest(digest, Digest::of(digest.function(), &[]))?;
        return Ok(Bytes::new());
    }
    let data = get_bytes_at_most(cas, digest, max_bytes, "blob").await?;
    check_digest(digest, Digest::of(digest.function(), &data))?;
    Ok(data)
}

/// An error unless the downloaded blob's digest is the one asked for.
fn check_digest(expected: &Digest, got: Digest) -> Result<()> {
    if got != *expected {
        return Err(Error::new(
            tonic::Code::DataLoss,
            format!("blob {} from the CAS has digest {}", expected.subject(), got.subject()),
        ));
    }
    Ok(())
}

/// The intact entries under `root`, oldest first by mtime; removes
/// everything else (leftover downloads, files that do not match their name).
fn scan(root: &Path) -> std::io::Result<Vec<(CacheKey, Option<SystemTime>)>> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut found = Vec::new();
    for shard in std::fs::read_dir(root)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            std::fs::remove_file(shard.path())?;
            continue;
        }
        for file in std::fs::read_dir(shard.path())? {
            let file = file?;
            let meta = file.metadata()?;
            let key = file.file_name().to_str().and_then(parse_name);
            match key {
                Some(key)
                    if meta.is_file()
                        && meta.len() == key.digest.size()
                        && meta.permissions().mode() & 0o7777 == key.mode() =>
                {
                    found.push((key, meta.modified().ok()));
                }
                _ => std::fs::remove_file(file.path())?,
            }
        }
    }
    found.sort_by_key(|(_, mtime)| *mtime);
    Ok(found)
}

/// Parses `{function}-{hash}-{size}[-x]`.
fn parse_name(name: &str) -> Option<CacheKey> {
    let (name, executable) = match name.strip_suffix("-x") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let mut parts = name.split('-');
    let function: DigestFunction = parts.next()?.parse().ok()?;
    let hash = parts.next()?;
    let size: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let digest = Digest::parse(function, hash, size).ok()?;
    Some(CacheKey { digest, executable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_cas::MemoryStore;

    async fn put(cas: &MemoryStore, data: &[u8]) -> Digest {
        let digest = Digest::of(DigestFunction::Sha256, data);
        cas.put_bytes(&digest, Bytes::copy_from_slice(data)).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn fetches_once_evicts_lru_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Arc::new(MemoryStore::new());
        let a = put(&cas, &[b'a'; 40]).await;
        let b = put(&cas, &[b'b'; 40]).await;
        let c = put(&cas, &[b'c'; 40]).await;
        let cache = FileCache::open(dir.path().join("c"), cas.clone(), 100, None).await.unwrap();
        let key = |digest, executable| CacheKey { digest, executable };
        let pin = cache.ensure(key(a, false)).await.unwrap();
        let meta = std::fs::metadata(pin.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
        drop(pin);
        let pin = cache.ensure(key(a, true)).await.unwrap();
        assert_eq!(std::fs::metadata(pin.path()).unwrap().permissions().mode() & 0o7777, 0o555);
        drop(pin);
        assert_eq!(cache.stats().misses, 2);
        assert_eq!(cache.get_bytes(&a, 1000).await.unwrap(), Bytes::from(vec![b'a'; 40]));
        assert_eq!(cache.stats().hits, 2, "the copy read the other mode's entry");
        // a (exec) is now the oldest: b and c push it out.
        cache.ensure(key(b, false)).await.unwrap();
        cache.ensure(key(c, false)).await.unwrap();
        let stats = cache.stats();
        assert!(stats.bytes <= 100, "{stats:?}");
        assert_eq!(stats.evictions, 2, "{stats:?}");
        drop(cache);
        let reopened = FileCache::open(dir.path().join("c"), cas, 100, None).await.unwrap();
        assert_eq!(reopened.stats().entries, 2);
        reopened.ensure(key(c, false)).await.unwrap();
        assert_eq!(reopened.stats().misses, 0);
    }

    #[tokio::test]
    async fn changed_entries_are_fetched_again_and_bad_blobs_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Arc::new(MemoryStore::new());
        let a = put(&cas, b"hello").await;
        let cache = FileCache::open(dir.path().to_path_buf(), cas.clone(), 1 << 20, None).await.unwrap();
        let path = cache.ensure(CacheKey { digest: a, executable: false }).await.unwrap().path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"HELLO").unwrap();
        assert_eq!(cache.get_bytes(&a, 100).await.unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(cache.stats().misses, 2);
        let lie = Digest::of(DigestFunction::Sha256, b"other");
        cas.put_bytes(&lie, Bytes::from_static(b"wrong")).await.unwrap();
        let e = cache.get_bytes(&lie, 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
        let absent = Digest::of(DigestFunction::Sha256, b"absent");
        assert_eq!(cache.get_bytes(&absent, 100).await.unwrap_err().code(), tonic::Code::NotFound);
        let empty = Digest::empty(DigestFunction::Sha256);
        assert!(cache.get_bytes(&empty, 100).await.unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
    }
}
