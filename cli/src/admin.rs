//! The admin HTTP listener: Prometheus `/metrics`, `/healthz` (the state of
//! the role's dependencies, JSON), `/readyz` (serving and healthy) and, on
//! a role that runs the scheduler, the live dashboard at `/`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::dashboard::{Dashboard, PAGE};
use crate::health::{Health, HealthReport};

/// What the admin listener serves.
#[derive(Clone)]
pub struct Admin {
    pub registry: Registry,
    pub health: Arc<Health>,
    pub dashboard: Option<Arc<Dashboard>>,
}

/// Serves until `shutdown`; failures are logged. The admin port has no
/// authentication: listening beyond loopback says so at start.
pub async fn serve(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()> + Send + 'static) {
    if let Ok(address) = listener.local_addr() {
        if !address.ip().is_loopback() {
            tracing::warn!(
                %address,
                "ADMIN PORT WITHOUT AUTHENTICATION: /metrics, /healthz, /readyz{} answer anyone who reaches {address}; \
                 keep it on a private network (or 127.0.0.1) and let only the metrics scraper and probes reach it",
                if admin.dashboard.is_some() { " and the dashboard (builds, queue and workers of every instance)" } else { "" }
            );
        }
    }
    let app = router(admin);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// The admin routes.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .with_state(admin)
}

const NO_DASHBOARD: &str = "no dashboard here: it is on the admin port of the scheduler (or server) role\n";

async fn page(State(admin): State<Admin>) -> Response {
    match admin.dashboard {
        Some(_) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response(),
        None => (StatusCode::NOT_FOUND, NO_DASHBOARD).into_response(),
    }
}

async fn state(State(admin): State<Admin>) -> Response {
    match admin.dashboard {
        Some(dashboard) => ([(header::CONTENT_TYPE, "application/json")], dashboard.state_json()).into_response(),
        None => (StatusCode::NOT_FOUND, NO_DASHBOARD).into_response(),
    }
}

async fn events(State(admin): State<Admin>) -> Response {
    match admin.dashboard {
        Some(dashboard) => dashboard.events().into_response(),
        None => (StatusCode::NOT_FOUND, NO_DASHBOARD).into_response(),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&admin.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_string())], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(admin): State<Admin>) -> Response {
    let report = admin.health.report().await;
    let ok = report.status == "ok";
    json(report, ok)
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let report = admin.health.report().await;
    let ready = report.ready;
    json(report, ready)
}

/// The report as JSON: 200 when `good`, else 503.
fn json(report: HealthReport, good: bool) -> Response {
    let status = if good { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"status\":\"failing\",\"error\":\"{e}\"}}"));
    (status, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}
