use std::path::PathBuf;
use std::time::Duration;

use super::{IdMap, ResourceLimits};

/// One RUN step (or REAPI action) to run in a container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// For container names and logs, e.g. `stage-1-step-3`.
    pub id_hint: String,
    pub argv: Vec<String>,
    /// `K=V` entries. `PATH` gets Docker's default and `HOME` the user's home
    /// directory when missing.
    pub env: Vec<String>,
    /// Absolute; created when missing, as Docker does.
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group`; names are resolved from the
    /// rootfs' `/etc/passwd` and `/etc/group`. `None` is `0:0`.
    pub user: Option<String>,
    pub network: StepNetwork,
    /// Memory, CPU and `/dev/shm` limits; not part of any cache key.
    pub limits: ResourceLimits,
    /// Extra mounts; their targets are never captured in the layer.
    pub mounts: Vec<SpecMount>,
    pub timeout: Option<Duration>,
    /// When set, every mtime in the layer is clamped to it.
    pub source_date_epoch: Option<u64>,
    pub hostname: String,
    /// `RUN --security=insecure`: every capability, no seccomp filter, no
    /// masked `/proc` paths, privileges may be gained (as BuildKit's
    /// insecure mode). The engine allows it only with `--allow
    /// security.insecure`.
    pub insecure: bool,
    pub purpose: ContainerPurpose,
    /// Run in a user namespace with this map (`--userns-remap`); RUN steps
    /// only (an action's inputs are the worker's file cache, never shifted).
    pub user_namespace: Option<IdMap>,
}

/// What a container runs for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContainerPurpose {
    /// A RUN step: root gets Docker's default capabilities and the
    /// rootfs changes become the step's layer.
    #[default]
    Step,
    /// A REAPI action in its `container-image`: no capabilities, even as
    /// root (its inputs, bound in, are the worker's read-only file cache),
    /// and rootfs changes are thrown away (outputs are read from the bound
    /// input root).
    Action,
}

/// The network a RUN step's container gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StepNetwork {
    /// An own network namespace with only `lo`.
    #[default]
    Isolated,
    /// A prepared network namespace, joined by its path, with
    /// `resolv_conf` bound read-only over `/etc/resolv.conf`.
    Joined { netns: PathBuf, resolv_conf: PathBuf },
    /// The host's network, with the host's `/etc/resolv.conf` and
    /// `/etc/hosts` bound read-only (unless one of `mounts` targets them).
    Host,
}

/// A mount of a RUN step (`RUN --mount=...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecMount {
    /// A host path bound into the container.
    Bind { source: PathBuf, target: String, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { target: String },
    /// A host directory the caller keeps across builds (created if missing),
    /// bound read-write.
    Cache { source: PathBuf, target: String },
    /// A path in a view of a committed chain (a stage or an image), mounted
    /// through the step's user namespace already when it has one (see
    /// [`crate::containerd::Containerd::mount_view`]).
    View { source: PathBuf, target: String, readonly: bool },
}

impl SpecMount {
    /// The absolute path inside the container.
    pub fn target(&self) -> &str {
        match self {
            SpecMount::Bind { target, .. }
            | SpecMount::Tmpfs { target }
            | SpecMount::Cache { target, .. }
            | SpecMount::View { target, .. } => target,
        }
    }
}
