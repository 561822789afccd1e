//! Builds the cluster runs: each is the engine's [`ImageBuild`] with the
//! scheduler's queue as its step executor. Every event a build reports is
//! kept in order, in memory and in the [`BuildStore`], so a client that
//! re-attaches sees the build from the start and then follows it live, also
//! after a scheduler restart. A restarted scheduler resumes the builds that
//! were running: the steps that had finished are cache hits. Secrets and
//! registry credentials are never stored, so a build that had them cannot
//! be resumed and fails with a message that says so.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use memobuild_cas::{blobs_of_tree, walk_tree, ActionResults, BlobStore, CacheKind, Urgency};
use memobuild_engine::{
    exported_image, layer_descriptor, parse_entitlement, parse_network, BuildSettings, BuiltOutput, ContextFiles,
    EngineStores, ExportRequest, HostEntry, ImageBuild, NetworkPolicy, ResourceLimits, Secrets, DOCKER_IMAGE_CONTEXT,
    HOST_ENTITLEMENT, INSECURE_ENTITLEMENT,
};
use memobuild_frontend::{plan_text, BuildContext, BuildOptions, ContextScope, Platform};
use memobuild_oci::{Compression, DirectoryDiffIdMemo, RegistryClient};
use memobuild_proto::build::{
    build_event::Kind, export, BuildAccepted, BuildEvent, BuildFailed, BuildRequest, BuildResult, BuildSummary,
    ClusterStatusResponse, WorkerInfo,
};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::build_dag::BuildDag;
use crate::queue_executor::QueueExecutor;
use crate::{BuildState, BuildStore, Scheduler, StoredBuild, MAX_BUILD_PAGE};

/// Events and bytes of output kept per build; past either, output is
/// dropped (with one note saying so), so a step that prints without end
/// cannot fill the scheduler's memory or its database.
const MAX_EVENTS: usize = 200_000;
const MAX_LOG_BYTES: usize = 64 << 20;
/// Store writes batched at most.
const PERSIST_BATCH: usize = 512;
/// How long a finished build stays in memory (then it is read from the store).
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One build: its events so far and how it stands.
pub struct RunningBuild {
    pub id: String,
    pub instance_name: String,
    summary: Mutex<BuildSummary>,
    events: Mutex<EventLog>,
    /// How many events there are; followers wait on it.
    count: watch::Sender<usize>,
    cancel: CancellationToken,
    /// Where new events are written down.
    persist: mpsc::UnboundedSender<Persist>,
    /// When the newest event of any build arrived (unix ms), for live views.
    activity: watch::Sender<u64>,
    /// The planned steps, once known.
    dag: std::sync::OnceLock<BuildDag>,
}

/// A build's events, and how much output they hold.
#[derive(Default)]
struct EventLog {
    events: Vec<BuildEvent>,
    log_bytes: usize,
    truncated: bool,
}

/// A write for the build store, in order.
enum Persist {
    Event(String, u64, Vec<u8>),
    Finish(String, BuildState, i64, String),
}

impl RunningBuild {
    pub fn summary(&self) -> BuildSummary {
        self.summary.lock().clone()
    }

    /// Events from index `from` on, and whether the last one ends the build.
    pub fn events_from(&self, from: usize) -> (Vec<BuildEvent>, bool) {
        let log = self.events.lock();
        let tail: Vec<BuildEvent> = log.events.iter().skip(from).cloned().collect();
        let ended = log.events.last().is_some_and(BuildEvent::is_last);
        (tail, ended)
    }

    /// A receiver told whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    fn push(&self, mut event: BuildEvent) {
        let mut log = self.events.lock();
        if let Some(Kind::Log(output)) = &event.kind {
            log.log_bytes += output.data.len();
            if log.log_bytes > MAX_LOG_BYTES || log.events.len() >= MAX_EVENTS {
                if log.truncated {
                    return;
                }
                log.truncated = true;
                let note = format!("output past {MAX_LOG_BYTES} bytes or {MAX_EVENTS} events is not kept");
                event = BuildEvent::info(&output.step, note);
            }
        }
        event.sequence = log.events.len() as u64 + 1;
        let _ = self.persist.send(Persist::Event(self.id.clone(), event.sequence, event.encode_to_vec()));
        log.events.push(event);
        self.count.send_replace(log.events.len());
        self.activity.send_replace(unix_ms().max(0) as u64);
    }

    /// The build's steps as a graph, once planned.
    pub fn dag(&self) -> Option<&BuildDag> {
        self.dag.get()
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
    store: Arc<dyn BuildStore>,
    /// Diff ids of pulled base layers, so a build does not decompress a
    /// layer an earlier build already did.
    diff_ids: Arc<DirectoryDiffIdMemo>,
    persist: mpsc::UnboundedSender<Persist>,
    /// What the cluster's workers let RUN steps reach.
    network_policy: NetworkPolicy,
    /// The most one pulled or imported base layer may decompress to.
    max_layer_bytes: u64,
    activity: watch::Sender<u64>,
}

impl BuildManager {
    /// A manager over `store`; the builds it holds that were running are
    /// resumed (or failed, when they cannot be).
    pub async fn start(
        scheduler: Arc<Scheduler>,
        cas: Arc<dyn BlobStore>,
        actions: Arc<dyn ActionResults>,
        work_dir: PathBuf,
        store: Arc<dyn BuildStore>,
        network_policy: NetworkPolicy,
        max_layer_bytes: u64,
    ) -> Result<Arc<Self>> {
        let (persist, writes) = mpsc::unbounded_channel();
        tokio::spawn(run_persister(store.clone(), writes));
        let manager = Arc::new(BuildManager {
            scheduler,
            cas,
            actions,
            diff_ids: Arc::new(DirectoryDiffIdMemo::new(work_dir.join("diff-ids"))),
            builds: Mutex::new(HashMap::new()),
            store,
            persist,
            work_dir,
            network_policy,
            max_layer_bytes,
            activity: watch::channel(0).0,
        });
        for stored in manager.store.unfinished().await.context("loading the builds that were running")? {
            let id = stored.id.clone();
            if let Err(e) = manager.resume(stored).await {
                tracing::warn!(build = %id, error = %e, "cannot resume build");
            }
        }
        Ok(manager)
    }

    /// Records a build and starts it in the background (its context is
    /// read from the CAS there: a problem with it is the build's failure).
    pub async fn build(self: &Arc<Self>, request: BuildRequest) -> Result<Arc<RunningBuild>> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = unix_ms();
        let stored = StoredBuild {
            id: id.clone(),
            instance_name: request.instance_name.clone(),
            dockerfile_name: request.dockerfile_name.clone(),
            target: request.target.clone(),
            state: BuildState::Running,
            created_ms: now,
            finished_ms: None,
            message: String::new(),
            request: storable(&request).encode_to_vec(),
        };
        self.store.create(&stored).await?;
        let build = self.running(&stored, Vec::new());
        build.push(BuildEvent { sequence: 0, kind: Some(Kind::Accepted(BuildAccepted { build_id: id.clone() })) });
        self.forget_old();
        self.builds.lock().insert(id.clone(), build.clone());
        self.run(build.clone(), request);
        Ok(build)
    }

    /// Takes a build up again after a restart, its stored events first.
    async fn resume(self: &Arc<Self>, stored: StoredBuild) -> Result<()> {
        let events = self.stored_events(&stored.id).await?;
        let build = self.running(&stored, events);
        self.builds.lock().insert(stored.id.clone(), build.clone());
        let request = BuildRequest::decode(stored.request.as_slice())
            .with_context(|| format!("decoding the request of build {}", stored.id))?;
        if !request.secrets.is_empty() || !request.registry_credentials.is_empty() {
            let why = "the scheduler restarted, and this build's secrets or registry credentials were held in \
                       memory only: run it again";
            build.end(Err(Error::unavailable(why).into()), 0, 0);
            return Ok(());
        }
        build.push(BuildEvent::info(
            "resume",
            "the scheduler restarted: resuming the build (finished steps are cached)",
        ));
        self.run(build, request);
        Ok(())
    }

    fn running(&self, stored: &StoredBuild, events: Vec<BuildEvent>) -> Arc<RunningBuild> {
        let count = events.len();
        Arc::new(RunningBuild {
            id: stored.id.clone(),
            instance_name: stored.instance_name.clone(),
            summary: Mutex::new(BuildSummary {
                build_id: stored.id.clone(),
                dockerfile_name: stored.dockerfile_name.clone(),
                target: stored.target.clone(),
                state: stored.state.as_str().into(),
                created_unix_ms: stored.created_ms,
                finished_unix_ms: stored.finished_ms.unwrap_or(0),
                message: stored.message.clone(),
            }),
            events: Mutex::new(EventLog { events, ..EventLog::default() }),
            count: watch::channel(count).0,
            cancel: CancellationToken::new(),
            persist: self.persist.clone(),
            activity: self.activity.clone(),
            dag: std::sync::OnceLock::new(),
        })
    }

    /// Every stored event of a build, in order.
    async fn stored_events(&self, id: &str) -> Result<Vec<BuildEvent>> {
        let mut events = Vec::new();
        loop {
            let page = self.store.events_after(id, events.len() as u64, MAX_BUILD_PAGE).await?;
            if page.is_empty() {
                return Ok(events);
            }
            for (_, bytes) in page {
                events.push(
                    BuildEvent::decode(bytes.as_slice()).with_context(|| format!("decoding an event of build {id}"))?,
                );
            }
        }
    }

    /// Runs `request` for `build` in the background.
    fn run(self: &Arc<Self>, build: Arc<RunningBuild>, request: BuildRequest) {
        let id = build.id.clone();
        let manager = self.clone();
        let span = tracing::info_span!("build", build = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // The build's blobs (its context, then each step's outputs)
                // are pinned under its name until it ends.
                let holder = format!("build/{}", build.id);
                let prepared = async {
                    let (context, blobs) = manager.context(&request).await?;
                    manager.pin_context(&holder, &context, &blobs).await?;
                    image_build(&request, context)
                };
                let metrics = manager.scheduler.metrics().clone();
                metrics.builds_running.inc();
                match prepared.await {
                    Ok(image_build) => manager.execute(build.clone(), &request, image_build).await,
                    Err(e) => build.end(Err(e.into()), 0, 0),
                }
                metrics.builds_running.dec();
                let summary = build.summary();
                let seconds = (summary.finished_unix_ms - summary.created_unix_ms).max(0) as f64 / 1000.0;
                metrics.build_ended(&summary.state, seconds);
                if let Some(pins) = manager.scheduler.pins() {
                    pins.release_later(holder);
                }
            },
            span,
        ));
    }

    /// Runs the engine for `build`, its events into the build.
    async fn execute(&self, running: Arc<RunningBuild>, request: &BuildRequest, image_build: ImageBuild) {
        let id = running.id.clone();
        let options = BuildOptions {
            build_args: image_build.build_args.clone(),
            target: image_build.target.clone(),
            target_platform: image_build.platform.clone(),
            ..BuildOptions::default()
        };
        // For live views only: the engine plans (and fails) for itself.
        if let Ok(graph) =
            plan_text(&image_build.dockerfile_name, &image_build.dockerfile, &image_build.context, &options)
        {
            let _ = running.dag.set(BuildDag::of(&graph));
        }
        let stores = Arc::new(EngineStores {
            cas: self.cas.clone(),
            actions: self.actions.clone(),
            instance_name: request.instance_name.clone(),
            registry: registry(request)
                .with_diff_id_memo(self.diff_ids.clone())
                .with_max_layer_bytes(self.max_layer_bytes),
            diff_ids: Some(self.diff_ids.clone()),
            remote_files_dir: self.work_dir.join("remote-files"),
        });
        let executor = Arc::new(QueueExecutor {
            scheduler: self.scheduler.clone(),
            cas: self.cas.clone(),
            instance_name: request.instance_name.clone(),
            client: format!("build/{id}"),
            build_id: id.clone(),
            network_policy: self.network_policy,
        });
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<BuildEvent>();
        let pump_build = running.clone();
        let metrics = self.scheduler.metrics().clone();
        let pump = tokio::spawn(async move {
            let mut counts = (0u32, 0u32);
            while let Some(event) = received.recv().await {
                match &event.kind {
                    Some(Kind::Done(done)) => {
                        counts.0 += 1;
                        metrics.lookups.record(CacheKind::Step, false);
                        metrics.step_seconds.observe(done.seconds);
                    }
                    Some(Kind::Cached(_)) => {
                        counts.1 += 1;
                        metrics.lookups.record(CacheKind::Step, true);
                    }
                    _ => {}
                }
                pump_build.push(event);
            }
            counts
        });
        let context = image_build.context.clone();
        // Boxed as Send: the engine's future is too deep to prove it here.
        let run: futures::future::BoxFuture<'_, _> =
            Box::pin(image_build.run(stores, executor, &events, running.cancel.clone()));
        let outcome =
            run.await.map_err(|error| Failure { error, context_path_outside: context.outside_scope().map(wire_path) });
        drop(events);
        let (executed, cached) = pump.await.unwrap_or_default();
        running.end(outcome, executed, cached);
    }

    /// The build `id` of `instance` (another instance's builds are not
    /// found), from memory or else from the store.
    pub async fn get(&self, instance: &str, id: &str) -> Result<Arc<RunningBuild>> {
        let not_found = || Error::not_found(format!("build {id} not found (unknown, or finished and expired)"));
        if let Some(build) = self.builds.lock().get(id) {
            return if build.instance_name == instance { Ok(build.clone()) } else { Err(not_found()) };
        }
        let stored = self.store.get(id).await?.filter(|b| b.instance_name == instance).ok_or_else(not_found)?;
        let events = self.stored_events(id).await?;
        Ok(self.running(&stored, events))
    }

    /// Stops a build; its running steps are cancelled.
    pub async fn cancel(&self, instance: &str, id: &str) -> Result<()> {
        self.get(instance, id).await?.cancel.cancel();
        Ok(())
    }

    /// Builds of `instance`, newest first.
    pub async fn list(&self, instance: &str, limit: usize) -> Result<Vec<BuildSummary>> {
        let mut builds: HashMap<String, BuildSummary> = self
            .store
            .list(instance, limit)
            .await?
            .iter()
            .map(|b| (b.id.clone(), self.running(b, Vec::new()).summary()))
            .collect();
        for build in self.builds.lock().values().filter(|b| b.instance_name == instance) {
            builds.insert(build.id.clone(), build.summary());
        }
        let mut builds: Vec<BuildSummary> = builds.into_values().collect();
        builds.sort_by_key(|b| std::cmp::Reverse(b.created_unix_ms));
        builds.truncate(limit);
        Ok(builds)
    }

    /// The builds in memory (running, and ended within the retention), of
    /// every instance, newest first.
    pub fn recent(&self) -> Vec<Arc<RunningBuild>> {
        let mut builds: Vec<Arc<RunningBuild>> = self.builds.lock().values().cloned().collect();
        builds.sort_by_key(|b| std::cmp::Reverse(b.summary().created_unix_ms));
        builds
    }

    /// A receiver told at every event of every build.
    pub fn subscribe_activity(&self) -> watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// The scheduler the builds run on.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The scheduler's queue and workers, and the builds' cache use.
    pub fn cluster_status(&self) -> ClusterStatusResponse {
        let queue = self.scheduler.queue_status();
        let metrics = self.scheduler.metrics();
        let workers = self
            .scheduler
            .workers()
            .into_iter()
            .map(|w| WorkerInfo { name: w.name, slots: w.slots, running: w.running, properties: w.properties })
            .collect();
        ClusterStatusResponse {
            queued: queue.queued as u32,
            executing: queue.executing as u32,
            oldest_queued_seconds: queue.oldest_seconds,
            workers,
            builds_running: metrics.builds_running.get().max(0) as u32,
            step_cache_hits: metrics.lookups.count(CacheKind::Step, true),
            step_cache_misses: metrics.lookups.count(CacheKind::Step, false),
        }
    }

    fn forget_old(&self) {
        let cutoff = unix_ms() - RETENTION.as_millis() as i64;
        self.builds.lock().retain(|_, b| {
            let summary = b.summary.lock();
            summary.finished_unix_ms == 0 || summary.finished_unix_ms > cutoff
        });
    }

    /// Pins `blobs`, those of `context`'s tree, for `holder`.
    async fn pin_context(&self, holder: &str, context: &BuildContext, blobs: &[Digest]) -> Result<()> {
        let Some(pins) = self.scheduler.pins() else { return Ok(()) };
        pins.hold(holder, blobs, Urgency::Now)
            .await
            .with_context(|| format!("pinning build context {}", context.root_digest().subject()))
    }

    /// The build context the request names, from its tree in the CAS
    /// (read once), and every blob of that tree.
    async fn context(&self, request: &BuildRequest) -> Result<(Arc<BuildContext>, Vec<Digest>)> {
        let (root, scope) = context_root(request)?;
        let directories = walk_tree(&*self.cas, root)
            .await
            .with_context(|| format!("reading build context {}: upload it first", root.subject()))?;
        let blobs = blobs_of_tree(root, &directories);
        let directories: BTreeMap<Digest, _> =
            directories.into_iter().map(|d| (Digest::of(DigestFunction::Blake3, &d.encode_to_vec()), d)).collect();
        Ok((Arc::new(BuildContext::from_tree(&root, &directories)?.with_scope(scope)), blobs))
    }
}

impl RunningBuild {
    /// Records how the build ended, as its last event.
    fn end(&self, outcome: std::result::Result<BuiltOutput, Failure>, executed: u32, cached: u32) {
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
                (BuildState::Succeeded, message, Kind::Result(result))
            }
            Err(Failure { error: e, context_path_outside }) => {
                let state = if e.code() == tonic::Code::Cancelled { BuildState::Cancelled } else { BuildState::Failed };
                let failed = BuildFailed {
                    code: e.code() as i32,
                    message: e.message().to_string(),
                    context_path_outside: context_path_outside.unwrap_or_default(),
                };
                (state, e.message().to_string(), Kind::BuildFailed(failed))
            }
        };
        let finished = unix_ms();
        {
            let mut summary = self.summary.lock();
            summary.state = state.as_str().into();
            summary.message = message.clone();
            summary.finished_unix_ms = finished;
        }
        tracing::info!(state = state.as_str(), "build ended");
        self.push(BuildEvent { sequence: 0, kind: Some(event) });
        let _ = self.persist.send(Persist::Finish(self.id.clone(), state, finished, message));
    }
}

/// What of a request is stored: no secret values and no registry
/// credentials (their names stay, so a resumed build knows it had some).
fn storable(request: &BuildRequest) -> BuildRequest {
    let mut stored = request.clone();
    for secret in &mut stored.secrets {
        secret.value.clear();
    }
    for credential in &mut stored.registry_credentials {
        credential.password.clear();
    }
    stored
}

/// Writes events and ends to the store in order, batching what queued up.
async fn run_persister(store: Arc<dyn BuildStore>, mut writes: mpsc::UnboundedReceiver<Persist>) {
    while let Some(first) = writes.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = writes.try_recv() {
            batch.push(next);
            if batch.len() >= PERSIST_BATCH {
                break;
            }
        }
        let mut events: Vec<(String, u64, Vec<u8>)> = Vec::new();
        for write in batch {
            match write {
                Persist::Event(id, sequence, bytes) => events.push((id, sequence, bytes)),
                Persist::Finish(id, state, ms, message) => {
                    flush_events(&*store, &mut events).await;
                    if let Err(e) = store.finish(&id, state, ms, &message).await {
                        tracing::warn!(build = %id, error = %e, "cannot record how a build ended");
                    }
                }
            }
        }
        flush_events(&*store, &mut events).await;
    }
}

/// An event's sequence number and encoded bytes, as the store keeps it.
type SequencedEvent = (u64, Vec<u8>);

async fn flush_events(store: &dyn BuildStore, events: &mut Vec<(String, u64, Vec<u8>)>) {
    // One transaction per build, however the builds' events interleave.
    let mut by_build: BTreeMap<String, Vec<SequencedEvent>> = BTreeMap::new();
    for (id, sequence, bytes) in events.drain(..) {
        by_build.entry(id).or_default().push((sequence, bytes));
    }
    for (id, list) in by_build {
        if let Err(e) = store.append_events(&id, &list).await {
            tracing::warn!(build = %id, error = %e, "cannot store build events");
        }
    }
}

/// How a request without a whole or a partial context is refused; clients
/// that send a partial context recognise it as a cluster's that predates
/// partial contexts (it said the same), and send the whole context.
pub const WHOLE_CONTEXT_REQUIRED: &str = "a build request needs its context's root digest";

/// The root of the request's context tree, and what part of the context
/// it holds.
fn context_root(request: &BuildRequest) -> Result<(Digest, ContextScope)> {
    match (&request.context, &request.partial_context) {
        (Some(whole), None) => Ok((whole.digest(DigestFunction::Blake3, "build context")?, ContextScope::Whole)),
        (None, Some(part)) => {
            let root = part
                .root
                .as_ref()
                .ok_or_else(|| Error::invalid_argument("a partial build context needs its root digest"))?
                .digest(DigestFunction::Blake3, "build context")?;
            let scope = ContextScope::of_paths(part.paths.iter().cloned())
                .with_patterns(part.patterns.iter().cloned())
                .map_err(Error::invalid_argument)?;
            Ok((root, scope))
        }
        (None, None) => Err(Error::invalid_argument(WHOLE_CONTEXT_REQUIRED)),
        (Some(_), Some(_)) => {
            Err(Error::invalid_argument("a build request has a whole or a partial context, not both"))
        }
    }
}

/// A context path as `BuildFailed.context_path_outside` carries it: the
/// root is `.`, since an empty string is no path at all on the wire.
fn wire_path(path: &str) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        path.to_string()
    }
}

/// Why a build failed: the error, and the context path it read outside
/// the part the client sent, if that is why.
struct Failure {
    error: Error,
    context_path_outside: Option<String>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { error, context_path_outside: None }
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
    for entitlement in &request.allow {
        parse_entitlement(entitlement).map_err(Error::invalid_argument)?;
    }
    let hosts = request
        .add_hosts
        .iter()
        .map(|h| h.parse::<HostEntry>().map_err(Error::invalid_argument))
        .collect::<Result<Vec<_>>>()?;
    if let Some((name, value)) = request.build_contexts.iter().find(|(_, v)| !v.starts_with(DOCKER_IMAGE_CONTEXT)) {
        return Err(Error::invalid_argument(format!(
            "--build-context {name}={value}: a remote build takes docker-image://REF contexts only"
        )));
    }
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
        whole_context: None,
        context_files: ContextFiles::Cas,
        build_args: request.build_args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        target: Some(request.target.clone()).filter(|t| !t.is_empty()),
        platform,
        build_contexts: request.build_contexts.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        settings: BuildSettings {
            no_cache: request.no_cache,
            source_date_epoch: request.source_date_epoch,
            dry_run: request.dry_run,
            network,
            host_network_allowed: request.allow.iter().any(|a| a == HOST_ENTITLEMENT),
            insecure_allowed: request.allow.iter().any(|a| a == INSECURE_ENTITLEMENT),
        },
        labels: request.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        annotations: request.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        exports,
        tags: request.tags.clone(),
        secrets: Arc::new(Secrets::from_values(request.secrets.iter().map(|s| (s.id.clone(), s.value.clone())))),
        ssh_sockets: BTreeMap::new(),
        hosts,
        limits: request.limits.as_ref().map(ResourceLimits::from_proto).unwrap_or_default(),
        check: request.check,
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

#[cfg(test)]
mod tests {
    use memobuild_proto::build::{step_log, BlobDigest, PartialContext};

    use super::*;

    /// A request names its context whole or in part.
    #[test]
    fn a_request_has_a_whole_or_a_partial_context() {
        let root = BlobDigest::of(&Digest::of(DigestFunction::Blake3, b"root"));
        let whole = BuildRequest { context: Some(root.clone()), ..BuildRequest::default() };
        assert_eq!(context_root(&whole).unwrap().1, ContextScope::Whole);
        let paths = vec!["src".to_string(), "app.txt".to_string()];
        let patterns = vec!["package*.json".to_string()];
        let part = PartialContext { root: Some(root.clone()), paths: paths.clone(), patterns: patterns.clone() };
        let partial = BuildRequest { partial_context: Some(part.clone()), ..BuildRequest::default() };
        let scope = ContextScope::of_paths(paths).with_patterns(patterns).unwrap();
        assert_eq!(context_root(&partial).unwrap().1, scope);
        let bad = PartialContext { patterns: vec!["*/x.json".to_string()], ..part.clone() };
        let bad = BuildRequest { partial_context: Some(bad), ..BuildRequest::default() };
        assert!(context_root(&bad).unwrap_err().message().contains("only its last element"));
        let neither = context_root(&BuildRequest::default()).unwrap_err();
        assert_eq!(neither.message(), WHOLE_CONTEXT_REQUIRED);
        let both = BuildRequest { partial_context: Some(part), ..whole };
        assert_eq!(context_root(&both).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn endless_output_is_cut_with_one_note_and_the_end_still_recorded() {
        let (persist, mut written) = mpsc::unbounded_channel();
        let build = RunningBuild {
            id: "b".into(),
            instance_name: String::new(),
            summary: Mutex::new(BuildSummary::default()),
            events: Mutex::new(EventLog::default()),
            count: watch::channel(0).0,
            cancel: CancellationToken::new(),
            persist,
            activity: watch::channel(0).0,
            dag: std::sync::OnceLock::new(),
        };
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            build.push(BuildEvent::log("0.1", step_log::Stream::Stdout, chunk.clone()));
        }
        build.end(Err(Error::internal("the step failed").into()), 0, 0);
        let (events, ended) = build.events_from(0);
        assert!(ended);
        let logs = events.iter().filter(|e| matches!(e.kind, Some(Kind::Log(_)))).count();
        assert_eq!(logs, MAX_LOG_BYTES >> 20, "output up to the limit is kept");
        let notes: Vec<_> = events.iter().filter(|e| matches!(e.kind, Some(Kind::Info(_)))).collect();
        assert_eq!(notes.len(), 1, "one note says output was cut");
        let mut stored = 0;
        while let Ok(write) = written.try_recv() {
            stored += usize::from(matches!(write, Persist::Event(..)));
        }
        assert_eq!(stored, events.len(), "the store gets what memory keeps, no more");
    }
}
