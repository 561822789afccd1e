//! Unpacking a layer stack into a directory (`--output type=local`),
//! treating every tar as hostile.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result};

use crate::blob_io::{blob_reader, blocking, io_error, oci_digest, HashingReader};
use crate::compression::Compression;
use crate::file_capabilities::{may_apply, unsupported, PAX_XATTR_PREFIX};
use crate::layer::Layer;

/// Bounds on what [`extract_layers`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Total bytes of regular files over all layers.
    pub max_bytes: u64,
    /// Total tar entries over all layers.
    pub max_entries: u64,
}

impl Default for ExtractLimits {
    /// 64 GiB and ten million entries.
    fn default() -> Self {
        ExtractLimits { max_bytes: 64 << 30, max_entries: 10_000_000 }
    }
}

/// Symlinks followed while resolving one path, as Linux allows.
const MAX_SYMLINK_HOPS: u32 = 40;

/// Applies `layers` bottom-up to `dest` (created if missing): `.wh.NAME`
/// deletes NAME, `.wh..wh..opq` hides what lower layers have in its
/// directory. No entry reaches outside `dest`: `..` components are refused,
/// absolute paths are taken relative to `dest`, symlinks met on the way are
/// resolved as if `dest` were the root, and hard links must point at
/// entries inside `dest`. Keeps modes, symlinks, hard links and mtimes, the
/// xattrs of files and directories (file capabilities among them) but
/// `trusted.*`, and owners when running as root; device nodes only as root.
pub async fn extract_layers(store: &dyn BlobStore, layers: &[Layer], dest: &Path, limits: ExtractLimits) -> Result<()> {
    extract(store, layers, dest, limits, Whiteouts::Delete).await
}

/// Extracts one layer into the upper directory of an overlayfs snapshot, as
/// overlayfs keeps changes (and as Docker's overlay2 driver applies layers):
/// files are written into `upper` directly, `.wh.NAME` becomes a 0/0
/// character device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr.
/// The same path checks as [`extract_layers`] apply, within `upper`.
pub async fn extract_layer_to_overlay_upper(
    store: &dyn BlobStore,
    layer: &Layer,
    upper: &Path,
    limits: ExtractLimits,
) -> Result<()> {
    extract(store, std::slice::from_ref(layer), upper, limits, Whiteouts::Overlay).await
}

/// What a whiteout entry does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// Remove what lower layers left at the path.
    Delete,
    /// Record it the way overlayfs does.
    Overlay,
}

async fn extract(
    store: &dyn BlobStore,
    layers: &[Layer],
    dest: &Path,
    limits: ExtractLimits,
    whiteouts: Whiteouts,
) -> Result<()> {
    fs::create_dir_all(dest).map_err(|e| Error::from(e).context(format!("creating {}", dest.display())))?;
    let root = fs::canonicalize(dest).map_err(|e| Error::from(e).context(dest.display()))?;
    let mut budget = Budget { bytes: limits.max_bytes, entries: limits.max_entries, limits };
    for layer in layers {
        let name = oci_digest(&layer.blob);
        let compression =
            Compression::of_media_type(&layer.media_type).map_err(|e| e.context(format!("layer {name}")))?;
        let reader = blob_reader(store, &layer.blob).await.map_err(|e| e.context(format!("layer {name}")))?;
        let root = root.clone();
        let expected = layer.diff_id_string();
        let bounded = layer.clone();
        budget = blocking(move || {
            let mut unpacker = Unpacker::new(root, name.clone(), whiteouts);
            let mut tar = HashingReader::new(compression.layer_decoder(reader, &bounded)?);
            unpacker.apply(&mut tar, &mut budget).map_err(|e| e.context(format!("layer {name}")))?;
            let diff_id = oci_digest(&tar.finish().map_err(io_error)?);
            if diff_id != expected {
                return Err(Error::invalid_argument(format!(
                    "layer {name} unpacks to {diff_id}, not its diff id {expected}"
                )));
            }
            Ok(budget)
        })
        .await
        .map_err(|e| e.context(format!("extracting into {}", dest.display())))?;
    }
    Ok(())
}

struct Budget {
    bytes: u64,
    entries: u64,
    limits: ExtractLimits,
}

/// Metadata applied to a directory once its layer is done, so a read-only
/// directory can still be filled.
struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    owner: Option<(u32, u32)>,
}

struct Unpacker {
    root: PathBuf,
    layer: String,
    whiteouts: Whiteouts,
    as_root: bool,
    /// Paths (relative to the root) this layer wrote, with their ancestors.
    written: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
}

impl Unpacker {
    fn new(root: PathBuf, layer: String, whiteouts: Whiteouts) -> Self {
        let as_root = nix::unistd::geteuid().is_root();
        Unpacker { root, layer, whiteouts, as_root, written: HashSet::new(), dirs: Vec::new() }
    }

    fn apply(&mut self, reader: impl Read, budget: &mut Budget) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(|e| Error::invalid_argument(format!("not a tar: {e}")))? {
            let mut entry = entry.map_err(|e| Error::invalid_argument(format!("malformed tar: {}", io_error(e))))?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            if budget.entries == 0 {
                return Err(Error::resource_exhausted(format!(
                    "entry {shown}: more than {} entries",
                    budget.limits.max_entries
                )));
            }
            budget.entries -= 1;
            self.entry(&mut entry, &raw, budget).map_err(|e| e.context(format!("entry {shown}")))?;
        }
        for dir in self.dirs.drain(..).rev() {
            finish_metadata(&dir.path, dir.mode, dir.mtime, dir.owner)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &[u8], budget: &mut Budget) -> Result<()> {
        let Some(rel) = sanitize(raw)? else {
            return Ok(());
        };
        let name = rel.file_name().map(OsStr::to_os_string).unwrap_or_default();
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            if name_bytes == b".wh..wh..opq" {
                self.opaque(&parent_rel)?;
            } else if !hidden.starts_with(b".wh.") {
                self.whiteout(&parent_rel, OsStr::from_bytes(hidden))?;
            }
            return Ok(());
        }
        let xattrs = entry_xattrs(entry)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(invalid)? & 0o7777;
        let mtime = header.mtime().map_err(invalid)?;
        let owner = if self.as_root {
            let uid = u32::try_from(header.uid().map_err(invalid)?).map_err(|_| invalid("uid out of range"))?;
            let gid = u32::try_from(header.gid().map_err(invalid)?).map_err(|_| invalid("gid out of range"))?;
            Some((uid, gid))
        } else {
            None
        };
        let parent = resolve_dir(&self.root, &parent_rel, true)?;
        let path = parent.join(&name);
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    _ => {
                        remove_existing(&path)?;
                        fs::DirBuilder::new().mode(0o755).create(&path)?;
                    }
                }
                self.set_xattrs(&path, &xattrs)?;
                self.dirs.push(DirMeta { path, mode, mtime, owner });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if size > budget.bytes {
                    return Err(Error::resource_exhausted(format!(
                        "extracting {size} more bytes would pass the limit of {} bytes",
                        budget.limits.max_bytes
                    )));
                }
                budget.bytes -= size;
                remove_existing(&path)?;
                let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                io::copy(entry, &mut file).map_err(io_error)?;
                drop(file);
                finish_metadata(&path, mode, mtime, owner)?;
                // After the owner: a change of owner drops file capabilities.
                self.set_xattrs(&path, &xattrs)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| invalid("symlink without a target"))?.into_owned();
                remove_existing(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
                }
                let time = FileTime::from_unix_time(mtime as i64, 0);
                filetime::set_symlink_file_times(&path, time, time)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| invalid("hard link without a target"))?.into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let target_rel = sanitize(&target)
                    .map_err(|e| e.context(format!("hard link target {shown}")))?
                    .ok_or_else(|| invalid(format!("hard link target {shown} is the root")))?;
                let target_parent = resolve_dir(&self.root, target_rel.parent().unwrap_or(Path::new("")), false)
                    .map_err(|e| invalid(format!("hard link target {shown}: {}", e.message())))?;
                let target_path = target_parent.join(target_rel.file_name().unwrap_or_default());
                match fs::symlink_metadata(&target_path) {
                    Ok(meta) if !meta.is_dir() => {}
                    Ok(_) => return Err(invalid(format!("hard link target {shown} is a directory"))),
                    Err(_) => {
                        return Err(invalid(format!("hard link target {shown} does not exist in the destination")))
                    }
                }
                if target_path != path {
                    remove_existing(&path)?;
                    fs::hard_link(&target_path, &path)?;
                }
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                self.special(entry, kind, &path, mode)?;
                if fs::symlink_metadata(&path).is_ok() {
                    finish_metadata(&path, mode, mtime, owner)?;
                }
            }
            other => {
                tracing::debug!(layer = %self.layer, ?other, "skipping a tar entry of unsupported type");
                return Ok(());
            }
        }
        self.mark_written(&rel);
        Ok(())
    }

    /// A FIFO, or a device node when running as root (skipped otherwise).
    fn special<R: Read>(&self, entry: &tar::Entry<'_, R>, kind: tar::EntryType, path: &Path, mode: u32) -> Result<()> {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let perm = Mode::from_bits_truncate(mode & 0o777);
        let flag = match kind {
            tar::EntryType::Fifo => SFlag::S_IFIFO,
            _ if !self.as_root => {
                tracing::debug!(layer = %self.layer, path = %path.display(), "skipping a device node: not root");
                return Ok(());
            }
            tar::EntryType::Char => SFlag::S_IFCHR,
            _ => SFlag::S_IFBLK,
        };
        let major = entry.header().device_major().map_err(invalid)?.unwrap_or(0);
        let minor = entry.header().device_minor().map_err(invalid)?.unwrap_or(0);
        remove_existing(path)?;
        mknod(path, flag, perm, nix::sys::stat::makedev(major.into(), minor.into()))
            .map_err(|e| Error::internal(format!("mknod {}: {e}", path.display())))?;
        Ok(())
    }

    /// Sets the xattrs an entry carries on `path`, leaving out those
    /// [`may_apply`] refuses and those this filesystem or process cannot set.
    fn set_xattrs(&self, path: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        for (name, value) in xattrs {
            if !may_apply(name) {
                tracing::debug!(layer = %self.layer, path = %path.display(), name, "not applying a trusted xattr");
                continue;
            }
            match xattr::set(path, name, value) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    tracing::debug!(layer = %self.layer, path = %path.display(), name, error = %e, "skipping an xattr");
                }
                Err(e) => return Err(invalid(format!("xattr {name:?}: {e}"))),
            }
        }
        Ok(())
    }

    fn mark_written(&mut self, rel: &Path) {
        let mut current = Some(rel);
        while let Some(path) = current.filter(|p| !p.as_os_str().is_empty()) {
            if !self.written.insert(path.to_path_buf()) {
                break;
            }
            current = path.parent();
        }
    }

    /// `.wh.NAME`: removes NAME as lower layers left it.
    fn whiteout(&mut self, parent_rel: &Path, hidden: &OsStr) -> Result<()> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(invalid("malformed whiteout"));
        }
        if self.whiteouts == Whiteouts::Overlay {
            use nix::sys::stat::{makedev, mknod, Mode, SFlag};
            let path = resolve_dir(&self.root, parent_rel, true)?.join(hidden);
            remove_existing(&path)?;
            return mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| Error::internal(format!("whiteout {}: {e}", path.display())));
        }
        match resolve_dir(&self.root, parent_rel, false) {
            Ok(parent) => remove_existing(&parent.join(hidden)),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `.wh..wh..opq`: removes what lower layers have in the directory,
    /// keeping what this layer wrote there.
    fn opaque(&mut self, dir_rel: &Path) -> Result<()> {
        if self.whiteouts == Whiteouts::Overlay {
            let dir = resolve_dir(&self.root, dir_rel, true)?;
            self.mark_written(dir_rel);
            return xattr::set(&dir, "trusted.overlay.opaque", b"y")
                .map_err(|e| Error::internal(format!("marking {} opaque: {e}", dir.display())));
        }
        let dir = match resolve_dir(&self.root, dir_rel, false) {
            Ok(dir) => dir,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.mark_written(dir_rel);
        clear_lower(&dir, dir_rel, &self.written)
    }
}

fn clear_lower(dir: &Path, dir_rel: &Path, written: &HashSet<PathBuf>) -> Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let child_rel = dir_rel.join(child.file_name());
        if !written.contains(&child_rel) {
            remove_existing(&child.path())?;
        } else if child.file_type()?.is_dir() {
            clear_lower(&child.path(), &child_rel, written)?;
        }
    }
    Ok(())
}

/// The xattrs an entry carries (its `SCHILY.xattr.NAME` PAX records); a
/// record that cannot be read as one is not an xattr.
fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(records) = entry.pax_extensions().map_err(io_error)? else { return Ok(Vec::new()) };
    Ok(records
        .flatten()
        .filter_map(|record| {
            let name = record.key().ok()?.strip_prefix(PAX_XATTR_PREFIX)?;
            Some((name.to_string(), record.value_bytes().to_vec()))
        })
        .collect())
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::invalid_argument(e.to_string())
}

/// An entry path made relative and checked: `None` for the root itself,
/// INVALID_ARGUMENT when a `..` component would climb out.
fn sanitize(raw: &[u8]) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(invalid("the path has a .. component; refusing to write outside the destination")),
            part => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// The real directory `rel` names under `root`, resolving symlinks met on
/// the way as if `root` were `/` (so nothing resolves outside it). Missing
/// directories are created when `create`, NOT_FOUND otherwise.
fn resolve_dir(root: &Path, rel: &Path, create: bool) -> Result<PathBuf> {
    let mut current = root.to_path_buf();
    let mut todo: Vec<OsString> = rel.iter().rev().map(OsStr::to_os_string).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == "." || part.is_empty() || part == "/" {
            continue;
        }
        if part == ".." {
            if current != root {
                current.pop();
            }
            continue;
        }
        let next = current.join(&part);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.is_dir() => current = next,
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(invalid(format!("too many symlinks resolving {}", rel.display())));
                }
                let target = fs::read_link(&next)?;
                if target.is_absolute() {
                    current = root.to_path_buf();
                }
                todo.extend(target.iter().rev().map(OsStr::to_os_string));
            }
            Ok(_) => {
                let shown = next.strip_prefix(root).unwrap_or(&next).display().to_string();
                return Err(invalid(format!("{shown} is not a directory")));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new().mode(0o755).create(&next)?;
                current = next;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let shown = next.strip_prefix(root).unwrap_or(&next).display().to_string();
                return Err(Error::not_found(format!("{shown} does not exist")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(current)
}

/// Removes whatever is at `path` (a directory with its content), without
/// following symlinks; nothing there is fine.
fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Owner (first: chown clears set-id bits), mode, then mtime.
fn finish_metadata(path: &Path, mode: u32, mtime: u64, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    let time = FileTime::from_unix_time(mtime as i64, 0);
    filetime::set_symlink_file_times(path, time, time)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_refuses_dotdot_and_strips_roots() {
        assert_eq!(sanitize(b"/abs/x").unwrap(), Some(PathBuf::from("abs/x")));
        assert_eq!(sanitize(b"./a/./b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(sanitize(b"./").unwrap(), None);
        assert!(sanitize(b"a/../../x").is_err());
    }

    #[test]
    fn resolve_dir_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        assert_eq!(resolve_dir(&root, Path::new("evil"), true).unwrap(), root.join("tmp"));
        assert_eq!(resolve_dir(&root, Path::new("up/etc"), true).unwrap(), root.join("etc"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_dir(&root, Path::new("loop/x"), true).is_err());
    }
}
