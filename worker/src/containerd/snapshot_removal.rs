use std::collections::{HashMap, HashSet};

use containerd_client::services::v1::snapshots::{Kind, ListSnapshotsRequest};
use memobuild_proto::{Error, Result};

use super::{Containerd, SNAPSHOTTER};

impl Containerd {
    /// Removes the committed snapshots in [`super::NAMESPACE`] (the unpacked
    /// layer chains), children before parents. Active and view snapshots
    /// belong to steps running now: they stay, and so do their parents, as
    /// does a snapshot that gains a child while this runs. Returns how many
    /// were removed. Those named in `keep` stay, and so do their parents.
    pub async fn remove_committed_snapshots_except(&self, keep: &HashSet<String>) -> Result<u64> {
        let request = ListSnapshotsRequest { snapshotter: SNAPSHOTTER.to_string(), filters: Vec::new() };
        let listing = |status| Error::from(status).context("listing memobuild's containerd snapshots");
        let mut stream = self.snapshots().list(self.request(request, None)).await.map_err(listing)?.into_inner();
        let mut snapshots = Vec::new();
        while let Some(response) = stream.message().await.map_err(listing)? {
            snapshots.extend(response.info);
        }
        let mut children: HashMap<&str, usize> = HashMap::new();
        for snapshot in &snapshots {
            *children.entry(snapshot.parent.as_str()).or_default() += 1;
        }
        let committed: HashMap<&str, &str> = snapshots
            .iter()
            .filter(|s| s.kind == Kind::Committed as i32)
            .map(|s| (s.name.as_str(), s.parent.as_str()))
            .collect();
        let mut leaves: Vec<&str> =
            committed.keys().copied().filter(|name| !children.contains_key(name) && !keep.contains(*name)).collect();
        let mut removed = 0;
        while let Some(name) = leaves.pop() {
            match self.remove_snapshot(name).await {
                Ok(()) => removed += 1,
                Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                    tracing::debug!(snapshot = name, error = %e, "snapshot is in use; keeping it");
                    continue;
                }
                Err(e) => return Err(e),
            }
            let parent = committed.get(name).copied().unwrap_or_default();
            if let Some(count) = children.get_mut(parent) {
                *count -= 1;
                if *count == 0 && committed.contains_key(parent) && !keep.contains(parent) {
                    leaves.push(parent);
                }
            }
        }
        Ok(removed)
    }
}
