//! User namespaces made from a process with threads, and the id ranges
//! they map ([`IdMap`]): the one actions that ask for root run in (its 0 is
//! the sandbox's unprivileged uid on the host, so such an action is root
//! only in its own eyes), and the one RUN steps may run in
//! (`--userns-remap`).
#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::OwnedFd;
use std::ptr::null_mut;

use libc::{c_int, c_void};
use memobuild_proto::{Error, Result};

/// The holder process only waits to be killed.
const HOLDER_STACK_BYTES: usize = 64 << 10;
/// The ids a remapped step gets when its map names no size: 0 to 65535,
/// what images' files and users use.
const DEFAULT_REMAP_SIZE: u32 = 65536;

/// Ids `0..size` inside a user namespace are `uid..uid+size` and
/// `gid..gid+size` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
}

impl IdMap {
    /// `HOST_ID[:SIZE]` (`--userns-remap`): uids and gids alike from
    /// `HOST_ID`, 65,536 of them unless `SIZE` says. The host range must
    /// lie above the mapped one, so that no host id is both a mapped id and
    /// the host side of another.
    pub fn parse_remap(text: &str) -> Result<IdMap> {
        let invalid = |why: String| Error::invalid_argument(format!("{text:?}: {why}"));
        let (host, size) = match text.split_once(':') {
            Some((host, size)) => (host, Some(size)),
            None => (text, None),
        };
        let number = |what: &str, value: &str| {
            value.trim().parse::<u32>().map_err(|_| invalid(format!("{what} {value:?} is not a number")))
        };
        let host = number("the host id", host)?;
        let size = size.map(|s| number("the size", s)).transpose()?.unwrap_or(DEFAULT_REMAP_SIZE);
        if size == 0 {
            return Err(invalid("the size must be at least 1".into()));
        }
        if host < size {
            return Err(invalid(format!(
                "the host ids must start at or above the size ({size}), so that they do not overlap the ids they map"
            )));
        }
        if host.checked_add(size).is_none() {
            return Err(invalid("the range goes past the largest id".into()));
        }
        Ok(IdMap { uid: host, gid: host, size })
    }

    /// The id inside of host uid `uid`, if the map has it.
    pub fn uid_inside(&self, uid: u32) -> Option<u32> {
        uid.checked_sub(self.uid).filter(|inside| *inside < self.size)
    }

    /// The id inside of host gid `gid`, if the map has it.
    pub fn gid_inside(&self, gid: u32) -> Option<u32> {
        gid.checked_sub(self.gid).filter(|inside| *inside < self.size)
    }

    /// The host uid of `uid` inside (unmapped ids stay as they are).
    pub fn uid_outside(&self, uid: u32) -> u32 {
        if uid < self.size {
            self.uid + uid
        } else {
            uid
        }
    }

    /// The host gid of `gid` inside (unmapped ids stay as they are).
    pub fn gid_outside(&self, gid: u32) -> u32 {
        if gid < self.size {
            self.gid + gid
        } else {
            gid
        }
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0-{} -> uid {}, gid {}", self.size - 1, self.uid, self.gid)
    }
}

/// A new user namespace with `map`, held by the returned fd. Made by a
/// holder process cloned into it (this process has threads, so it cannot
/// unshare one itself), which is killed once the namespace is mapped and
/// open: the fd keeps it.
pub fn user_namespace(map: IdMap) -> Result<OwnedFd> {
    let failed =
        |what: &str, e: std::io::Error| Error::internal(format!("making a user namespace ({map}): {what}: {e}"));
    let mut stack = vec![0u8; HOLDER_STACK_BYTES];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: without CLONE_VM the holder gets a copy of this process's
    // memory (its stack included) and runs only `hold`.
    let pid = unsafe { libc::clone(hold, top as *mut c_void, libc::CLONE_NEWUSER | libc::SIGCHLD, null_mut()) };
    if pid < 0 {
        return Err(failed("clone", std::io::Error::last_os_error()));
    }
    let namespace = map_and_open(pid, map);
    let mut status = 0;
    // SAFETY: kills and reaps our own holder, whose pid cannot be reused
    // before it is reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    namespace.map_err(|e| failed("mapping", e))
}

fn map_and_open(pid: libc::pid_t, map: IdMap) -> std::io::Result<OwnedFd> {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {} {}\n", map.uid, map.size))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {} {}\n", map.gid, map.size))?;
    Ok(std::fs::File::open(format!("/proc/{pid}/ns/user"))?.into())
}

/// The holder: waits for its SIGKILL.
extern "C" fn hold(_: *mut c_void) -> c_int {
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_parse_and_bad_ones_are_named() {
        assert_eq!(IdMap::parse_remap("100000").expect("valid"), IdMap { uid: 100000, gid: 100000, size: 65536 });
        assert_eq!(IdMap::parse_remap("200000:1000").expect("valid"), IdMap { uid: 200000, gid: 200000, size: 1000 });
        for (bad, why) in [
            ("x", "not a number"),
            ("100000:", "not a number"),
            ("100000:0", "at least 1"),
            ("1000", "at or above the size"),
            ("4294967000:65536", "past the largest id"),
        ] {
            let error = IdMap::parse_remap(bad).expect_err(bad).to_string();
            assert!(error.contains(why) && error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }

    #[test]
    fn ids_cross_the_map_both_ways() {
        let map = IdMap { uid: 100000, gid: 200000, size: 65536 };
        assert_eq!(map.uid_inside(101000), Some(1000));
        assert_eq!(map.uid_inside(0), None, "host root is not in the map");
        assert_eq!(map.uid_inside(165536), None);
        assert_eq!(map.gid_inside(200005), Some(5));
        assert_eq!(map.uid_outside(1000), 101000);
        assert_eq!(map.gid_outside(70000), 70000, "an id past the map stays");
    }
}
