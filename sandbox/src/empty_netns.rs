use std::os::fd::{FromRawFd, OwnedFd};

use memobuild_proto::{Error, Result};

/// A new network namespace with only `lo`, up, held by the returned fd
/// (made on a short-lived thread, so this process keeps its own).
pub(super) fn empty_netns() -> Result<OwnedFd> {
    std::thread::spawn(|| -> std::io::Result<OwnedFd> {
        // SAFETY: plain syscalls on this thread, on locals.
        #[allow(unsafe_code)]
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(c"/proc/thread-self/ns/net".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let netns = OwnedFd::from_raw_fd(fd);
            loopback_up()?;
            Ok(netns)
        }
    })
    .join()
    .map_err(|_| Error::internal("the thread making a network namespace panicked"))?
    .map_err(|e| Error::internal(format!("making an empty network namespace: {e}")))
}

/// Sets `lo` up in this thread's network namespace.
#[allow(unsafe_code)]
unsafe fn loopback_up() -> std::io::Result<()> {
    let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let socket = OwnedFd::from_raw_fd(socket);
    let mut request: libc::ifreq = std::mem::zeroed();
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
