use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use memobuild_proto::{Error, Result};
use nix::mount::MsFlags;

use super::layer_stack::LayerStack;

/// What the mounts of a snapshot are made of, as the overlayfs snapshotter
/// returns them: a bind mount of one directory (a snapshot without parent,
/// or a view of a single layer) or an overlay mount (`lowerdir=` top first,
/// `upperdir=` for an active snapshot).
#[derive(Clone, Debug)]
pub(super) struct SnapshotMounts {
    mounts: Vec<Mount>,
    /// The writable directory of an active snapshot: everything the step
    /// changes lands here.
    upper: Option<PathBuf>,
    /// The read-only layers below, top first.
    lowers: Vec<PathBuf>,
}

impl SnapshotMounts {
    pub(super) fn parse(mounts: Vec<Mount>) -> Result<SnapshotMounts> {
        let [mount] = mounts.as_slice() else {
            return Err(Error::internal(format!("expected one snapshot mount, got {}", mounts.len())));
        };
        let (upper, lowers) = match mount.r#type.as_str() {
            "bind" | "rbind" => {
                let dir = PathBuf::from(&mount.source);
                if mount.options.iter().any(|o| o == "ro") {
                    (None, vec![dir])
                } else {
                    (Some(dir), Vec::new())
                }
            }
            "overlay" => {
                let option = |name: &str| mount.options.iter().find_map(|o| o.strip_prefix(name));
                let upper = option("upperdir=").map(PathBuf::from);
                let lowers = option("lowerdir=").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
                (upper, lowers)
            }
            other => return Err(Error::internal(format!("unexpected snapshot mount type {other:?}"))),
        };
        let parsed = SnapshotMounts { mounts, upper, lowers };
        Ok(parsed)
    }

    pub(super) fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    pub(super) fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// The layers below the writable directory, for reading the parent's
    /// files without mounting.
    pub(super) fn lower_stack(&self) -> LayerStack {
        LayerStack::new(self.lowers.clone())
    }

    /// Mounts the snapshot at `target`.
    pub(super) fn mount_at(&self, target: &Path) -> Result<()> {
        for mount in &self.mounts {
            let mut flags = MsFlags::empty();
            let mut data: Vec<&str> = Vec::new();
            for option in &mount.options {
                match option.as_str() {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "rw" => {}
                    "bind" => flags |= MsFlags::MS_BIND,
                    "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    other => data.push(other),
                }
            }
            if mount.r#type == "bind" || mount.r#type == "rbind" {
                flags |= MsFlags::MS_BIND;
            }
            let data = data.join(",");
            let fstype = (!flags.contains(MsFlags::MS_BIND)).then_some(mount.r#type.as_str());
            let source = mount.source.as_str();
            nix::mount::mount(Some(source), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()))
                .map_err(|e| {
                    Error::internal(format!("mounting {source} ({}) at {}: {e}", mount.r#type, target.display()))
                })?;
            // A bind mount ignores MS_RDONLY until remounted.
            if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(|e| {
                    Error::internal(format!("making the bind mount at {} read-only: {e}", target.display()))
                })?;
            }
        }
        Ok(())
    }
}
