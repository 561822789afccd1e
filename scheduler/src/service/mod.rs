//! Thin gRPC services in front of the [`Scheduler`].

mod build;
mod execution;
mod operations;
mod worker_api;

use std::sync::Arc;

use memobuild_proto::longrunning::{operation, Operation};
use memobuild_proto::protobuf::Any;
use memobuild_proto::reapi::execution_server::ExecutionServer;
use memobuild_proto::reapi::ExecuteOperationMetadata;
use memobuild_proto::worker::worker_api_server::WorkerApiServer;
use prost::Message;

pub use build::BuildServiceImpl;
pub use execution::ExecutionService;
pub use operations::OperationsService;
pub use worker_api::{serve_worker, WorkerApiService};

use memobuild_auth::{Capability, Principal};
use memobuild_proto::{Error, Result};

use crate::{OperationSnapshot, Scheduler, Stage};

const METADATA_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// Adds the BuildService to `routes`.
pub fn add_build_service(routes: tonic::service::Routes, builds: &Arc<crate::BuildManager>) -> tonic::service::Routes {
    routes.add_service(memobuild_proto::build::build_service_server::BuildServiceServer::new(BuildServiceImpl::new(
        builds.clone(),
    )))
}

/// Adds Execution, Operations and WorkerApi to `routes`.
pub fn add_execution_services(routes: tonic::service::Routes, scheduler: &Arc<Scheduler>) -> tonic::service::Routes {
    routes
        .add_service(ExecutionServer::new(ExecutionService::new(scheduler.clone())))
        .add_service(memobuild_proto::longrunning::operations_server::OperationsServer::new(OperationsService::new(
            scheduler.clone(),
        )))
        .add_service(WorkerApiServer::new(WorkerApiService::new(scheduler.clone())))
}

/// An operation as `google.longrunning` presents it.
pub fn to_operation(snapshot: &OperationSnapshot) -> Operation {
    let metadata = ExecuteOperationMetadata {
        stage: snapshot.stage.to_proto() as i32,
        action_digest: Some(snapshot.action_digest.to_proto()),
        digest_function: snapshot.action_digest.function().to_proto(),
        ..Default::default()
    };
    let result = snapshot
        .response
        .as_ref()
        .map(|r| operation::Result::Response(Any { type_url: RESPONSE_TYPE.into(), value: r.encode_to_vec() }));
    Operation {
        name: snapshot.name.clone(),
        metadata: Some(Any { type_url: METADATA_TYPE.into(), value: metadata.encode_to_vec() }),
        done: snapshot.stage == Stage::Completed,
        result,
    }
}

/// May `principal` act on operation `name`? PERMISSION_DENIED without the
/// execute capability; NOT_FOUND, as for an unknown operation, when the
/// operation belongs to an instance the principal does not see (another
/// tenant's operations do not exist for it). Without auth, always.
fn check_operation(scheduler: &Scheduler, principal: Option<&Principal>, name: &str) -> Result<()> {
    let Some(principal) = principal else { return Ok(()) };
    principal.require(Capability::Execute)?;
    match scheduler.instance_of(name) {
        Some(instance) if principal.sees(&instance) => Ok(()),
        _ => Err(Error::not_found(format!("operation {name} not found (unknown, or completed and expired)"))),
    }
}
