//! The root worker's sandbox for REAPI actions ([`HostSandbox`]): one `clone` per action into new
//! PID, IPC and UTS namespaces (sharing the worker's memory until
//! exec, from a launcher thread), then, before exec:
//!
//! - a root of its own: a private copy of a mount namespace the worker
//!   prepared once, whose root is a read-only tmpfs with the configured host
//!   directories (`/usr`, `/etc`, ...) bound read-only, hidden paths covered
//!   and a minimal read-only `/dev`; the action then mounts its own private
//!   `/tmp` and `/dev/shm`, a fresh `/proc` (`/proc/sys` read-only), and
//!   its input root read-write at its own path; nothing else of the host,
//!   the worker's state directory included;
//! - an empty network namespace (only `lo`) made once per slot and joined,
//!   unless the action asks for network;
//! - a cgroup per slot (memory and pids limits) made once under the
//!   worker's own and reused;
//! - rlimits, every capability dropped (bounding set included), an
//!   unprivileged uid/gid, `no_new_privs` and a seccomp filter
//!   ([`syscall_policy`], also the RUN steps' OCI seccomp profile);
//! - an action that asks for root (`dockerRunAsRoot`) is uid 0 of a user
//!   namespace made once per worker, whose 0 is the unprivileged uid on
//!   the host (where the kernel allows user namespaces; else it is the
//!   host's uid 0, still without capabilities).
//!
//! No helper program runs per action.

mod action_launch;
mod child_failure;
mod child_process;
mod empty_netns;
mod host_sandbox;
mod idmapped_mount;
mod input_dirs;
mod launcher;
mod mount_op;
mod root_template;
mod sandbox_config;
mod sandbox_template;
mod sandboxed_command;
mod seccomp_program;
mod slot_pool;
mod stale_dirs;
pub mod syscall_policy;
mod user_namespace;
mod worker_cgroup;

pub use host_sandbox::HostSandbox;
pub use idmapped_mount::mount_idmapped;
pub use input_dirs::give_dirs;
pub use sandbox_config::SandboxConfig;
pub use sandboxed_command::{SandboxedCommand, SandboxedExit};
pub use user_namespace::{user_namespace, IdMap};
pub use worker_cgroup::oom_kills;
