//! `memobuild server` / `memobuild cas`: the REAPI CAS, ByteStream, action
//! cache and capabilities on one gRPC port, plus the admin listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use memobuild_cas::service::{cas_routes, CapabilitiesService, CasMetrics, CasState};
use memobuild_cas::{ActionCache, BlobStore, SystemClock, VerifiedStore};
use memobuild_proto::reapi::capabilities_server::CapabilitiesServer;
use memobuild_proto::reapi::{digest_function, ExecutionCapabilities};
use memobuild_proto::DigestFunction;
use memobuild_scheduler::{
    add_execution_services, OperationStore, PostgresOperationStore, Scheduler, SchedulerConfig, SchedulerMetrics,
    SqliteOperationStore,
};
use memobuild_worker::{run_worker, ActionExecutor, HostRunner, WorkerIdentity};
use prometheus::{IntGauge, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::admin;
use crate::config::{OperationStoreConfig, SchedulerSection, ServerConfig, WorkerSection};
use crate::request_layer::RequestLayer;

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
    /// Binds the addresses `config` names.
    pub async fn bind(config: &ServerConfig) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?),
            None => None,
        };
        Ok(Listeners { grpc, admin })
    }
}

/// Serves until `shutdown` completes, then finishes in-flight calls.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let cas_store = config.cas.build().await.context("opening the CAS")?;
    let cas = Arc::new(VerifiedStore::new(cas_store.clone()));
    let results = config.action_cache.build().await.context("opening the action cache")?;
    let state = CasState {
        cas: cas.clone(),
        action_cache: Arc::new(ActionCache::new(results, cas)),
        metrics: CasMetrics::register(&registry)?,
    };
    let scheduler = match &config.scheduler {
        Some(section) => Some(start_scheduler(section, &state, &registry).await?),
        None => None,
    };
    let capabilities = CapabilitiesService::new(scheduler.as_ref().map(|_| execution_capabilities()));
    let mut routes = cas_routes(&state).add_service(CapabilitiesServer::new(capabilities));
    if let Some(scheduler) = &scheduler {
        routes = add_execution_services(routes, scheduler);
    }

    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    });

    if let Some(listener) = listeners.admin {
        let store_bytes = IntGauge::new("memobuild_cas_stored_bytes", "Bytes held by the CAS")?;
        let store_blobs = IntGauge::new("memobuild_cas_stored_blobs", "Blobs held by the CAS")?;
        registry.register(Box::new(store_bytes.clone()))?;
        registry.register(Box::new(store_blobs.clone()))?;
        let refresh: admin::Refresh = Arc::new(move || {
            if let Some(usage) = cas_store.usage() {
                store_bytes.set(usage.bytes as i64);
                store_blobs.set(usage.blobs as i64);
            }
        });
        tracing::info!(address = %listener.local_addr()?, "admin listening (/metrics, /healthz)");
        let registry = registry.clone();
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, registry, refresh, token.cancelled_owned()).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }

    let address = listeners.grpc.local_addr()?;
    if let (Some(section), Some(_)) = (&config.worker, &scheduler) {
        start_worker(section, state.cas.clone(), address, token.clone()).await?;
    }
    tracing::info!(%address, "memobuild listening");
    // Small request/response calls must not wait on Nagle's algorithm.
    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(RequestLayer::new(&registry)?)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
        .await
        .context("serving gRPC")?;
    tracing::info!("memobuild stopped");
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

async fn start_scheduler(
    section: &SchedulerSection,
    state: &CasState,
    registry: &Registry,
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
        ..Default::default()
    };
    let metrics = SchedulerMetrics::register(registry)?;
    let scheduler =
        Scheduler::start(config, state.cas.clone(), state.action_cache.clone(), store, Arc::new(SystemClock), metrics)
            .await
            .context("starting the scheduler")?;
    Ok(scheduler)
}

/// Starts a worker in this process that dials the scheduler at `address`.
async fn start_worker(
    section: &WorkerSection,
    cas: Arc<dyn BlobStore>,
    address: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runner = Arc::new(HostRunner::new());
    runner.check().await.context("checking the worker's sandbox")?;
    let executor = ActionExecutor::new(cas, section.work_dir.clone(), section.cache_max_bytes, runner)
        .await
        .context("starting the worker")?;
    let slots =
        section.slots.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    let identity = WorkerIdentity {
        name: format!("{}:{}", hostname(), std::process::id()),
        properties: section.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        slots,
    };
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))?.tcp_nodelay(true).connect_lazy();
    tokio::spawn(async move {
        if let Err(e) = run_worker(identity, Arc::new(executor), channel, shutdown).await {
            tracing::error!(error = %e, "worker stopped");
        }
    });
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
