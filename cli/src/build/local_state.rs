//! What a local build keeps under `--state-dir`: the CAS, the action cache,
//! the context stat cache, cache mounts, build records and (when memobuild
//! starts its own) containerd. Several builds may share one state dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_cas::{ActionCache, BlobStore, FilesystemStore, VerifiedStore};
use memobuild_oci::{DirectoryDiffIdMemo, RegistryClient};
use memobuild_proto::{Result, ResultExt};
use memobuild_worker::containerd::Containerd;
use tokio::sync::OnceCell;

/// Subdirectories of the state dir.
pub const CAS_DIR: &str = "cas";
pub const ACTION_CACHE_DIR: &str = "action-cache";
pub const DIFF_IDS_DIR: &str = "diff-ids";
pub const STAT_CACHE_DIR: &str = "context-cache";
pub const CACHE_MOUNTS_DIR: &str = "cache-mounts";
pub const REMOTE_FILES_DIR: &str = "remote-files";
pub const RECORDS_DIR: &str = "builds";

/// The embedded services of a local build. containerd is started on first
/// use only: a fully cached build never needs it.
pub struct LocalState {
    dir: PathBuf,
    pub cas: Arc<dyn BlobStore>,
    pub actions: ActionCache,
    pub registry: RegistryClient,
    /// Diff ids of pulled compressed layers.
    pub diff_ids: DirectoryDiffIdMemo,
    containerd_address: Option<PathBuf>,
    containerd: OnceCell<Containerd>,
}

impl LocalState {
    pub async fn open(dir: &Path, containerd_address: Option<PathBuf>) -> Result<Self> {
        let context = || format!("opening the state dir {}", dir.display());
        let blobs = FilesystemStore::open_shared(dir.join(CAS_DIR), false).await.with_context(context)?;
        let results = FilesystemStore::open_shared(dir.join(ACTION_CACHE_DIR), false).await.with_context(context)?;
        let cas: Arc<dyn BlobStore> = Arc::new(VerifiedStore::new(Arc::new(blobs)));
        let actions = ActionCache::new(Arc::new(results), cas.clone());
        let diff_ids = DirectoryDiffIdMemo::new(dir.join(DIFF_IDS_DIR));
        let registry = RegistryClient::from_docker_config()?.with_diff_id_memo(Arc::new(diff_ids.clone()));
        Ok(LocalState {
            dir: dir.to_path_buf(),
            cas,
            actions,
            registry,
            diff_ids,
            containerd_address,
            containerd: OnceCell::new(),
        })
    }

    /// The context scanner's stat cache.
    pub fn stat_cache_dir(&self) -> PathBuf {
        self.dir.join(STAT_CACHE_DIR)
    }

    /// Host directories behind `RUN --mount=type=cache`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.dir.join(CACHE_MOUNTS_DIR)
    }

    /// Files and git checkouts fetched by ADD, with notes of the files
    /// (`RemoteFileNote`).
    pub fn remote_files_dir(&self) -> PathBuf {
        self.dir.join(REMOTE_FILES_DIR)
    }

    /// Records of past builds, for `explain-cache`.
    pub fn records_dir(&self) -> PathBuf {
        self.dir.join(RECORDS_DIR)
    }

    /// containerd, connected or started on first use.
    pub async fn containerd(&self) -> Result<&Containerd> {
        self.containerd
            .get_or_try_init(|| Containerd::connect_or_start(self.containerd_address.as_deref(), &self.dir))
            .await
    }

    /// Stops a private containerd this build started, if no other build
    /// still uses it.
    pub async fn shutdown(&self) -> Result<()> {
        match self.containerd.get() {
            Some(containerd) => containerd.shutdown().await,
            None => Ok(()),
        }
    }
}
