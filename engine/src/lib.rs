//! The Dockerfile build engine. [`ImageBuild::run`] plans a Dockerfile with
//! the front end, resolves its base images and remote sources into the
//! CAS, walks the graph (stages in parallel as their dependencies finish,
//! steps in order within a stage) and exports the target. Every filesystem
//! step is a REAPI action ([`StepAction`], whose digest is the step's
//! key) looked up in the action cache; those that miss go to a
//! [`StepExecutor`]: in-process for `memobuild build`, the scheduler's
//! queue on a cluster. The engine never runs a container itself.

mod base_images;
mod build_record;
mod build_run;
mod docker_healthcheck;
mod docker_load;
mod engine_stores;
mod export;
mod host_entry;
mod image_build;
mod image_state;
mod local_context;
mod network_policy;
mod output_spec;
mod remote_file_note;
mod remote_source;
mod resource_limits;
mod run_command;
mod secrets;
mod step_action;
mod step_executor;
mod wire_image;

pub use base_images::{resolve_step, DOCKER_IMAGE_CONTEXT};
pub use build_record::{explain, BuildRecord, StepRecord};
pub use build_run::BuildSettings;
pub use docker_load::check_docker;
pub use engine_stores::EngineStores;
pub use export::{image_id, metadata, write_iidfile, write_metadata_file, write_outputs, ExportRequest};
pub use host_entry::{HostAddress, HostEntry, HOST_GATEWAY};
pub use image_build::{BuiltOutput, ImageBuild, WholeContext, OUTSIDE_SENT_PART};
pub use image_state::rfc3339;
pub use network_policy::{
    network_hint, parse_entitlement, parse_network, NetworkPolicy, HOST_ENTITLEMENT, INSECURE_ENTITLEMENT,
};
pub use output_spec::OutputSpec;
pub use remote_file_note::RemoteFileNote;
pub use remote_source::{download_context, source_key, GitCheckout};
pub use resource_limits::ResourceLimits;
pub use secrets::{SecretSource, SecretSpec, Secrets};
pub use step_action::{
    dated_result, layer_result, result_layer, StepAction, StepLayers, StepOutcome, StepSpec, LAYER_OUTPUT, STEP_FILE,
    STEP_PARENT_PREFIX, STEP_PROPERTY,
};
pub use step_executor::{BuildSession, ContextFiles, StepExecutor, StepTask};
pub use wire_image::{exported_image, image_of, layer_descriptor, layer_of};

/// Where a build sends its events.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<memobuild_proto::build::BuildEvent>;
