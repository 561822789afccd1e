use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest};
use memobuild_cas::BlobStore;
use memobuild_oci::{extract_layer_to_overlay_upper, extract_layers, ExtractLimits, Layer};
use memobuild_proto::{Error, Result};

use super::lease::{rfc3339, Lease};
use super::snapshot_mounts::SnapshotMounts;
use super::{Containerd, SNAPSHOTTER};

/// The label that keeps a committed snapshot from containerd's garbage
/// collector across builds.
pub(super) const GC_ROOT_LABEL: &str = "containerd.io/gc.root";
/// How long the temporary objects of one layer unpack may live.
const UNPACK_LEASE_TTL: Duration = Duration::from_secs(3600);

impl Containerd {
    /// Makes sure the snapshot chain for `layers` (bottom first) exists:
    /// committed snapshots named by chain id and labelled
    /// `containerd.io/gc.root`. Each missing layer's blob (plain tar,
    /// tar+gzip or tar+zstd, as its media type says) is read from `store`
    /// (which verified it; pulls checked its diff id) and extracted safely
    /// onto an extraction snapshot of its parent chain, then committed.
    /// Concurrent callers for the same chain both succeed. Returns the top
    /// chain id, `None` for no layers.
    pub async fn ensure_chain(&self, store: &dyn BlobStore, layers: &[Layer]) -> Result<Option<String>> {
        let chain_ids = Layer::chain_ids(layers);
        let Some(top) = chain_ids.last().cloned() else { return Ok(None) };
        // The lowest layer that is missing: everything above a present
        // snapshot is missing too only if that one is; scan from the top.
        let mut present = chain_ids.len();
        while present > 0 && !self.snapshot_exists(&chain_ids[present - 1]).await? {
            present -= 1;
        }
        for index in present..chain_ids.len() {
            let parent = index.checked_sub(1).map(|p| chain_ids[p].as_str());
            self.unpack_layer(store, &layers[index], parent, &chain_ids[index]).await.map_err(|e| {
                e.context(format!("unpacking layer {} of {} ({})", index + 1, layers.len(), layers[index].blob))
            })?;
        }
        Ok(Some(top))
    }

    async fn unpack_layer(
        &self,
        store: &dyn BlobStore,
        layer: &Layer,
        parent: Option<&str>,
        chain_id: &str,
    ) -> Result<()> {
        let lock = self.chain_lock(chain_id);
        let _guard = lock.lock().await;
        if self.snapshot_exists(chain_id).await? {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let lease = Lease::create(self, "unpack", UNPACK_LEASE_TTL).await?;
        let key = format!("memobuild-unpack-{} {chain_id}", uuid::Uuid::new_v4().simple());
        let result = self.unpack_under_lease(store, layer, parent, chain_id, &key, lease.id()).await;
        if result.is_err() {
            if let Err(e) = self.remove_snapshot(&key).await {
                tracing::warn!(error = %e, "cleaning up after a failed unpack");
            }
        }
        // The lease holds nothing once the snapshot is committed (or removed):
        // containerd's collector need not run before the step goes on.
        if let Err(e) = lease.delete(self, false).await {
            tracing::warn!(error = %e, "deleting the unpack lease");
        }
        if result.is_ok() {
            tracing::debug!(chain_id, blob = %layer.blob, elapsed = ?started.elapsed(), "unpacked layer");
        }
        result
    }

    async fn unpack_under_lease(
        &self,
        store: &dyn BlobStore,
        layer: &Layer,
        parent: Option<&str>,
        chain_id: &str,
        key: &str,
        lease: &str,
    ) -> Result<()> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
            parent: parent.unwrap_or_default().to_string(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.request(prepare, Some(lease)))
            .await
            .map_err(|s| {
                Error::from(s).context(format!("preparing snapshot {key} on {}", parent.unwrap_or("nothing")))
            })?
            .into_inner()
            .mounts;
        // The layer goes straight into the snapshot's writable directory, as
        // Docker's overlay2 driver applies layers: whiteouts become overlayfs
        // whiteouts. (containerd's Diff.Apply does the same job several times
        // slower on layers of many files.)
        let mounts = SnapshotMounts::parse(mounts)?;
        let upper = mounts
            .upper()
            .ok_or_else(|| Error::internal(format!("snapshot {key} has no writable directory")))?
            .to_path_buf();
        let limits = ExtractLimits::default();
        match parent {
            None => extract_layers(store, std::slice::from_ref(layer), &upper, limits).await?,
            Some(_) => extract_layer_to_overlay_upper(store, layer, &upper, limits).await?,
        }
        self.commit_snapshot(key, chain_id, lease).await
    }

    /// Commits the active snapshot `key` as `name`, labelled as a GC root.
    /// When `name` already exists (another caller committed the same
    /// content), `key` is removed instead.
    pub(super) async fn commit_snapshot(&self, key: &str, name: &str, lease: &str) -> Result<()> {
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels: HashMap::from([(GC_ROOT_LABEL.to_string(), rfc3339(SystemTime::now()))]),
        };
        match self.snapshots().commit(self.request(commit, Some(lease))).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => self.remove_snapshot(key).await,
            Err(status) => Err(Error::from(status).context(format!("committing snapshot {key} as {name}"))),
        }
    }
}
