use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use super::root_template::InputRoot;

/// One action as the launcher gets it: what it prepares on its thread
/// (the input root's owner and mount, the stream files, a slot), then
/// launches.
pub(super) struct ActionRequest {
    pub(super) program: CString,
    pub(super) argv: Vec<CString>,
    pub(super) env: Vec<CString>,
    pub(super) working_dir: CString,
    pub(super) root: PathBuf,
    /// Who owns the input root's directories on the host.
    pub(super) owner: (u32, u32),
    /// The user and group, as the action sees them (inside `userns`).
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The user namespace to join (root actions), else the host's.
    pub(super) userns: Option<RawFd>,
    /// The host's network rather than the slot's empty namespace.
    pub(super) network: bool,
    /// Files for the streams (created or truncated).
    pub(super) stdout: PathBuf,
    pub(super) stderr: PathBuf,
}

/// Everything the child needs for one action, prepared before the clone.
pub(super) struct ActionLaunch<'a> {
    pub(super) request: &'a ActionRequest,
    pub(super) input_root: InputRoot,
    /// `None`: the host's network; else the slot's empty namespace.
    pub(super) netns: Option<RawFd>,
    /// The files that put a process in the slot's cgroups.
    pub(super) cgroup_joins: &'a [CString],
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
}
