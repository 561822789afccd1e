//! The user namespace actions that ask for root run in: its uid and gid 0
//! are the sandbox's unprivileged uid and gid on the host, so such an
//! action is root only in its own eyes. Files it makes are the sandbox
//! user's on the host, and host files owned by anyone else (root included)
//! show as the overflow user (`nobody`) and are not its to change.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::ptr::null_mut;

use libc::{c_int, c_void};
use memobuild_proto::{Error, Result};

/// The holder process only waits to be killed.
const HOLDER_STACK_BYTES: usize = 64 << 10;

/// A new user namespace mapping 0 (inside) to `uid`/`gid` (host), held by
/// the returned fd. Made once per worker by a holder process cloned into it
/// (this process has threads, so it cannot unshare one itself), which is
/// killed once the namespace is mapped and open: the fd keeps it.
pub(super) fn root_user_namespace(uid: u32, gid: u32) -> Result<OwnedFd> {
    let failed =
        |what: &str, e: std::io::Error| Error::internal(format!("making the actions' user namespace: {what}: {e}"));
    let mut stack = vec![0u8; HOLDER_STACK_BYTES];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: without CLONE_VM the holder gets a copy of this process's
    // memory (its stack included) and runs only `hold`.
    let pid = unsafe { libc::clone(hold, top as *mut c_void, libc::CLONE_NEWUSER | libc::SIGCHLD, null_mut()) };
    if pid < 0 {
        return Err(failed("clone", std::io::Error::last_os_error()));
    }
    let namespace = map_and_open(pid, uid, gid);
    let mut status = 0;
    // SAFETY: kills and reaps our own holder, whose pid cannot be reused
    // before it is reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    namespace.map_err(|e| failed("mapping", e))
}

fn map_and_open(pid: libc::pid_t, uid: u32, gid: u32) -> std::io::Result<OwnedFd> {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n"))?;
    Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))?.into())
}

/// The holder: waits for its SIGKILL.
extern "C" fn hold(_: *mut c_void) -> c_int {
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}
