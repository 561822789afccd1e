//! The REAPI execution side: a scheduler that queues actions, matches them
//! to workers and keeps durable operation state, and the Execution,
//! Operations and worker-protocol services in front of it.

mod action_queue;
mod build_dag;
mod build_manager;
mod build_record;
mod build_store;
mod metrics;
mod operation_record;
mod operation_store;
mod platform;
mod postgres_build_store;
mod postgres_operation_store;
mod queue_executor;
mod scheduler;
mod service;
mod sqlite_build_store;
mod sqlite_operation_store;
mod state_db;
mod worker_status;

#[cfg(test)]
mod build_store_tests;
#[cfg(test)]
mod operation_store_tests;

pub use build_dag::{BuildDag, DagNode};
pub use build_manager::{BuildManager, RunningBuild, WHOLE_CONTEXT_REQUIRED};
pub use build_record::{BuildState, StoredBuild};
pub use build_store::{BuildStore, MAX_BUILD_PAGE};
pub use metrics::SchedulerMetrics;
pub use operation_record::{OperationRecord, Stage};
pub use operation_store::OperationStore;
pub use platform::{Matcher, Platform};
pub use postgres_build_store::PostgresBuildStore;
pub use postgres_operation_store::PostgresOperationStore;
pub use queue_executor::QueueExecutor;
pub use scheduler::{OperationSnapshot, Scheduler, SchedulerConfig};
pub use service::{
    add_build_service, add_execution_services, serve_worker, ExecutionService, OperationsService, WorkerApiService,
};
pub use sqlite_build_store::SqliteBuildStore;
pub use sqlite_operation_store::SqliteOperationStore;
pub use worker_status::{QueueStatus, WorkerStatus};
