use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};

use super::root_template::InputRoot;

/// Everything the child needs for one action, prepared before the clone.
pub(super) struct ActionLaunch {
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) env: Vec<CString>,
    pub(super) working_dir: CString,
    pub(super) input_root: InputRoot,
    /// The user and group, as the action sees them (inside `userns`).
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The user namespace to join (root actions), else the host's.
    pub(super) userns: Option<RawFd>,
    /// `None`: the host's network; else the slot's empty namespace.
    pub(super) netns: Option<RawFd>,
    /// The files that put a process in the slot's cgroups.
    pub(super) cgroup_joins: Vec<CString>,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
}
