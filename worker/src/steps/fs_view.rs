//! What COPY, ADD and WORKDIR read of a filesystem: one path's entry
//! (symlinks not followed) and small files' bytes. A mounted filesystem
//! ([`HostDir`]) and a stack of layer indexes
//! ([`super::layer_stack_view::LayerStackView`]) both answer.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memobuild_oci::{FsEntry, FsKind};
use memobuild_proto::Result;

/// A filesystem read by path. Paths are relative (no leading `/`),
/// `/`-separated, and their directories already resolved.
pub trait FsView {
    /// The entry at `path`, its last component not followed; `None` when
    /// nothing is there.
    fn lstat(&self, path: &str) -> Result<Option<FsEntry>>;

    /// The bytes of the regular file at `path`; `None` when there is none.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
}

/// A filesystem mounted (or unpacked) at a host directory.
pub struct HostDir<'a>(pub &'a Path);

impl FsView for HostDir<'_> {
    fn lstat(&self, path: &str) -> Result<Option<FsEntry>> {
        let host = self.0.join(path);
        let Ok(meta) = std::fs::symlink_metadata(&host) else { return Ok(None) };
        let kind = if meta.is_dir() {
            FsKind::Directory
        } else if meta.file_type().is_symlink() {
            FsKind::Symlink(std::fs::read_link(&host)?.to_string_lossy().into_owned())
        } else if meta.is_file() {
            FsKind::File
        } else {
            FsKind::Other
        };
        Ok(Some(FsEntry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid() as u64,
            gid: meta.gid() as u64,
            mtime: meta.mtime().max(0) as u64,
            content: None,
        }))
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(std::fs::read(self.0.join(path)).ok())
    }
}
