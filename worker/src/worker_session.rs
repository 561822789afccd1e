use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use memobuild_cas::GrpcChannel;
use memobuild_engine::STEP_PROPERTY;
use memobuild_proto::build::step_log;
use memobuild_proto::reapi::platform::Property;
use memobuild_proto::worker::worker_api_client::WorkerApiClient;
use memobuild_proto::worker::ANY_VALUE;
use memobuild_proto::worker::{
    scheduler_message, worker_message, Assign, Finished, Heartbeat, Hello, Output, SchedulerMessage, StepSession,
    WorkerMessage,
};
use memobuild_proto::{rpc, Digest, DigestFunction, Error, Result};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::containerd::LogChunk;
use crate::machine_properties::machine_properties;
use crate::steps::StepActions;
use crate::{ActionExecutor, WorkKind, WorkerMonitor, CONTAINER_IMAGE_PROPERTY};

/// Heartbeats renew leases; the scheduler's lease is several of these.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest heartbeat period, however short the lease.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Who a worker says it is.
#[derive(Clone, Debug)]
pub struct WorkerIdentity {
    pub name: String,
    pub properties: Vec<(String, String)>,
    pub slots: u32,
}

/// What the scheduler sends a worker.
pub type SchedulerMessages = BoxStream<'static, Result<SchedulerMessage>>;

/// How a worker reaches its scheduler: over gRPC ([`GrpcChannel`]), or
/// directly when both live in one process.
#[async_trait]
pub trait SchedulerLink: Send + Sync {
    /// Opens a session: the scheduler reads `outgoing`, which starts with
    /// the worker's Hello, and answers with its own messages.
    async fn open(&self, outgoing: mpsc::UnboundedReceiver<WorkerMessage>) -> Result<SchedulerMessages>;
}

#[async_trait]
impl SchedulerLink for GrpcChannel {
    async fn open(&self, outgoing: mpsc::UnboundedReceiver<WorkerMessage>) -> Result<SchedulerMessages> {
        let response = WorkerApiClient::new(self.clone()).session(UnboundedReceiverStream::new(outgoing)).await?;
        Ok(response.into_inner().map(|m| m.map_err(Error::from)).boxed())
    }
}

/// A worker's session with the scheduler: it connects, announces itself,
/// runs what it is assigned, reports results and heartbeats, and reconnects
/// (naming what it still runs) when the session breaks. Returns once
/// `shutdown` fires; running actions are cancelled.
pub async fn run_worker(
    identity: WorkerIdentity,
    executors: Executors,
    scheduler: impl SchedulerLink,
    monitor: WorkerMonitor,
    shutdown: CancellationToken,
) -> Result<()> {
    monitor.set_slots(identity.slots);
    let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
    let (results, mut finished) = mpsc::unbounded_channel::<Finished>();
    let (outputs, mut output) = mpsc::unbounded_channel::<Output>();
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let (outgoing, stream) = mpsc::unbounded_channel();
        let hello = Hello {
            name: identity.name.clone(),
            properties: identity
                .properties
                .iter()
                .map(|(n, v)| Property { name: n.clone(), value: v.clone() })
                .collect(),
            slots: identity.slots,
            running: running.lock().keys().cloned().collect(),
        };
        let _ = outgoing.send(message(worker_message::Kind::Hello(hello)));
        let mut incoming = match scheduler.open(stream).await {
            Ok(incoming) => incoming,
            Err(e) => {
                monitor.link(Some(format!("cannot reach the scheduler: {}", e.message())));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the scheduler");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(worker = %identity.name, slots = identity.slots, "connected to the scheduler");
        monitor.link(None);
        backoff = Duration::from_millis(200);
        let mut period = HEARTBEAT;
        let mut heartbeat = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = incoming.next() => match received {
                    Some(Ok(m)) => match m.kind {
                        Some(scheduler_message::Kind::Assign(assign)) => {
                            // Beat at least three times per lease, whatever lease the scheduler keeps.
                            if let Some(lease) = assign.lease.as_ref().map(lease_duration) {
                                if lease / 3 < period {
                                    period = (lease / 3).max(MIN_HEARTBEAT);
                                    heartbeat = tokio::time::interval(period);
                                }
                            }
                            let sinks =
                                Sinks { results: results.clone(), outputs: outputs.clone(), monitor: monitor.clone() };
                            start(assign, &identity.name, &executors, &running, sinks);
                        }
                        Some(scheduler_message::Kind::Cancel(cancel)) => {
                            if let Some(token) = running.lock().get(&cancel.operation) {
                                tracing::info!(operation = %cancel.operation, "cancelling");
                                token.cancel();
                            }
                        }
                        None => {}
                    },
                    None | Some(Err(_)) => {
                        monitor.link(Some("the scheduler stream ended; reconnecting".into()));
                        tracing::warn!("scheduler stream ended; reconnecting");
                        break;
                    }
                },
                Some(chunk) = output.recv() => {
                    let _ = outgoing.send(message(worker_message::Kind::Output(chunk)));
                }
                Some(done) = finished.recv() => {
                    running.lock().remove(&done.operation);
                    let _ = outgoing.send(message(worker_message::Kind::Finished(done)));
                }
                _ = heartbeat.tick() => {
                    let beat = Heartbeat { running: running.lock().keys().cloned().collect() };
                    let _ = outgoing.send(message(worker_message::Kind::Heartbeat(beat)));
                }
            }
        }
    }
    monitor.link(Some("the worker is shutting down".into()));
    for token in running.lock().values() {
        token.cancel();
    }
    Ok(())
}

fn lease_duration(lease: &memobuild_proto::protobuf::Duration) -> Duration {
    Duration::from_secs(lease.seconds.max(0) as u64) + Duration::from_nanos(lease.nanos.max(0) as u64)
}

fn message(kind: worker_message::Kind) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

/// What a worker runs: REAPI actions, and Dockerfile steps when it can
/// (it has containerd).
#[derive(Clone)]
pub struct Executors {
    pub actions: Arc<ActionExecutor>,
    pub steps: Option<Arc<StepActions>>,
}

impl Executors {
    /// The platform properties a worker with these executors adds: what
    /// the machine is (`ISA`, `cores`, `memory-mb`), the properties the
    /// action executor interprets itself, with any value (`network`,
    /// `dockerNetwork`, `dockerRunAsRoot`, and `container-image` when it has
    /// containerd), and the step kinds it runs.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut interpreted = vec!["network", "dockerNetwork", "dockerRunAsRoot"];
        let kinds: &[&str] = if self.steps.is_some() {
            interpreted.push(CONTAINER_IMAGE_PROPERTY);
            &["run", "copy", "workdir"]
        } else {
            &[]
        };
        let interpreted = interpreted.into_iter().map(|name| (name.to_string(), ANY_VALUE.to_string()));
        let steps = kinds.iter().map(|k| (STEP_PROPERTY.to_string(), k.to_string()));
        machine_properties().into_iter().chain(interpreted).chain(steps).collect()
    }
}

/// Where a running assignment reports: its end, and its output.
struct Sinks {
    results: mpsc::UnboundedSender<Finished>,
    outputs: mpsc::UnboundedSender<Output>,
    monitor: WorkerMonitor,
}

/// Runs an assignment in the background; its end goes to `sinks.results`.
fn start(
    assign: Assign,
    worker: &str,
    executors: &Executors,
    running: &Arc<Mutex<HashMap<String, CancellationToken>>>,
    sinks: Sinks,
) {
    let token = CancellationToken::new();
    running.lock().insert(assign.operation.clone(), token.clone());
    let (executors, worker) = (executors.clone(), worker.to_string());
    let span = tracing::info_span!("action", operation = %assign.operation, build = tracing::field::Empty);
    let mut trace_parent = assign.trace_parent.as_str();
    if let Some(session) = &assign.session {
        if !session.build_id.is_empty() {
            span.record("build", session.build_id.as_str());
        }
        if trace_parent.is_empty() {
            trace_parent = &session.trace_parent;
        }
    }
    memobuild_proto::trace_parent::adopt(&span, trace_parent);
    let Sinks { results, outputs, monitor } = sinks;
    tokio::spawn(
        async move {
            monitor.started();
            let started = Instant::now();
            let kind = if assign.session.is_some() { WorkKind::Step } else { WorkKind::Action };
            tracing::info!(kind = ?kind, "running");
            let run = match &assign.session {
                Some(session) => execute_step(&assign, session, &worker, &executors, outputs, token).await,
                None => execute(&assign, &worker, &executors.actions, token).await,
            };
            let (result, status) = match run {
                Ok(outcome) => (Some(outcome.result), outcome.status.map(|e| e.to_rpc_status()).unwrap_or_default()),
                Err(e) => (None, e.to_rpc_status()),
            };
            if status != rpc::Status::default() {
                tracing::info!(code = status.code, message = %status.message, "action ended without a result");
            }
            let outcome = match (&result, status == rpc::Status::default()) {
                (Some(r), true) if r.exit_code == 0 => "ok",
                (Some(_), true) => "failed",
                _ => "error",
            };
            monitor.finished(kind, outcome, started.elapsed());
            tracing::info!(outcome, seconds = started.elapsed().as_secs_f64(), "finished");
            let _ = results.send(Finished { operation: assign.operation, result, status: Some(status) });
        }
        .instrument(span),
    );
}

/// Runs a Dockerfile step; its output goes to the scheduler as it comes.
async fn execute_step(
    assign: &Assign,
    session: &StepSession,
    worker: &str,
    executors: &Executors,
    outputs: mpsc::UnboundedSender<Output>,
    token: CancellationToken,
) -> Result<crate::ExecutionOutcome> {
    let steps = executors.steps.as_ref().ok_or_else(|| {
        Error::new(
            tonic::Code::FailedPrecondition,
            format!("worker {worker} cannot run Dockerfile steps (no containerd)"),
        )
    })?;
    let function = DigestFunction::from_proto(assign.digest_function)?;
    let digest = Digest::from_proto_field(function, assign.action_digest.as_ref(), "action_digest")?;
    let (logs, mut received) = mpsc::unbounded_channel();
    let operation = assign.operation.clone();
    let forward = tokio::spawn(async move {
        while let Some(chunk) = received.recv().await {
            let (stream, data) = match chunk {
                LogChunk::Stdout(data) => (step_log::Stream::Stdout, data),
                LogChunk::Stderr(data) => (step_log::Stream::Stderr, data),
            };
            let _ = outputs.send(Output { operation: operation.clone(), stream: stream as i32, data: data.to_vec() });
        }
    });
    let result = steps.execute(&digest, session, worker, logs, token).await;
    let _ = forward.await;
    Ok(crate::ExecutionOutcome { result: result?, status: None })
}

async fn execute(
    assign: &Assign,
    worker: &str,
    executor: &ActionExecutor,
    token: CancellationToken,
) -> Result<crate::ExecutionOutcome> {
    let function = DigestFunction::from_proto(assign.digest_function)?;
    let digest = Digest::from_proto_field(function, assign.action_digest.as_ref(), "action_digest")?;
    let run = executor.execute(&digest, worker, token);
    // The scheduler's cap on the action's own timeout, plus time for uploads.
    let Some(limit) = assign.timeout.as_ref().map(|t| Duration::from_secs(t.seconds.max(0) as u64)) else {
        return run.await;
    };
    match tokio::time::timeout(limit + Duration::from_secs(30), run).await {
        Ok(outcome) => outcome,
        Err(_) => {
            Err(Error::new(tonic::Code::DeadlineExceeded, format!("action {digest} exceeded its {limit:?} timeout")))
        }
    }
}
