//! The code between clone and exec. It runs on the launcher's memory
//! (`CLONE_VM`, the launcher thread stopped until exec), so it only makes
//! syscalls on data prepared beforehand: no allocation, no locks.
#![allow(unsafe_code)]

use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::ptr::{null, null_mut};

use libc::{c_char, c_int, c_void};

use super::action_launch::ActionLaunch;
use super::child_failure::{ChildFailure, ChildStep};
use super::mount_op::remount;
use super::sandbox_template::SandboxTemplate;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION: u32 = 0x2008_0522;
/// `CLOSE_RANGE_CLOEXEC`.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// What [`child_main`] gets.
pub(super) struct ChildArgs<'a> {
    pub(super) template: &'a SandboxTemplate,
    pub(super) launch: &'a ActionLaunch<'a>,
    pub(super) argv: &'a [*const c_char],
    pub(super) envp: &'a [*const c_char],
    pub(super) failure: &'a ChildFailure,
}

/// The child's entry point: sets the sandbox up and execs, or records the
/// failed step and exits 127.
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: the launcher passes a ChildArgs that outlives the child's exec.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: see the module's comment: syscalls on prepared data only.
    let Err((step, errno)) = unsafe { enter(args) };
    args.failure.record(step, errno);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(rc: impl Into<i64>, step: ChildStep) -> Result<(), (ChildStep, i32)> {
    if rc.into() < 0 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}

unsafe fn enter(args: &ChildArgs<'_>) -> Result<Infallible, (ChildStep, i32)> {
    let (template, launch) = (args.template, args.launch);
    libc::umask(0);
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    for signal in 1..libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            libc::sigaction(signal, &default, null_mut());
        }
    }
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);

    let request = launch.request;
    for join in launch.cgroup_joins {
        let fd = libc::open(join.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd, ChildStep::JoinCgroup)?;
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        check(written as i64, ChildStep::JoinCgroup)?;
    }

    // A private copy of the worker's prepared root, then what is the
    // action's own (see root_template).
    check(libc::setns(template.root.namespace.as_raw_fd(), libc::CLONE_NEWNS), ChildStep::EnterRoot)?;
    check(libc::unshare(libc::CLONE_NEWNS), ChildStep::EnterRoot)?;
    let input = &launch.input_root;
    for (index, op) in template.root.action_ops.iter().chain(&input.ops).enumerate() {
        op.apply().map_err(|e| (ChildStep::Mount { index: index as u32 }, e))?;
    }
    let empty = c"".as_ptr();
    let attach = libc::syscall(
        libc::SYS_move_mount,
        input.tree.as_raw_fd(),
        empty,
        libc::AT_FDCWD,
        input.mount_point.as_ptr(),
        libc::MOVE_MOUNT_F_EMPTY_PATH,
    );
    check(attach, ChildStep::InputRoot)?;
    check(remount(&input.mount_point, libc::MS_NOSUID | libc::MS_NODEV), ChildStep::InputRoot)?;

    let hostname = template.hostname.as_bytes();
    check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()), ChildStep::Hostname)?;
    if let Some(netns) = launch.netns {
        check(libc::setns(netns, libc::CLONE_NEWNET), ChildStep::Network)?;
    }
    let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    check(libc::setrlimit(libc::RLIMIT_CORE, &core), ChildStep::Limits)?;
    let files = libc::rlimit { rlim_cur: template.open_files, rlim_max: template.open_files };
    check(libc::setrlimit(libc::RLIMIT_NOFILE, &files), ChildStep::Limits)?;

    check(libc::dup2(template.dev_null.as_raw_fd(), 0), ChildStep::Stdio)?;
    check(libc::dup2(launch.stdout.as_raw_fd(), 1), ChildStep::Stdio)?;
    check(libc::dup2(launch.stderr.as_raw_fd(), 2), ChildStep::Stdio)?;
    // Every other descriptor of the worker closes at exec.
    libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC);

    // Joining a user namespace gives every capability in it, and a full
    // bounding set: everything below comes after.
    if let Some(userns) = request.userns {
        check(libc::setns(userns, libc::CLONE_NEWUSER), ChildStep::UserNamespace)?;
    }
    for capability in 0..=template.last_capability {
        check(libc::prctl(libc::PR_CAPBSET_DROP, capability), ChildStep::Privileges)?;
    }
    check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), ChildStep::Privileges)?;
    // Raw syscalls, not glibc's wrappers: those change every thread's ids by
    // signalling the threads glibc knows of, which here are the worker's (same
    // memory), by tid in the child's own PID namespace. A worker that is PID 1
    // (a container's entry point) has a thread whose tid is the child's pid,
    // so the child kept signalling itself and never reached exec.
    let (uid, gid) = (libc::c_long::from(request.uid), libc::c_long::from(request.gid));
    check(libc::syscall(libc::SYS_setgroups, 0, null::<libc::gid_t>()), ChildStep::Privileges)?;
    check(libc::syscall(libc::SYS_setresgid, gid, gid, gid), ChildStep::Privileges)?;
    check(libc::syscall(libc::SYS_setresuid, uid, uid, uid), ChildStep::Privileges)?;
    let header = CapHeader { version: CAPABILITY_VERSION, pid: 0 };
    let none = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    check(libc::syscall(libc::SYS_capset, &header, none.as_ptr()), ChildStep::Privileges)?;

    check(libc::chdir(request.working_dir.as_ptr()), ChildStep::WorkingDir)?;
    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), ChildStep::Seccomp)?;
    libc::umask(0o022);
    let program = &template.seccomp;
    let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    check(
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &filter as *const libc::sock_fprog),
        ChildStep::Seccomp,
    )?;
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, null_mut());
    libc::execve(request.program.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
    Err((ChildStep::Exec, errno()))
}
