use memobuild_oci::Layer;

/// How a RUN step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerOutcome {
    /// The exit code, or 128 + the signal number for a process killed by a
    /// signal (137 after a timeout or cancel).
    pub exit_code: i32,
    pub timed_out: bool,
    pub cancelled: bool,
    /// The kernel's OOM killer struck in the container (its memory limit,
    /// [`super::ResourceLimits::memory`], was reached).
    pub oom_killed: bool,
    /// The step's filesystem changes as an uncompressed layer (blob =
    /// diff id), stored in the blob store; only on exit 0.
    pub layer: Option<Layer>,
    /// The chain id of the parent stack plus `layer`, committed as a
    /// snapshot (unless that failed: `ensure_chain` then unpacks it from the
    /// layer); `Some` exactly when `layer` is.
    pub chain_id: Option<String>,
}
