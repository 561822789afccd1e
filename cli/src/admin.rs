//! The admin HTTP listener: Prometheus `/metrics` and `/healthz`.

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Called before each scrape to refresh gauges.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = move || {
        let registry = registry.clone();
        let refresh = refresh.clone();
        async move {
            refresh();
            let mut body = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut body) {
                Ok(()) => (http::StatusCode::OK, body),
                Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string().into_bytes()),
            }
        }
    };
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
