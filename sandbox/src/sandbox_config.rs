use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[worker.sandbox]`: what an action sees and may use in the root
/// worker's namespace sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Host paths bound read-only at the same place (symlinks such as
    /// `/bin -> usr/bin` are recreated as symlinks); missing ones are skipped.
    /// Bound once, when the sandbox starts: a mount made below one later is not seen.
    pub read_only: Vec<PathBuf>,
    /// Paths inside `read_only` ones the action must not see: an empty
    /// directory or file covers each (e.g. `/etc/shadow`).
    pub hidden: Vec<PathBuf>,
    /// The user and group actions run as on the host. An action whose
    /// platform sets `dockerRunAsRoot` is uid and gid 0 of a user namespace
    /// that maps 0 to these (still without capabilities). Must not be the
    /// file cache's owner, 65534.
    pub uid: u32,
    pub gid: u32,
    /// Memory (RAM) of one action, page cache and `/tmp` included; over it
    /// the kernel kills the action. `None`: unlimited.
    pub memory_bytes: Option<u64>,
    /// Processes and threads of one action at once. `None`: unlimited.
    pub pids: Option<u64>,
    /// Size of the action's private `/tmp` (and `/dev/shm`).
    pub tmp_bytes: u64,
    /// `RLIMIT_NOFILE` of the action.
    pub open_files: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            read_only: ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"].map(PathBuf::from).to_vec(),
            hidden: ["/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/memobuild"].map(PathBuf::from).to_vec(),
            uid: 65532,
            gid: 65532,
            memory_bytes: Some(4 << 30),
            pids: Some(4096),
            tmp_bytes: 1 << 30,
            open_files: 65536,
        }
    }
}
