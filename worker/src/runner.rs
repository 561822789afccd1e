use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use memobuild_oci::ImageReference;
use memobuild_proto::Result;
use tokio_util::sync::CancellationToken;

/// Runs commands: on the host ([`crate::HostRunner`]) or in a container
/// image ([`crate::ImageRunner`]).
#[async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Runs `spec` to completion, until its timeout, or until `cancel` fires,
    /// whichever comes first. A command that runs and exits non-zero is
    /// `Ok` with that exit code; `Err` is for commands that could not be
    /// started at all.
    async fn run(&self, spec: RunSpec, cancel: CancellationToken) -> Result<RunOutcome>;
}

/// What to run and where.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The command line; `argv[0]` is resolved relative to `working_dir`
    /// when it contains a slash, else through the `PATH` in `env`.
    pub argv: Vec<String>,
    /// The command's whole environment, in order.
    pub env: Vec<(String, String)>,
    /// The input root on the host.
    pub root: PathBuf,
    /// Absolute, inside `root`.
    pub working_dir: PathBuf,
    /// Whether the command may use the network.
    pub network: bool,
    /// Whether the command runs as uid 0 (still without capabilities)
    /// rather than the sandbox's unprivileged user (platform property
    /// `dockerRunAsRoot`).
    pub as_root: bool,
    /// The image to run in (platform property `container-image`); `None`:
    /// the host's toolchain.
    pub image: Option<ImageReference>,
    pub timeout: Option<Duration>,
    /// Files to write the streams to (created or truncated).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code, or 128 + the signal number for a command killed by a
    /// signal (as shells report it).
    pub exit_code: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    /// Set, to the limit in bytes, when the kernel killed the command for
    /// using more memory than the sandbox allows.
    pub memory_limit_exceeded: Option<u64>,
}
