//! `memobuild build`'s executor: steps run in this process, through the
//! same [`StepRunner`] a cluster worker uses, and their results go straight
//! into the local action cache.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use memobuild_cas::{ActionResults, BlobStore};
use memobuild_engine::{dated_result, BuildSession, EventSender, NetworkPolicy, StepExecutor, StepOutcome, StepTask};
use memobuild_proto::build::{step_log, BuildEvent};
use memobuild_proto::Result;
use tokio_util::sync::CancellationToken;

use super::step_runner::{StepCommand, StepRunner};
use crate::containerd::LogChunk;

pub struct LocalExecutor {
    pub runner: Arc<StepRunner>,
    pub cas: Arc<dyn BlobStore>,
    pub actions: Arc<dyn ActionResults>,
    /// The instance whose action cache records the steps.
    pub instance_name: String,
}

#[async_trait]
impl StepExecutor for LocalExecutor {
    fn network_policy(&self) -> NetworkPolicy {
        self.runner.network_policy()
    }

    async fn execute(
        &self,
        task: &StepTask,
        session: &BuildSession,
        events: &EventSender,
        cancel: CancellationToken,
    ) -> Result<StepOutcome> {
        let started = SystemTime::now();
        let (logs, mut received) = tokio::sync::mpsc::unbounded_channel();
        let step = task.step_id.clone();
        let sender = events.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = received.recv().await {
                let _ = sender.send(log_event(&step, chunk));
            }
        });
        let layer = self.runner.run(&task.spec, step_command(task), session, logs, cancel).await;
        let _ = forward.await;
        let result = dated_result(layer?.as_ref(), "local", started, SystemTime::now());
        task.action.record(&*self.cas, &*self.actions, &self.instance_name, &result).await?;
        StepOutcome::of(&result)
    }
}

/// The command of a step's action, with the environment kept out of its key.
pub fn step_command(task: &StepTask) -> StepCommand {
    let command = &task.action.command;
    StepCommand {
        argv: command.arguments.clone(),
        env: command.environment_variables.iter().map(|v| (v.name.clone(), v.value.clone())).collect(),
        uncached_env: task.uncached_env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        id_hint: format!("step-{}", task.step_id.replace('.', "-")),
    }
}

/// A chunk of a RUN's output as a build event.
pub fn log_event(step: &str, chunk: LogChunk) -> BuildEvent {
    match chunk {
        LogChunk::Stdout(data) => BuildEvent::log(step, step_log::Stream::Stdout, data.to_vec()),
        LogChunk::Stderr(data) => BuildEvent::log(step, step_log::Stream::Stderr, data.to_vec()),
    }
}
