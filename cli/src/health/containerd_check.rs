use std::sync::Arc;

use async_trait::async_trait;
use memobuild_worker::steps::StepRunner;

use super::HealthCheck;

/// The containerd a worker runs RUN steps in answers (or will be started).
pub struct ContainerdCheck {
    pub runner: Arc<StepRunner>,
}

#[async_trait]
impl HealthCheck for ContainerdCheck {
    fn name(&self) -> String {
        "containerd".into()
    }

    async fn check(&self) -> Result<String, String> {
        self.runner.containerd_health().await.map_err(|e| e.message().to_string())
    }
}
