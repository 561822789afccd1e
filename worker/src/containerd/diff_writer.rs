use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use memobuild_oci::{read_file_capabilities, CAPABILITY_PAX_RECORD};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use sha2::Digest as _;
use tar::{EntryType, Header};

use super::layer_stack::{is_opaque, is_whiteout, LayerStack};

/// The name prefix of an OCI whiteout entry.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Turns the upper directory of an overlay snapshot (what one step changed)
/// into an OCI layer tar: regular files, directories, symlinks, hardlinks
/// (the same inode twice), device nodes and FIFOs with their uid, gid and
/// mode, regular files with their file capabilities (as BuildKit's layers,
/// no other xattrs); overlay whiteouts as `.wh.NAME` and opaque directories as the
/// directory plus `.wh..wh..opq`. Entries are sorted by path and mtimes are
/// clamped to `source_date_epoch` when given, so the same changes give the
/// same bytes.
///
/// Mountpoints the runtime made (`/proc`, `/dev`, `/sys`, the step's mount
/// targets, and directories made only to hold them) are left out unless the
/// parent had them differently.
pub(super) struct DiffWriter<'a> {
    pub(super) upper: &'a Path,
    pub(super) lower: &'a LayerStack,
    /// Absolute paths in the container.
    pub(super) mount_targets: &'a [String],
    pub(super) source_date_epoch: Option<u64>,
}

struct Entry {
    /// Relative, `/`-separated, no leading `./`.
    rel: PathBuf,
    meta: Metadata,
}

impl DiffWriter<'_> {
    /// Writes the tar to `out` and returns its SHA-256 digest and size.
    pub(super) fn write(&self, out: File) -> Result<Digest> {
        let mut entries = Vec::new();
        walk(self.upper, Path::new(""), &mut entries)
            .with_context(|| format!("reading the step's changes in {}", self.upper.display()))?;
        let entries = self.without_mountpoints(entries);
        let mut items: Vec<(Vec<u8>, &Entry, bool)> = Vec::with_capacity(entries.len());
        for entry in &entries {
            items.push((entry.rel.as_os_str().as_bytes().to_vec(), entry, false));
            if entry.meta.is_dir() && is_opaque(&self.upper.join(&entry.rel)) {
                items.push((entry.rel.join(OPAQUE_MARKER).as_os_str().as_bytes().to_vec(), entry, true));
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));

        let mut builder = tar::Builder::new(HashingWriter::new(out));
        let mut first_links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for (_, entry, opaque_marker) in items {
            self.append(&mut builder, entry, opaque_marker, &mut first_links)
                .with_context(|| format!("adding {} to the layer", entry.rel.display()))?;
        }
        let writer = builder.into_inner().context("finishing the layer tar")?;
        writer.finish()
    }

    fn mtime(&self, meta: &Metadata) -> u64 {
        let mtime = meta.mtime().max(0) as u64;
        match self.source_date_epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        }
    }

    fn append(
        &self,
        builder: &mut tar::Builder<HashingWriter>,
        entry: &Entry,
        opaque_marker: bool,
        first_links: &mut HashMap<(u64, u64), PathBuf>,
    ) -> std::io::Result<()> {
        let meta = &entry.meta;
        let mut header = Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid() as u64);
        header.set_gid(meta.gid() as u64);
        header.set_mtime(self.mtime(meta));
        header.set_size(0);
        let file_type = meta.file_type();
        if opaque_marker {
            header.set_entry_type(EntryType::Regular);
            header.set_mode(meta.mode() & 0o777);
            return builder.append_data(&mut header, entry.rel.join(OPAQUE_MARKER), std::io::empty());
        }
        if is_whiteout(meta) {
            let name = entry.rel.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            let mut whiteout = OsString::from(WHITEOUT_PREFIX);
            whiteout.push(name);
            let path = entry.rel.parent().unwrap_or(Path::new("")).join(whiteout);
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            return builder.append_data(&mut header, path, std::io::empty());
        }
        if file_type.is_dir() {
            header.set_entry_type(EntryType::Directory);
            let mut path = entry.rel.as_os_str().to_os_string();
            path.push("/");
            return builder.append_data(&mut header, PathBuf::from(path), std::io::empty());
        }
        if file_type.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            let target = std::fs::read_link(self.upper.join(&entry.rel))?;
            return builder.append_link(&mut header, &entry.rel, target);
        }
        if file_type.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = first_links.get(&key) {
                    header.set_entry_type(EntryType::Link);
                    return builder.append_link(&mut header, &entry.rel, first);
                }
                first_links.insert(key, entry.rel.clone());
            }
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let path = self.upper.join(&entry.rel);
            if let Some(capabilities) = read_file_capabilities(&path)? {
                builder.append_pax_extensions([(CAPABILITY_PAX_RECORD, capabilities.as_slice())])?;
            }
            let file = File::open(path)?;
            let mut reader = ExactReader { inner: file.take(meta.len()), left: meta.len() };
            return builder.append_data(&mut header, &entry.rel, &mut reader);
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            header.set_entry_type(if file_type.is_char_device() { EntryType::Char } else { EntryType::Block });
            let rdev = meta.rdev();
            header.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            header.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            return builder.append_data(&mut header, &entry.rel, std::io::empty());
        }
        if file_type.is_fifo() {
            header.set_entry_type(EntryType::Fifo);
            return builder.append_data(&mut header, &entry.rel, std::io::empty());
        }
        // Sockets do not belong in images.
        tracing::debug!(path = %entry.rel.display(), "leaving a socket out of the layer");
        Ok(())
    }

    /// Drops the mountpoints the runtime created: a mount target that the
    /// parent did not have (or had alike), and a directory that only holds
    /// such targets and that the parent did not have (or had alike).
    fn without_mountpoints(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let targets: HashSet<PathBuf> = self
            .mount_targets
            .iter()
            .map(|t| PathBuf::from(t.trim_start_matches('/')))
            .filter(|t| !t.as_os_str().is_empty())
            .collect();
        let mut ancestors: Vec<PathBuf> = targets
            .iter()
            .flat_map(|t| t.ancestors().skip(1).map(Path::to_path_buf).collect::<Vec<_>>())
            .filter(|a| !a.as_os_str().is_empty())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Deepest first, so a directory is judged after its children.
        ancestors.sort_by_key(|a| std::cmp::Reverse(a.components().count()));

        let unchanged_from_parent = |entry: &Entry| match self.lower.lookup(&entry.rel) {
            None => true,
            Some((_, lower)) => {
                lower.file_type() == entry.meta.file_type()
                    && lower.mode() == entry.meta.mode()
                    && lower.uid() == entry.meta.uid()
                    && lower.gid() == entry.meta.gid()
            }
        };
        let mut dropped: HashSet<PathBuf> = HashSet::new();
        for entry in &entries {
            let is_mountpoint = targets.contains(&entry.rel)
                && (entry.meta.is_dir() || (entry.meta.is_file() && entry.meta.len() == 0));
            if is_mountpoint && unchanged_from_parent(entry) {
                dropped.insert(entry.rel.clone());
            }
        }
        let by_path: HashMap<&Path, &Entry> = entries.iter().map(|e| (e.rel.as_path(), e)).collect();
        for ancestor in &ancestors {
            let Some(entry) = by_path.get(ancestor.as_path()) else { continue };
            if !entry.meta.is_dir() || dropped.contains(ancestor) {
                continue;
            }
            let has_kept_child =
                entries.iter().any(|e| e.rel.parent() == Some(ancestor.as_path()) && !dropped.contains(&e.rel));
            if !has_kept_child && !is_opaque(&self.upper.join(ancestor)) && unchanged_from_parent(entry) {
                dropped.insert(ancestor.clone());
            }
        }
        entries.into_iter().filter(|e| !dropped.contains(&e.rel)).collect()
    }
}

/// Every entry below `root`/`rel`, parents before children.
fn walk(root: &Path, rel: &Path, out: &mut Vec<Entry>) -> std::io::Result<()> {
    for dirent in std::fs::read_dir(root.join(rel))? {
        let dirent = dirent?;
        let child = rel.join(dirent.file_name());
        let meta = std::fs::symlink_metadata(root.join(&child))?;
        let is_dir = meta.is_dir();
        out.push(Entry { rel: child.clone(), meta });
        if is_dir {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

/// Reads exactly the size the header announced; a file that shrank since
/// is an error rather than a corrupt tar.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while being read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes (SHA-256) and counts what passes through.
struct HashingWriter {
    inner: std::io::BufWriter<File>,
    hasher: sha2::Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(file: File) -> Self {
        HashingWriter { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: sha2::Sha256::new(), size: 0 }
    }

    /// Flushes the tar; no sync: it is a temporary file the blob store
    /// copies, and keeping the blob is the store's job.
    fn finish(mut self) -> Result<Digest> {
        self.inner.flush().context("writing the layer tar")?;
        self.inner.into_inner().map_err(|e| Error::from(e.into_error()).context("writing the layer tar"))?;
        Ok(Digest::new(DigestFunction::Sha256, self.hasher.finalize().into(), self.size))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(tar_path: &Path) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(File::open(tar_path).expect("open"));
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (String::from_utf8_lossy(&e.path_bytes()).into_owned(), e.header().entry_type())
            })
            .collect()
    }

    /// What a layer must not depend on: extended attributes other than
    /// file capabilities, access times and ctimes (never written), and
    /// mtimes past the epoch.
    #[test]
    fn xattrs_atimes_and_late_mtimes_do_not_reach_the_layer() {
        let layer = |scramble: bool| {
            let upper = tempfile::tempdir().expect("tempdir");
            let root = upper.path();
            std::fs::create_dir_all(root.join("d")).expect("mkdir");
            std::fs::write(root.join("d/f"), "f").expect("write");
            let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(500);
            let file = File::options().write(true).open(root.join("d/f")).expect("open");
            let late = std::time::SystemTime::now();
            let times = if scramble {
                std::fs::FileTimes::new().set_accessed(late).set_modified(late)
            } else {
                std::fs::FileTimes::new()
                    .set_accessed(old)
                    .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000))
            };
            file.set_times(times).expect("times");
            if scramble {
                xattr::set(root.join("d/f"), "user.memobuild-test", b"1").expect("user xattrs on the temp dir");
            }
            let dir = File::open(root.join("d")).expect("open dir");
            dir.set_times(std::fs::FileTimes::new().set_accessed(old).set_modified(old)).expect("dir times");
            let lower = LayerStack::new(Vec::new());
            let writer = DiffWriter { upper: root, lower: &lower, mount_targets: &[], source_date_epoch: Some(1_000) };
            let out = tempfile::tempdir().expect("tempdir");
            writer.write(File::create(out.path().join("layer.tar")).expect("create")).expect("write")
        };
        assert_eq!(layer(true), layer(false));
    }

    #[test]
    fn files_links_and_mountpoints() {
        let upper = tempfile::tempdir().expect("tempdir");
        let out_dir = tempfile::tempdir().expect("tempdir");
        let root = upper.path();
        std::fs::write(root.join("b"), "b").expect("write");
        std::fs::create_dir_all(root.join("a/sub")).expect("mkdir");
        std::fs::write(root.join("a/sub/f"), "f").expect("write");
        std::fs::hard_link(root.join("b"), root.join("a/hard")).expect("link");
        std::os::unix::fs::symlink("/b", root.join("link")).expect("symlink");
        for dir in ["proc", "dev", "sys", "mnt/cache", "work"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        let lower = LayerStack::new(Vec::new());
        let targets: Vec<String> = ["/proc", "/dev", "/sys", "/sys/fs/cgroup", "/mnt/cache"].map(String::from).to_vec();
        let writer = DiffWriter { upper: root, lower: &lower, mount_targets: &targets, source_date_epoch: Some(1_000) };
        let tar_path = out_dir.path().join("layer.tar");
        let digest = writer.write(File::create(&tar_path).expect("create")).expect("write");
        assert_eq!(digest.size(), std::fs::metadata(&tar_path).expect("meta").len());
        let entries = entries_of(&tar_path);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a/", "a/hard", "a/sub/", "a/sub/f", "b", "link", "work/"]);
        assert_eq!(entries[1].1, EntryType::Regular);
        assert_eq!(entries[4].1, EntryType::Link);
        assert_eq!(entries[5].1, EntryType::Symlink);
        let mut archive = tar::Archive::new(File::open(&tar_path).expect("open"));
        for entry in archive.entries().expect("entries") {
            assert!(entry.expect("entry").header().mtime().expect("mtime") <= 1_000);
        }
    }

    /// A file's capabilities go into the layer as a PAX record, revision 3
    /// ones (set in a user namespace) without their namespace's root. Needs
    /// root: skipped otherwise.
    #[test]
    fn file_capabilities_reach_the_layer() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let upper = tempfile::tempdir().expect("tempdir");
        let root = upper.path();
        let mut v3 = vec![1, 0, 0, 3, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        v3.extend_from_slice(&100_000u32.to_le_bytes());
        std::fs::write(root.join("ping"), "ping").expect("write");
        xattr::set(root.join("ping"), "security.capability", &v3).expect("setcap");
        std::fs::write(root.join("plain"), "plain").expect("write");
        let lower = LayerStack::new(Vec::new());
        let writer = DiffWriter { upper: root, lower: &lower, mount_targets: &[], source_date_epoch: None };
        let out = tempfile::tempdir().expect("tempdir");
        let tar_path = out.path().join("layer.tar");
        writer.write(File::create(&tar_path).expect("create")).expect("write");
        let mut archive = tar::Archive::new(File::open(&tar_path).expect("open"));
        let mut records = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            for record in entry.pax_extensions().expect("pax").into_iter().flatten() {
                let record = record.expect("record");
                records.push((path.clone(), record.key().expect("key").to_string(), record.value_bytes().to_vec()));
            }
        }
        let mut v2 = v3[..20].to_vec();
        v2[3] = 2;
        assert_eq!(records, [("ping".to_string(), CAPABILITY_PAX_RECORD.to_string(), v2)]);
    }
}
