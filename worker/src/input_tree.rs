use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use memobuild_cas::check_directory;
use memobuild_proto::reapi::Directory;
use memobuild_proto::{Digest, Error, Result, ResultExt};
use prost::Message;

use crate::file_cache::{CacheKey, CachePin, FileCache};
use crate::relative_path::RelativePath;

/// The largest `Directory` proto read.
const MAX_DIRECTORY_BYTES: u64 = 16 << 20;
/// The most entries (files, directories, symlinks) an input root may have,
/// counting each path once: a small proto that names the same subdirectory
/// many times at every level must not fill the disk.
const MAX_ENTRIES: usize = 4_000_000;
/// How many blobs are fetched at once.
const FETCH_CONCURRENCY: usize = 16;

/// An action's input root as a list of what to create, checked for unsafe
/// names, read from its `Directory` protos in the CAS (through the cache).
#[derive(Debug, Default)]
pub(crate) struct InputTree {
    /// Directories, parents before children (the root is not listed).
    directories: Vec<RelativePath>,
    files: Vec<(RelativePath, CacheKey)>,
    symlinks: Vec<(RelativePath, String)>,
    /// Directories the CAS does not hold.
    missing: Vec<Digest>,
}

impl InputTree {
    /// Reads the tree under `root`, level by level, each distinct directory
    /// once. Missing directories are collected, not fatal, so that the
    /// caller can name every missing blob at once.
    pub async fn load(cache: &FileCache, root: Digest) -> Result<Self> {
        let mut tree = InputTree::default();
        let mut protos: HashMap<Digest, Arc<Directory>> = HashMap::new();
        let mut level = vec![(RelativePath::root(), root)];
        let mut entries = 0usize;
        while !level.is_empty() {
            let mut wanted: HashMap<Digest, &RelativePath> = HashMap::new();
            for (path, digest) in &level {
                if !protos.contains_key(digest) {
                    wanted.entry(*digest).or_insert(path);
                }
            }
            // Futures built eagerly: a lazily mapped stream of borrowing
            // futures cannot be proven Send inside a spawned task.
            let fetches: Vec<_> = wanted
                .into_iter()
                .map(|(digest, path)| async move {
                    let directory = fetch_directory(cache, &digest).await;
                    (digest, directory.with_context(|| format!("input directory {path}")))
                })
                .collect();
            let fetched: Vec<(Digest, Result<Directory>)> =
                futures::stream::iter(fetches).buffer_unordered(FETCH_CONCURRENCY).collect().await;
            let mut absent = HashSet::new();
            for (digest, directory) in fetched {
                match directory {
                    Ok(directory) => {
                        protos.insert(digest, Arc::new(directory));
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => {
                        absent.insert(digest);
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut next = Vec::new();
            for (path, digest) in level {
                let Some(directory) = protos.get(&digest) else {
                    if absent.remove(&digest) {
                        tree.missing.push(digest);
                    }
                    continue;
                };
                entries += directory.files.len() + directory.directories.len() + directory.symlinks.len();
                if entries > MAX_ENTRIES {
                    return Err(Error::invalid_argument(format!(
                        "the input root {} has more than {MAX_ENTRIES} entries",
                        root.subject()
                    )));
                }
                tree.add(&path, &digest, directory, &mut next)?;
            }
            level = next;
        }
        Ok(tree)
    }

    /// Checks one directory and queues what it holds.
    fn add(
        &mut self,
        path: &RelativePath,
        digest: &Digest,
        directory: &Directory,
        next: &mut Vec<(RelativePath, Digest)>,
    ) -> Result<()> {
        let children = check_directory(digest, directory).with_context(|| format!("input directory {path}"))?;
        for file in &directory.files {
            let digest = Digest::from_proto_field(digest.function(), file.digest.as_ref(), "file digest")?;
            self.files.push((path.child(&file.name), CacheKey { digest, executable: file.is_executable }));
        }
        for (child, child_digest) in directory.directories.iter().zip(children) {
            let child_path = path.child(&child.name);
            self.directories.push(child_path.clone());
            next.push((child_path, child_digest));
        }
        for symlink in &directory.symlinks {
            self.symlinks.push((path.child(&symlink.name), symlink.target.clone()));
        }
        Ok(())
    }

    /// Fetches every file into the cache. The pins keep the entries until
    /// they are linked. FAILED_PRECONDITION naming every missing blob,
    /// directories included, when the CAS lacks any.
    /// `also_missing` are other blobs of the action the CAS lacks.
    pub async fn fetch(&self, cache: &FileCache, also_missing: Vec<Digest>) -> Result<HashMap<CacheKey, CachePin>> {
        let keys: HashSet<CacheKey> = self.files.iter().map(|(_, key)| *key).collect();
        let fetches: Vec<_> = keys.into_iter().map(|key| async move { (key, cache.ensure(key).await) }).collect();
        let results: Vec<(CacheKey, Result<CachePin>)> =
            futures::stream::iter(fetches).buffer_unordered(FETCH_CONCURRENCY).collect().await;
        let mut pins = HashMap::new();
        let mut missing = also_missing;
        missing.extend_from_slice(&self.missing);
        for (key, result) in results {
            match result {
                Ok(pin) => {
                    pins.insert(key, pin);
                }
                Err(e) if e.code() == tonic::Code::NotFound => missing.push(key.digest),
                Err(e) => return Err(e.context(format!("fetching input file {}", key.digest.subject()))),
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(Error::missing_blobs(&missing).context("fetching the input root"));
        }
        Ok(pins)
    }

    /// Creates the tree under `root` (which exists and is empty): creates
    /// directories and symlinks, hardlinks files from the cache (copying
    /// when the link count is exhausted). Nothing is created through a
    /// symlink: every path is new, and names are unique per directory.
    pub fn materialize(&self, root: &Path, pins: &HashMap<CacheKey, CachePin>) -> Result<()> {
        for directory in &self.directories {
            let path = directory.under(root);
            std::fs::create_dir(&path).with_context(|| format!("creating input directory {directory}"))?;
        }
        for (file, key) in &self.files {
            let pin = pins.get(key).ok_or_else(|| Error::internal(format!("input file {file} was not fetched")))?;
            let path = file.under(root);
            if let Err(e) = std::fs::hard_link(pin.path(), &path) {
                if e.raw_os_error() != Some(nix::libc::EMLINK) {
                    return Err(Error::from(e).context(format!("linking input file {file}")));
                }
                std::fs::copy(pin.path(), &path).with_context(|| format!("copying input file {file}"))?;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(if key.executable { 0o555 } else { 0o444 }),
                )?;
            }
        }
        for (symlink, target) in &self.symlinks {
            std::os::unix::fs::symlink(target, symlink.under(root))
                .with_context(|| format!("creating input symlink {symlink} -> {target}"))?;
        }
        Ok(())
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

async fn fetch_directory(cache: &FileCache, digest: &Digest) -> Result<Directory> {
    let data = cache.get_bytes(digest, MAX_DIRECTORY_BYTES).await?;
    Directory::decode(data).with_context(|| format!("decoding input directory {}", digest.subject()))
}
