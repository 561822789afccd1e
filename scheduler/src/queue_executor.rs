//! The cluster's [`StepExecutor`]: a build's steps go into the scheduler's
//! queue as REAPI actions, with their build's session, and run on whichever
//! worker the scheduler picks. Identical steps of concurrent builds run
//! once (the scheduler merges in-flight actions); a lost worker's step is
//! requeued; the scheduler writes the action cache.

use std::sync::Arc;

use async_trait::async_trait;
use memobuild_cas::{output_digests, BlobStore, Urgency};
use memobuild_engine::{BuildSession, EventSender, NetworkPolicy, StepExecutor, StepOutcome, StepTask};
use memobuild_oci::Layer;
use memobuild_proto::build::{step_log, BuildEvent};
use memobuild_proto::reapi::ExecuteRequest;
use memobuild_proto::{Error, Result, ResultExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{Scheduler, Stage};

pub struct QueueExecutor {
    pub scheduler: Arc<Scheduler>,
    pub cas: Arc<dyn BlobStore>,
    pub instance_name: String,
    /// Who the steps are queued for (the build), for fair queueing.
    pub client: String,
    /// The build, named to workers for their logs.
    pub build_id: String,
    pub network_policy: NetworkPolicy,
}

#[async_trait]
impl StepExecutor for QueueExecutor {
    fn network_policy(&self) -> NetworkPolicy {
        self.network_policy
    }

    /// Pins the layer with the build, then checks it is still there: an
    /// eviction that came between the cache lookup and the pin makes the
    /// step run again rather than fail later.
    async fn keep(&self, layer: &Layer) -> Result<bool> {
        let Some(pins) = self.scheduler.pins() else { return Ok(true) };
        pins.hold(&self.client, &[layer.blob], Urgency::Now)
            .await
            .with_context(|| format!("pinning cached layer {}", layer.blob))?;
        Ok(self.cas.find_missing(&[layer.blob]).await?.is_empty())
    }

    async fn execute(
        &self,
        task: &StepTask,
        session: &BuildSession,
        events: &EventSender,
        cancel: CancellationToken,
    ) -> Result<StepOutcome> {
        let span = tracing::info_span!("step", step = %task.step_id, operation = tracing::field::Empty);
        self.run_step(task, session, events, cancel).instrument(span).await
    }
}

impl QueueExecutor {
    /// Queues the step and follows it to its end, under the step's span.
    async fn run_step(
        &self,
        task: &StepTask,
        session: &BuildSession,
        events: &EventSender,
        cancel: CancellationToken,
    ) -> Result<StepOutcome> {
        task.action.upload(&*self.cas).await?;
        let request = ExecuteRequest {
            instance_name: self.instance_name.clone(),
            action_digest: Some(task.action.digest.to_proto()),
            // The engine looked the step up already (or was told not to).
            skip_cache_lookup: true,
            digest_function: task.action.digest.function().to_proto(),
            ..Default::default()
        };
        let mut step_session = session.to_proto(task);
        step_session.build_id = self.build_id.clone();
        let (mut updates, mut output) = self.scheduler.execute_step(request, &self.client, Some(step_session)).await?;
        let step = &task.step_id;
        tracing::Span::current().record("operation", updates.borrow().name.as_str());
        let mut worker: Option<String> = None;
        let mut output_open = true;
        loop {
            let snapshot = updates.borrow_and_update().clone();
            if snapshot.stage == Stage::Executing && snapshot.worker.is_some() && snapshot.worker != worker {
                worker = snapshot.worker.clone();
                let _ = events.send(BuildEvent::info(step, format!("running on {}", worker.as_deref().unwrap_or(""))));
            }
            if let Some(response) = snapshot.response.filter(|_| snapshot.stage == Stage::Completed) {
                tracing::info!(worker = worker.as_deref().unwrap_or(""), message = %response.message, "step operation ended");
                // Output sent before the end is still queued: show it.
                while let Ok(chunk) = output.try_recv() {
                    let _ = events.send(BuildEvent::log(step, stream(chunk.stream), chunk.data));
                }
                if let Some(error) = response.status.as_ref().and_then(Error::from_rpc_status) {
                    return Err(error);
                }
                let result = response.result.ok_or_else(|| {
                    Error::internal(format!("step action {} finished without a result", task.action.digest))
                })?;
                // Later steps and the export read these: pinned with the build.
                if let Some(pins) = self.scheduler.pins() {
                    let outputs = output_digests(&result, &[], &task.action.digest)?;
                    pins.hold(&self.client, &outputs, Urgency::Now)
                        .await
                        .with_context(|| format!("pinning the outputs of step action {}", task.action.digest))?;
                }
                return StepOutcome::of(&result);
            }
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        return Err(Error::unavailable(format!("step action {} was dropped", task.action.digest)));
                    }
                }
                chunk = output.recv(), if output_open => match chunk {
                    Ok(chunk) => {
                        let _ = events.send(BuildEvent::log(step, stream(chunk.stream), chunk.data));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let note = format!("({missed} chunks of output were dropped: the build fell behind)\n");
                        let _ = events.send(BuildEvent::log(step, step_log::Stream::Stderr, note));
                    }
                    // The operation is gone; its end comes through `updates`.
                    Err(broadcast::error::RecvError::Closed) => output_open = false,
                },
                () = cancel.cancelled() => {
                    let name = updates.borrow().name.clone();
                    drop(updates);
                    // Another build may be waiting for the same step.
                    self.scheduler.cancel_unwatched(&name);
                    return Err(Error::new(tonic::Code::Cancelled, "cancelled"));
                }
            }
        }
    }
}

fn stream(value: i32) -> step_log::Stream {
    step_log::Stream::try_from(value).unwrap_or(step_log::Stream::Stdout)
}
