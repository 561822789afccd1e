//! Executes one REAPI action, however it arrived: fetch inputs -> run ->
//! capture outputs -> upload -> clean up. See [`ActionExecutor`].
//!
//! Inputs come through a [`FileCache`]: a bounded, least-recently-used
//! local copy of CAS blobs whose files are hardlinked into each action's
//! input root. Hardlinks share one inode, so the cache protects itself:
//!
//! - entries are read-only (0444, or 0555 for executables; each mode is its
//!   own entry since hardlinks share the mode);
//! - when the worker is root, entries belong to `nobody` and the
//!   [`HostRunner`]'s [`Sandbox::Namespaces`] drops every capability, so the
//!   command (still uid 0) gets EACCES writing an input and EPERM chmod-ing
//!   or chown-ing it; replacing an input (unlink, then create) is allowed and
//!   leaves the cache alone;
//! - a worker that is not root owns its entries, so a command could chmod
//!   one and write it: every entry's size, mode and mtime are checked before
//!   reuse and a changed entry is fetched again.
//!
//! Path safety: names in `Directory` protos are single components (not
//! empty, `.`, `..`, no `/` or NUL) and unique per directory, and the input
//! root is built from scratch, so nothing is ever created through a
//! symlink; symlink targets are kept as data. Output paths may not be
//! absolute or climb out of the input root, and capture never follows a
//! symlink out of the root (symlinks are reported as symlinks).

mod action_executor;
pub mod containerd;
mod file_cache;
mod host_runner;
mod image_runner;
mod input_tree;
mod machine_properties;
pub mod network;
mod output_capture;
mod relative_path;
mod runner;
mod scratch_dirs;
pub mod steps;
mod worker_monitor;
mod worker_session;

pub use action_executor::{ActionExecutor, ExecutionOutcome, CONTAINER_IMAGE_PROPERTY};
pub use file_cache::{CacheKey, CachePin, CacheStats, FileCache};
pub use host_runner::{HostRunner, Sandbox};
pub use image_runner::{ImageRunner, INPUT_ROOT_MOUNT};
pub use memobuild_sandbox::SandboxConfig;
pub use runner::{RunOutcome, RunSpec, Runner};
pub use worker_monitor::{WorkKind, WorkerMonitor};
pub use worker_session::{run_worker, Executors, SchedulerLink, SchedulerMessages, WorkerIdentity};
