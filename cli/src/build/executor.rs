//! Runs a build graph: stages in parallel as their dependencies finish,
//! steps in order within a stage, every filesystem step through the action
//! cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use memobuild_frontend::{
    BuildContext, BuildGraph, MountType, NetworkMode, Origin, Stage, StageBase, Step, StepDefinition,
};
use memobuild_oci::Layer;
use memobuild_proto::{Digest, Error, Result};
use memobuild_worker::containerd::{ContainerSpec, LogChunk, ResourceLimits, SpecMount};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::base_images::ResolvedImage;
use super::build_record::StepRecord;
use super::copy_step::{plan_copy, plan_workdir, CopyRequest, SourceRoot};
use super::extra_hosts::HostsFiles;
use super::image_state::{History, ImageState, DEFAULT_PATH};
use super::local_state::LocalState;
use super::progress::{BuildEvent, EventSender, LogStream};
use super::remote_source::{materialize, FetchedSources};
use super::run_command::run_argv;
use super::run_secrets::RunSecrets;
use super::secrets::Secrets;
use super::ssh_agents::SshAgents;
use super::step_action::{StepAction, StepInputs};

/// How the build runs.
pub struct BuildSettings {
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`: timestamps in layers and config.
    pub source_date_epoch: Option<u64>,
    /// Look steps up without running them (`--dry-run`).
    pub dry_run: bool,
    /// What every RUN step may use (`--memory`, `--cpu-quota`, ...).
    pub limits: ResourceLimits,
    /// `--network`: the network of a RUN without its own `--network`.
    pub network: NetworkMode,
}

impl BuildSettings {
    /// The network a RUN step gets: its own `--network`, else the build's.
    pub fn network_of(&self, asked: NetworkMode) -> NetworkMode {
        if asked == NetworkMode::Default {
            self.network
        } else {
            asked
        }
    }

    /// The time written into new layers and history entries.
    pub fn timestamp(&self) -> u64 {
        self.source_date_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        })
    }
}

/// A finished stage.
pub type StageResult = Arc<ImageState>;

type StageFuture = Shared<BoxFuture<'static, std::result::Result<StageResult, Error>>>;

pub struct Executor {
    pub state: Arc<LocalState>,
    pub graph: Arc<BuildGraph>,
    pub context_dir: PathBuf,
    pub context: Arc<BuildContext>,
    pub images: HashMap<String, Arc<ResolvedImage>>,
    /// Remote ADD sources, fetched before planning.
    pub remote: FetchedSources,
    pub settings: BuildSettings,
    pub events: EventSender,
    pub cancel: CancellationToken,
    pub records: Mutex<Vec<StepRecord>>,
    /// `--secret` values; never part of a key, a record or a message.
    pub secrets: Secrets,
    /// `--ssh` agents (the build's own ones stop when this is dropped).
    pub ssh: SshAgents,
    /// `--add-host`: the `/etc/hosts` of RUN steps, when entries were given.
    pub hosts: Option<HostsFiles>,
}

impl Executor {
    /// Builds every stage of the graph; returns the target stage's state.
    pub async fn run(self: Arc<Self>) -> Result<StageResult> {
        let mut stages: HashMap<usize, StageFuture> = HashMap::new();
        let first_error: Arc<Mutex<Option<Error>>> = Arc::default();
        for stage in &self.graph.stages {
            let deps: Vec<(usize, StageFuture)> =
                stage.depends_on.iter().filter_map(|d| stages.get(d).map(|f| (*d, f.clone()))).collect();
            let this = self.clone();
            let index = stage.index;
            let first_error = first_error.clone();
            let future = async move {
                let mut done = HashMap::new();
                for (d, f) in deps {
                    done.insert(d, f.await?);
                }
                let result = this.run_stage(index, &done).await;
                if let Err(e) = &result {
                    first_error.lock().get_or_insert_with(|| e.clone());
                    this.cancel.cancel();
                }
                result.map(Arc::new)
            }
            .boxed()
            .shared();
            stages.insert(index, future);
        }
        // Every stage runs, also those only the target's dependencies need
        // indirectly; the first failure cancels the others and is reported.
        futures::future::join_all(stages.values().cloned()).await;
        if let Some(e) = first_error.lock().take() {
            return Err(e);
        }
        let target = self.graph.target;
        match stages.get(&target) {
            Some(f) => f.clone().await,
            None => Err(Error::internal(format!("target stage {target} is not in the graph"))),
        }
    }

    fn stage(&self, index: usize) -> Result<&Stage> {
        self.graph.stage(index).ok_or_else(|| Error::internal(format!("stage {index} is not in the graph")))
    }

    async fn run_stage(&self, index: usize, deps: &HashMap<usize, StageResult>) -> Result<ImageState> {
        let stage = self.stage(index)?;
        let total = stage.steps.len();
        // As BuildKit names steps: `[build 3/7]`, `[stage-1 2/4]`.
        let label = stage.name.clone().unwrap_or_else(|| format!("stage-{}", stage.index));
        let mut state = match &stage.base {
            StageBase::Scratch => ImageState::default(),
            StageBase::Image { reference } => self.image(reference)?.state.clone(),
            StageBase::Stage { index } => deps
                .get(index)
                .map(|s| s.as_ref().clone())
                .ok_or_else(|| Error::internal(format!("stage {index} finished without a result")))?,
        };
        for (i, step) in stage.steps.iter().enumerate().skip(1) {
            if self.cancel.is_cancelled() {
                return Err(Error::new(tonic::Code::Cancelled, "build cancelled"));
            }
            let name = format!("[{label} {}/{total}] {}", i + 1, first_line(&step.instruction));
            if step.definition.changes_filesystem() {
                self.fs_step(step, &name, &mut state, deps).await.map_err(|e| {
                    let _ = self.events.send(BuildEvent::Failed { step: step.id.clone(), message: e.message().into() });
                    let dockerfile = &self.graph.dockerfile;
                    e.context(match &step.trigger {
                        Some(trigger) => trigger.context(dockerfile, step.location.line),
                        None => format!("{dockerfile}:{}: {name}", step.location.line),
                    })
                })?;
            } else {
                state.history.push(self.history(step, true));
            }
        }
        Ok(state)
    }

    fn image(&self, reference: &str) -> Result<&Arc<ResolvedImage>> {
        self.images.get(reference).ok_or_else(|| Error::internal(format!("image {reference} was not resolved")))
    }

    fn history(&self, step: &Step, empty_layer: bool) -> History {
        History {
            created: super::image_state::rfc3339(self.settings.timestamp()),
            created_by: step.instruction.trim().to_string(),
            empty_layer,
            comment: Some("memobuild".into()),
        }
    }

    /// The filesystems a step reads besides its parent.
    fn sources(&self, step: &Step, deps: &HashMap<usize, StageResult>) -> Result<Vec<Vec<Layer>>> {
        let mut sources = Vec::new();
        for d in &step.depends_on {
            let stage = deps.get(d).ok_or_else(|| Error::internal(format!("stage {d} has no result")))?;
            sources.push(stage.layers.clone());
        }
        if let StepDefinition::Copy { origin: Origin::Image { reference }, .. } = &step.definition {
            sources.push(self.image(reference)?.state.layers.clone());
        }
        Ok(sources)
    }

    async fn fs_step(
        &self,
        step: &Step,
        name: &str,
        state: &mut ImageState,
        deps: &HashMap<usize, StageResult>,
    ) -> Result<()> {
        let sources = self.sources(step, deps)?;
        let (kind, argv, env) = match &step.definition {
            StepDefinition::Run { argv, heredocs, env, .. } => {
                let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if !env.iter().any(|(k, _)| k == "PATH") {
                    env.push(("PATH".into(), DEFAULT_PATH.into()));
                }
                ("run", run_argv(argv, heredocs), env)
            }
            StepDefinition::Copy { .. } => ("copy", Vec::new(), Vec::new()),
            _ => ("workdir", Vec::new(), Vec::new()),
        };
        // A RUN's network is part of its key, whether its own or --network's.
        let mut definition = step.definition.clone();
        if let StepDefinition::Run { network, .. } = &mut definition {
            *network = self.settings.network_of(*network);
        }
        let action = StepAction::new(StepInputs {
            kind,
            definition: Step::compute_key(&definition, &step.reads, None),
            argv: argv.clone(),
            env: env.clone(),
            parent: &state.layers,
            sources: sources.iter().map(Vec::as_slice).collect(),
        });
        let _ = self.events.send(BuildEvent::Started { step: step.id.clone(), name: name.to_string() });
        let started = Instant::now();
        let hit =
            if self.settings.no_cache || state.unknown { None } else { action.lookup(&self.state.actions).await? };
        let cached = hit.is_some();
        if self.settings.dry_run {
            let message = match (&hit, state.unknown) {
                (Some(_), _) => format!("key {}: cached", action.digest),
                (None, false) => format!("key {}: not cached, would run", action.digest),
                (None, true) => "would run: its key depends on the output of a step that runs".to_string(),
            };
            let _ = self.events.send(BuildEvent::Info { step: step.id.clone(), message });
            self.records.lock().push(StepRecord::new(step, name, &action.digest, &state.layers, cached, &self.context));
            match hit {
                Some(layer) => {
                    state.layers.extend(layer);
                    let _ = self.events.send(BuildEvent::Cached { step: step.id.clone() });
                }
                None => {
                    state.unknown = true;
                    let _ = self.events.send(BuildEvent::Done { step: step.id.clone(), seconds: 0.0 });
                }
            }
            return Ok(());
        }
        let layer = match hit {
            Some(layer) => layer,
            None => {
                let layer = match &step.definition {
                    StepDefinition::Run { .. } => self.run_container(step, state, &sources, argv, env).await?,
                    StepDefinition::Copy { .. } => self.copy(step, state, &sources).await?,
                    StepDefinition::Workdir { path, user } => self.workdir(path, user.as_deref(), state).await?,
                    _ => None,
                };
                action.record(&*self.state.cas, &self.state.actions, layer.as_ref()).await?;
                layer
            }
        };
        self.records.lock().push(StepRecord::new(step, name, &action.digest, &state.layers, cached, &self.context));
        state.history.push(self.history(step, layer.is_none()));
        if let Some(layer) = layer {
            state.layers.push(layer);
        }
        let event = if cached {
            BuildEvent::Cached { step: step.id.clone() }
        } else {
            BuildEvent::Done { step: step.id.clone(), seconds: started.elapsed().as_secs_f64() }
        };
        let _ = self.events.send(event);
        Ok(())
    }

    async fn run_container(
        &self,
        step: &Step,
        state: &ImageState,
        sources: &[Vec<Layer>],
        argv: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Option<Layer>> {
        let StepDefinition::Run { workdir, user, network, mounts, .. } = &step.definition else {
            return Ok(None);
        };
        let host_network = self.settings.network_of(*network) == NetworkMode::Host;
        let containerd = self.state.containerd().await?;
        let cas = &*self.state.cas;
        let parent = containerd.ensure_chain(cas, &state.layers).await?;
        let mut spec_mounts = Vec::new();
        let mut views = Vec::new();
        let mut scratch = Vec::new();
        let mut from_index = 0;
        let mut private = RunSecrets::new(&self.secrets, &self.ssh);
        spec_mounts.extend(self.hosts.as_ref().map(|hosts| hosts.mount(host_network)));
        for m in mounts {
            let target = m.mount.target.clone().unwrap_or_default();
            match m.mount.kind {
                MountType::Cache => {
                    let id = m.mount.id.clone().unwrap_or_else(|| target.clone());
                    let dir = self
                        .state
                        .cache_mounts_dir()
                        .join(Digest::of(memobuild_proto::DigestFunction::Sha256, id.as_bytes()).hex());
                    std::fs::create_dir_all(&dir)?;
                    spec_mounts.push(SpecMount::Cache { source: dir, target });
                }
                MountType::Tmpfs => spec_mounts.push(SpecMount::Tmpfs { target }),
                MountType::Bind => {
                    let source_path = m.mount.source.clone().unwrap_or_default();
                    let host = match &m.origin {
                        Some(Origin::Context) | None => {
                            let dir = tempfile::tempdir()?;
                            materialize_context(&self.context, &self.context_dir, &source_path, dir.path())?;
                            let path = dir.path().to_path_buf();
                            scratch.push(dir);
                            path
                        }
                        Some(_) => {
                            let layers = sources.get(from_index).cloned().unwrap_or_default();
                            from_index += 1;
                            let chain = containerd.ensure_chain(cas, &layers).await?;
                            let view = containerd.mount_view(chain.as_deref()).await?;
                            let path = super::rootfs::host_path(view.path(), &source_path)?;
                            views.push(view);
                            path
                        }
                    };
                    spec_mounts.push(SpecMount::Bind { source: host, target, readonly: m.mount.readonly });
                }
                MountType::Secret => spec_mounts.extend(private.secret(&m.mount)?),
                MountType::Ssh => spec_mounts.extend(private.ssh(&m.mount)?),
            }
        }
        let mut full_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        full_env.extend(step.uncached_env.iter().map(|(k, v)| format!("{k}={v}")));
        for (key, value) in private.env() {
            full_env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
            full_env.push(format!("{key}={value}"));
        }
        let spec = ContainerSpec {
            id_hint: format!("step-{}", step.id.replace('.', "-")),
            argv: argv.clone(),
            env: full_env,
            cwd: workdir.clone(),
            user: user.clone(),
            network: host_network,
            limits: self.settings.limits.clone(),
            mounts: spec_mounts,
            timeout: None,
            source_date_epoch: self.settings.source_date_epoch,
            hostname: "memobuild".into(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = self.events.clone();
        let id = step.id.clone();
        let tail: Arc<Mutex<Vec<String>>> = Arc::default();
        let tail_writer = tail.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let (stream, data) = match chunk {
                    LogChunk::Stdout(d) => (LogStream::Stdout, d),
                    LogChunk::Stderr(d) => (LogStream::Stderr, d),
                };
                let mut tail = tail_writer.lock();
                tail.extend(String::from_utf8_lossy(&data).lines().map(str::to_string));
                let excess = tail.len().saturating_sub(10);
                tail.drain(..excess);
                let _ = events.send(BuildEvent::Log { step: id.clone(), stream, data });
            }
        });
        let outcome = containerd.run(cas, parent.as_deref(), &spec, tx, self.cancel.child_token()).await;
        let _ = forward.await;
        for view in views {
            view.release().await?;
        }
        drop(scratch);
        let outcome = outcome?;
        if outcome.cancelled {
            return Err(Error::new(tonic::Code::Cancelled, "cancelled"));
        }
        if outcome.exit_code != 0 || outcome.timed_out {
            let last = tail.lock().join("\n");
            let why =
                if outcome.timed_out { "timed out".to_string() } else { format!("exit code: {}", outcome.exit_code) };
            return Err(Error::new(
                tonic::Code::Aborted,
                format!("process {:?} did not complete successfully: {why}\nlast output:\n{last}", argv.join(" ")),
            ));
        }
        Ok(outcome.layer)
    }

    async fn copy(&self, step: &Step, state: &ImageState, sources: &[Vec<Layer>]) -> Result<Option<Layer>> {
        let StepDefinition::Copy {
            add,
            origin,
            sources: defs,
            dest,
            chown,
            chmod,
            excludes,
            unpack,
            parents,
            keep_git_dir,
            ..
        } = &step.definition
        else {
            return Ok(None);
        };
        let containerd = self.state.containerd().await?;
        let cas = &*self.state.cas;
        let downloads = tempfile::tempdir()?;
        let fetched = materialize(&self.remote, defs, cas, downloads.path()).await?;
        let parent_chain = containerd.ensure_chain(cas, &state.layers).await?;
        let parent_view = containerd.mount_view(parent_chain.as_deref()).await?;
        let source_view = match origin {
            Origin::Context => None,
            _ => {
                let layers = sources.first().cloned().unwrap_or_default();
                let chain = containerd.ensure_chain(cas, &layers).await?;
                Some(containerd.mount_view(chain.as_deref()).await?)
            }
        };
        let request = CopyRequest {
            add: *add,
            sources: defs,
            dest,
            chown: chown.as_deref(),
            chmod: chmod.as_deref(),
            excludes,
            unpack: *unpack,
            parents: *parents,
            fetched: &fetched,
            keep_git_dir: *keep_git_dir,
        };
        let plan = {
            let source = match &source_view {
                Some(view) => SourceRoot::Filesystem(view.path()),
                None => SourceRoot::Context { dir: &self.context_dir, context: &self.context },
            };
            tokio::task::block_in_place(|| plan_copy(&request, &source, parent_view.path(), self.settings.timestamp()))
        };
        let layer = match plan {
            Ok(plan) => plan.write(cas).await,
            Err(e) => Err(e),
        };
        parent_view.release().await?;
        if let Some(view) = source_view {
            view.release().await?;
        }
        layer
    }

    async fn workdir(&self, path: &str, user: Option<&str>, state: &ImageState) -> Result<Option<Layer>> {
        let containerd = self.state.containerd().await?;
        let cas = &*self.state.cas;
        let chain = containerd.ensure_chain(cas, &state.layers).await?;
        let view = containerd.mount_view(chain.as_deref()).await?;
        let plan = tokio::task::block_in_place(|| plan_workdir(path, user, view.path(), self.settings.timestamp()));
        let layer = match plan {
            Ok(plan) => plan.write(cas).await,
            Err(e) => Err(e),
        };
        view.release().await?;
        layer
    }
}

/// Copies the context subtree at `source` into `dest` (a bind mount of the
/// context sees only what the context holds, not ignored files).
fn materialize_context(
    context: &BuildContext,
    dir: &std::path::Path,
    source: &str,
    dest: &std::path::Path,
) -> Result<()> {
    use memobuild_frontend::ContextEntry;
    let root = context
        .resolve(source)
        .map_err(Error::invalid_argument)?
        .ok_or_else(|| Error::not_found(format!("--mount source {source:?} is not in the build context")))?;
    let prefix = if root.is_empty() { String::new() } else { format!("{root}/") };
    if let Some(ContextEntry::File { .. }) = context.entry(&root) {
        std::fs::copy(dir.join(&root), dest.join(root.rsplit('/').next().unwrap_or(&root)))?;
        return Ok(());
    }
    for (path, entry) in context.entries().range(prefix.clone()..) {
        let Some(rel) = path.strip_prefix(&prefix) else { break };
        if rel.is_empty() {
            continue;
        }
        let target = dest.join(rel);
        match entry {
            ContextEntry::Directory { .. } => std::fs::create_dir_all(&target)?,
            ContextEntry::File { .. } => {
                std::fs::copy(dir.join(path), &target)?;
            }
            ContextEntry::Symlink { target: link } => std::os::unix::fs::symlink(link, &target)?,
        }
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}
