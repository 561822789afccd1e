//! Runs one Dockerfile step from its [`StepSpec`]: RUN in containerd,
//! COPY/ADD and WORKDIR as builtin steps that write the layer themselves.
//! The same code serves `memobuild build` (in-process) and a cluster worker
//! (the spec read from the action's input root).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use memobuild_cas::BlobStore;
use memobuild_engine::{network_hint, BuildSession, ContextFiles, NetworkPolicy, StepSpec, HOST_GATEWAY};
use memobuild_frontend::{MountType, NetworkMode, Origin, SecurityMode, StepDefinition};
use memobuild_oci::Layer;
use memobuild_proto::{Error, Result, ResultExt};
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::cache_mount::cache_mount_dir;
use super::context_files::{materialize_context, ContextCopy};
use super::copy_step::{plan_copy, plan_workdir, CopyRequest, SourceRoot};
use super::extra_hosts::{need_gateway, HostsFiles};
use super::fs_view::{FsView, HostDir};
use super::heredoc_script::HeredocScript;
use super::layer_indexes::LayerIndexes;
use super::layer_plan::LayerPlan;
use super::leftovers::Leftovers;
use super::remote_files::materialize_remote;
use super::run_secrets::RunSecrets;
use crate::containerd::{
    ContainerPurpose, ContainerSpec, Containerd, IdMap, LogChunk, OciRuntime, SpecMount, StepNetwork,
};
use crate::network::{NetworkConfig, NetworkPool, SandboxLease};

/// Log lines a failed RUN's error repeats.
const TAIL_LINES: usize = 10;

/// What a step's command is: its argv and whole environment (for RUN), as
/// its action's Command has them, plus the environment kept out of the key.
pub struct StepCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uncached_env: Vec<(String, String)>,
    /// For container names and logs, e.g. `step-1-3`.
    pub id_hint: String,
}

/// Runs steps on this machine. containerd is connected (or a private one
/// started) on first use: a build whose steps are all cached never needs it.
pub struct StepRunner {
    cas: Arc<dyn BlobStore>,
    containerd_address: Option<PathBuf>,
    state_dir: PathBuf,
    containerd: OnceCell<Containerd>,
    network: NetworkConfig,
    /// RUN's default network, set up on the first step that uses it.
    network_pool: OnceCell<Arc<NetworkPool>>,
    /// What COPY, ADD and WORKDIR read of their parent filesystem.
    layer_indexes: LayerIndexes,
    /// The user namespace RUN steps run in (`--userns-remap`), if any.
    user_namespace: Option<IdMap>,
    /// What runs RUN steps' containers (`--oci-runtime`).
    oci_runtime: OciRuntime,
}

impl StepRunner {
    /// `state_dir` holds cache mounts (and a private containerd, if one is
    /// started).
    pub fn new(
        cas: Arc<dyn BlobStore>,
        containerd_address: Option<PathBuf>,
        state_dir: PathBuf,
        network: NetworkConfig,
    ) -> Self {
        StepRunner {
            cas,
            containerd_address,
            layer_indexes: LayerIndexes::new(state_dir.join(LAYER_INDEXES_DIR)),
            state_dir,
            containerd: OnceCell::new(),
            network,
            network_pool: OnceCell::new(),
            user_namespace: None,
            oci_runtime: OciRuntime::Auto,
        }
    }

    /// RUN steps run in a user namespace with `map` (`--userns-remap`).
    pub fn with_user_namespace(mut self, map: Option<IdMap>) -> Self {
        self.user_namespace = map;
        self
    }

    /// RUN steps' containers run with `runtime` (`--oci-runtime`).
    pub fn with_oci_runtime(mut self, runtime: OciRuntime) -> Self {
        self.oci_runtime = runtime;
        self
    }

    /// What RUN steps may reach here.
    pub fn network_policy(&self) -> NetworkPolicy {
        self.network.policy()
    }

    /// A namespace of RUN's default network for one step.
    pub(crate) async fn default_network(&self) -> Result<SandboxLease> {
        self.network_pool().await?.acquire().await
    }

    /// RUN's default network, set up on first use.
    async fn network_pool(&self) -> Result<&Arc<NetworkPool>> {
        self.network_pool.get_or_try_init(|| NetworkPool::start(&self.network)).await
    }

    /// What `--add-host NAME:host-gateway` names: this worker's side of
    /// RUN's default network, the gateway of its bridge (set up if no step
    /// has used it yet). With `--network host` the address is this host's
    /// own; with `--network none` the name resolves but nothing routes to it.
    async fn host_gateway(&self) -> Result<IpAddr> {
        if let Some(why) = self.network.policy().refusal(NetworkMode::Default) {
            return Err(Error::new(
                tonic::Code::FailedPrecondition,
                format!("--add-host NAME:{HOST_GATEWAY} names the gateway of RUN's default network, and {why}"),
            ));
        }
        let pool = self.network_pool().await.with_context(|| format!("finding the {HOST_GATEWAY} for --add-host"))?;
        Ok(IpAddr::V4(pool.gateway()))
    }

    /// containerd, connected or started on first use.
    pub async fn containerd(&self) -> Result<&Containerd> {
        self.containerd
            .get_or_try_init(|| async {
                let containerd =
                    Containerd::connect_or_start(self.containerd_address.as_deref(), &self.state_dir).await?;
                Ok::<_, Error>(containerd.with_oci_runtime(&self.oci_runtime))
            })
            .await
    }

    /// How containerd stands, for a health check: the one in use answers,
    /// or (before the first step) the one that would be used answers, or a
    /// private one will be started on the first RUN.
    pub async fn containerd_health(&self) -> Result<String> {
        if let Some(containerd) = self.containerd.get() {
            containerd.check().await?;
            let kind = if containerd.is_private() { "private containerd" } else { "containerd" };
            return Ok(format!("{kind} at {} answers", containerd.address().display()));
        }
        let configured = self.containerd_address.as_deref();
        let system = std::path::Path::new(crate::containerd::SYSTEM_SOCKET);
        match configured.or(system.exists().then_some(system)) {
            Some(address) => {
                crate::containerd::probe_version(address).await?;
                Ok(format!("containerd at {} answers", address.display()))
            }
            None => Ok("no containerd yet: a private one starts on the first RUN".into()),
        }
    }

    /// Stops as [`StepRunner::shutdown`] does, but leaves what another
    /// process can remove: the cleanups of the last steps, when their
    /// containerd is not a private one and no task may still run (see
    /// [`Containerd::hand_over_cleanups`]), and the default network's
    /// bridge. The caller hands them over ([`Leftovers::hand_to`]) or
    /// finishes them itself ([`Leftovers::finish`]).
    pub async fn hand_over(&self) -> Result<Leftovers> {
        let mut leftovers = Leftovers::default();
        if let Some(containerd) = self.containerd.get() {
            let remains = containerd.hand_over_cleanups().await.filter(|remains| !remains.is_empty());
            leftovers.steps = remains.map(|remains| (containerd.address().to_path_buf(), remains));
            // Whatever was not handed over goes before the bridge.
            containerd.settle().await;
        }
        if let Some(pool) = self.network_pool.get() {
            leftovers.bridge = Some(pool.hand_over().await);
        }
        self.shutdown().await?;
        Ok(leftovers)
    }

    /// Stops a private containerd this runner started, unless another
    /// process still uses it.
    pub async fn shutdown(&self) -> Result<()> {
        // Steps' cleanups first: a task still being deleted may be in one of
        // the pool's namespaces.
        if let Some(containerd) = self.containerd.get() {
            containerd.settle().await;
        }
        if let Some(pool) = self.network_pool.get() {
            pool.shutdown().await;
        }
        match self.containerd.get() {
            Some(containerd) => containerd.shutdown().await,
            None => Ok(()),
        }
    }

    /// Host directories behind `RUN --mount=type=cache`.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.state_dir.join(CACHE_MOUNTS_DIR)
    }

    /// Runs the step; returns its layer (`None`: nothing changed). Output
    /// goes to `logs` as it comes.
    pub async fn run(
        &self,
        spec: &StepSpec,
        command: StepCommand,
        session: &BuildSession,
        logs: tokio::sync::mpsc::UnboundedSender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<Option<Layer>> {
        match &spec.definition {
            StepDefinition::Run { .. } => self.run_container(spec, command, session, logs, cancel).await,
            StepDefinition::Copy { .. } => self.copy(spec, session).await,
            StepDefinition::Workdir { path, user } => self.workdir(spec, path, user.as_deref(), session).await,
            other => Err(Error::invalid_argument(format!("a {other:?} step changes no filesystem"))),
        }
    }

    /// The plan with its times clamped to the step's `SOURCE_DATE_EPOCH`.
    fn clamped(mut plan: LayerPlan, spec: &StepSpec) -> LayerPlan {
        if let Some(epoch) = spec.source_date_epoch {
            plan.clamp_mtimes(epoch);
        }
        plan
    }

    fn timestamp(spec: &StepSpec, session: &BuildSession) -> u64 {
        spec.source_date_epoch.unwrap_or(session.timestamp)
    }

    async fn run_container(
        &self,
        spec: &StepSpec,
        command: StepCommand,
        session: &BuildSession,
        logs: tokio::sync::mpsc::UnboundedSender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<Option<Layer>> {
        let StepDefinition::Run { workdir, user, network, mounts, security, .. } = &spec.definition else {
            return Ok(None);
        };
        let mode = *network;
        if let Some(why) = self.network.policy().refusal(mode) {
            return Err(Error::new(tonic::Code::PermissionDenied, why));
        }
        let host_network = mode == NetworkMode::Host;
        let (containerd, sandbox) = match mode {
            NetworkMode::Default => {
                let (containerd, sandbox) = tokio::try_join!(self.containerd(), self.default_network())?;
                (containerd, Some(sandbox))
            }
            NetworkMode::None | NetworkMode::Host => (self.containerd().await?, None),
        };
        let step_network = match (&sandbox, host_network) {
            (Some(lease), _) => StepNetwork::Joined { netns: lease.netns(), resolv_conf: lease.resolv_conf() },
            (None, true) => StepNetwork::Host,
            (None, false) => StepNetwork::Isolated,
        };
        let cas = &*self.cas;
        let parent = containerd.ensure_chain(cas, &spec.parent).await?;
        let gateway = if need_gateway(&session.hosts) { Some(self.host_gateway().await?) } else { None };
        let hosts = HostsFiles::create(&session.hosts, gateway)?;
        let mut spec_mounts: Vec<SpecMount> = hosts.as_ref().map(|h| h.mount(host_network)).into_iter().collect();
        let mut views = Vec::new();
        let mut scratch = Vec::new();
        let mut from_index = 0;
        let mut private = RunSecrets::new(&session.secrets, &session.ssh_sockets);
        for m in mounts {
            let target = m.mount.target.clone().unwrap_or_default();
            match m.mount.kind {
                MountType::Cache => {
                    let dir = cache_mount_dir(&self.cache_mounts_dir(), &m.mount)?;
                    spec_mounts.push(SpecMount::Cache { source: dir, target });
                }
                MountType::Tmpfs => spec_mounts.push(SpecMount::Tmpfs { target }),
                MountType::Bind => {
                    let source_path = m.mount.source.clone().unwrap_or_default();
                    let readonly = m.mount.readonly;
                    match &m.origin {
                        Some(Origin::Context) | None => {
                            let dir = tempfile::tempdir()?;
                            let source = materialize_context(session, cas, &source_path, dir.path()).await?;
                            scratch.push(dir);
                            spec_mounts.push(SpecMount::Bind { source, target, readonly });
                        }
                        Some(_) => {
                            let layers = spec.sources.get(from_index).cloned().unwrap_or_default();
                            from_index += 1;
                            let chain = containerd.ensure_chain(cas, &layers).await?;
                            let view = containerd.mount_view(chain.as_deref(), self.user_namespace).await?;
                            let source = super::rootfs::host_path(view.path(), &source_path)?;
                            views.push(view);
                            spec_mounts.push(SpecMount::View { source, target, readonly });
                        }
                    }
                }
                MountType::Secret => spec_mounts.extend(private.secret(&m.mount)?),
                MountType::Ssh => spec_mounts.extend(private.ssh(&m.mount)?),
            }
        }
        let script = HeredocScript::create(&spec.definition)?;
        spec_mounts.extend(script.as_ref().map(HeredocScript::mount));
        let mut env: Vec<String> = command.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(command.uncached_env.iter().map(|(k, v)| format!("{k}={v}")));
        for (key, value) in private.env() {
            env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
            env.push(format!("{key}={value}"));
        }
        let container = ContainerSpec {
            id_hint: command.id_hint,
            argv: command.argv.clone(),
            env,
            cwd: workdir.clone(),
            user: user.clone(),
            network: step_network,
            limits: session.limits.clone(),
            mounts: spec_mounts,
            timeout: None,
            source_date_epoch: spec.source_date_epoch,
            hostname: "memobuild".into(),
            insecure: *security == SecurityMode::Insecure,
            purpose: ContainerPurpose::Step,
            user_namespace: self.user_namespace,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tail: Arc<Mutex<Vec<String>>> = Arc::default();
        let tail_writer = tail.clone();
        let hint: Arc<Mutex<Option<String>>> = Arc::default();
        let hint_writer = hint.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let data = match &chunk {
                    LogChunk::Stdout(d) | LogChunk::Stderr(d) => d,
                };
                let text = String::from_utf8_lossy(data);
                let mut hint = hint_writer.lock();
                if hint.is_none() {
                    *hint = network_hint(mode, &text);
                }
                let mut tail = tail_writer.lock();
                tail.extend(text.lines().map(str::to_string));
                let excess = tail.len().saturating_sub(TAIL_LINES);
                tail.drain(..excess);
                let _ = logs.send(chunk);
            }
        });
        let outcome = containerd.run(cas, parent.as_deref(), &container, tx, cancel).await;
        drop(sandbox);
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
            let why = match (outcome.timed_out, outcome.oom_killed, session.limits.memory) {
                (true, _, _) => "timed out".to_string(),
                (false, true, Some(limit)) => format!(
                    "exit code: {}: killed by the kernel's OOM killer at the step's memory limit of {} MiB (--memory)",
                    outcome.exit_code,
                    limit >> 20
                ),
                _ => format!("exit code: {}", outcome.exit_code),
            };
            let hint = hint.lock().as_ref().map(|h| format!("\n{h}")).unwrap_or_default();
            return Err(Error::new(
                tonic::Code::Aborted,
                format!(
                    "process {:?} did not complete successfully: {why}\nlast output:\n{last}{hint}",
                    command.argv.join(" ")
                ),
            ));
        }
        Ok(outcome.layer)
    }

    async fn copy(&self, spec: &StepSpec, session: &BuildSession) -> Result<Option<Layer>> {
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
        } = &spec.definition
        else {
            return Ok(None);
        };
        let cas = &*self.cas;
        let downloads = tempfile::tempdir()?;
        let fetched = materialize_remote(session, defs, cas, downloads.path()).await?;
        // Context files a remote build reads come from the CAS first.
        let context_copy = match (origin, &session.context_files) {
            (Origin::Context, ContextFiles::Cas) => Some(ContextCopy::fetch(session, cas, defs).await?),
            _ => None,
        };
        let context_dir = match (&context_copy, &session.context_files) {
            (Some(copy), _) => copy.path().to_path_buf(),
            (None, ContextFiles::Directory(dir)) => dir.clone(),
            (None, ContextFiles::Cas) => PathBuf::new(),
        };
        let source_view = match origin {
            Origin::Context => None,
            _ => {
                let containerd = self.containerd().await?;
                let layers = spec.sources.first().cloned().unwrap_or_default();
                let chain = containerd.ensure_chain(cas, &layers).await?;
                Some(containerd.mount_view(chain.as_deref(), None).await?)
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
        let source = match &source_view {
            Some(view) => SourceRoot::Filesystem(view.path()),
            None => SourceRoot::Context { dir: &context_dir, context: &session.context },
        };
        let mtime = Self::timestamp(spec, session);
        let plan = self.plan_on_parent(spec, |parent| plan_copy(&request, &source, parent, mtime)).await;
        let layer = match plan {
            Ok(plan) => Self::clamped(plan, spec).write(cas).await,
            Err(e) => Err(e),
        };
        if let Some(view) = source_view {
            view.release().await?;
        }
        layer
    }

    /// Plans a builtin step on the parent filesystem read from its layer
    /// indexes, or, when the plan needed bytes no index keeps, on the
    /// parent mounted through containerd.
    async fn plan_on_parent(
        &self,
        spec: &StepSpec,
        plan: impl Fn(&dyn FsView) -> Result<LayerPlan>,
    ) -> Result<LayerPlan> {
        let cas = &*self.cas;
        let indexed = self.layer_indexes.view(cas, &spec.parent).await?;
        let planned = tokio::task::block_in_place(|| plan(&indexed));
        if !indexed.incomplete() {
            return planned;
        }
        let containerd = self.containerd().await?;
        let chain = containerd.ensure_chain(cas, &spec.parent).await?;
        let view = containerd.mount_view(chain.as_deref(), None).await?;
        let planned = tokio::task::block_in_place(|| plan(&HostDir(view.path())));
        view.release().await?;
        planned
    }

    async fn workdir(
        &self,
        spec: &StepSpec,
        path: &str,
        user: Option<&str>,
        session: &BuildSession,
    ) -> Result<Option<Layer>> {
        let mtime = Self::timestamp(spec, session);
        let plan = self.plan_on_parent(spec, |parent| plan_workdir(path, user, parent, mtime)).await;
        match plan {
            Ok(plan) => Self::clamped(plan, spec).write(&*self.cas).await,
            Err(e) => Err(e),
        }
    }
}

/// The subdirectory of a state dir with the cache mounts.
pub const CACHE_MOUNTS_DIR: &str = "cache-mounts";
/// The subdirectory of a state dir with the layer indexes.
pub const LAYER_INDEXES_DIR: &str = "layer-indexes";
