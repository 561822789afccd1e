use async_trait::async_trait;
use memobuild_worker::WorkerMonitor;

use super::HealthCheck;

/// A worker holds its session with the scheduler.
pub struct WorkerLinkCheck {
    pub monitor: WorkerMonitor,
}

#[async_trait]
impl HealthCheck for WorkerLinkCheck {
    fn name(&self) -> String {
        "scheduler".into()
    }

    async fn check(&self) -> Result<String, String> {
        self.monitor.connected()?;
        let (busy, slots) = self.monitor.load();
        Ok(format!("connected; {busy} of {slots} slots busy"))
    }
}
