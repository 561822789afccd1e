//! The admin HTTP listener: Prometheus `/metrics` and `/healthz`.

use std::future::Future;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Serves until `shutdown`; failures are logged.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: impl Future<Output = ()> + Send + 'static) {
    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut body = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut body) {
                Ok(()) => (http::StatusCode::OK, body),
                Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string().into_bytes()),
            }
        }
    };
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
