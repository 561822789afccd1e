use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
use memobuild_proto::{Error, Result};

use super::id_remap::{IdMap, IdmappedMounts};
use super::lease::{delete_lease, Lease};
use super::mount_point::MountPoint;
use super::snapshot_mounts::SnapshotMounts;
use super::{Containerd, SNAPSHOTTER};

/// How long a view's snapshot survives a crash.
const VIEW_LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

/// A read-only view of a committed chain, mounted at a temporary directory
/// ([`MountedView::path`]). Unmounted and removed by [`MountedView::release`]
/// or, failing that, on drop.
#[derive(Debug)]
pub struct MountedView {
    mount: MountPoint,
    /// The view snapshot and its lease; `None` for an empty root.
    snapshot: Option<(Containerd, String, String)>,
}

impl Containerd {
    /// Mounts the committed chain `parent` read-only at a temporary
    /// directory; `None` gives an empty directory. With `map`, its files are
    /// seen through that user namespace map, for a step that runs in it.
    pub async fn mount_view(&self, parent: Option<&str>, map: Option<IdMap>) -> Result<MountedView> {
        let name = format!("memobuild-view-{}", uuid::Uuid::new_v4().simple());
        let mut view = MountedView { mount: MountPoint::create(&name)?, snapshot: None };
        let Some(parent) = parent else { return Ok(view) };
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
        // The idmapped layers may go once the view's mount holds them.
        let mut idmapped = map.map(|map| IdmappedMounts::create(&format!("{name}-idmap"), map)).transpose()?;
        let mounts = match idmapped.as_mut() {
            Some(idmapped) => mounts.remapped(idmapped)?,
            None => mounts,
        };
        view.mount.mount(&mounts).map_err(|e| e.context(format!("mounting a view of snapshot {parent}")))?;
        Ok(view)
    }
}

impl MountedView {
    /// Where the view is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Unmounts the view and removes its snapshot and directory.
    pub async fn release(mut self) -> Result<()> {
        let snapshot = self.snapshot.take();
        self.mount.release()?;
        if let Some((containerd, key, lease)) = snapshot {
            containerd.remove_snapshot(&key).await?;
            delete_lease(&containerd, &lease, false).await?;
        }
        Ok(())
    }
}

impl Drop for MountedView {
    fn drop(&mut self) {
        if let Err(e) = self.mount.release() {
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
