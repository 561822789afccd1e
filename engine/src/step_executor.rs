//! How the engine has a step run: the [`StepExecutor`] trait, the step
//! ([`StepTask`]) and what it gets besides its action ([`BuildSession`]).
//!
//! `memobuild build` runs steps in-process (the worker crate's local
//! executor); a cluster hands them to its scheduler's queue. Either way the
//! executor, not the engine, runs the step and writes its action result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_frontend::BuildContext;
use memobuild_oci::Layer;
use memobuild_proto::{Digest, Result};
use tokio_util::sync::CancellationToken;

use crate::{EventSender, HostEntry, NetworkPolicy, ResourceLimits, Secrets, StepAction, StepOutcome, StepSpec};

/// Where a step reads the files of the build context from.
#[derive(Clone, Debug)]
pub enum ContextFiles {
    /// The context directory on this machine; each file is checked against
    /// its digest as it is read.
    Directory(PathBuf),
    /// The CAS, by the BLAKE3 digests of the context tree (remote builds).
    Cas,
}

/// What the steps of one build get besides their actions: values that are
/// not part of any key (secrets, hosts entries, limits) and where to find
/// inputs the action pins by digest.
pub struct BuildSession {
    pub context: Arc<BuildContext>,
    pub context_files: ContextFiles,
    /// `--secret` values, in memory only.
    pub secrets: Arc<Secrets>,
    /// `--ssh` agent sockets on this machine, by id (local builds only).
    pub ssh_sockets: BTreeMap<String, PathBuf>,
    /// `--add-host` entries.
    pub hosts: Vec<HostEntry>,
    pub limits: ResourceLimits,
    /// Files `ADD URL` fetched, in the CAS, by URL.
    pub downloads: BTreeMap<String, Digest>,
    /// Checkouts of `ADD GITURL` on this machine, by repository
    /// (`REMOTE#REF:SUBDIR`; local builds only).
    pub git_checkouts: BTreeMap<String, PathBuf>,
    /// The time of files a step creates when no `SOURCE_DATE_EPOCH` is set.
    pub timestamp: u64,
}

/// One filesystem step to run.
pub struct StepTask {
    /// `STAGE.STEP`, as events name it.
    pub step_id: String,
    /// `[build 2/5] RUN make`.
    pub name: String,
    pub spec: StepSpec,
    /// The action of `spec`: its digest is the key.
    pub action: StepAction,
    /// Environment a RUN gets that is kept out of its key (the proxy ARGs).
    pub uncached_env: BTreeMap<String, String>,
}

/// Runs steps whose results are not cached.
#[async_trait]
pub trait StepExecutor: Send + Sync {
    /// Runs `task` and records its result, with the time it finished, in
    /// the action cache. Returns what that result says: the layer it made
    /// and that time. Log lines and the worker go to `events`. An error
    /// names what failed; the engine adds the Dockerfile line.
    async fn execute(
        &self,
        task: &StepTask,
        session: &BuildSession,
        events: &EventSender,
        cancel: CancellationToken,
    ) -> Result<StepOutcome>;

    /// What RUN steps may reach where this executor runs them; a build
    /// asking for more fails before any step runs.
    fn network_policy(&self) -> NetworkPolicy;

    /// Keeps a cached step's layer for the rest of the build (a cluster pins
    /// it against eviction). `false`: the layer is gone after all, so the
    /// step must run.
    async fn keep(&self, _layer: &Layer) -> Result<bool> {
        Ok(true)
    }
}

impl BuildSession {
    /// What a worker elsewhere needs of the session to run `task`. Local
    /// paths (SSH agents, git checkouts, a context directory) do not
    /// travel: a remote build reads its context from the CAS.
    pub fn to_proto(&self, task: &StepTask) -> memobuild_proto::worker::StepSession {
        use memobuild_proto::build::{BlobDigest, Secret};
        memobuild_proto::worker::StepSession {
            context: Some(BlobDigest::of(&self.context.root_digest())),
            secrets: self.secrets.values().map(|(id, value)| Secret { id: id.into(), value: value.to_vec() }).collect(),
            hosts: self.hosts.iter().map(HostEntry::to_string).collect(),
            limits: Some(self.limits.to_proto()),
            downloads: self.downloads.iter().map(|(url, digest)| (url.clone(), BlobDigest::of(digest))).collect(),
            timestamp: self.timestamp,
            uncached_env: task.uncached_env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            build_id: String::new(),
            trace_parent: memobuild_proto::trace_parent::current().unwrap_or_default(),
        }
    }
}
