use std::sync::Arc;
use std::time::Duration;

use memobuild_proto::longrunning::operations_server::Operations;
use memobuild_proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, ListOperationsResponse,
    Operation, WaitOperationRequest,
};
use memobuild_proto::protobuf::Empty;
use memobuild_proto::{Error, Result};
use tonic::{Request, Response, Status};

use memobuild_auth::{caller, Capability, Principal};

use super::{check_operation, to_operation};
use crate::{Scheduler, Stage};

/// The page size of ListOperations when the client sets none.
const DEFAULT_PAGE: usize = 100;
/// The longest WaitOperation blocks.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// google.longrunning.Operations over the scheduler's operations.
pub struct OperationsService {
    scheduler: Arc<Scheduler>,
}

impl OperationsService {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        OperationsService { scheduler }
    }

    /// The operations `principal` may see (all of them without auth), a page at a time.
    pub fn list(
        &self,
        request: ListOperationsRequest,
        principal: Option<&Principal>,
    ) -> Result<ListOperationsResponse> {
        let mut names = self.scheduler.operation_names();
        if let Some(principal) = principal {
            principal.require(Capability::Execute)?;
            names.retain(|name| self.scheduler.instance_of(name).is_some_and(|i| principal.sees(&i)));
        }
        let start = match request.page_token.as_str() {
            "" => 0,
            token => {
                token.parse::<usize>().map_err(|_| Error::invalid_argument(format!("invalid page_token {token:?}")))?
            }
        };
        let size = if request.page_size > 0 { request.page_size as usize } else { DEFAULT_PAGE };
        let operations = names
            .iter()
            .skip(start)
            .take(size)
            .filter_map(|name| self.scheduler.watch(name).ok())
            .map(|receiver| to_operation(&receiver.borrow()))
            .collect();
        let next = start + size;
        let next_page_token = if next < names.len() { next.to_string() } else { String::new() };
        Ok(ListOperationsResponse { operations, next_page_token, unreachable: Vec::new() })
    }

    pub async fn wait(&self, request: WaitOperationRequest) -> Result<Operation> {
        let mut receiver = self.scheduler.watch(&request.name)?;
        let timeout = request
            .timeout
            .map(|t| Duration::from_secs(t.seconds.max(0) as u64) + Duration::from_nanos(t.nanos.max(0) as u64))
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        let done = receiver.wait_for(|s| s.stage == Stage::Completed);
        let _ = tokio::time::timeout(timeout, done).await;
        let snapshot = receiver.borrow().clone();
        Ok(to_operation(&snapshot))
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let principal = caller(&request);
        Ok(Response::new(self.list(request.into_inner(), principal.as_deref())?))
    }

    async fn get_operation(&self, request: Request<GetOperationRequest>) -> Result<Response<Operation>, Status> {
        check_operation(&self.scheduler, caller(&request).as_deref(), &request.get_ref().name)?;
        let receiver = self.scheduler.watch(&request.into_inner().name)?;
        let operation = to_operation(&receiver.borrow());
        Ok(Response::new(operation))
    }

    async fn delete_operation(&self, request: Request<DeleteOperationRequest>) -> Result<Response<Empty>, Status> {
        check_operation(&self.scheduler, caller(&request).as_deref(), &request.get_ref().name)?;
        self.scheduler.delete(&request.into_inner().name)?;
        Ok(Response::new(Empty {}))
    }

    async fn cancel_operation(&self, request: Request<CancelOperationRequest>) -> Result<Response<Empty>, Status> {
        check_operation(&self.scheduler, caller(&request).as_deref(), &request.get_ref().name)?;
        self.scheduler.cancel(&request.into_inner().name)?;
        Ok(Response::new(Empty {}))
    }

    async fn wait_operation(&self, request: Request<WaitOperationRequest>) -> Result<Response<Operation>, Status> {
        check_operation(&self.scheduler, caller(&request).as_deref(), &request.get_ref().name)?;
        Ok(Response::new(self.wait(request.into_inner()).await?))
    }
}
