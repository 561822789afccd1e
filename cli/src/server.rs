//! `memobuild server` / `memobuild cas`: the REAPI CAS, ByteStream, action
//! cache and capabilities on one gRPC port, plus the admin listener.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use memobuild_cas::service::{cas_routes, CapabilitiesService, CasMetrics, CasState};
use memobuild_cas::{ActionCache, VerifiedStore};
use memobuild_proto::reapi::capabilities_server::CapabilitiesServer;
use prometheus::{IntGauge, Registry};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::ServerConfig;
use crate::request_layer::RequestLayer;

/// HTTP/2 flow-control windows sized for blob transfers, not chat.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

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
    let routes = cas_routes(&state).add_service(CapabilitiesServer::new(CapabilitiesService::new(None)));

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

    tracing::info!(address = %listeners.grpc.local_addr()?, "memobuild listening");
    tonic::transport::Server::builder()
        .layer(RequestLayer::new(&registry)?)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), token.cancelled_owned())
        .await
        .context("serving gRPC")?;
    tracing::info!("memobuild stopped");
    Ok(())
}
