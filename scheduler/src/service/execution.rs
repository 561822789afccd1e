use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use memobuild_proto::longrunning::Operation;
use memobuild_proto::reapi::execution_server::Execution;
use memobuild_proto::reapi::{ExecuteRequest, RequestMetadata, WaitExecutionRequest};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use memobuild_auth::{caller, check_request, Capability};

use super::{check_operation, to_operation};
use crate::{OperationSnapshot, Scheduler, Stage};

const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// Execution: Execute and WaitExecution, streaming operation updates.
pub struct ExecutionService {
    scheduler: Arc<Scheduler>,
}

impl ExecutionService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        ExecutionService { scheduler }
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// Every change of the operation, ending with the completed one.
fn updates(receiver: watch::Receiver<OperationSnapshot>) -> OperationStream {
    futures::stream::unfold((receiver, false, true), |(mut receiver, done, first)| async move {
        if done || (!first && receiver.changed().await.is_err()) {
            return None;
        }
        let snapshot = receiver.borrow_and_update().clone();
        let done = snapshot.stage == Stage::Completed;
        Some((Ok(to_operation(&snapshot)), (receiver, done, false)))
    })
    .boxed()
}

/// Who is asking, for fairness: the client's invocation id, else its address.
fn client_id<T>(request: &Request<T>) -> String {
    let invocation = request
        .metadata()
        .get_bin(REQUEST_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| RequestMetadata::decode(b).ok())
        .map(|m| m.tool_invocation_id)
        .filter(|id| !id.is_empty());
    invocation.or_else(|| request.remote_addr().map(|a| a.ip().to_string())).unwrap_or_else(|| "anonymous".to_string())
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<OperationStream>, Status> {
        check_request(&request, Capability::Execute, &request.get_ref().instance_name)?;
        let client = client_id(&request);
        let receiver = self.scheduler.execute(request.into_inner(), &client).await?;
        Ok(Response::new(updates(receiver)))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        check_operation(&self.scheduler, caller(&request).as_deref(), &request.get_ref().name)?;
        let receiver = self.scheduler.watch(&request.into_inner().name)?;
        Ok(Response::new(updates(receiver)))
    }
}
