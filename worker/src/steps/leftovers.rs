use std::path::PathBuf;

use memobuild_proto::Result;
use serde::{Deserialize, Serialize};

use crate::containerd::StepRemains;
use crate::network::NatBridge;

/// What a stopped [`super::StepRunner`] leaves for another process to
/// remove ([`super::StepRunner::hand_over`]): its last steps' containers,
/// on their containerd, and the bridge of its default network. Plain data,
/// sent between the processes as JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Leftovers {
    pub steps: Option<(PathBuf, Vec<StepRemains>)>,
    pub bridge: Option<NatBridge>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.steps.is_none() && self.bridge.is_none()
    }

    /// Makes process `pid` the owner of the bridge, so that no other worker
    /// takes it over while `pid` removes it. Should that fail, the bridge
    /// is removed here and left out.
    pub async fn hand_to(&mut self, pid: u32) {
        let Some(bridge) = &self.bridge else { return };
        if let Err(e) = bridge.hand_to(pid) {
            tracing::debug!(error = %e, "removing the network's bridge in this process");
            bridge.remove().await;
            self.bridge = None;
        }
    }

    /// Removes the steps' containers, then the bridge.
    pub async fn finish(self) -> Result<()> {
        let steps = match self.steps {
            Some((address, remains)) => StepRemains::finish(&address, remains).await,
            None => Ok(()),
        };
        if let Some(bridge) = self.bridge {
            bridge.remove().await;
            tracing::info!(bridge = %bridge.name(), "removed the build's network");
        }
        steps
    }
}
