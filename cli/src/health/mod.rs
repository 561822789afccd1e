//! `/healthz` and `/readyz`: the state of what a role depends on (its CAS,
//! databases, Redis, for a worker its scheduler session and containerd),
//! checked when asked, as JSON.

mod containerd_check;
mod database_check;
mod redis_check;
mod store_check;
mod worker_link_check;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

pub use containerd_check::ContainerdCheck;
pub use database_check::DatabaseCheck;
pub use redis_check::RedisCheck;
pub use store_check::StoreCheck;
pub use worker_link_check::WorkerLinkCheck;

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One dependency of a role.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// What is checked, e.g. `cas`, `postgres`, `containerd`.
    fn name(&self) -> String;
    /// A short description of the state when it is fine; else why not.
    async fn check(&self) -> Result<String, String>;
}

/// A role's checks and whether it serves.
pub struct Health {
    role: String,
    checks: Vec<Arc<dyn HealthCheck>>,
    serving: AtomicBool,
}

/// One check's answer.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub name: String,
    /// `ok` or `failing`.
    pub status: &'static str,
    pub detail: String,
    pub seconds: f64,
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub role: String,
    /// `ok` when every check passes, else `failing`.
    pub status: &'static str,
    /// Serving and every check passes.
    pub ready: bool,
    pub checks: Vec<CheckReport>,
}

impl Health {
    pub fn new(role: &str) -> Self {
        Health { role: role.to_string(), checks: Vec::new(), serving: AtomicBool::new(false) }
    }

    pub fn add(&mut self, check: impl HealthCheck + 'static) {
        self.checks.push(Arc::new(check));
    }

    /// The role took up (true) or stopped (false) serving requests.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Runs every check at once.
    pub async fn report(&self) -> HealthReport {
        let checks = futures::future::join_all(self.checks.iter().map(|check| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            let (status, detail) = match outcome {
                Ok(detail) => ("ok", detail),
                Err(detail) => ("failing", detail),
            };
            CheckReport { name: check.name(), status, detail, seconds: started.elapsed().as_secs_f64() }
        }))
        .await;
        let healthy = checks.iter().all(|c| c.status == "ok");
        HealthReport {
            role: self.role.clone(),
            status: if healthy { "ok" } else { "failing" },
            ready: healthy && self.serving.load(Ordering::SeqCst),
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<String, String>);

    #[async_trait]
    impl HealthCheck for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        async fn check(&self) -> Result<String, String> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn one_failing_check_fails_the_report_and_readiness_needs_serving() {
        let mut health = Health::new("cas");
        health.add(Fixed(Ok("fine".into())));
        let report = health.report().await;
        assert_eq!((report.status, report.ready), ("ok", false), "not serving yet");
        health.set_serving(true);
        assert!(health.report().await.ready);
        health.add(Fixed(Err("down".into())));
        let report = health.report().await;
        assert_eq!((report.status, report.ready), ("failing", false));
        assert_eq!(report.checks[1].detail, "down");
    }
}
