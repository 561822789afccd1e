//! Builds the cluster runs: each is the engine's [`ImageBuild`] with the
//! scheduler's queue as its step executor. Every event a build reports is
//! kept in order, so a client that re-attaches sees the build from the
//! start and then follows it live.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use memobuild_cas::{walk_tree, ActionResults, BlobStore};
use memobuild_engine::{
    exported_image, layer_descriptor, parse_network, BuildSettings, BuiltOutput, ContextFiles, EngineStores,
    ExportRequest, HostEntry, ImageBuild, ResourceLimits, Secrets,
};
use memobuild_frontend::{BuildContext, Platform};
use memobuild_oci::{Compression, RegistryClient};
use memobuild_proto::build::{
    build_event::Kind, export, BuildAccepted, BuildEvent, BuildFailed, BuildRequest, BuildResult, BuildSummary,
};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue_executor::QueueExecutor;
use crate::Scheduler;

/// Events kept per build; past this, log output is dropped (with a note).
const MAX_EVENTS: usize = 200_000;
/// How long a finished build stays answerable.
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One build: its events so far and how it stands.
pub struct RunningBuild {
    pub id: String,
    pub instance_name: String,
    summary: Mutex<BuildSummary>,
    events: Mutex<Vec<BuildEvent>>,
    /// How many events there are; followers wait on it.
    count: watch::Sender<usize>,
    cancel: CancellationToken,
}

impl RunningBuild {
    pub fn summary(&self) -> BuildSummary {
        self.summary.lock().clone()
    }

    /// Events from index `from` on, and whether the last one ends the build.
    pub fn events_from(&self, from: usize) -> (Vec<BuildEvent>, bool) {
        let events = self.events.lock();
        let tail: Vec<BuildEvent> = events.iter().skip(from).cloned().collect();
        let ended = events.last().is_some_and(BuildEvent::is_last);
        (tail, ended)
    }

    /// A receiver told whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    fn push(&self, mut event: BuildEvent) {
        let mut events = self.events.lock();
        if events.len() >= MAX_EVENTS && matches!(event.kind, Some(Kind::Log(_))) {
            return;
        }
        event.sequence = events.len() as u64 + 1;
        events.push(event);
        self.count.send_replace(events.len());
    }
}

/// Runs builds for the BuildService.
pub struct BuildManager {
    scheduler: Arc<Scheduler>,
    cas: Arc<dyn BlobStore>,
    actions: Arc<dyn ActionResults>,
    /// Where fetched `ADD URL` files are noted.
    work_dir: PathBuf,
    builds: Mutex<HashMap<String, Arc<RunningBuild>>>,
}

impl BuildManager {
    pub fn new(
        scheduler: Arc<Scheduler>,
        cas: Arc<dyn BlobStore>,
        actions: Arc<dyn ActionResults>,
        work_dir: PathBuf,
    ) -> Self {
        BuildManager { scheduler, cas, actions, work_dir, builds: Mutex::new(HashMap::new()) }
    }

    /// Checks a request, reads its context from the CAS and starts the
    /// build in the background.
    pub async fn start(self: &Arc<Self>, request: BuildRequest) -> Result<Arc<RunningBuild>> {
        let id = uuid::Uuid::new_v4().to_string();
        let context = self.context(&request).await?;
        let image_build = image_build(&request, context)?;
        let now = unix_ms();
        let build = Arc::new(RunningBuild {
            id: id.clone(),
            instance_name: request.instance_name.clone(),
            summary: Mutex::new(BuildSummary {
                build_id: id.clone(),
                dockerfile_name: request.dockerfile_name.clone(),
                target: request.target.clone(),
                state: "running".into(),
                created_unix_ms: now,
                finished_unix_ms: 0,
                message: String::new(),
            }),
            events: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            cancel: CancellationToken::new(),
        });
        build.push(BuildEvent {
            sequence: 0,
            kind: Some(Kind::Accepted(BuildAccepted { build_id: id.clone() })),
        });
        self.forget_old();
        self.builds.lock().insert(id.clone(), build.clone());
        let stores = Arc::new(EngineStores {
            cas: self.cas.clone(),
            actions: self.actions.clone(),
            registry: registry(&request),
            diff_ids: None,
            remote_files_dir: self.work_dir.join("remote-files"),
        });
        let executor = Arc::new(QueueExecutor {
            scheduler: self.scheduler.clone(),
            cas: self.cas.clone(),
            instance_name: request.instance_name.clone(),
            client: format!("build/{id}"),
        });
        let running = build.clone();
        let span = tracing::info_span!("build", build = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
                let pump_build = running.clone();
                let pump = tokio::spawn(async move {
                    let mut counts = (0u32, 0u32);
                    while let Some(event) = received.recv().await {
                        match &event.kind {
                            Some(Kind::Done(_)) => counts.0 += 1,
                            Some(Kind::Cached(_)) => counts.1 += 1,
                            _ => {}
                        }
                        pump_build.push(event);
                    }
                    counts
                });
                let outcome = image_build.run(stores, executor, &events, running.cancel.clone()).await;
                drop(events);
                let (executed, cached) = pump.await.unwrap_or_default();
                running.end(outcome, executed, cached);
            },
            span,
        ));
        Ok(build)
    }

    /// The build `id` of `instance` (another instance's builds are not
    /// found).
    pub fn get(&self, instance: &str, id: &str) -> Result<Arc<RunningBuild>> {
        self.builds
            .lock()
            .get(id)
            .filter(|b| b.instance_name == instance)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("build {id} not found (unknown, or finished and expired)")))
    }

    /// Stops a build; its running steps are cancelled.
    pub fn cancel(&self, instance: &str, id: &str) -> Result<()> {
        self.get(instance, id)?.cancel.cancel();
        Ok(())
    }

    /// Builds of `instance`, newest first.
    pub fn list(&self, instance: &str, limit: usize) -> Vec<BuildSummary> {
        let mut builds: Vec<BuildSummary> =
            self.builds.lock().values().filter(|b| b.instance_name == instance).map(|b| b.summary()).collect();
        builds.sort_by(|a, b| b.created_unix_ms.cmp(&a.created_unix_ms));
        builds.truncate(limit);
        builds
    }

    fn forget_old(&self) {
        let cutoff = unix_ms() - RETENTION.as_millis() as i64;
        self.builds.lock().retain(|_, b| {
            let summary = b.summary.lock();
            summary.finished_unix_ms == 0 || summary.finished_unix_ms > cutoff
        });
    }

    /// The build context the request names, from its tree in the CAS.
    async fn context(&self, request: &BuildRequest) -> Result<Arc<BuildContext>> {
        let root = request
            .context
            .as_ref()
            .ok_or_else(|| Error::invalid_argument("a build request needs its context's root digest"))?
            .digest(DigestFunction::Blake3, "build context")?;
        let directories = walk_tree(&*self.cas, root)
            .await
            .with_context(|| format!("reading build context {}: upload it first", root.subject()))?;
        let directories: BTreeMap<Digest, _> =
            directories.into_iter().map(|d| (Digest::of(DigestFunction::Blake3, &d.encode_to_vec()), d)).collect();
        Ok(Arc::new(BuildContext::from_tree(&root, &directories)?))
    }
}

impl RunningBuild {
    /// Records how the build ended, as its last event.
    fn end(&self, outcome: Result<BuiltOutput>, executed: u32, cached: u32) {
        let (state, message, event) = match outcome {
            Ok(built) => {
                let message = built.image_id.clone().unwrap_or_default();
                let result = BuildResult {
                    image_id: built.image_id.unwrap_or_default(),
                    images: built.images.iter().map(|(c, image)| exported_image(*c, image)).collect(),
                    filesystem: built.filesystem.iter().map(layer_descriptor).collect(),
                    steps_executed: executed,
                    steps_cached: cached,
                };
                ("succeeded", message, Kind::Result(result))
            }
            Err(e) => {
                let state = if e.code() == tonic::Code::Cancelled { "cancelled" } else { "failed" };
                let failed = BuildFailed { code: e.code() as i32, message: e.message().to_string() };
                (state, e.message().to_string(), Kind::BuildFailed(failed))
            }
        };
        {
            let mut summary = self.summary.lock();
            summary.state = state.into();
            summary.message = message;
            summary.finished_unix_ms = unix_ms();
        }
        tracing::info!(state, "build ended");
        self.push(BuildEvent { sequence: 0, kind: Some(event) });
    }
}

/// The engine's request for `request`.
fn image_build(request: &BuildRequest, context: Arc<BuildContext>) -> Result<ImageBuild> {
    let platform = match request.platform.as_str() {
        "" => Platform::host(),
        text => text.parse()?,
    };
    let network = match request.network.as_str() {
        "" => memobuild_frontend::NetworkMode::Default,
        text => parse_network(text).map_err(Error::invalid_argument)?,
    };
    let hosts = request
        .add_hosts
        .iter()
        .map(|h| h.parse::<HostEntry>().map_err(Error::invalid_argument))
        .collect::<Result<Vec<_>>>()?;
    let mut exports = Vec::new();
    for wanted in &request.exports {
        let compression = match wanted.compression.as_str() {
            "" => Compression::Gzip,
            text => text.parse()?,
        };
        match export::Kind::try_from(wanted.kind) {
            Ok(export::Kind::Image) => exports.push(ExportRequest::Image(compression)),
            Ok(export::Kind::Registry) => exports.push(ExportRequest::Registry(compression)),
            Ok(export::Kind::Filesystem) => {}
            _ => return Err(Error::invalid_argument(format!("unknown export kind {}", wanted.kind))),
        }
    }
    Ok(ImageBuild {
        dockerfile_name: request.dockerfile_name.clone(),
        dockerfile: request.dockerfile.clone(),
        context,
        context_files: ContextFiles::Cas,
        build_args: request.build_args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        target: Some(request.target.clone()).filter(|t| !t.is_empty()),
        platform,
        build_contexts: BTreeMap::new(),
        settings: BuildSettings {
            no_cache: request.no_cache,
            source_date_epoch: request.source_date_epoch,
            dry_run: request.dry_run,
            network,
        },
        labels: request.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        annotations: request.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        exports,
        tags: request.tags.clone(),
        secrets: Arc::new(Secrets::from_values(request.secrets.iter().map(|s| (s.id.clone(), s.value.clone())))),
        ssh_sockets: BTreeMap::new(),
        hosts,
        limits: request.limits.as_ref().map(ResourceLimits::from_proto).unwrap_or_default(),
    })
}

/// A registry client with the credentials the request carries (for this
/// build only).
fn registry(request: &BuildRequest) -> RegistryClient {
    let mut client = RegistryClient::anonymous();
    for credential in &request.registry_credentials {
        client.add_credentials(&credential.registry, &credential.username, &credential.password);
    }
    client
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
