use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use memobuild_auth::{caller, Capability};
use memobuild_proto::worker::worker_api_server::WorkerApi;
use memobuild_proto::worker::{worker_message, SchedulerMessage, WorkerMessage};
use memobuild_proto::Error;
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
        let mut incoming = request.into_inner();
        let mut hello = match incoming.message().await?.and_then(|m| m.kind) {
            Some(worker_message::Kind::Hello(hello)) => hello,
            _ => return Err(Error::invalid_argument("a worker session must start with Hello").into()),
        };
        // With auth, a worker's name lives under its principal: no one else
        // can take it, or the operations it holds; and it is handed only
        // actions of the instances its principal may use.
        if let Some(principal) = &principal {
            hello.name = format!("{}/{}", principal.name, hello.name);
        }
        let (sender, outgoing) = mpsc::unbounded_channel();
        let session = self.scheduler.connect_worker(&hello, sender, principal)?;
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(WorkerMessage { kind: Some(kind) })) => match kind {
                        worker_message::Kind::Finished(finished) => scheduler.finish(&hello.name, finished).await,
                        worker_message::Kind::Heartbeat(beat) => scheduler.heartbeat(&hello.name, &beat.running),
                        worker_message::Kind::Output(output) => scheduler.output(&hello.name, output),
                        worker_message::Kind::Hello(_) => {
                            tracing::warn!(worker = %hello.name, "ignoring a second Hello");
                        }
                    },
                    Ok(Some(WorkerMessage { kind: None })) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = %hello.name, error = %e, "worker stream failed");
                        break;
                    }
                }
            }
            scheduler.disconnect_worker(&hello.name, session);
        });
        Ok(Response::new(UnboundedReceiverStream::new(outgoing).map(Ok).boxed()))
    }
}
