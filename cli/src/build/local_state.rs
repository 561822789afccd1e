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
        let blobs = FilesystemStore::open_shared(dir.join("cas"), false).await.with_context(context)?;
        let results = FilesystemStore::open_shared(dir.join("action-cache"), false).await.with_context(context)?;
        let cas: Arc<dyn BlobStore> = Arc::new(VerifiedStore::new(Arc::new(blobs)));
        let actions = ActionCache::new(Arc::new(results), cas.clone());
        let diff_ids = DirectoryDiffIdMemo::new(dir.join("diff-ids"));
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
        self.dir.join("context-cache")
    }

    /// Host directories behind `RUN --mount=type=cache`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.dir.join("cache-mounts")
    }

    /// Files and git checkouts fetched by ADD, with notes of file sizes.
    pub fn remote_files_dir(&self) -> PathBuf {
        self.dir.join("remote-files")
    }

    /// Records of past builds, for `explain-cache`.
    pub fn records_dir(&self) -> PathBuf {
        self.dir.join("builds")
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
