//! Dockerfile steps a scheduler assigns: the step is read from its action
//! (`step.json` in the input root, the command), the build's session comes
//! with the assignment, and the [`StepRunner`] runs it as `memobuild build`
//! does. The scheduler records the result in the action cache.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use memobuild_cas::{get_bytes_at_most, walk_tree, BlobStore};
use memobuild_engine::{
    dated_result, BuildSession, ContextFiles, HostEntry, ResourceLimits, Secrets, StepSpec, STEP_FILE,
};
use memobuild_frontend::BuildContext;
use memobuild_proto::build::BlobDigest;
use memobuild_proto::reapi::{Action, ActionResult, Command, Directory};
use memobuild_proto::worker::StepSession;
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::step_runner::{StepCommand, StepRunner};
use crate::containerd::LogChunk;

/// The largest Action, Command, input root or `step.json` read.
const MAX_PROTO_BYTES: u64 = 16 << 20;
/// Build contexts kept decoded, most recent first.
const CONTEXTS_KEPT: usize = 8;

/// Runs the Dockerfile steps assigned to this worker.
pub struct StepActions {
    runner: Arc<StepRunner>,
    cas: Arc<dyn BlobStore>,
    contexts: Mutex<VecDeque<(Digest, Arc<BuildContext>)>>,
}

impl StepActions {
    pub fn new(runner: Arc<StepRunner>, cas: Arc<dyn BlobStore>) -> Self {
        StepActions { runner, cas, contexts: Mutex::new(VecDeque::new()) }
    }

    /// Executes the step action `digest` with its build's `session`;
    /// output goes to `logs` as it comes. A step that fails (a RUN that
    /// exits non-zero) is an error whose message says why.
    pub async fn execute(
        &self,
        digest: &Digest,
        session: &StepSession,
        worker: &str,
        logs: UnboundedSender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<ActionResult> {
        let start = SystemTime::now();
        let function = digest.function();
        let action: Action = self.fetch(digest, "action").await?;
        let command: Command = self
            .fetch(&Digest::from_proto_field(function, action.command_digest.as_ref(), "command")?, "command")
            .await?;
        let root: Directory = self
            .fetch(&Digest::from_proto_field(function, action.input_root_digest.as_ref(), "input root")?, "input root")
            .await?;
        let file = root.files.iter().find(|f| f.name == STEP_FILE).ok_or_else(|| {
            Error::invalid_argument(format!("action {digest} has no {STEP_FILE}: not a Dockerfile step"))
        })?;
        let spec_digest = Digest::from_proto_field(function, file.digest.as_ref(), STEP_FILE)?;
        let spec =
            StepSpec::from_json(&get_bytes_at_most(&*self.cas, &spec_digest, MAX_PROTO_BYTES, STEP_FILE).await?)?;
        let build = self.session(session).await?;
        let step = StepCommand {
            argv: command.arguments.clone(),
            env: command.environment_variables.iter().map(|v| (v.name.clone(), v.value.clone())).collect(),
            uncached_env: session.uncached_env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            id_hint: format!("action-{}", &digest.hex()[..12]),
        };
        let layer = self.runner.run(&spec, step, &build, logs, cancel).await?;
        Ok(dated_result(layer.as_ref(), worker, start, SystemTime::now()))
    }

    async fn fetch<M: Message + Default>(&self, digest: &Digest, what: &str) -> Result<M> {
        let bytes = get_bytes_at_most(&*self.cas, digest, MAX_PROTO_BYTES, what).await?;
        M::decode(bytes).with_context(|| format!("decoding {what} {digest}"))
    }

    /// The build's session as the step runner takes it.
    async fn session(&self, session: &StepSession) -> Result<BuildSession> {
        let blob = |d: &BlobDigest, function, what: &str| d.digest(function, what);
        let root = session
            .context
            .as_ref()
            .ok_or_else(|| Error::invalid_argument("a step's session names no build context"))?;
        let context = self.context(&blob(root, DigestFunction::Blake3, "build context")?).await?;
        let hosts = session
            .hosts
            .iter()
            .map(|h| h.parse::<HostEntry>().map_err(Error::invalid_argument))
            .collect::<Result<Vec<_>>>()?;
        let downloads = session
            .downloads
            .iter()
            .map(|(url, d)| Ok((url.clone(), blob(d, DigestFunction::Sha256, url)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(BuildSession {
            context,
            context_files: ContextFiles::Cas,
            secrets: Arc::new(Secrets::from_values(session.secrets.iter().map(|s| (s.id.clone(), s.value.clone())))),
            ssh_sockets: BTreeMap::new(),
            hosts,
            limits: session.limits.as_ref().map(ResourceLimits::from_proto).unwrap_or_default(),
            downloads,
            git_checkouts: BTreeMap::<String, PathBuf>::new(),
            timestamp: session.timestamp,
        })
    }

    /// The build context with root `root`, read from the CAS once.
    async fn context(&self, root: &Digest) -> Result<Arc<BuildContext>> {
        if let Some((_, context)) = self.contexts.lock().iter().find(|(d, _)| d == root) {
            return Ok(context.clone());
        }
        let directories = walk_tree(&*self.cas, *root).await.context("reading the build context")?;
        let directories =
            directories.into_iter().map(|d| (Digest::of(root.function(), &d.encode_to_vec()), d)).collect();
        let context = Arc::new(BuildContext::from_tree(root, &directories)?);
        let mut contexts = self.contexts.lock();
        contexts.push_front((*root, context.clone()));
        contexts.truncate(CONTEXTS_KEPT);
        Ok(context)
    }
}
