use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the child was doing when a step between clone and exec failed,
/// written to memory it shares with the launcher (the parent waits for the
/// child's exec or exit before reading it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChildStep {
    JoinCgroup,
    EnterRoot,
    /// A step of the action's own mounts: the template's `action_ops`,
    /// then its input root's.
    Mount {
        index: u32,
    },
    InputRoot,
    Hostname,
    Network,
    Limits,
    Stdio,
    UserNamespace,
    Privileges,
    Seccomp,
    WorkingDir,
    Exec,
}

/// A failed step and its errno; zero when none failed.
pub(super) struct ChildFailure(AtomicU64);

impl ChildFailure {
    pub(super) fn new() -> Self {
        ChildFailure(AtomicU64::new(0))
    }

    /// Records the step and the current errno (async-signal-safe).
    pub(super) fn record(&self, step: ChildStep, errno: i32) {
        let (kind, index) = match step {
            ChildStep::JoinCgroup => (1, 0),
            ChildStep::EnterRoot => (2, 0),
            ChildStep::Mount { index } => (3, index),
            ChildStep::InputRoot => (4, 0),
            ChildStep::Hostname => (5, 0),
            ChildStep::Network => (6, 0),
            ChildStep::Limits => (7, 0),
            ChildStep::Stdio => (8, 0),
            ChildStep::Privileges => (9, 0),
            ChildStep::Seccomp => (10, 0),
            ChildStep::WorkingDir => (11, 0),
            ChildStep::Exec => (12, 0),
            ChildStep::UserNamespace => (13, 0),
        };
        self.0.store((kind << 48) | (u64::from(index) << 32) | u64::from(errno as u32), Ordering::SeqCst);
    }

    /// The failed step and its errno, if one failed.
    pub(super) fn get(&self) -> Option<(ChildStep, i32)> {
        let value = self.0.load(Ordering::SeqCst);
        let index = ((value >> 32) & 0xffff) as u32;
        let step = match value >> 48 {
            0 => return None,
            1 => ChildStep::JoinCgroup,
            2 => ChildStep::EnterRoot,
            3 => ChildStep::Mount { index },
            4 => ChildStep::InputRoot,
            5 => ChildStep::Hostname,
            6 => ChildStep::Network,
            7 => ChildStep::Limits,
            8 => ChildStep::Stdio,
            9 => ChildStep::Privileges,
            10 => ChildStep::Seccomp,
            11 => ChildStep::WorkingDir,
            13 => ChildStep::UserNamespace,
            _ => ChildStep::Exec,
        };
        Some((step, (value & 0xffff_ffff) as u32 as i32))
    }
}

impl fmt::Display for ChildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ChildStep::JoinCgroup => "joining the slot's cgroup",
            ChildStep::EnterRoot => "entering the sandbox's root",
            ChildStep::Mount { .. } => "mounting the action's own filesystems",
            ChildStep::InputRoot => "attaching the input root",
            ChildStep::Hostname => "setting the hostname",
            ChildStep::Network => "joining the empty network namespace",
            ChildStep::Limits => "setting rlimits",
            ChildStep::Stdio => "redirecting stdio",
            ChildStep::UserNamespace => "joining the root actions' user namespace",
            ChildStep::Privileges => "dropping privileges",
            ChildStep::Seccomp => "installing the seccomp filter",
            ChildStep::WorkingDir => "entering the working directory",
            ChildStep::Exec => "executing the command",
        };
        f.write_str(text)
    }
}
