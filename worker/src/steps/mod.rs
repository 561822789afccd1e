//! Dockerfile steps on this machine: RUN in containerd, COPY/ADD and
//! WORKDIR as builtin steps (see [`StepRunner`]), and the in-process
//! [`LocalExecutor`] that `memobuild build` runs them through.

pub mod archive;
mod cache_mount;
mod chmod;
mod context_files;
mod copy_step;
mod extra_hosts;
mod fs_view;
mod heredoc_script;
mod layer_indexes;
mod layer_plan;
mod layer_stack_view;
mod leftovers;
mod local_executor;
mod planned_view;
mod remote_files;
mod rootfs;
mod run_secrets;
mod ssh_agents;
mod step_actions;
mod step_runner;

pub use leftovers::Leftovers;
pub use local_executor::LocalExecutor;
pub use ssh_agents::{SshAgents, SshSpec};
pub use step_actions::StepActions;
pub use step_runner::{StepCommand, StepRunner, CACHE_MOUNTS_DIR, LAYER_INDEXES_DIR};
