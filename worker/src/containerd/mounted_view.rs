use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
use memobuild_proto::{Error, Result, ResultExt};
use nix::mount::MntFlags;

use super::lease::{delete_lease, Lease};
use super::snapshot_mounts::SnapshotMounts;
use super::{Containerd, SNAPSHOTTER};

/// How long a view's snapshot survives a crash.
const VIEW_LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

/// A read-only view of a committed chain, mounted at a temporary directory
/// ([`MountedView::path`]). Unmounted and removed by [`MountedView::release`]
/// or, failing that, on drop.
#[derive(Debug)]
pub struct MountedView {
    path: PathBuf,
    mounted: bool,
    /// The view snapshot and its lease; `None` for an empty root.
    snapshot: Option<(Containerd, String, String)>,
    released: bool,
}

impl Containerd {
    /// Mounts the committed chain `parent` read-only at a temporary
    /// directory; `None` gives an empty directory.
    pub async fn mount_view(&self, parent: Option<&str>) -> Result<MountedView> {
        let name = format!("memobuild-view-{}", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(&name);
        std::fs::create_dir(&path).with_context(|| format!("creating view directory {}", path.display()))?;
        let mut view = MountedView { path, mounted: false, snapshot: None, released: false };
        let Some(parent) = parent else { return Ok(view) };
        self.committed(parent).await;
        let lease = Lease::create(self, "view", VIEW_LEASE_TTL).await?;
        view.snapshot = Some((self.clone(), name.clone(), lease.id().to_string()));
        let request = ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: name.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .view(self.request(request, Some(lease.id())))
            .await
            .map_err(|s| Error::from(s).context(format!("making a view of snapshot {parent}")))?
            .into_inner()
            .mounts;
        let mounts = SnapshotMounts::parse(mounts)?;
        mounts.mount_at(&view.path).map_err(|e| e.context(format!("mounting a view of snapshot {parent}")))?;
        view.mounted = true;
        Ok(view)
    }
}

impl MountedView {
    /// Where the view is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts the view and removes its snapshot and directory.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.unmount()?;
        if let Some((containerd, key, lease)) = self.snapshot.take() {
            containerd.remove_snapshot(&key).await?;
            delete_lease(&containerd, &lease, false).await?;
        }
        Ok(())
    }

    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            nix::mount::umount2(&self.path, MntFlags::MNT_DETACH)
                .map_err(|e| Error::internal(format!("unmounting view {}: {e}", self.path.display())))?;
            self.mounted = false;
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::from(e).context(format!("removing view directory {}", self.path.display()))),
        }
    }
}

impl Drop for MountedView {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.unmount() {
            tracing::warn!(error = %e, "dropping a mounted view");
        }
        if let Some((containerd, key, lease)) = self.snapshot.take() {
            // Without a runtime the lease's expiry removes the snapshot.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = containerd.remove_snapshot(&key).await {
                        tracing::warn!(error = %e, "removing a dropped view's snapshot");
                    }
                    let _ = delete_lease(&containerd, &lease, false).await;
                });
            }
        }
    }
}
