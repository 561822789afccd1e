//! Idmapped bind mounts (Linux 5.12 and later): a directory or file seen
//! through a user namespace's map, so a process in that namespace sees
//! host root's files as its own root's, and what it writes there lands
//! owned by host root again.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use memobuild_proto::{Error, Result};

/// From the kernel's `linux/mount.h`.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Binds `source` (not the mounts below it) at `target`, which must exist
/// and be of the same kind (directory or file), with ids seen through the
/// user namespace `userns`; read-only when asked.
pub fn mount_idmapped(source: &Path, target: &Path, userns: BorrowedFd<'_>, read_only: bool) -> Result<()> {
    let failed = |what: &str| {
        let e = std::io::Error::last_os_error();
        Error::internal(format!("an idmapped mount of {} at {}: {what}: {e}", source.display(), target.display()))
    };
    let path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::invalid_argument(format!("{} holds a NUL", p.display())))
    };
    let (source_c, target_c) = (path(source)?, path(target)?);
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: a path the call only reads; the returned fd is checked and owned.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source_c.as_ptr(), flags) };
    if tree < 0 {
        return Err(failed("open_tree"));
    }
    // SAFETY: a fresh fd of our own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: the attribute struct and the empty path outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(failed("mount_setattr"));
    }
    // SAFETY: the fd and both paths outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(failed("move_mount"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::{user_namespace, IdMap};

    /// Needs root (and a kernel with idmapped mounts): skipped otherwise.
    #[test]
    fn a_file_written_through_the_mount_lands_with_the_host_id() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let map = IdMap { uid: 100000, gid: 100000, size: 65536 };
        let namespace = user_namespace(map).expect("a user namespace");
        let source = tempfile::tempdir().expect("tempdir");
        std::fs::write(source.path().join("root-owned"), "x").expect("write");
        let target = tempfile::tempdir().expect("tempdir");
        mount_idmapped(source.path(), target.path(), namespace.as_fd(), false).expect("mount");
        // Host root (unmapped) writing through the mount: refused, its id has
        // no place in the map.
        let written = std::fs::write(target.path().join("new"), "y");
        let seen = std::fs::metadata(target.path().join("root-owned")).expect("stat");
        let unmounted = nix_umount(target.path());
        assert!(written.is_err(), "an unmapped writer cannot create files");
        assert_eq!(seen.uid(), 100000, "host root's file, seen through the map");
        assert_eq!(unmounted, 0);
    }

    fn nix_umount(path: &Path) -> i32 {
        let path = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: a path the call only reads.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }
    }
}
