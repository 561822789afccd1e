use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr::null;

/// One step of building an action's root, run in the child between clone
/// and exec: only syscalls on prepared strings, nothing that allocates.
#[derive(Debug)]
pub(super) enum MountOp {
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// A recursive bind, then a remount with `flags` (`MS_RDONLY`,
    /// `MS_NOSUID`, `MS_NODEV`, ...).
    Bind {
        source: CString,
        target: CString,
        flags: libc::c_ulong,
    },
    /// New flags for the mount at `target` (`MS_RDONLY`, ...).
    Remount {
        target: CString,
        flags: libc::c_ulong,
    },
    /// A filesystem (`tmpfs`, `proc`) with its flags and options.
    Fresh {
        fstype: CString,
        target: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// A character device node, mode 0666.
    CharDevice {
        path: CString,
        major: u32,
        minor: u32,
    },
}

/// The `errno` of a failed step.
pub(super) type Errno = i32;

impl MountOp {
    /// Runs the step; async-signal-safe.
    pub(super) fn apply(&self) -> Result<(), Errno> {
        // SAFETY: every pointer comes from a CString that outlives the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            match self {
                MountOp::Mkdir { path, mode } => libc::mkdir(path.as_ptr(), *mode),
                MountOp::Symlink { target, path } => libc::symlink(target.as_ptr(), path.as_ptr()),
                MountOp::Bind { source, target, flags } => {
                    let bind = libc::MS_BIND | libc::MS_REC;
                    let rc = libc::mount(source.as_ptr(), target.as_ptr(), null(), bind, null());
                    if rc != 0 || *flags == 0 {
                        rc
                    } else {
                        remount(target, *flags)
                    }
                }
                MountOp::Remount { target, flags } => remount(target, *flags),
                MountOp::Fresh { fstype, target, flags, data } => {
                    libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), *flags, data.as_ptr().cast())
                }
                MountOp::CharDevice { path, major, minor } => {
                    libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(*major, *minor))
                }
            }
        };
        let errno = if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
        match (self, errno) {
            (_, 0) | (MountOp::Mkdir { .. }, libc::EEXIST) => Ok(()),
            _ => Err(errno),
        }
    }
}

/// Sets the flags of the mount at `target`, not of its filesystem
/// (async-signal-safe); the `mount` call's return value.
pub(super) fn remount(target: &CStr, flags: libc::c_ulong) -> libc::c_int {
    // SAFETY: a NUL-terminated path; no other pointer.
    #[allow(unsafe_code)]
    unsafe {
        libc::mount(null(), target.as_ptr(), null(), libc::MS_BIND | libc::MS_REMOUNT | flags, null())
    }
}

impl fmt::Display for MountOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountOp::Mkdir { path, .. } => write!(f, "creating directory {path:?}"),
            MountOp::Symlink { target, path } => write!(f, "creating symlink {path:?} -> {target:?}"),
            MountOp::Bind { source, target, .. } => write!(f, "binding {source:?} on {target:?}"),
            MountOp::Remount { target, .. } => write!(f, "changing the flags of {target:?}"),
            MountOp::Fresh { fstype, target, .. } => write!(f, "mounting {fstype:?} on {target:?}"),
            MountOp::CharDevice { path, .. } => write!(f, "creating device {path:?}"),
        }
    }
}
