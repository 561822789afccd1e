use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use memobuild_auth::{caller, Capability, Principal};
use memobuild_proto::worker::worker_api_server::WorkerApi;
use memobuild_proto::worker::{worker_message, SchedulerMessage, WorkerMessage};
use memobuild_proto::{Error, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Scheduler;

/// The worker protocol: one long-lived stream per worker. The scheduler
/// pushes assignments, so idle workers cost nothing.
pub struct WorkerApiService {
    scheduler: Arc<Scheduler>,
}

impl WorkerApiService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        WorkerApiService { scheduler }
    }
}

type SchedulerStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerApi for WorkerApiService {
    type SessionStream = SchedulerStream;

    async fn session(&self, request: Request<Streaming<WorkerMessage>>) -> Result<Response<SchedulerStream>, Status> {
        let principal = caller(&request);
        if let Some(principal) = &principal {
            principal.require(Capability::Worker)?;
        }
        let outgoing = serve_worker(&self.scheduler, principal, request.into_inner()).await?;
        Ok(Response::new(UnboundedReceiverStream::new(outgoing).map(Ok).boxed()))
    }
}

/// One worker's session, whatever carries it (a gRPC stream, or a channel
/// from the worker in this process): `incoming` starts with the worker's
/// Hello; the returned receiver carries what the scheduler sends it. The
/// worker is disconnected when `incoming` ends or fails.
///
/// With auth, a worker's name lives under its `principal`: no one else can
/// take it, or the operations it holds; and it is handed only actions of
/// the instances its principal may use.
pub async fn serve_worker<E: Display>(
    scheduler: &Arc<Scheduler>,
    principal: Option<Arc<Principal>>,
    mut incoming: impl Stream<Item = Result<WorkerMessage, E>> + Send + Unpin + 'static,
) -> Result<mpsc::UnboundedReceiver<SchedulerMessage>> {
    let mut hello = match incoming.next().await {
        Some(Ok(WorkerMessage { kind: Some(worker_message::Kind::Hello(hello)) })) => hello,
        Some(Err(e)) => return Err(Error::unavailable(format!("the worker's stream failed before its Hello: {e}"))),
        _ => return Err(Error::invalid_argument("a worker session must start with Hello")),
    };
    if let Some(principal) = &principal {
        hello.name = format!("{}/{}", principal.name, hello.name);
    }
    let (sender, outgoing) = mpsc::unbounded_channel();
    let session = scheduler.connect_worker(&hello, sender, principal)?;
    let scheduler = scheduler.clone();
    tokio::spawn(async move {
        while let Some(received) = incoming.next().await {
            let kind = match received {
                Ok(WorkerMessage { kind: Some(kind) }) => kind,
                Ok(WorkerMessage { kind: None }) => continue,
                Err(e) => {
                    tracing::warn!(worker = %hello.name, error = %e, "worker stream failed");
                    break;
                }
            };
            match kind {
                worker_message::Kind::Finished(finished) => drop(scheduler.finish(&hello.name, finished)),
                worker_message::Kind::Heartbeat(beat) => scheduler.heartbeat(&hello.name, &beat.running),
                worker_message::Kind::Output(output) => scheduler.output(&hello.name, output),
                worker_message::Kind::Hello(_) => {
                    tracing::warn!(worker = %hello.name, "ignoring a second Hello");
                }
            }
        }
        scheduler.disconnect_worker(&hello.name, session);
    });
    Ok(outgoing)
}
