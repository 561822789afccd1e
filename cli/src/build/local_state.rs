//! What a local build keeps under `--state-dir`: the CAS, the action cache,
//! the context stat cache, cache mounts, build records and (when memobuild
//! starts its own) containerd. Several builds may share one state dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_cas::{ActionCache, ActionResults, BlobStore, FilesystemStore, VerifiedStore};
use memobuild_engine::EngineStores;
use memobuild_oci::{DirectoryDiffIdMemo, RegistryClient};
use memobuild_proto::{Result, ResultExt};
use memobuild_worker::containerd::{IdMap, OciRuntime};
use memobuild_worker::network::NetworkConfig;
use memobuild_worker::steps::{LocalExecutor, StepRunner};

pub use memobuild_worker::steps::{CACHE_MOUNTS_DIR, LAYER_INDEXES_DIR};

/// Subdirectories of the state dir.
pub const CAS_DIR: &str = "cas";
pub const ACTION_CACHE_DIR: &str = "action-cache";
pub const DIFF_IDS_DIR: &str = "diff-ids";
pub const STAT_CACHE_DIR: &str = "context-cache";
pub const REMOTE_FILES_DIR: &str = "remote-files";
pub const RECORDS_DIR: &str = "builds";
/// The log of the last `memobuild finish-steps`.
pub const FINISH_STEPS_LOG: &str = "finish-steps.log";

/// How a local build runs its RUN steps (`memobuild build`'s flags).
#[derive(Clone, Debug, Default)]
pub struct StepSettings {
    /// containerd's socket (`--containerd-address`).
    pub containerd_address: Option<PathBuf>,
    /// `--userns-remap`.
    pub userns_remap: Option<IdMap>,
    /// `--oci-runtime`.
    pub oci_runtime: OciRuntime,
}

/// The embedded node of a local build: the engine's stores and the step
/// runner (whose containerd starts on first use only: a fully cached build
/// never needs it).
pub struct LocalState {
    dir: PathBuf,
    pub stores: Arc<EngineStores>,
    pub runner: Arc<StepRunner>,
}

impl LocalState {
    pub async fn open(dir: &Path, settings: &StepSettings) -> Result<Self> {
        let context = || format!("opening the state dir {}", dir.display());
        let blobs = FilesystemStore::open_shared(dir.join(CAS_DIR), false).await.with_context(context)?;
        let results = FilesystemStore::open_shared(dir.join(ACTION_CACHE_DIR), false).await.with_context(context)?;
        let cas: Arc<dyn BlobStore> = Arc::new(VerifiedStore::new(Arc::new(blobs)));
        let actions: Arc<dyn ActionResults> = Arc::new(ActionCache::new(Arc::new(results), cas.clone()));
        let diff_ids = Arc::new(DirectoryDiffIdMemo::new(dir.join(DIFF_IDS_DIR)));
        let registry = RegistryClient::from_docker_config()?.with_diff_id_memo(diff_ids.clone());
        let stores = EngineStores {
            cas: cas.clone(),
            actions,
            instance_name: String::new(),
            registry,
            diff_ids: Some(diff_ids),
            remote_files_dir: dir.join(REMOTE_FILES_DIR),
        };
        // A laptop's own builds may use its network (with --allow network.host).
        let network = NetworkConfig { host: true, ..NetworkConfig::default() };
        let runner = StepRunner::new(cas, settings.containerd_address.clone(), dir.to_path_buf(), network)
            .with_user_namespace(settings.userns_remap)
            .with_oci_runtime(settings.oci_runtime.clone());
        Ok(LocalState { dir: dir.to_path_buf(), stores: Arc::new(stores), runner: Arc::new(runner) })
    }

    /// Runs steps in this process, recording into the local action cache.
    pub fn executor(&self) -> LocalExecutor {
        LocalExecutor {
            runner: self.runner.clone(),
            cas: self.stores.cas.clone(),
            actions: self.stores.actions.clone(),
            instance_name: self.stores.instance_name.clone(),
        }
    }

    /// The context scanner's stat cache.
    pub fn stat_cache_dir(&self) -> PathBuf {
        self.dir.join(STAT_CACHE_DIR)
    }

    /// Records of past builds, for `explain-cache`.
    pub fn records_dir(&self) -> PathBuf {
        self.dir.join(RECORDS_DIR)
    }

    /// Stops a private containerd this build started, if no other build
    /// still uses it. What another process can remove (the last steps'
    /// containers, the default network's bridge) goes to `memobuild
    /// finish-steps` instead of being waited for (its log:
    /// `finish-steps.log`).
    pub async fn shutdown(&self) -> Result<()> {
        let leftovers = self.runner.hand_over().await?;
        if !leftovers.is_empty() {
            super::finish_steps::hand_over(leftovers, &self.dir.join(FINISH_STEPS_LOG)).await;
        }
        Ok(())
    }
}
