//! `memobuild server` / `memobuild cas`: the REAPI CAS, ByteStream, action
//! cache and capabilities on one gRPC port, plus the admin listener.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use memobuild_auth::{AuthLayer, ServerTls};
use memobuild_cas::service::{cas_routes, CapabilitiesService, CasMetrics, CasState};
use memobuild_cas::{
    expand_env, grpc_channel_with, ActionCache, BlobStore, CasLimits, ClientCredentials, GrpcActionCache, GrpcStore,
    MetadataConfig, MeteredStore, PinLeases, StoreConfig, StoreMetrics, SystemClock, VerifiedStore,
};
use memobuild_engine::NetworkPolicy;
use memobuild_oci::RegistryClient;
use memobuild_proto::reapi::capabilities_server::CapabilitiesServer;
use memobuild_proto::reapi::{digest_function, ExecutionCapabilities};
use memobuild_proto::worker::WorkerMessage;
use memobuild_proto::DigestFunction;
use memobuild_scheduler::{
    add_build_service, add_execution_services, serve_worker, BuildManager, BuildStore, OperationStore,
    PostgresBuildStore, PostgresOperationStore, Scheduler, SchedulerConfig, SchedulerMetrics, SqliteBuildStore,
    SqliteOperationStore,
};
use memobuild_worker::containerd::{IdMap, OciRuntime};
use memobuild_worker::steps::{StepActions, StepRunner};
use memobuild_worker::{
    run_worker, ActionExecutor, Executors, HostRunner, ImageRunner, Runner, SchedulerLink, SchedulerMessages,
    WorkerIdentity, WorkerMonitor,
};
use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::admin::{self, Admin};
use crate::build::anyhow_of;
use crate::config::{OperationStoreConfig, SchedulerSection, ServerConfig, WorkerSection};
use crate::dashboard::Dashboard;
use crate::health::{ContainerdCheck, DatabaseCheck, Health, RedisCheck, StoreCheck, WorkerLinkCheck};
use crate::request_layer::RequestLayer;
use crate::security::Security;

/// HTTP/2 flow-control windows sized for blob transfers, not chat.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_FRAME: u32 = 1 << 20;

/// The listeners a server answers on, bound by the caller (tests use port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the gRPC address and, if given, the admin address.
    pub async fn bind(listen: std::net::SocketAddr, admin: Option<std::net::SocketAddr>) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let admin = match admin {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?),
            None => None,
        };
        Ok(Listeners { grpc, admin })
    }
}

/// The all-in-one node (or, without `[scheduler]`, the CAS role): serves
/// until `shutdown` completes, then finishes in-flight calls.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    // One builder: the stores' metrics land in this registry, and equal metadata is shared.
    let stores = memobuild_cas::StoreBuilder::new(registry.clone());
    let cas_store = stores.build(&config.cas).await.context("opening the CAS")?;
    let cas = Arc::new(VerifiedStore::new(cas_store.clone()));
    let results = stores.build(&config.action_cache).await.context("opening the action cache")?;
    let state = CasState {
        cas: cas.clone(),
        action_cache: Arc::new(ActionCache::new(results, cas)),
        metrics: CasMetrics::register(&registry)?,
        limits: config.limits,
    };
    register_usage(&registry, cas_store.clone())?;
    let pins = pin_leases(&stores);
    if let Some(pins) = &pins {
        register_pins(&registry, pins.clone())?;
    }
    let security = Security::from_config(config.auth.as_ref(), config.tls.as_ref())?;
    let mut health = Health::new(if config.scheduler.is_some() { "server" } else { "cas" });
    health.add(StoreCheck { name: "cas".into(), store: cas_store });
    add_store_dependencies(&mut health, &[&config.cas, &config.action_cache])?;
    if let Some(section) = &config.scheduler {
        health.add(database_check("scheduler state", &section.store)?);
    }
    let node = Node { state, scheduler: config.scheduler, worker: config.worker, registry, security, pins, health };
    node.serve(listeners, shutdown).await
}

/// The CAS role as the scheduler role reaches it.
pub struct CasRole<'a> {
    /// e.g. `grpc://cas:8980`.
    pub endpoint: &'a str,
    /// What the scheduler presents to it.
    pub credentials: &'a ClientCredentials,
    /// The metadata of its evicting stores, where the scheduler pins what
    /// queued and running work needs (none: nothing is pinned).
    pub pins: Vec<MetadataConfig>,
}

/// The scheduler role of a cluster: Execution and Operations, plus the CAS
/// and action cache of the CAS role (proxied, so clients need one
/// endpoint). `security` is what its own port requires.
pub async fn run_scheduler(
    cas: CasRole<'_>,
    scheduler: SchedulerSection,
    security: Security,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let channel = grpc_channel_with(cas.endpoint, cas.credentials)?;
    let state = CasState {
        cas: Arc::new(GrpcStore::connect_with(cas.endpoint, "", cas.credentials)?),
        action_cache: Arc::new(GrpcActionCache::new(channel)),
        metrics: CasMetrics::register(&registry)?,
        limits: CasLimits::default(),
    };
    let stores = memobuild_cas::StoreBuilder::new(registry.clone());
    for metadata in &cas.pins {
        stores.pin_in(metadata).await.context("opening the CAS metadata to pin blobs in")?;
    }
    let pins = pin_leases(&stores);
    if let Some(pins) = &pins {
        register_pins(&registry, pins.clone())?;
    }
    let mut health = Health::new("scheduler");
    health.add(StoreCheck { name: "cas".into(), store: state.cas.clone() });
    health.add(database_check("scheduler state", &scheduler.store)?);
    let node = Node { state, scheduler: Some(scheduler), worker: None, registry, security, pins, health };
    node.serve(listeners, shutdown).await
}

/// The worker role: runs actions for the scheduler at `scheduler`, with
/// blobs from the CAS at `cas`, until `shutdown` completes, presenting
/// `credentials` to both; `/metrics`, `/healthz` and `/readyz` on `admin`.
pub async fn run_worker_role(
    scheduler: &str,
    cas: &str,
    credentials: &ClientCredentials,
    section: WorkerSection,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    cancel_on(shutdown, token.clone());
    let registry = Registry::new();
    let remote: Arc<dyn BlobStore> = Arc::new(GrpcStore::connect_with(cas, "", credentials)?);
    let store = Arc::new(MeteredStore::new(remote, "cas", StoreMetrics::register(&registry)?));
    let mut health = Health::new("worker");
    health.add(StoreCheck { name: "cas".into(), store: store.clone() });
    let channel = grpc_channel_with(scheduler, credentials)?;
    let worker = worker(&section, store, channel, (&registry, &mut health), token.clone()).await?;
    let health = Arc::new(health);
    if let Some(listener) = admin {
        tracing::info!(address = %listener.local_addr()?, "admin listening (/metrics, /healthz, /readyz)");
        let admin = Admin { registry, health: health.clone(), dashboard: None };
        tokio::spawn(admin::serve(listener, admin, token.clone().cancelled_owned()));
    }
    health.set_serving(true);
    let result = worker.await.context("worker");
    health.set_serving(false);
    result
}

/// What one process serves.
struct Node {
    state: CasState,
    scheduler: Option<SchedulerSection>,
    worker: Option<WorkerSection>,
    registry: Registry,
    security: Security,
    /// Where the scheduler pins what queued and running work needs.
    pins: Option<Arc<PinLeases>>,
    health: Health,
}

impl Node {
    async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Node { state, scheduler: scheduler_section, worker: worker_section, registry, security, pins, mut health } =
            self;
        let scheduler = match &scheduler_section {
            Some(section) => Some(start_scheduler(section, &state, &registry, pins).await?),
            None => None,
        };
        let capabilities = CapabilitiesService::new(scheduler.as_ref().map(|_| execution_capabilities()));
        let mut routes = cas_routes(&state).add_service(CapabilitiesServer::new(capabilities));
        let mut dashboard = None;
        if let (Some(scheduler), Some(section)) = (&scheduler, &scheduler_section) {
            routes = add_execution_services(routes, scheduler);
            let store = build_store(&section.store).await?;
            let builds = BuildManager::start(
                scheduler.clone(),
                state.cas.clone(),
                state.action_cache.clone(),
                section.work_dir(),
                store,
                // Without a worker here, the workers elsewhere enforce their own policy.
                worker_section.as_ref().map_or(NetworkPolicy::ANY, |w| w.network.policy()),
                section.max_layer_bytes,
            )
            .await
            .context("starting the build service")?;
            routes = add_build_service(routes, &builds);
            dashboard = Some(Arc::new(Dashboard::new(builds.clone(), state.metrics.lookups.clone())));
        }
        let token = CancellationToken::new();
        cancel_on(shutdown, token.clone());
        let address = listeners.grpc.local_addr()?;
        security.warn_if_open(address);
        let request_layer = RequestLayer::new(&registry)?;
        let auth_layer = AuthLayer::new(security.authenticator.clone());
        let mut in_process_worker = None;
        if let (Some(section), Some(scheduler)) = (&worker_section, &scheduler) {
            let link = InProcessLink(scheduler.clone());
            let worker = worker(section, state.cas.clone(), link, (&registry, &mut health), token.clone()).await?;
            in_process_worker = Some(tokio::spawn(async move {
                if let Err(e) = worker.await {
                    tracing::error!(error = %e, "worker stopped");
                }
            }));
        }
        let health = Arc::new(health);
        if let Some(listener) = listeners.admin {
            tracing::info!(address = %listener.local_addr()?, "admin listening (/metrics, /healthz, /readyz)");
            let admin = Admin { registry: registry.clone(), health: health.clone(), dashboard };
            tokio::spawn(admin::serve(listener, admin, token.clone().cancelled_owned()));
        }
        tracing::info!(tls = security.tls.is_some(), auth = security.authenticator.is_some(), %address, "memobuild listening");
        health.set_serving(true);
        let served = serve_grpc(routes, listeners.grpc, security.tls.clone(), (request_layer, auth_layer), token).await;
        health.set_serving(false);
        served?;
        // The worker stops with the token; let it clean up (its containerd).
        if let Some(worker) = in_process_worker {
            let _ = worker.await;
        }
        tracing::info!("memobuild stopped");
        Ok(())
    }
}

/// Serves `routes` on `listener` (with TLS when given) until `token` is cancelled.
async fn serve_grpc(
    routes: tonic::service::Routes,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    (request_layer, auth_layer): (RequestLayer, AuthLayer),
    token: CancellationToken,
) -> anyhow::Result<()> {
    let router = tonic::transport::Server::builder()
        .layer(request_layer)
        .layer(auth_layer)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_routes(routes);
    let shutdown = token.cancelled_owned();
    match tls {
        // Small request/response calls must not wait on Nagle's algorithm.
        None => {
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown).await
        }
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
    }
    .context("serving gRPC")
}

/// The link of the worker inside this process to its scheduler: the
/// session's messages go through channels, not gRPC. The worker is this
/// process's own, so it needs no credentials.
struct InProcessLink(Arc<Scheduler>);

#[tonic::async_trait]
impl SchedulerLink for InProcessLink {
    async fn open(
        &self,
        outgoing: mpsc::UnboundedReceiver<WorkerMessage>,
    ) -> memobuild_proto::Result<SchedulerMessages> {
        let incoming = UnboundedReceiverStream::new(outgoing).map(Ok::<_, Infallible>);
        let received = serve_worker(&self.0, None, incoming).await?;
        Ok(UnboundedReceiverStream::new(received).map(Ok).boxed())
    }
}

fn cancel_on(shutdown: impl Future<Output = ()> + Send + 'static, token: CancellationToken) {
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
}

/// How long a pin lasts without renewal: a scheduler that dies frees what it
/// pinned this long after.
const PIN_LEASE: Duration = Duration::from_secs(600);

/// Pin leases over every evicting store's metadata, when something evicts.
fn pin_leases(stores: &memobuild_cas::StoreBuilder) -> Option<Arc<PinLeases>> {
    let pins = stores.pins();
    (!pins.is_empty()).then(|| PinLeases::start(pins, Arc::new(SystemClock), PIN_LEASE))
}

/// Checks of the databases and Redis indexes the store trees use.
fn add_store_dependencies(health: &mut Health, trees: &[&StoreConfig]) -> anyhow::Result<()> {
    let (mut metadata, mut redis) = (Vec::new(), Vec::new());
    for tree in trees {
        tree.dependencies(&mut metadata, &mut redis);
    }
    for m in metadata {
        health.add(match m {
            MetadataConfig::Sqlite { path } => DatabaseCheck::sqlite("blob metadata", path),
            MetadataConfig::Postgres { url, .. } => {
                DatabaseCheck::postgres("blob metadata", &expand_env(&url)?).map_err(anyhow::Error::msg)?
            }
        });
    }
    for r in redis {
        health.add(RedisCheck::new(&expand_env(&r.url)?).map_err(anyhow::Error::msg)?);
    }
    Ok(())
}

/// The check of where the scheduler keeps operations and builds.
fn database_check(what: &str, store: &OperationStoreConfig) -> anyhow::Result<DatabaseCheck> {
    Ok(match store {
        OperationStoreConfig::Sqlite { path } => DatabaseCheck::sqlite(what, path.clone()),
        OperationStoreConfig::Postgres { url, .. } => DatabaseCheck::postgres(what, url).map_err(anyhow::Error::msg)?,
    })
}

/// `memobuild_pin_holders` (work holding pins now) and
/// `memobuild_pinned_blobs_total`, read from the leases at each scrape.
fn register_pins(registry: &Registry, pins: Arc<PinLeases>) -> anyhow::Result<()> {
    let holders = IntGauge::new("memobuild_pin_holders", "Operations and builds holding pins against eviction")?;
    let pinned = IntCounter::new("memobuild_pinned_blobs_total", "Blob pins taken against eviction")?;
    registry.register(Box::new(PinCollector { pins, holders, pinned }))?;
    Ok(())
}

/// The pin series, read from the leases at each scrape.
struct PinCollector {
    pins: Arc<PinLeases>,
    holders: IntGauge,
    pinned: IntCounter,
}

impl Collector for PinCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.holders.desc().into_iter().chain(self.pinned.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.holders.set(self.pins.holders() as i64);
        let total = self.pins.pinned_total();
        self.pinned.inc_by(total.saturating_sub(self.pinned.get()));
        self.holders.collect().into_iter().chain(self.pinned.collect()).collect()
    }
}

/// Gauges of what the local CAS holds, refreshed at each scrape.
fn register_usage(registry: &Registry, store: Arc<dyn BlobStore>) -> anyhow::Result<()> {
    let bytes = IntGauge::new("memobuild_cas_stored_bytes", "Bytes held by the CAS")?;
    let blobs = IntGauge::new("memobuild_cas_stored_blobs", "Blobs held by the CAS")?;
    registry.register(Box::new(UsageCollector { store, bytes, blobs }))?;
    Ok(())
}

fn execution_capabilities() -> ExecutionCapabilities {
    ExecutionCapabilities {
        digest_function: digest_function::Value::Sha256 as i32,
        exec_enabled: true,
        digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
        ..Default::default()
    }
}

/// Where builds are kept: beside the operations.
async fn build_store(config: &OperationStoreConfig) -> anyhow::Result<Arc<dyn BuildStore>> {
    Ok(match config {
        OperationStoreConfig::Sqlite { path } => Arc::new(SqliteBuildStore::open(path).await?),
        OperationStoreConfig::Postgres { url, schema } => {
            Arc::new(PostgresBuildStore::connect(url, schema.as_deref()).await?)
        }
    })
}

async fn start_scheduler(
    section: &SchedulerSection,
    state: &CasState,
    registry: &Registry,
    pins: Option<Arc<PinLeases>>,
) -> anyhow::Result<Arc<Scheduler>> {
    let store: Arc<dyn OperationStore> = match &section.store {
        OperationStoreConfig::Sqlite { path } => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            Arc::new(SqliteOperationStore::open(path).await?)
        }
        OperationStoreConfig::Postgres { url, schema } => {
            Arc::new(PostgresOperationStore::connect(url, schema.as_deref()).await?)
        }
    };
    let config = SchedulerConfig {
        lease: Duration::from_secs(section.lease_seconds),
        max_attempts: section.max_attempts,
        default_timeout: Duration::from_secs(section.default_timeout_seconds),
        max_timeout: Duration::from_secs(section.max_timeout_seconds),
        pins,
        ..Default::default()
    };
    let metrics = SchedulerMetrics::register(registry, state.metrics.lookups.clone())?;
    let scheduler =
        Scheduler::start(config, state.cas.clone(), state.action_cache.clone(), store, Arc::new(SystemClock), metrics)
            .await
            .context("starting the scheduler")?;
    Ok(scheduler)
}

/// A worker ready to run: executor, sandbox checked, identity set. The
/// returned future runs it until `shutdown` fires.
async fn worker(
    section: &WorkerSection,
    cas: Arc<dyn BlobStore>,
    scheduler: impl SchedulerLink + 'static,
    (registry, health): (&Registry, &mut Health),
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = memobuild_proto::Result<()>>> {
    // The worker's own state stays out of sight also where a read-only
    // directory would show it.
    let mut sandbox = section.sandbox.clone();
    sandbox.hidden.push(section.work_dir.clone());
    let host = Arc::new(HostRunner::with_config(sandbox.clone()));
    host.check().await.context("checking the worker's sandbox")?;
    let userns_remap = section
        .userns_remap
        .as_deref()
        .map(IdMap::parse_remap)
        .transpose()
        .map_err(anyhow_of)
        .context("[worker] userns_remap")?;
    let oci_runtime: OciRuntime = section
        .oci_runtime
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow_of)
        .context("[worker] oci_runtime")?
        .unwrap_or_default();
    let runner = section.dockerfile_steps.then(|| {
        let steps = StepRunner::new(
            cas.clone(),
            section.containerd_address.clone(),
            section.work_dir.join("steps"),
            section.network.clone(),
        );
        Arc::new(steps.with_user_namespace(userns_remap).with_oci_runtime(oci_runtime))
    });
    // With containerd, actions may also name a `container-image`.
    let actions: Arc<dyn Runner> = match &runner {
        Some(steps) => {
            let registry = RegistryClient::from_docker_config()
                .context("reading registry credentials")?
                .with_max_layer_bytes(section.max_layer_bytes);
            Arc::new(ImageRunner::new(host, steps.clone(), cas.clone(), registry, sandbox))
        }
        None => host,
    };
    let executor = ActionExecutor::new(cas.clone(), section.work_dir.clone(), section.cache_max_bytes, actions)
        .await
        .context("starting the worker")?;
    let steps = runner.clone().map(|runner| Arc::new(StepActions::new(runner, cas)));
    let monitor = WorkerMonitor::new(Some(registry))?;
    health.add(WorkerLinkCheck { monitor: monitor.clone() });
    if let Some(runner) = &runner {
        health.add(ContainerdCheck { runner: runner.clone() });
    }
    let executors = Executors { actions: Arc::new(executor), steps };
    let slots =
        section.slots.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    let identity = WorkerIdentity {
        name: format!("{}:{}", hostname(), std::process::id()),
        // What the configuration says of a property replaces what the worker finds.
        properties: section
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(executors.properties().into_iter().filter(|(k, _)| !section.properties.contains_key(k)))
            .collect(),
        slots,
    };
    Ok(async move {
        let result = run_worker(identity, executors, scheduler, monitor, shutdown).await;
        // A private containerd the steps started stops with the worker.
        let stopped = match runner {
            Some(runner) => runner.shutdown().await,
            None => Ok(()),
        };
        result.and(stopped)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The usage gauges, read from the store at each scrape.
struct UsageCollector {
    store: Arc<dyn BlobStore>,
    bytes: IntGauge,
    blobs: IntGauge,
}

impl Collector for UsageCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.bytes.desc().into_iter().chain(self.blobs.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(usage) = self.store.usage() {
            self.bytes.set(usage.bytes as i64);
            self.blobs.set(usage.blobs as i64);
        }
        self.bytes.collect().into_iter().chain(self.blobs.collect()).collect()
    }
}
