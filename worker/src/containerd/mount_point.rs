use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result, ResultExt};
use nix::mount::MntFlags;

use super::snapshot_mounts::SnapshotMounts;

/// A directory of MemoBuild's own under the temporary directory, with a
/// snapshot mounted on it: unmounted and removed by
/// [`MountPoint::release`], or when dropped.
#[derive(Debug)]
pub(super) struct MountPoint {
    path: PathBuf,
    mounted: bool,
    released: bool,
}

impl MountPoint {
    /// Creates the empty directory `name` under the temporary directory.
    pub(super) fn create(name: &str) -> Result<MountPoint> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating mount point {}", path.display()))?;
        Ok(MountPoint { path, mounted: false, released: false })
    }

    /// Mounts `mounts` here.
    pub(super) fn mount(&mut self, mounts: &SnapshotMounts) -> Result<()> {
        mounts.mount_at(&self.path)?;
        self.mounted = true;
        Ok(())
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts (lazily: whatever still holds the mount keeps it) and
    /// removes the directory. Done once; dropping does it when nothing did.
    pub(super) fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        if self.mounted {
            nix::mount::umount2(&self.path, MntFlags::MNT_DETACH)
                .map_err(|e| Error::internal(format!("unmounting {}: {e}", self.path.display())))?;
            self.mounted = false;
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from(e).context(format!("removing mount point {}", self.path.display()))),
        }
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "dropping a mount point");
        }
    }
}
