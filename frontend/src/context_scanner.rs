//! Walks a build context directory (all of it, or the paths a build names),
//! applies `.dockerignore`, hashes every regular file with BLAKE3 in
//! parallel (reusing the stat cache) and builds the context's REAPI trees.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};

use crate::stat_cache::{FileStat, StatCache};
use crate::{BuildContext, ContextNode, ContextScope, DockerIgnore, ScopePart};

/// A directory entry's name, which must be UTF-8 for a REAPI tree to
/// hold it.
fn utf8_name(entry: &std::fs::DirEntry) -> Result<String> {
    entry.file_name().into_string().map_err(|n| {
        Error::invalid_argument(format!(
            "{}: file name {n:?} is not UTF-8, which REAPI trees cannot hold",
            entry.path().display()
        ))
    })
}

/// Counters of one scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: usize,
    /// Files read and hashed (the rest came from the stat cache).
    pub hashed: usize,
    pub bytes_hashed: u64,
}

/// Scans one context directory.
#[derive(Clone, Debug)]
pub struct ContextScanner {
    root: PathBuf,
    ignore: DockerIgnore,
    cache_dir: Option<PathBuf>,
    threads: usize,
}

/// What a walk found, before files are hashed.
#[derive(Default)]
struct Found {
    nodes: BTreeMap<String, ContextNode>,
    /// The mode of every directory walked or passed through.
    dir_modes: BTreeMap<String, u32>,
    files: Vec<PendingFile>,
}

struct PendingFile {
    rel: String,
    abs: PathBuf,
    stat: FileStat,
    /// Device and inode, for a file with more than one link.
    linked: Option<(u64, u64)>,
}

impl ContextScanner {
    pub fn new(root: impl Into<PathBuf>, ignore: DockerIgnore) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ContextScanner { root: root.into(), ignore, cache_dir: None, threads }
    }

    /// Keeps a stat cache in `dir` across scans.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Scans the whole context.
    pub fn scan(&self) -> Result<(BuildContext, ScanStats)> {
        self.scan_within(&ContextScope::Whole)
    }

    /// Scans the part of the context in `scope`. The whole context is
    /// scanned instead when the part cannot be read on its own: a directory
    /// above one of its paths is a symlink, or a file in it has hard links
    /// (which may be other files of the context).
    pub fn scan_within(&self, scope: &ContextScope) -> Result<(BuildContext, ScanStats)> {
        let start_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        let root =
            std::fs::canonicalize(&self.root).with_context(|| format!("build context {}", self.root.display()))?;
        let mut found = Found::default();
        match scope {
            ContextScope::Whole => self.walk(&root, "", &mut found)?,
            ContextScope::Part(part) => {
                let Some(matched) = self.list_matches(&root, part)? else { return self.scan() };
                let paths = match ContextScope::of_paths(part.paths().iter().cloned().chain(matched)) {
                    ContextScope::Part(all) => all.paths().clone(),
                    ContextScope::Whole => return self.scan(),
                };
                if !self.walk_paths(&root, &paths, &mut found)? || found.files.iter().any(|f| f.linked.is_some()) {
                    return self.scan();
                }
            }
        }
        let Found { mut nodes, dir_modes, files } = found;

        let mut cache = self.cache_dir.as_ref().map(|d| StatCache::open(d, &root));
        let mut digests: Vec<Option<Digest>> =
            files.iter().map(|f| cache.as_ref().and_then(|c| c.lookup(&f.rel, &f.stat))).collect();
        let todo: Vec<usize> = (0..files.len()).filter(|&i| digests[i].is_none()).collect();
        let hashed = self.hash_all(&files, &todo)?;
        let mut stats = ScanStats { files: files.len(), hashed: todo.len(), bytes_hashed: 0 };
        for (i, digest) in todo.iter().zip(hashed) {
            stats.bytes_hashed += digest.size();
            digests[*i] = Some(digest);
        }
        for (file, digest) in files.iter().zip(digests) {
            let digest = digest.ok_or_else(|| Error::internal(format!("{} not hashed", file.rel)))?;
            if let Some(c) = cache.as_mut() {
                c.insert(&file.rel, file.stat, &digest, start_ns);
            }
            nodes.insert(file.rel.clone(), ContextNode::File { digest, mode: file.stat.mode & 0o7777 });
        }
        let hardlinks = hardlink_groups(&files);
        // Keep the real modes of directories that hold kept paths.
        let kept: Vec<String> = nodes.keys().cloned().collect();
        for path in kept {
            let mut p = path.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                if let Some(mode) = dir_modes.get(p) {
                    nodes.entry(p.to_string()).or_insert(ContextNode::Directory { mode: *mode });
                }
            }
        }
        if let Some(mode) = dir_modes.get("") {
            nodes.insert(String::new(), ContextNode::Directory { mode: *mode });
        }
        if let Some(c) = cache {
            // A cache that cannot be written only costs speed next time.
            if let Err(e) = c.save(scope) {
                tracing::warn!(error = %e, "could not save the context stat cache");
            }
        }
        let context = BuildContext::from_linked_nodes(nodes, hardlinks)?.with_scope(scope.clone());
        Ok((context, stats))
    }

    /// The entries of `part`'s listed directories that its patterns match;
    /// `None` if such a directory, or one above it, is not a directory (a
    /// symlink would lead elsewhere in the context).
    fn list_matches(&self, root: &Path, part: &ScopePart) -> Result<Option<Vec<String>>> {
        let mut matched = Vec::new();
        for dir in part.listed_dirs() {
            let abs = root.join(dir);
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", abs.display())),
            };
            let real = std::fs::canonicalize(&abs).with_context(|| format!("reading {}", abs.display()))?;
            if !meta.is_dir() || real != root.join(dir) {
                return Ok(None);
            }
            let read = std::fs::read_dir(&abs).with_context(|| format!("listing {}", abs.display()))?;
            for entry in read {
                let entry = entry.with_context(|| format!("listing {}", abs.display()))?;
                if !part.matches(dir, &entry.file_name().to_string_lossy()) {
                    continue;
                }
                let name = utf8_name(&entry)?;
                matched.push(if dir.is_empty() { name } else { format!("{dir}/{name}") });
            }
        }
        Ok(Some(matched))
    }

    /// Reads each of `paths` with everything under it, and the directories
    /// above them; `false` if one of those is not a directory (a symlink
    /// would lead elsewhere in the context).
    fn walk_paths(&self, root: &Path, paths: &BTreeSet<String>, found: &mut Found) -> Result<bool> {
        let lstat = |rel: &str| match std::fs::symlink_metadata(root.join(rel)) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", root.join(rel).display())),
        };
        if let Some(meta) = lstat("")? {
            found.dir_modes.insert(String::new(), meta.mode() & 0o7777);
        }
        'paths: for path in paths {
            for above in path.match_indices('/').map(|(i, _)| &path[..i]) {
                let Some(meta) = lstat(above)? else { continue 'paths };
                if !meta.is_dir() {
                    return Ok(false);
                }
                let excluded = self.ignore.is_excluded(above);
                if excluded && !self.ignore.has_exclusions() {
                    continue 'paths;
                }
                found.dir_modes.insert(above.to_string(), meta.mode() & 0o7777);
                if !excluded {
                    found.nodes.insert(above.to_string(), ContextNode::Directory { mode: meta.mode() & 0o7777 });
                }
            }
            if let Some(meta) = lstat(path)? {
                self.visit(&root.join(path), path.clone(), &meta, found)?;
            }
        }
        Ok(true)
    }

    fn walk(&self, dir: &Path, rel: &str, found: &mut Found) -> Result<()> {
        let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        found.dir_modes.insert(rel.to_string(), meta.mode() & 0o7777);
        let read = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in read {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let abs = entry.path();
            let name = utf8_name(&entry)?;
            let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = std::fs::symlink_metadata(&abs).with_context(|| format!("reading {}", abs.display()))?;
            self.visit(&abs, rel, &meta, found)?;
        }
        Ok(())
    }

    /// Records one path of the context (walking into a directory), unless
    /// `.dockerignore` leaves it out.
    fn visit(&self, abs: &Path, rel: String, meta: &std::fs::Metadata, found: &mut Found) -> Result<()> {
        let excluded = self.ignore.is_excluded(&rel);
        let kind = meta.file_type();
        if kind.is_dir() {
            if excluded && !self.ignore.has_exclusions() {
                return Ok(());
            }
            if !excluded {
                found.nodes.insert(rel.clone(), ContextNode::Directory { mode: meta.mode() & 0o7777 });
            }
            self.walk(abs, &rel, found)?;
        } else if excluded {
            return Ok(());
        } else if kind.is_symlink() {
            let target = std::fs::read_link(abs).with_context(|| format!("reading link {}", abs.display()))?;
            let target = target.into_os_string().into_string().map_err(|t| {
                Error::invalid_argument(format!("{}: symlink target {t:?} is not UTF-8", abs.display()))
            })?;
            found.nodes.insert(rel, ContextNode::Symlink { target });
        } else if kind.is_file() {
            let stat = FileStat {
                size: meta.size(),
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                inode: meta.ino(),
                mode: meta.mode(),
            };
            let linked = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            found.files.push(PendingFile { rel, abs: abs.to_path_buf(), stat, linked });
        }
        // Sockets, fifos and devices are not part of a build context.
        Ok(())
    }

    /// Hashes `files[i]` for each `i` in `todo`, on up to `threads` threads.
    fn hash_all(&self, files: &[PendingFile], todo: &[usize]) -> Result<Vec<Digest>> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Digest>>>> = Mutex::new(vec![None; todo.len()]);
        let threads = self.threads.min(todo.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = todo.get(n) else { break };
                    let result = hash_file(&files[i].abs);
                    if let Ok(mut r) = results.lock() {
                        r[n] = Some(result);
                    }
                });
            }
        });
        let results = results.into_inner().map_err(|_| Error::internal("a hashing thread panicked"))?;
        results
            .into_iter()
            .zip(todo)
            .map(|(r, &i)| r.unwrap_or_else(|| Err(Error::internal(format!("{} was not hashed", files[i].rel)))))
            .collect()
    }
}

/// Files of the context that are hard links of one another (ignored paths
/// left out): each member of a group of two or more to the group's first
/// path.
fn hardlink_groups(files: &[PendingFile]) -> BTreeMap<String, String> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<&str>> = BTreeMap::new();
    for file in files {
        if let Some(key) = file.linked {
            by_inode.entry(key).or_default().push(&file.rel);
        }
    }
    let mut groups = BTreeMap::new();
    for mut paths in by_inode.into_values().filter(|paths| paths.len() > 1) {
        paths.sort_unstable();
        for path in &paths {
            groups.insert(path.to_string(), paths[0].to_string());
        }
    }
    groups
}

fn hash_file(path: &Path) -> Result<Digest> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = DigestFunction::Blake3.hasher();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}
