use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use memobuild_auth::Principal;
use memobuild_cas::{get_bytes_at_most, tree_blobs, ActionResults, BlobStore, Clock, PinLeases, Urgency};
use memobuild_engine::{LAYER_OUTPUT, STEP_PARENT_PREFIX, STEP_PROPERTY};
use memobuild_proto::reapi::{Action, Command, ExecuteRequest, ExecuteResponse};
use memobuild_proto::worker::{
    scheduler_message, Assign, Cancel, Finished, Hello, Output, SchedulerMessage, StepSession,
};
use memobuild_proto::{protobuf, rpc, Digest, DigestFunction, Error, Result, ResultExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::Code;

use crate::action_queue::ActionQueue;
use crate::metrics::SchedulerMetrics;
use crate::operation_record::{OperationRecord, Stage};
use crate::operation_store::OperationStore;
use crate::platform::{Matcher, Platform};
use crate::worker_status::{QueueStatus, WorkerStatus};

/// Input roots and layers remembered per worker for affinity.
const RECENT_ROOTS: usize = 64;
/// Output chunks of a Dockerfile step kept for a follower that lags behind
/// (then it misses some).
const OUTPUT_BACKLOG: usize = 1024;
/// Records written per transaction at most.
const PERSIST_BATCH: usize = 256;
/// How long a write that need not be made at once waits for others to
/// share it.
const PERSIST_WINDOW: Duration = Duration::from_millis(5);
/// The largest Action or Command read, the bound the worker applies too.
const MAX_PROTO_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A worker must heartbeat within this time or lose its actions.
    pub lease: Duration,
    /// Times an action is handed out before it fails.
    pub max_attempts: u32,
    /// Timeout of actions that set none.
    pub default_timeout: Duration,
    /// Cap on any action's timeout.
    pub max_timeout: Duration,
    /// How long completed operations stay answerable.
    pub retention: Duration,
    /// Platform keys whose numeric values are minimums.
    pub minimum_keys: Vec<String>,
    /// Where the inputs of queued and running actions (and the blobs of
    /// unfinished builds) are pinned against eviction; none without an
    /// evicting CAS.
    pub pins: Option<Arc<PinLeases>>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            default_timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(4 * 3600),
            retention: Duration::from_secs(3600),
            minimum_keys: vec!["cores".into(), "memory-mb".into(), "disk-mb".into()],
            pins: None,
        }
    }
}

/// What a client sees of an operation.
#[derive(Clone, Debug)]
pub struct OperationSnapshot {
    pub name: String,
    pub action_digest: Digest,
    pub stage: Stage,
    /// The worker running it, while it runs.
    pub worker: Option<String>,
    pub response: Option<ExecuteResponse>,
}

/// What the scheduler needs to know of an action, read from the CAS.
#[derive(Clone, Debug)]
struct ActionInfo {
    platform: Platform,
    /// What a worker that ran it holds afterwards, for affinity: the input
    /// root, or for a Dockerfile step the top layer it starts from (the
    /// worker that made that layer has it unpacked).
    affinity: Option<Digest>,
    timeout: Duration,
    do_not_cache: bool,
    /// The Command and input root (what is pinned while the action waits or runs).
    command: Option<Digest>,
    input_root: Option<Digest>,
}

struct Entry {
    record: OperationRecord,
    info: ActionInfo,
    lease_expires_ms: i64,
    updates: watch::Sender<OperationSnapshot>,
    /// What a Dockerfile step's build gives it; in memory only.
    session: Option<StepSession>,
    /// The W3C traceparent of the request that queued it; in memory only.
    trace_parent: String,
    /// The action's output as its worker sends it.
    output: broadcast::Sender<Output>,
}

impl Entry {
    /// Still running on `worker`: only that worker may finish it (a worker
    /// that lost its lease may report late).
    fn held_by(&self, worker: &str) -> bool {
        self.record.stage != Stage::Completed && self.record.worker.as_deref() == Some(worker)
    }

    fn snapshot(&self) -> OperationSnapshot {
        OperationSnapshot {
            name: self.record.name.clone(),
            action_digest: self.record.action_digest,
            stage: self.record.stage,
            worker: self.record.worker.clone(),
            response: self.record.response.clone(),
        }
    }

    fn publish(&self) {
        self.updates.send_replace(self.snapshot());
    }
}

struct Worker {
    platform: Platform,
    slots: usize,
    running: HashSet<String>,
    sender: mpsc::UnboundedSender<SchedulerMessage>,
    recent_roots: VecDeque<Digest>,
    session: u64,
    /// Who the worker authenticated as: it gets only actions of the
    /// instances its principal may use (all of them without auth).
    principal: Option<Arc<Principal>>,
}

impl Worker {
    fn serves(&self, instance: &str) -> bool {
        memobuild_auth::sees(self.principal.as_deref(), instance)
    }
}

#[derive(Default)]
struct State {
    operations: HashMap<String, Entry>,
    /// (instance, action) -> the unfinished operation running it.
    in_flight: HashMap<(String, Digest), String>,
    queue: ActionQueue,
    workers: HashMap<String, Worker>,
    next_session: u64,
}

enum Persist {
    /// Save a record, telling the one who waits, if anyone, once it is
    /// written (as soon as the urgency says).
    Save(Box<OperationRecord>, Option<(oneshot::Sender<Result<()>>, Urgency)>),
    Delete(String),
}

impl Persist {
    /// Whether somebody waits for this write to be made at once.
    fn urgent(&self) -> bool {
        matches!(self, Persist::Save(_, Some((_, Urgency::Now))))
    }
}

/// The execution scheduler: queues actions, matches them to workers, holds
/// leases, retries lost work and answers for operations, durably.
pub struct Scheduler {
    state: Mutex<State>,
    cas: Arc<dyn BlobStore>,
    action_cache: Arc<dyn ActionResults>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    matcher: Matcher,
    persist: mpsc::UnboundedSender<Persist>,
    metrics: SchedulerMetrics,
    /// Bumped whenever the queue or the workers change, for live views.
    changes: watch::Sender<u64>,
}

impl Scheduler {
    /// Starts a scheduler over `store`, recovering the operations it holds.
    pub async fn start(
        config: SchedulerConfig,
        cas: Arc<dyn BlobStore>,
        action_cache: Arc<dyn ActionResults>,
        store: Arc<dyn OperationStore>,
        clock: Arc<dyn Clock>,
        metrics: SchedulerMetrics,
    ) -> Result<Arc<Self>> {
        let records = store.load().await.context("loading scheduler state")?;
        let (persist, persisted) = mpsc::unbounded_channel();
        tokio::spawn(run_persister(store, persisted));
        let scheduler = Arc::new(Scheduler {
            state: Mutex::new(State::default()),
            matcher: Matcher::new(config.minimum_keys.clone()),
            cas,
            action_cache,
            clock,
            config,
            persist,
            metrics,
            changes: watch::channel(0).0,
        });
        scheduler.metrics.watch_queue(Arc::downgrade(&scheduler));
        scheduler.recover(records).await;
        tokio::spawn(run_janitor(Arc::downgrade(&scheduler)));
        Ok(scheduler)
    }

    async fn recover(&self, records: Vec<OperationRecord>) {
        let now = self.clock.now_ms();
        let count = records.len();
        for record in records {
            let info = match record.stage {
                Stage::Completed => None,
                _ => match self.action_info(&record.action_digest).await {
                    Ok(info) => Some(info),
                    Err(e) => {
                        tracing::warn!(operation = %record.name, error = %e, "cannot recover operation");
                        None
                    }
                },
            };
            // A step's session was in memory only: its build submits it again.
            let info = info.filter(|i| !i.platform.properties().iter().any(|(name, _)| name == STEP_PROPERTY));
            let mut state = self.state.lock();
            let lost = record.stage != Stage::Completed && info.is_none();
            let mut entry = Entry {
                info: info.unwrap_or_else(|| ActionInfo {
                    platform: Platform::default(),
                    affinity: None,
                    timeout: self.config.default_timeout,
                    do_not_cache: true,
                    command: None,
                    input_root: None,
                }),
                updates: watch::channel(OperationSnapshot {
                    name: record.name.clone(),
                    action_digest: record.action_digest,
                    stage: record.stage,
                    worker: None,
                    response: record.response.clone(),
                })
                .0,
                session: None,
                trace_parent: String::new(),
                output: output_channel(false),
                // Running work gets one lease for its worker to reconnect.
                lease_expires_ms: now + self.config.lease.as_millis() as i64,
                record,
            };
            let name = entry.record.name.clone();
            if lost {
                let error = Error::new(
                    Code::FailedPrecondition,
                    format!(
                        "action {} cannot be recovered after a restart (gone from the CAS, or a Dockerfile step \
                         whose build runs it again)",
                        entry.record.action_digest
                    ),
                );
                self.finish_entry(&mut state, &mut entry, error_response(&error));
            } else if entry.record.stage != Stage::Completed {
                // Its pins are in the database: keep renewing them.
                if let Some(pins) = &self.config.pins {
                    pins.keep(&name);
                }
                state.in_flight.insert((entry.record.instance_name.clone(), entry.record.action_digest), name.clone());
                if entry.record.stage == Stage::Queued {
                    state.queue.push(entry.record.priority, &entry.record.client, name.clone());
                }
            }
            state.operations.insert(name, entry);
        }
        if count > 0 {
            tracing::info!(operations = count, "recovered scheduler state");
        }
        self.refresh_gauges(&self.state.lock());
    }

    /// Reads the action (and, for its platform, the command) from the CAS.
    async fn action_info(&self, digest: &Digest) -> Result<ActionInfo> {
        let action = self.fetch::<Action>(digest, "action").await?;
        let function = digest.function();
        let command_digest = Digest::from_proto_field(function, action.command_digest.as_ref(), "command_digest")?;
        let input_root = Digest::from_proto_field(function, action.input_root_digest.as_ref(), "input_root_digest")?;
        let missing = self.cas.find_missing(&[command_digest, input_root]).await?;
        if !missing.is_empty() {
            return Err(Error::missing_blobs(&missing));
        }
        let platform = match &action.platform {
            Some(platform) => Platform::from_proto(Some(platform)),
            // Clients before REAPI v2.2 put the platform in the Command only.
            #[allow(deprecated)]
            None => Platform::from_proto(self.fetch::<Command>(&command_digest, "command").await?.platform.as_ref()),
        };
        let timeout = action
            .timeout
            .map(|t| Duration::from_secs(t.seconds.max(0) as u64) + Duration::from_nanos(t.nanos.max(0) as u64))
            .filter(|t| !t.is_zero())
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);
        let affinity = match platform.properties().iter().any(|(name, _)| name == STEP_PROPERTY) {
            true => self.top_parent_layer(&input_root).await?,
            false => Some(input_root),
        };
        Ok(ActionInfo {
            platform,
            affinity,
            timeout,
            do_not_cache: action.do_not_cache,
            command: Some(command_digest),
            input_root: Some(input_root),
        })
    }

    /// The last `parent-NNNN` layer a step's input root names.
    async fn top_parent_layer(&self, input_root: &Digest) -> Result<Option<Digest>> {
        let root: memobuild_proto::reapi::Directory = self.fetch(input_root, "input root").await?;
        let top =
            root.files.iter().filter(|f| f.name.starts_with(STEP_PARENT_PREFIX)).max_by(|a, b| a.name.cmp(&b.name));
        top.map(|f| Digest::from_proto_field(input_root.function(), f.digest.as_ref(), "parent layer")).transpose()
    }

    async fn fetch<M: Message + Default>(&self, digest: &Digest, what: &str) -> Result<M> {
        let data = match get_bytes_at_most(self.cas.as_ref(), digest, MAX_PROTO_BYTES, what).await {
            Ok(data) => data,
            Err(e) if e.code() == Code::NotFound => return Err(Error::missing_blobs(&[*digest])),
            Err(e) => return Err(e),
        };
        M::decode(data).with_context(|| format!("decoding {what} {digest}"))
    }

    /// Starts (or joins) the execution of an action. `client` identifies the
    /// caller for fairness.
    pub async fn execute(&self, request: ExecuteRequest, client: &str) -> Result<watch::Receiver<OperationSnapshot>> {
        self.execute_traced(request, client, String::new()).await
    }

    /// [`Scheduler::execute`] within a trace: the worker's span joins the
    /// span `trace_parent` (a W3C traceparent) names.
    pub async fn execute_traced(
        &self,
        request: ExecuteRequest,
        client: &str,
        trace_parent: String,
    ) -> Result<watch::Receiver<OperationSnapshot>> {
        Ok(self.queue_action(request, client, None, trace_parent).await?.0)
    }

    /// [`Scheduler::execute`] for a Dockerfile step: `session` goes to the
    /// worker with the action (when this call queues it), and the action's
    /// output comes back as it runs.
    pub async fn execute_step(
        &self,
        request: ExecuteRequest,
        client: &str,
        session: Option<StepSession>,
    ) -> Result<(watch::Receiver<OperationSnapshot>, broadcast::Receiver<Output>)> {
        let trace_parent = session.as_ref().map(|s| s.trace_parent.clone()).unwrap_or_default();
        self.queue_action(request, client, session, trace_parent).await
    }

    async fn queue_action(
        &self,
        request: ExecuteRequest,
        client: &str,
        session: Option<StepSession>,
        trace_parent: String,
    ) -> Result<(watch::Receiver<OperationSnapshot>, broadcast::Receiver<Output>)> {
        let function = DigestFunction::from_proto(request.digest_function)?;
        let digest = Digest::from_proto_field(function, request.action_digest.as_ref(), "action_digest")?;
        let info = self.action_info(&digest).await.with_context(|| format!("executing action {digest}"))?;
        if session.is_none() && info.platform.properties().iter().any(|(name, _)| name == STEP_PROPERTY) {
            return Err(Error::invalid_argument(format!(
                "action {digest} is a Dockerfile step ({STEP_PROPERTY}): steps run only as part of a build (BuildService)"
            )));
        }
        let instance = request.instance_name;
        let cached = match request.skip_cache_lookup {
            true => None,
            false => {
                let found = self.action_cache.get(&instance, &digest).await?;
                self.metrics.lookups.record(memobuild_cas::CacheKind::Execute, found.is_some());
                found
            }
        };
        let name = format!("operations/{}", uuid::Uuid::new_v4());
        // Inputs are pinned before the action is queued, until it completes.
        // Behind other queued actions, its writes may wait to share theirs.
        let pins = self.config.pins.as_ref().filter(|_| cached.is_none() && !self.in_flight(&instance, &digest));
        let urgency = if self.state.lock().queue.is_empty() { Urgency::Now } else { Urgency::Shared };
        if let Some(pins) = pins {
            self.pin_inputs(pins, &name, &digest, &info, urgency)
                .await
                .with_context(|| format!("pinning the inputs of action {digest}"))?;
        }
        let now = self.clock.now_ms();
        let record = OperationRecord {
            name,
            instance_name: instance.clone(),
            action_digest: digest,
            client: client.to_string(),
            priority: request.execution_policy.map(|p| p.priority).unwrap_or(0),
            skip_cache_lookup: request.skip_cache_lookup,
            stage: Stage::Queued,
            attempts: 0,
            worker: None,
            queued_at_ms: now,
            updated_at_ms: now,
            response: None,
        };
        let (receiver, saved) = {
            let mut state = self.state.lock();
            let mut entry = Entry {
                updates: watch::channel(OperationSnapshot {
                    name: record.name.clone(),
                    action_digest: digest,
                    stage: Stage::Queued,
                    worker: None,
                    response: None,
                })
                .0,
                record,
                info,
                lease_expires_ms: 0,
                output: output_channel(session.is_some()),
                session,
                trace_parent,
            };
            if let Some(result) = cached {
                self.metrics.outcome("cache_hit");
                let response = ExecuteResponse {
                    result: Some(result),
                    cached_result: true,
                    status: Some(rpc::Status::default()),
                    ..Default::default()
                };
                let receiver = (entry.updates.subscribe(), entry.output.subscribe());
                self.finish_entry(&mut state, &mut entry, response);
                state.operations.insert(entry.record.name.clone(), entry);
                return Ok(receiver);
            }
            if let Some(existing) =
                state.in_flight.get(&(instance.clone(), digest)).and_then(|n| state.operations.get(n))
            {
                if let Some(pins) = pins {
                    pins.release_later(entry.record.name.clone());
                }
                return Ok((existing.updates.subscribe(), existing.output.subscribe()));
            }
            if let Err(e) = self.check_matchable(&state, &digest, &instance, &entry.info.platform) {
                if let Some(pins) = pins {
                    pins.release_later(entry.record.name.clone());
                }
                return Err(e);
            }
            let receiver = (entry.updates.subscribe(), entry.output.subscribe());
            let saved = self.save(&entry.record, Some(urgency));
            let name = entry.record.name.clone();
            state.queue.push(entry.record.priority, client, name.clone());
            state.in_flight.insert((instance, digest), name.clone());
            state.operations.insert(name, entry);
            self.refresh_gauges(&state);
            (receiver, saved)
        };
        if let Some(saved) = saved {
            saved.await.map_err(|_| Error::unavailable("the operation store stopped"))??;
        }
        self.dispatch();
        Ok(receiver)
    }

    /// Whether an operation runs `digest` in `instance` already.
    fn in_flight(&self, instance: &str, digest: &Digest) -> bool {
        self.state.lock().in_flight.contains_key(&(instance.to_string(), *digest))
    }

    /// Pins what an action needs for `holder`: the Action, its Command and
    /// every blob of its input root.
    async fn pin_inputs(
        &self,
        pins: &PinLeases,
        holder: &str,
        action: &Digest,
        info: &ActionInfo,
        urgency: Urgency,
    ) -> Result<()> {
        let mut blobs: Vec<Digest> = [Some(*action), info.command].into_iter().flatten().collect();
        if let Some(root) = info.input_root {
            blobs.extend(tree_blobs(self.cas.as_ref(), root).await?);
        }
        pins.hold(holder, &blobs, urgency).await
    }

    /// Where pins are taken, if anywhere.
    pub fn pins(&self) -> Option<&Arc<PinLeases>> {
        self.config.pins.as_ref()
    }

    /// FAILED_PRECONDITION when workers are registered and none can ever
    /// run an action of `instance` with this platform.
    fn check_matchable(&self, state: &State, digest: &Digest, instance: &str, platform: &Platform) -> Result<()> {
        if state.workers.is_empty() {
            return Ok(());
        }
        let serving: Vec<&Worker> = state.workers.values().filter(|w| w.serves(instance)).collect();
        if serving.is_empty() {
            return Err(Error::new(
                Code::FailedPrecondition,
                format!("no registered worker may run actions of instance {instance:?} (action {digest})"),
            ));
        }
        if serving.iter().any(|w| self.matcher.matches(&w.platform, platform)) {
            return Ok(());
        }
        let unmet =
            serving.iter().map(|w| self.matcher.unmet(&w.platform, platform)).min_by_key(Vec::len).unwrap_or_default();
        Err(Error::new(
            Code::FailedPrecondition,
            format!("no registered worker can run action {digest}: none offers {}", unmet.join(", ")),
        ))
    }

    /// Watches an operation by name.
    pub fn watch(&self, name: &str) -> Result<watch::Receiver<OperationSnapshot>> {
        let state = self.state.lock();
        state
            .operations
            .get(name)
            .map(|e| e.updates.subscribe())
            .ok_or_else(|| Error::not_found(format!("operation {name} not found (unknown, or completed and expired)")))
    }

    /// The instance an operation belongs to, if it exists.
    pub fn instance_of(&self, name: &str) -> Option<String> {
        self.state.lock().operations.get(name).map(|e| e.record.instance_name.clone())
    }

    /// Operation names, sorted.
    pub fn operation_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.lock().operations.keys().cloned().collect();
        names.sort();
        names
    }

    /// Where the scheduler and its builds count.
    pub fn metrics(&self) -> &SchedulerMetrics {
        &self.metrics
    }

    /// The connected workers, by name.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        let state = self.state.lock();
        let mut workers: Vec<WorkerStatus> = state
            .workers
            .iter()
            .map(|(name, w)| {
                let mut running: Vec<String> = w.running.iter().cloned().collect();
                running.sort();
                let mut properties: Vec<String> =
                    w.platform.properties().iter().map(|(n, v)| format!("{n}={v}")).collect();
                properties.sort();
                WorkerStatus { name: name.clone(), slots: w.slots as u32, running, properties }
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        workers
    }

    /// How many actions wait and run, and how long the oldest has waited.
    pub fn queue_status(&self) -> QueueStatus {
        let now = self.clock.now_ms();
        let state = self.state.lock();
        let oldest =
            state.operations.values().filter(|e| e.record.stage == Stage::Queued).map(|e| e.record.queued_at_ms).min();
        QueueStatus {
            queued: state.queue.len(),
            executing: state.workers.values().map(|w| w.running.len()).sum(),
            oldest_seconds: oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
        }
    }

    pub(crate) fn oldest_queued_seconds(&self) -> f64 {
        self.queue_status().oldest_seconds
    }

    /// Cancels an operation: dequeues it or stops it on its worker.
    pub fn cancel(&self, name: &str) -> Result<()> {
        let mut state = self.state.lock();
        let mut entry =
            state.operations.remove(name).ok_or_else(|| Error::not_found(format!("operation {name} not found")))?;
        if entry.record.stage != Stage::Completed {
            state.queue.remove(name);
            if let Some(worker) = entry.record.worker.as_ref().and_then(|w| state.workers.get_mut(w)) {
                worker.running.remove(name);
                let _ = worker
                    .sender
                    .send(message(scheduler_message::Kind::Cancel(Cancel { operation: name.to_string() })));
            }
            let error = Error::new(Code::Cancelled, format!("operation {name} was cancelled"));
            self.metrics.outcome("cancelled");
            self.finish_entry(&mut state, &mut entry, error_response(&error));
        }
        state.operations.insert(name.to_string(), entry);
        drop(state);
        self.dispatch();
        Ok(())
    }

    /// Cancels an operation unless someone still waits for it (another
    /// build that asked for the same action).
    pub fn cancel_unwatched(&self, name: &str) {
        let watched = self.state.lock().operations.get(name).is_some_and(|e| e.updates.receiver_count() > 0);
        if !watched {
            let _ = self.cancel(name);
        }
    }

    /// Forgets an operation (cancelling it first if it is still running).
    pub fn delete(&self, name: &str) -> Result<()> {
        self.cancel(name)?;
        let mut state = self.state.lock();
        state.operations.remove(name);
        let _ = self.persist.send(Persist::Delete(name.to_string()));
        Ok(())
    }

    /// A worker opened a session as `principal` (none without auth, and
    /// for the worker in this process); returns its session number.
    pub fn connect_worker(
        &self,
        hello: &Hello,
        sender: mpsc::UnboundedSender<SchedulerMessage>,
        principal: Option<Arc<Principal>>,
    ) -> Result<u64> {
        if hello.name.is_empty() || hello.slots == 0 {
            return Err(Error::invalid_argument("a worker's Hello needs a name and at least one slot"));
        }
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        state.next_session += 1;
        let session = state.next_session;
        let mut running = HashSet::new();
        for name in &hello.running {
            let State { operations, queue, .. } = &mut *state;
            // Only what this worker held before (a restart, a reconnect): a
            // worker cannot claim another's operation, or a queued one.
            if let Some(entry) = operations.get_mut(name).filter(|e| e.held_by(&hello.name)) {
                queue.remove(name);
                entry.record.stage = Stage::Executing;
                entry.record.worker = Some(hello.name.clone());
                entry.lease_expires_ms = now + self.config.lease.as_millis() as i64;
                running.insert(name.clone());
                self.save(&entry.record, None);
                entry.publish();
            }
        }
        let platform =
            Platform::from_proto(Some(&memobuild_proto::reapi::Platform { properties: hello.properties.clone() }));
        tracing::info!(worker = %hello.name, slots = hello.slots, reclaimed = running.len(), "worker connected");
        let slots = hello.slots as usize;
        let worker = Worker { platform, slots, running, sender, recent_roots: VecDeque::new(), session, principal };
        if let Some(old) = state.workers.insert(hello.name.clone(), worker) {
            tracing::warn!(worker = %hello.name, "worker reconnected; dropping its previous session");
            self.requeue_all(&mut state, old.running, &hello.name);
        }
        self.refresh_gauges(&state);
        drop(state);
        self.dispatch();
        Ok(session)
    }

    /// A worker's session ended: its running actions go back to the queue.
    pub fn disconnect_worker(&self, name: &str, session: u64) {
        let mut state = self.state.lock();
        if state.workers.get(name).is_none_or(|w| w.session != session) {
            return;
        }
        if let Some(worker) = state.workers.remove(name) {
            tracing::warn!(worker = %name, running = worker.running.len(), "worker disconnected");
            self.requeue_all(&mut state, worker.running, name);
        }
        self.refresh_gauges(&state);
        drop(state);
        self.dispatch();
    }

    /// Renews the leases of what a worker says it is running.
    pub fn heartbeat(&self, worker: &str, running: &[String]) {
        let expires = self.clock.now_ms() + self.config.lease.as_millis() as i64;
        let mut state = self.state.lock();
        for name in running {
            if let Some(entry) = state.operations.get_mut(name).filter(|e| e.record.worker.as_deref() == Some(worker)) {
                entry.lease_expires_ms = expires;
            }
        }
    }

    /// A worker reports the end of an action. Its slot is free at once, for
    /// the next action; then, in the background (the returned task), the
    /// result is cached and the operation completes.
    pub fn finish(self: &Arc<Self>, worker: &str, finished: Finished) -> tokio::task::JoinHandle<()> {
        let name = finished.operation.clone();
        let (instance, digest, cacheable) = {
            let state = self.state.lock();
            match state.operations.get(&name) {
                Some(e) if e.held_by(worker) => {
                    (e.record.instance_name.clone(), e.record.action_digest, !e.info.do_not_cache)
                }
                _ => {
                    tracing::debug!(operation = %name, %worker, "result for an operation no longer running; ignored");
                    return tokio::spawn(async {});
                }
            }
        };
        let status = finished.status.unwrap_or_default();
        let mut response =
            ExecuteResponse { result: finished.result, status: Some(status.clone()), ..Default::default() };
        let mut cache = false;
        match (&response.result, Error::from_rpc_status(&status)) {
            (Some(result), None) => {
                let code = result.exit_code;
                response.message = format!("action {digest} ran on {worker}: exit code {code}");
                self.metrics.outcome(if code == 0 { "succeeded" } else { "failed" });
                cache = code == 0 && cacheable;
            }
            (_, error) => {
                let error =
                    error.unwrap_or_else(|| Error::internal(format!("worker {worker} sent neither result nor error")));
                response.message = format!("action {digest} on {worker}: {}", error.message());
                response.status = Some(error.to_rpc_status());
                self.metrics.outcome("error");
            }
        }
        // A step's layer stays unpacked on the worker that made it.
        let made = response.result.as_ref().and_then(|r| r.output_files.iter().find(|f| f.path == LAYER_OUTPUT));
        let made = made.and_then(|f| Digest::from_proto_field(digest.function(), f.digest.as_ref(), "layer").ok());
        {
            let mut state = self.state.lock();
            if let Some(w) = state.workers.get_mut(worker) {
                w.running.remove(&name);
                if let Some(layer) = made {
                    w.recent_roots.push_front(layer);
                    w.recent_roots.truncate(RECENT_ROOTS);
                }
            }
            self.refresh_gauges(&state);
        }
        self.dispatch();
        let (scheduler, worker) = (self.clone(), worker.to_string());
        tokio::spawn(async move {
            if let Some(result) = response.result.as_ref().filter(|_| cache) {
                if let Err(e) = scheduler.action_cache.update(&instance, &digest, result).await {
                    tracing::warn!(%digest, error = %e, "could not cache an action result");
                }
            }
            let mut state = scheduler.state.lock();
            if let Some(mut entry) = state.operations.remove(&name) {
                // Unless its lease expired meanwhile and it went back to the queue.
                if entry.held_by(&worker) {
                    scheduler.finish_entry(&mut state, &mut entry, response);
                }
                state.operations.insert(name, entry);
            }
            scheduler.refresh_gauges(&state);
        })
    }

    /// Output a worker sends for an action it runs; output for anything
    /// else is dropped.
    pub fn output(&self, worker: &str, output: Output) {
        let state = self.state.lock();
        if let Some(entry) = state.operations.get(&output.operation) {
            if entry.record.worker.as_deref() == Some(worker) {
                // No receiver (nobody follows the logs) is fine.
                let _ = entry.output.send(output);
            }
        }
    }

    /// Hands queued actions to workers with free slots.
    pub fn dispatch(&self) {
        let now = self.clock.now_ms();
        let lease = self.config.lease;
        let mut state = self.state.lock();
        loop {
            let State { operations, queue, workers, .. } = &mut *state;
            if queue.is_empty() || !workers.values().any(|w| w.running.len() < w.slots) {
                break;
            }
            let mut chosen = None;
            let popped = queue.pop_first(|name| {
                let Some(entry) = operations.get(name) else { return true };
                chosen = self.best_worker(workers, &entry.record.instance_name, &entry.info);
                chosen.is_some()
            });
            let Some(name) = popped else { break };
            // An entry with no operation behind it is stale: drop it.
            let Some(worker_name) = chosen else { continue };
            let (Some(entry), Some(worker)) = (operations.get_mut(&name), workers.get_mut(&worker_name)) else {
                continue;
            };
            entry.record.stage = Stage::Executing;
            entry.record.attempts += 1;
            entry.record.worker = Some(worker_name.clone());
            entry.record.updated_at_ms = now;
            entry.lease_expires_ms = now + lease.as_millis() as i64;
            worker.running.insert(name.clone());
            if let Some(root) = entry.info.affinity {
                worker.recent_roots.push_front(root);
                worker.recent_roots.truncate(RECENT_ROOTS);
            }
            let assign = Assign {
                operation: name.clone(),
                instance_name: entry.record.instance_name.clone(),
                action_digest: Some(entry.record.action_digest.to_proto()),
                digest_function: entry.record.action_digest.function().to_proto(),
                timeout: Some(duration(entry.info.timeout)),
                lease: Some(duration(lease)),
                queued: Some(timestamp(entry.record.queued_at_ms)),
                session: entry.session.clone(),
                trace_parent: entry.trace_parent.clone(),
            };
            let _ = worker.sender.send(message(scheduler_message::Kind::Assign(assign)));
            self.metrics.dispatch_seconds.observe((now - entry.record.queued_at_ms).max(0) as f64 / 1000.0);
            self.save(&entry.record, None);
            entry.publish();
        }
        self.refresh_gauges(&state);
    }

    /// A free worker that may and can run the action: the least loaded,
    /// and among those one that recently had its input root (or, for a
    /// Dockerfile step, made the layer it starts from).
    fn best_worker(&self, workers: &HashMap<String, Worker>, instance: &str, info: &ActionInfo) -> Option<String> {
        workers
            .iter()
            .filter(|(_, w)| w.running.len() < w.slots && w.serves(instance))
            .filter(|(_, w)| self.matcher.matches(&w.platform, &info.platform))
            .min_by(|(an, a), (bn, b)| {
                let warm = |w: &Worker| info.affinity.is_some_and(|r| w.recent_roots.contains(&r));
                let load = |w: &Worker| w.running.len() as f64 / w.slots as f64;
                load(a).total_cmp(&load(b)).then(warm(b).cmp(&warm(a))).then(an.cmp(bn))
            })
            .map(|(name, _)| name.clone())
    }

    /// Requeues, or fails after too many attempts, the operations a worker lost.
    fn requeue_all(&self, state: &mut State, names: HashSet<String>, worker: &str) {
        for name in names {
            let Some(mut entry) = state.operations.remove(&name) else { continue };
            if entry.record.stage == Stage::Completed {
                state.operations.insert(name, entry);
                continue;
            }
            if entry.record.attempts >= self.config.max_attempts {
                let error = Error::unavailable(format!(
                    "action {} was lost {} times (last on worker {worker}); giving up",
                    entry.record.action_digest, entry.record.attempts
                ));
                self.metrics.outcome("error");
                self.finish_entry(state, &mut entry, error_response(&error));
            } else {
                tracing::info!(operation = %name, %worker, attempt = entry.record.attempts, "requeueing lost action");
                entry.record.stage = Stage::Queued;
                entry.record.worker = None;
                entry.record.updated_at_ms = self.clock.now_ms();
                state.queue.push(entry.record.priority, &entry.record.client, name.clone());
                self.save(&entry.record, None);
                entry.publish();
            }
            state.operations.insert(name, entry);
        }
    }

    /// Requeues actions whose lease ran out and forgets expired results.
    fn expire(&self) {
        let now = self.clock.now_ms();
        let retention = self.config.retention.as_millis() as i64;
        let mut state = self.state.lock();
        let expired: Vec<(String, Option<String>)> = state
            .operations
            .values()
            .filter(|e| e.record.stage == Stage::Executing && e.lease_expires_ms < now)
            .map(|e| (e.record.name.clone(), e.record.worker.clone()))
            .collect();
        for (name, worker) in expired {
            let worker = worker.unwrap_or_default();
            tracing::warn!(operation = %name, %worker, "lease expired");
            if let Some(w) = state.workers.get_mut(&worker) {
                w.running.remove(&name);
                let _ = w.sender.send(message(scheduler_message::Kind::Cancel(Cancel { operation: name.clone() })));
            }
            self.requeue_all(&mut state, HashSet::from([name]), &worker);
        }
        let old: Vec<String> = state
            .operations
            .values()
            .filter(|e| e.record.stage == Stage::Completed && e.record.updated_at_ms + retention < now)
            .map(|e| e.record.name.clone())
            .collect();
        for name in old {
            state.operations.remove(&name);
            let _ = self.persist.send(Persist::Delete(name));
        }
        drop(state);
        self.dispatch();
    }

    fn finish_entry(&self, state: &mut State, entry: &mut Entry, response: ExecuteResponse) {
        entry.record.stage = Stage::Completed;
        entry.record.worker = None;
        entry.record.updated_at_ms = self.clock.now_ms();
        entry.record.response = Some(response);
        let key = (entry.record.instance_name.clone(), entry.record.action_digest);
        if state.in_flight.get(&key) == Some(&entry.record.name) {
            state.in_flight.remove(&key);
        }
        if let Some(pins) = self.config.pins.as_ref().filter(|p| p.holds(&entry.record.name)) {
            pins.release_later(entry.record.name.clone());
        }
        self.save(&entry.record, None);
        entry.publish();
    }

    /// Queues a write of `record`; with `ack`, returns a receiver told when it is durable.
    /// Called under the state lock, so writes reach the store in state order.
    fn save(&self, record: &OperationRecord, ack: Option<Urgency>) -> Option<oneshot::Receiver<Result<()>>> {
        let (sender, receiver) = match ack {
            Some(urgency) => {
                let (s, r) = oneshot::channel();
                (Some((s, urgency)), Some(r))
            }
            None => (None, None),
        };
        let _ = self.persist.send(Persist::Save(Box::new(record.clone()), sender));
        receiver
    }

    /// A receiver told when the queue or the workers change.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn refresh_gauges(&self, state: &State) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.metrics.queued.set(state.queue.len() as i64);
        self.metrics.workers.set(state.workers.len() as i64);
        let busy: i64 = state.workers.values().map(|w| w.running.len() as i64).sum();
        let total: i64 = state.workers.values().map(|w| w.slots as i64).sum();
        self.metrics.executing.set(busy);
        self.metrics.slots.with_label_values(&["busy"]).set(busy);
        self.metrics.slots.with_label_values(&["free"]).set((total - busy).max(0));
    }
}

/// Where an operation's output goes as its worker sends it: only a
/// Dockerfile step's worker sends any, so only a step gets a backlog (one
/// allocated whole, for the operation's life).
fn output_channel(step: bool) -> broadcast::Sender<Output> {
    broadcast::channel(if step { OUTPUT_BACKLOG } else { 1 }).0
}

fn message(kind: scheduler_message::Kind) -> SchedulerMessage {
    SchedulerMessage { kind: Some(kind) }
}

fn error_response(error: &Error) -> ExecuteResponse {
    ExecuteResponse { status: Some(error.to_rpc_status()), message: error.message().to_string(), ..Default::default() }
}

pub(crate) fn duration(d: Duration) -> protobuf::Duration {
    protobuf::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub(crate) fn timestamp(ms: i64) -> protobuf::Timestamp {
    protobuf::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Writes records in order, batching whatever has queued up. Unless
/// somebody waits for it at once (an action accepted with nothing queued
/// ahead of it), a write first waits up to [`PERSIST_WINDOW`] for others to
/// join it (an action's start and end, other actions' saves).
async fn run_persister(store: Arc<dyn OperationStore>, mut requests: mpsc::UnboundedReceiver<Persist>) {
    while let Some(first) = requests.recv().await {
        let mut urgent = first.urgent();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + PERSIST_WINDOW;
        while batch.len() < PERSIST_BATCH {
            let next = match requests.try_recv() {
                Ok(next) => Some(next),
                Err(_) if urgent => None,
                Err(_) => tokio::time::timeout_at(deadline, requests.recv()).await.ok().flatten(),
            };
            let Some(next) = next else { break };
            urgent |= next.urgent();
            batch.push(next);
        }
        let mut saves = Vec::new();
        let mut acks = Vec::new();
        for request in batch {
            match request {
                Persist::Save(record, ack) => {
                    saves.push(*record);
                    acks.extend(ack.map(|(done, _)| done));
                }
                Persist::Delete(name) => {
                    if let Err(e) = flush(store.as_ref(), &mut saves).await {
                        tracing::error!(error = %e, "saving operations failed");
                    }
                    if let Err(e) = store.delete(&[name]).await {
                        tracing::error!(error = %e, "deleting an operation failed");
                    }
                }
            }
        }
        let result = flush(store.as_ref(), &mut saves).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "saving operations failed");
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

async fn flush(store: &dyn OperationStore, saves: &mut Vec<OperationRecord>) -> Result<()> {
    if saves.is_empty() {
        return Ok(());
    }
    // Only the latest state of each operation matters.
    let mut latest: HashMap<&str, usize> = HashMap::new();
    for (i, record) in saves.iter().enumerate() {
        latest.insert(&record.name, i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    let batch: Vec<OperationRecord> = keep.into_iter().map(|i| saves[i].clone()).collect();
    saves.clear();
    store.save(&batch).await
}

/// Expires leases and old results, until the scheduler is dropped.
async fn run_janitor(scheduler: std::sync::Weak<Scheduler>) {
    let period = match scheduler.upgrade() {
        Some(s) => (s.config.lease / 4).max(Duration::from_millis(50)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match scheduler.upgrade() {
            Some(s) => s.expire(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::operation_store_tests::record;

    /// Remembers how many records each save wrote.
    #[derive(Default)]
    struct CountingStore {
        saves: Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl OperationStore for CountingStore {
        async fn save(&self, records: &[OperationRecord]) -> Result<()> {
            self.saves.lock().push(records.len());
            Ok(())
        }
        async fn delete(&self, _: &[String]) -> Result<()> {
            Ok(())
        }
        async fn load(&self) -> Result<Vec<OperationRecord>> {
            Ok(Vec::new())
        }
        async fn delete_completed_before(&self, _: i64) -> Result<u64> {
            Ok(0)
        }
    }

    /// Saves `name` and waits until it is written.
    async fn save(requests: &mpsc::UnboundedSender<Persist>, name: &str, urgency: Urgency) {
        let (done, written) = oneshot::channel();
        requests.send(Persist::Save(Box::new(record(name, 1)), Some((done, urgency)))).unwrap();
        written.await.unwrap().unwrap();
    }

    /// A save that must be made at once is written alone; saves that may
    /// share a write, a millisecond apart, are written together.
    #[tokio::test(start_paused = true)]
    async fn saves_that_may_wait_share_a_write() {
        let store = Arc::new(CountingStore::default());
        let (requests, received) = mpsc::unbounded_channel();
        tokio::spawn(run_persister(store.clone(), received));
        save(&requests, "operations/now", Urgency::Now).await;
        let first = save(&requests, "operations/a", Urgency::Shared);
        let second = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            save(&requests, "operations/b", Urgency::Shared).await
        };
        tokio::join!(first, second);
        assert_eq!(*store.saves.lock(), [1, 2]);
    }
}
