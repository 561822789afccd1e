//! Runs a build graph: stages in parallel as their dependencies finish,
//! steps in order within a stage, every filesystem step through the action
//! cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use memobuild_frontend::{
    BuildGraph, MountType, NetworkMode, Origin, SecurityMode, Stage, StageBase, Step, StepDefinition,
};
use memobuild_oci::Layer;
use memobuild_proto::build::BuildEvent;
use memobuild_proto::{Error, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::base_images::ResolvedImage;
use crate::build_record::StepRecord;
use crate::image_state::{rfc3339, History, ImageState, DEFAULT_PATH};
use crate::run_command::run_argv;
use crate::{
    BuildSession, EngineStores, EventSender, StepAction, StepExecutor, StepOutcome, StepSpec, StepTask,
    HOST_ENTITLEMENT, INSECURE_ENTITLEMENT,
};

/// How the build runs.
pub struct BuildSettings {
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`: timestamps in layers and config.
    pub source_date_epoch: Option<u64>,
    /// Look steps up without running them (`--dry-run`).
    pub dry_run: bool,
    /// `--network`: the network of a RUN without its own `--network`.
    pub network: NetworkMode,
    /// `--allow network.host`: RUN steps may use the host's network.
    pub host_network_allowed: bool,
    /// `--allow security.insecure`: `RUN --security=insecure` may run.
    pub insecure_allowed: bool,
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

    /// The time written into new layers, and into the history entries of
    /// steps that run.
    pub fn timestamp(&self) -> u64 {
        self.source_date_epoch.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        })
    }
}

/// A finished stage.
pub type StageResult = Arc<ImageState>;

type StageFuture = Shared<BoxFuture<'static, std::result::Result<StageResult, Error>>>;

/// One build's walk of its graph.
pub struct BuildRun {
    pub stores: Arc<EngineStores>,
    pub executor: Arc<dyn StepExecutor>,
    pub graph: Arc<BuildGraph>,
    pub images: HashMap<String, Arc<ResolvedImage>>,
    pub settings: BuildSettings,
    pub session: BuildSession,
    pub events: EventSender,
    pub cancel: CancellationToken,
    pub records: Mutex<Vec<StepRecord>>,
}

impl BuildRun {
    /// Builds every stage of the graph; returns the target stage's state.
    pub async fn run(self: Arc<Self>) -> Result<StageResult> {
        self.check_entitlements()?;
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

    /// Fails before any step runs when a RUN asks for a network the build's
    /// entitlements or the executor's policy do not allow.
    fn check_entitlements(&self) -> Result<()> {
        let policy = self.executor.network_policy();
        for step in self.graph.stages.iter().flat_map(|s| &s.steps) {
            let StepDefinition::Run { network, security, .. } = &step.definition else { continue };
            let mode = self.settings.network_of(*network);
            let refusal = if *security == SecurityMode::Insecure && !self.settings.insecure_allowed {
                Some(format!(
                    "RUN --security=insecure needs the {INSECURE_ENTITLEMENT} entitlement: add --allow \
                     {INSECURE_ENTITLEMENT}"
                ))
            } else if mode == NetworkMode::Host && !self.settings.host_network_allowed {
                Some(format!(
                    "the host's network needs the {HOST_ENTITLEMENT} entitlement: add --allow {HOST_ENTITLEMENT}"
                ))
            } else {
                policy.refusal(mode)
            };
            if let Some(why) = refusal {
                return Err(Error::new(tonic::Code::PermissionDenied, why).context(self.step_context(step)));
            }
        }
        Ok(())
    }

    /// `Dockerfile:LINE: INSTRUCTION`, as errors name a step.
    fn step_context(&self, step: &Step) -> String {
        let dockerfile = &self.graph.dockerfile;
        match &step.trigger {
            Some(trigger) => trigger.context(dockerfile, step.location.line),
            None => format!("{dockerfile}:{}: {}", step.location.line, first_line(&step.instruction)),
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
        // Metadata-only steps with no time before them (first in a stage
        // from scratch): they take the next step's that has one.
        let mut undated: Vec<usize> = Vec::new();
        for (i, step) in stage.steps.iter().enumerate().skip(1) {
            if self.cancel.is_cancelled() {
                return Err(Error::new(tonic::Code::Cancelled, "build cancelled"));
            }
            let name = format!("[{label} {}/{total}] {}", i + 1, first_line(&step.instruction));
            if step.definition.changes_filesystem() {
                self.fs_step(step, &name, &mut state, deps).await.map_err(|e| {
                    let _ = self.events.send(BuildEvent::failed(&step.id, e.message()));
                    let dockerfile = &self.graph.dockerfile;
                    e.context(match &step.trigger {
                        Some(trigger) => trigger.context(dockerfile, step.location.line),
                        None => format!("{dockerfile}:{}: {name}", step.location.line),
                    })
                })?;
            } else {
                let entry = self.metadata_history(step, &state.history);
                if entry.created.is_empty() {
                    undated.push(state.history.len());
                }
                state.history.push(entry);
            }
            if let Some(dated) = state.history.last().filter(|h| !h.created.is_empty()).cloned() {
                for i in undated.drain(..) {
                    state.history[i].created.clone_from(&dated.created);
                    state.history[i].built_at = dated.built_at;
                }
            }
        }
        // Nothing after them built anything either (metadata over scratch):
        // the Unix epoch, the usual time of reproducible images, so that
        // rebuilds give the same image.
        for i in undated {
            state.history[i].created = rfc3339(0);
        }
        Ok(state)
    }

    fn image(&self, reference: &str) -> Result<&Arc<ResolvedImage>> {
        self.images.get(reference).ok_or_else(|| Error::internal(format!("image {reference} was not resolved")))
    }

    /// The history entry of a filesystem step built at `built_at` (a cache
    /// hit keeps the time the step was first built, so an unchanged build
    /// gives the same config); `SOURCE_DATE_EPOCH` overrides it.
    fn history(&self, step: &Step, empty_layer: bool, built_at: u64) -> History {
        let at = self.settings.source_date_epoch.unwrap_or(built_at);
        History {
            created: rfc3339(at),
            created_by: step.instruction.trim().to_string(),
            empty_layer,
            comment: Some("memobuild".into()),
            built_at: Some(at),
        }
    }

    /// The history entry of a metadata-only step: the time of the entry
    /// before it (the latest step that built something, or the base
    /// image's); `SOURCE_DATE_EPOCH` overrides it. Its `created` is empty
    /// when nothing before it has a time.
    fn metadata_history(&self, step: &Step, before: &[History]) -> History {
        let (created, built_at) = match (self.settings.source_date_epoch, before.last()) {
            (Some(epoch), _) => (rfc3339(epoch), Some(epoch)),
            (None, Some(last)) => (last.created.clone(), last.built_at),
            (None, None) => (String::new(), None),
        };
        History {
            created,
            created_by: step.instruction.trim().to_string(),
            empty_layer: true,
            comment: Some("memobuild".into()),
            built_at,
        }
    }

    /// A cached result recorded before results carried their time gets
    /// this build's, written back once so that later builds find the same.
    async fn dated(&self, task: &StepTask, outcome: StepOutcome) -> StepOutcome {
        if outcome.built_at.is_some() || self.settings.source_date_epoch.is_some() {
            return outcome;
        }
        let dated = StepOutcome { built_at: Some(self.settings.timestamp()), ..outcome };
        let recorded =
            self.stores.actions.update(&self.stores.instance_name, &task.action.digest, &dated.result()).await;
        if let Err(e) = recorded {
            tracing::warn!(action = %task.action.digest, error = %e, "could not record the time of a cached step");
        }
        dated
    }

    /// The filesystems a step reads besides its parent. A RUN's are its
    /// bind mounts from a stage or an image, in mount order, as the runner
    /// takes them; a stage a cache mount names is waited for, not mounted.
    fn sources(&self, step: &Step, deps: &HashMap<usize, StageResult>) -> Result<Vec<Vec<Layer>>> {
        let stage_layers = |d: &usize| {
            deps.get(d).map(|s| s.layers.clone()).ok_or_else(|| Error::internal(format!("stage {d} has no result")))
        };
        let mut sources = Vec::new();
        match &step.definition {
            StepDefinition::Run { mounts, .. } => {
                let mut stages = step.depends_on.iter();
                for mount in mounts {
                    let bind = mount.mount.kind == MountType::Bind;
                    match &mount.origin {
                        Some(Origin::Stage { .. }) => {
                            let stage = stages.next().ok_or_else(|| {
                                Error::internal(format!(
                                    "step {}: a mount's stage is not among its dependencies",
                                    step.id
                                ))
                            })?;
                            if bind {
                                sources.push(stage_layers(stage)?);
                            }
                        }
                        Some(Origin::Image { reference }) if bind => {
                            sources.push(self.image(reference)?.state.layers.clone())
                        }
                        _ => {}
                    }
                }
            }
            definition => {
                for d in &step.depends_on {
                    sources.push(stage_layers(d)?);
                }
                if let StepDefinition::Copy { origin: Origin::Image { reference }, .. } = definition {
                    sources.push(self.image(reference)?.state.layers.clone());
                }
            }
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
        let (argv, env) = match &step.definition {
            StepDefinition::Run { argv, heredocs, env, .. } => {
                let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if !env.iter().any(|(k, _)| k == "PATH") {
                    env.push(("PATH".into(), DEFAULT_PATH.into()));
                }
                (run_argv(argv, heredocs), env)
            }
            _ => (Vec::new(), Vec::new()),
        };
        // A RUN's network is part of its key, whether its own or --network's.
        let mut definition = step.definition.clone();
        if let StepDefinition::Run { network, .. } = &mut definition {
            *network = self.settings.network_of(*network);
        }
        let egress = matches!(&definition, StepDefinition::Run { network: NetworkMode::Default, .. });
        let file_capabilities = matches!(&definition, StepDefinition::Run { .. }) || !sources.is_empty();
        let spec = StepSpec {
            definition,
            parent: state.layers.clone(),
            sources,
            source_date_epoch: self.settings.source_date_epoch,
            egress,
            file_capabilities,
        };
        let action = StepAction::of_step(&spec, argv, env);
        let task = StepTask {
            step_id: step.id.clone(),
            name: name.to_string(),
            spec,
            action,
            uncached_env: step.uncached_env.clone(),
        };
        let _ = self.events.send(BuildEvent::started(&step.id, name));
        let started = Instant::now();
        let hit = if self.settings.no_cache || state.unknown {
            None
        } else {
            task.action.lookup(&*self.stores.actions, &self.stores.instance_name).await?
        };
        let hit = match hit {
            Some(outcome) if !self.settings.dry_run => match &outcome.layer {
                Some(layer) if !self.executor.keep(layer).await? => None,
                _ => Some(outcome),
            },
            hit => hit,
        };
        let cached = hit.is_some();
        self.records.lock().push(StepRecord::new(
            step,
            name,
            &task.action.digest,
            &state.layers,
            cached,
            &self.session.context,
        ));
        if self.settings.dry_run {
            let message = match (&hit, state.unknown) {
                (Some(_), _) => format!("key {}: cached", task.action.digest),
                (None, false) => format!("key {}: not cached, would run", task.action.digest),
                (None, true) => "would run: its key depends on the output of a step that runs".to_string(),
            };
            let _ = self.events.send(BuildEvent::info(&step.id, message));
            match hit {
                Some(outcome) => {
                    state.layers.extend(outcome.layer);
                    let _ = self.events.send(BuildEvent::cached(&step.id));
                }
                None => {
                    state.unknown = true;
                    let _ = self.events.send(BuildEvent::done(&step.id, 0.0));
                }
            }
            return Ok(());
        }
        let outcome = match hit {
            Some(outcome) => self.dated(&task, outcome).await,
            None => self.executor.execute(&task, &self.session, &self.events, self.cancel.child_token()).await?,
        };
        let built_at = outcome.built_at.unwrap_or_else(|| self.settings.timestamp());
        state.history.push(self.history(step, outcome.layer.is_none(), built_at));
        state.layers.extend(outcome.layer);
        let event = if cached {
            BuildEvent::cached(&step.id)
        } else {
            BuildEvent::done(&step.id, started.elapsed().as_secs_f64())
        };
        let _ = self.events.send(event);
        Ok(())
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}
