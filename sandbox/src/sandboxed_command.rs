use std::path::Path;
use std::time::Duration;

/// What [`crate::HostSandbox::run`] runs.
#[derive(Clone, Copy, Debug)]
pub struct SandboxedCommand<'a> {
    /// The executable, resolved on the host (the same path inside).
    pub program: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    /// The input root, bound read-write at its own path.
    pub root: &'a Path,
    pub working_dir: &'a Path,
    /// The host's network rather than the slot's empty namespace.
    pub network: bool,
    /// uid 0 (still without capabilities) rather than the configured user.
    pub as_root: bool,
    pub timeout: Option<Duration>,
    /// Files for the streams (created or truncated).
    pub stdout: &'a Path,
    pub stderr: &'a Path,
}

/// How a sandboxed command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxedExit {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    /// The memory limit (bytes) when the kernel's OOM killer struck.
    pub memory_limit_exceeded: Option<u64>,
}
