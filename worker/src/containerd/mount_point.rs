use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result, ResultExt};
use nix::errno::Errno;
use nix::mount::MntFlags;

use super::snapshot_mounts::SnapshotMounts;

/// A directory of MemoBuild's own under the temporary directory, with a
/// snapshot mounted on it: unmounted and removed by
/// [`MountPoint::release`], or when dropped.
#[derive(Debug)]
pub(super) struct MountPoint {
    path: PathBuf,
    released: bool,
}

impl MountPoint {
    /// Creates the empty directory `name` under the temporary directory.
    pub(super) fn create(name: &str) -> Result<MountPoint> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating mount point {}", path.display()))?;
        Ok(MountPoint { path, released: false })
    }

    /// Mounts `mounts` here.
    pub(super) fn mount(&mut self, mounts: &SnapshotMounts) -> Result<()> {
        mounts.mount_at(&self.path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the directory (see [`release_mount_point`]).
    /// Done once; dropping does it when nothing did.
    pub(super) fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        release_mount_point(&self.path)
    }

    /// The path, for whoever releases it later by path; `None` once
    /// released. Dropping no longer releases it.
    pub(super) fn into_path(mut self) -> Option<PathBuf> {
        (!std::mem::replace(&mut self.released, true)).then(|| self.path.clone())
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "dropping a mount point");
        }
    }
}

/// Unmounts what is mounted at `path`, if anything (lazily: whatever still
/// holds the mount keeps it), and removes the directory (or the file, for a
/// mount of a file), if it is there.
pub(super) fn release_mount_point(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::internal(format!("unmounting {}: {e}", path.display()))),
    }
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => std::fs::remove_dir(path),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("removing mount point {}", path.display()))),
    }
}
