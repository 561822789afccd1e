//! The user namespace actions that ask for root run in: its uid and gid 0
//! are the sandbox's unprivileged uid and gid on the host, so such an
//! action is root only in its own eyes. Files it makes are the sandbox
//! user's on the host, and host files owned by anyone else (root included)
//! show as the overflow user (`nobody`) and are not its to change.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void};
use memobuild_proto::{Error, Result};

/// The holder process only waits on a pipe, then exits.
const HOLDER_STACK_BYTES: usize = 64 << 10;

/// A new user namespace mapping 0 (inside) to `uid`/`gid` (host), held by
/// the returned fd. Made once per worker by a short-lived holder process
/// cloned into it (this process has threads, so it cannot unshare one
/// itself); the fd keeps the namespace after the holder exits.
pub(super) fn root_user_namespace(uid: u32, gid: u32) -> Result<OwnedFd> {
    let failed =
        |what: &str, e: std::io::Error| Error::internal(format!("making the actions' user namespace: {what}: {e}"));
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills the two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(failed("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 gave us both fds.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut stack = vec![0u8; HOLDER_STACK_BYTES];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    let pipe = [reader.as_raw_fd(), writer.as_raw_fd()];
    // SAFETY: without CLONE_VM the holder gets a copy of this process's
    // memory (the stack and `pipe` included) and runs only `hold`.
    let pid = unsafe {
        libc::clone(hold, top as *mut c_void, libc::CLONE_NEWUSER | libc::SIGCHLD, pipe.as_ptr() as *mut c_void)
    };
    if pid < 0 {
        return Err(failed("clone", std::io::Error::last_os_error()));
    }
    let namespace = map_and_open(pid, uid, gid);
    // The holder reads end of file once the last writer is gone.
    drop(writer);
    drop(reader);
    let mut status = 0;
    // SAFETY: reaps our own holder.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    namespace.map_err(|e| failed("mapping", e))
}

fn map_and_open(pid: libc::pid_t, uid: u32, gid: u32) -> std::io::Result<OwnedFd> {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))?;
    Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))?.into())
}

/// The holder: closes its copy of the writing end, then waits for the
/// parent's to close.
extern "C" fn hold(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points at the two pipe fds in this process's copy of
    // the parent's memory; only async-signal-safe calls follow.
    unsafe {
        let pipe = arg as *const c_int;
        libc::close(*pipe.add(1));
        let mut byte = 0u8;
        while libc::read(*pipe, (&mut byte as *mut u8).cast(), 1) < 0 && *libc::__errno_location() == libc::EINTR {}
        libc::_exit(0)
    }
}
