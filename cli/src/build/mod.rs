//! Local image builds: `memobuild build` and `memobuild explain-cache`.
//!
//! The Dockerfile is planned by the front end, base images are resolved and
//! pulled into the CAS, and the [`executor::Executor`] runs the graph: each
//! filesystem step is a REAPI action looked up in the action cache (its
//! digest covers the parent layers and the step's canonical definition),
//! RUN steps run in containerd, COPY/ADD/WORKDIR are written without a
//! container, and the target stage is exported as asked.

mod base_images;
mod build_command;
mod build_record;
mod copy_step;
mod docker_healthcheck;
mod docker_load;
mod executor;
mod export;
mod extra_hosts;
mod flag_values;
mod image_state;
mod layer_plan;
mod local_state;
mod output_spec;
mod progress;
mod prune;
mod remote_file_note;
mod remote_source;
mod rootfs;
mod run_command;
mod run_limits;
mod run_secrets;
mod secrets;
mod ssh_agents;
mod step_action;

pub use build_command::{explain_cache, run, BuildArgs, BuildOutcome};
pub use output_spec::OutputSpec;
pub use progress::{ProgressMode, StepCounts};
pub use prune::{prune, PruneArgs, PruneReport};
