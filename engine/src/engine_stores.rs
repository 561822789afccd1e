//! The stores a build reads and writes.

use std::path::PathBuf;
use std::sync::Arc;

use memobuild_cas::{ActionResults, BlobStore};
use memobuild_oci::{DiffIdMemo, RegistryClient};

/// Where a build's blobs, cached steps and fetched files live: a state dir
/// on a laptop, the cluster's stores on a scheduler.
pub struct EngineStores {
    pub cas: Arc<dyn BlobStore>,
    pub actions: Arc<dyn ActionResults>,
    /// The instance (tenant) whose action cache the build uses.
    pub instance_name: String,
    pub registry: RegistryClient,
    /// Diff ids of pulled compressed layers, when kept.
    pub diff_ids: Option<Arc<dyn DiffIdMemo>>,
    /// Notes of files `ADD URL` fetched, git checkouts, and what directory
    /// contexts were last made of.
    pub remote_files_dir: PathBuf,
}
