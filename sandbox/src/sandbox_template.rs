use std::ffi::CString;
use std::os::fd::OwnedFd;

use memobuild_proto::{Result, ResultExt};

use super::root_template::RootTemplate;
use super::seccomp_program::seccomp_program;
use super::user_namespace::{user_namespace, IdMap};
use super::SandboxConfig;

/// What every sandboxed child shares, prepared once per worker.
pub(super) struct SandboxTemplate {
    pub(super) root: RootTemplate,
    pub(super) seccomp: Vec<libc::sock_filter>,
    pub(super) hostname: CString,
    /// The action's stdin.
    pub(super) dev_null: OwnedFd,
    pub(super) open_files: u64,
    /// The highest capability number this kernel knows.
    pub(super) last_capability: libc::c_int,
    /// Where actions that ask for root run; `None` when the kernel refused
    /// to make it (they then run as uid 0 of the host, without capabilities).
    pub(super) root_userns: Option<OwnedFd>,
}

impl SandboxTemplate {
    pub(super) fn new(config: &SandboxConfig) -> Result<Self> {
        let last_capability = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .context("reading /proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .unwrap_or(40);
        Ok(SandboxTemplate {
            root: RootTemplate::new(config)?,
            seccomp: seccomp_program(),
            hostname: c"memobuild".into(),
            dev_null: std::fs::File::open("/dev/null").context("opening /dev/null")?.into(),
            open_files: config.open_files.min(open_files_hard_limit()),
            last_capability,
            root_userns: match user_namespace(IdMap { uid: config.uid, gid: config.gid, size: 1 }) {
                Ok(namespace) => Some(namespace),
                Err(e) => {
                    tracing::warn!(error = %e, "actions that ask for root will run as the host's uid 0 (without capabilities)");
                    None
                }
            },
        })
    }
}

/// This process's hard `RLIMIT_NOFILE`: a child cannot raise it without
/// `CAP_SYS_RESOURCE`, which a worker in a container may lack.
fn open_files_hard_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let fields: Vec<&str> = line.trim_start_matches("Max open files").split_whitespace().collect();
    fields.get(1).and_then(|hard| hard.parse().ok()).unwrap_or(u64::MAX)
}
