use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use memobuild_proto::longrunning::Operation;
use memobuild_proto::reapi::execution_server::Execution;
use memobuild_proto::reapi::{ExecuteRequest, RequestMetadata, WaitExecutionRequest};
use memobuild_proto::trace_parent::{self, TRACEPARENT};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

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

/// What the client (Bazel, Buck2, ...) says about the request, if anything.
fn request_metadata<T>(request: &Request<T>) -> RequestMetadata {
    request
        .metadata()
        .get_bin(REQUEST_METADATA)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| RequestMetadata::decode(b).ok())
        .unwrap_or_default()
}

/// Who is asking, for fairness: the client's invocation id, else its address.
fn client_id<T>(request: &Request<T>, metadata: &RequestMetadata) -> String {
    Some(metadata.tool_invocation_id.clone())
        .filter(|id| !id.is_empty())
        .or_else(|| request.remote_addr().map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "anonymous".to_string())
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<OperationStream>, Status> {
        check_request(&request, Capability::Execute, &request.get_ref().instance_name)?;
        let metadata = request_metadata(&request);
        let client = client_id(&request, &metadata);
        // The client's trace, as it came: the worker joins it also when this
        // process exports no spans of its own.
        let inherited = request.metadata().get(TRACEPARENT).and_then(|v| v.to_str().ok());
        let inherited = inherited.filter(|v| trace_parent::parse(v).is_some()).unwrap_or_default().to_string();
        let span = tracing::info_span!(
            "execute",
            tool_invocation_id = %metadata.tool_invocation_id,
            action_id = %metadata.action_id,
            operation = tracing::field::Empty,
        );
        let execute = async {
            let trace_parent = trace_parent::current().unwrap_or(inherited);
            let receiver = self.scheduler.execute_traced(request.into_inner(), &client, trace_parent).await?;
            tracing::Span::current().record("operation", receiver.borrow().name.as_str());
            Ok::<_, Status>(receiver)
        };
        let receiver = execute.instrument(span).await?;
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
