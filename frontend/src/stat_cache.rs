//! A persistent cache of file digests keyed by what `stat` says, so an
//! unchanged context is not read again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use serde::{Deserialize, Serialize};

use crate::ContextScope;

/// What `lstat` says about a regular file; equal stats mean equal content
/// (as long as the mtime is not too recent, see [`StatCache::insert`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CachedFile {
    stat: FileStat,
    /// BLAKE3 hex of the content.
    blake3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    files: BTreeMap<String, CachedFile>,
}

const VERSION: u32 = 1;

/// The stat cache of one context directory, stored as JSON in
/// `<cache_dir>/context-<blake3 of the context path>.json`.
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    old: BTreeMap<String, CachedFile>,
    new: BTreeMap<String, CachedFile>,
}

impl StatCache {
    /// Opens the cache for `context` under `cache_dir`. A missing, unreadable
    /// or corrupt cache file is an empty cache (it is only an accelerator).
    pub fn open(cache_dir: &Path, context: &Path) -> Self {
        let id = Digest::of(DigestFunction::Blake3, context.as_os_str().as_encoded_bytes());
        let path = cache_dir.join(format!("context-{}.json", &id.hex()[..32]));
        let old = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|c| c.version == VERSION)
            .map(|c| c.files)
            .unwrap_or_default();
        StatCache { path, old, new: BTreeMap::new() }
    }

    /// The cached digest of `path` if its stat is unchanged.
    pub fn lookup(&self, path: &str, stat: &FileStat) -> Option<Digest> {
        let cached = self.old.get(path)?;
        if cached.stat != *stat {
            return None;
        }
        Digest::parse(DigestFunction::Blake3, &cached.blake3, stat.size as i64).ok()
    }

    /// Records a digest for the next run. Files modified less than two
    /// seconds before `scan_start_ns` are not recorded: a later write within
    /// the same timestamp tick would not change their stat.
    pub fn insert(&mut self, path: &str, stat: FileStat, digest: &Digest, scan_start_ns: i128) {
        if stat.mtime_ns > scan_start_ns - 2_000_000_000 {
            return;
        }
        self.new.insert(path.to_string(), CachedFile { stat, blake3: digest.hex() });
    }

    /// Writes the cache, atomically: the files seen in this scan, and the
    /// entries of files outside `scanned` (what the scan read), which it
    /// did not look at. Not at all when this scan has nothing to add to it,
    /// which is found without reading the rest of the cache. Entries of
    /// files since deleted or changed too recently to record are then left
    /// in place: an entry only ever matches the stat it was recorded with.
    pub fn save(mut self, scanned: &ContextScope) -> Result<()> {
        if self.new.iter().all(|(path, file)| self.old.get(path) == Some(file)) {
            return Ok(());
        }
        for (path, file) in self.old {
            if !scanned.holds(&path) {
                self.new.entry(path).or_insert(file);
            }
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = CacheFile { version: VERSION, files: self.new };
        let bytes = serde_json::to_vec(&file).map_err(|e| Error::internal(format!("encoding stat cache: {e}")))?;
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("renaming {} into place", tmp.display()))
    }
}
