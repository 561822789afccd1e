//! The actions' root, built once per worker in a mount namespace of its
//! own: every action joins that namespace and takes a private copy of it
//! (a handful of mounts), then mounts only what is its own. Building the
//! root per action would copy the host's whole mount table, make some 25
//! mounts and call `pivot_root`, which walks every thread of the system.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::ptr::null;
use std::sync::atomic::{AtomicU64, Ordering};

use memobuild_proto::{Error, Result, ResultExt};

use super::mount_op::{remount, MountOp};
use super::SandboxConfig;

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Devices in the action's `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];
/// Each action's own filesystems, mounted over the shared root's
/// directories; an input root below one of them gets its mount point there.
const PRIVATE_DIRS: [&str; 2] = ["/tmp", "/dev/shm"];

/// The names of the template roots' host directories, before `{pid}-{n}`.
const ROOT_PREFIX: &str = "memobuild-sandbox-";

/// The root every action of this worker starts from: a read-only tmpfs
/// with the configured host directories bound read-only, hidden paths
/// covered and a minimal read-only `/dev`, held in its own mount namespace.
pub(super) struct RootTemplate {
    /// The mount namespace an action joins (then copies with `unshare`).
    pub(super) namespace: OwnedFd,
    /// The root's tmpfs, writable: where input roots' mount points are made.
    writable_root: OwnedFd,
    /// The steps every action runs in its copy: a private `/tmp` and
    /// `/dev/shm`, a fresh `/proc` with `/proc/sys` read-only.
    pub(super) action_ops: Vec<MountOp>,
    /// The read-only binds, where no input root may be.
    read_only: Vec<PathBuf>,
    /// An empty host directory, the root's mount point in the namespace.
    host_dir: PathBuf,
}

/// An action's input root, ready to be attached in its namespace.
pub(super) struct InputRoot {
    /// A detached copy of the input root's mount (`open_tree`).
    pub(super) tree: OwnedFd,
    /// Where it goes: its own path.
    pub(super) mount_point: CString,
    /// Directories the action makes, after [`RootTemplate::action_ops`],
    /// for a mount point below its private `/tmp` or `/dev/shm`.
    pub(super) ops: Vec<MountOp>,
}

impl RootTemplate {
    pub(super) fn new(config: &SandboxConfig) -> Result<Self> {
        super::stale_dirs::remove_stale(&std::env::temp_dir(), ROOT_PREFIX);
        let pid = std::process::id();
        let name = format!("{ROOT_PREFIX}{pid}-{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let host_dir = std::env::temp_dir().join(name);
        super::stale_dirs::remove_left(&host_dir, pid);
        std::fs::create_dir(&host_dir).with_context(|| format!("creating {}", host_dir.display()))?;
        let mut plan = Plan { host_dir: host_dir.clone(), ops: Vec::new(), read_only: Vec::new() };
        let built = plan.fill(config).and_then(|()| {
            let action_ops = action_ops(config)?;
            let (namespace, writable_root) = build(&plan.host_dir, &plan.ops)?;
            Ok(RootTemplate {
                namespace,
                writable_root,
                action_ops,
                read_only: plan.read_only,
                host_dir: host_dir.clone(),
            })
        });
        if built.is_err() {
            let _ = std::fs::remove_dir(&host_dir);
        }
        built
    }

    /// `input_root` (absolute, a directory) bound read-write at its own
    /// path: its mount point is made in the shared root (an empty
    /// directory, read-only to actions), or by the action below its
    /// private `/tmp` or `/dev/shm`.
    pub(super) fn input_root(&self, input_root: &Path) -> Result<InputRoot> {
        if !input_root.is_absolute() || input_root.components().any(|c| c == Component::ParentDir) {
            return Err(Error::internal(format!("input root {} is not a plain absolute path", input_root.display())));
        }
        if let Some(dir) = self.read_only.iter().find(|d| input_root.starts_with(d)) {
            return Err(Error::invalid_argument(format!(
                "the input root {} is inside the sandbox's read-only {}",
                input_root.display(),
                dir.display()
            )));
        }
        let private = PRIVATE_DIRS.iter().map(Path::new).find(|d| input_root.starts_with(d) && input_root != *d);
        let mut ops = Vec::new();
        match private {
            Some(base) => {
                let mut path = base.to_path_buf();
                for component in input_root.strip_prefix(base).unwrap_or(input_root).components() {
                    path.push(component);
                    ops.push(MountOp::Mkdir { path: c_path(&path)?, mode: 0o755 });
                }
            }
            None if input_root.starts_with("/proc")
                || input_root.starts_with("/dev")
                || input_root == Path::new("/") =>
            {
                return Err(Error::invalid_argument(format!(
                    "the input root {} would hide the sandbox's own filesystems",
                    input_root.display()
                )));
            }
            None => self.make_mount_point(input_root)?,
        }
        let mount_point = c_path(input_root)?;
        let tree = open_tree(input_root, &mount_point)?;
        Ok(InputRoot { tree, mount_point, ops })
    }

    /// `path` and its parents in the shared root.
    fn make_mount_point(&self, path: &Path) -> Result<()> {
        let mut relative = PathBuf::new();
        for component in path.components().skip(1) {
            relative.push(component);
            let name = c_path(&relative)?;
            // SAFETY: a NUL-terminated path relative to a descriptor we own.
            let rc = unsafe { libc::mkdirat(self.writable_root.as_raw_fd(), name.as_ptr(), 0o755) };
            let error = std::io::Error::last_os_error();
            if rc != 0 && error.raw_os_error() != Some(libc::EEXIST) {
                return Err(Error::internal(format!(
                    "making the mount point {} in the sandbox's root: {error}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

impl Drop for RootTemplate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.host_dir);
    }
}

/// The template's steps, run once in its namespace.
struct Plan {
    host_dir: PathBuf,
    ops: Vec<MountOp>,
    read_only: Vec<PathBuf>,
}

impl Plan {
    fn fill(&mut self, config: &SandboxConfig) -> Result<()> {
        let root = self.host_dir.clone();
        self.ops.push(tmpfs(&root, libc::MS_NOSUID | libc::MS_NODEV, "mode=755,size=1m")?);
        let sealed = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        for dir in &config.read_only {
            let Ok(meta) = std::fs::symlink_metadata(dir) else { continue };
            if !dir.is_absolute() {
                return Err(Error::invalid_argument(format!("sandbox read_only {}: not absolute", dir.display())));
            }
            self.mkdirs(dir.parent().unwrap_or(Path::new("/")))?;
            let target = self.inside(dir);
            if meta.is_symlink() {
                let link = std::fs::read_link(dir).with_context(|| format!("reading {}", dir.display()))?;
                self.ops.push(MountOp::Symlink { target: c_path(&link)?, path: c_path(&target)? });
            } else if meta.is_dir() {
                self.mkdir(dir, 0o755)?;
                self.ops.push(MountOp::Bind { source: c_path(dir)?, target: c_path(&target)?, flags: sealed });
                self.read_only.push(dir.clone());
            }
        }
        for path in &config.hidden {
            let Ok(real) = std::fs::canonicalize(path) else { continue };
            if !self.read_only.iter().any(|d| real.starts_with(d)) {
                continue;
            }
            let target = c_path(&self.inside(&real))?;
            self.ops.push(if real.is_dir() {
                MountOp::Fresh {
                    fstype: c"tmpfs".into(),
                    target,
                    flags: sealed | libc::MS_NOEXEC,
                    data: c"mode=0".into(),
                }
            } else {
                MountOp::Bind { source: c"/dev/null".into(), target, flags: sealed }
            });
        }
        for (dir, mode) in [("/tmp", 0o1777), ("/proc", 0o555), ("/dev", 0o755)] {
            self.mkdir(Path::new(dir), mode)?;
        }
        let dev = self.inside(Path::new("/dev"));
        self.ops.push(tmpfs(&dev, libc::MS_NOSUID | libc::MS_NOEXEC, "mode=755,size=64k")?);
        for (name, major, minor) in DEVICES {
            self.ops.push(MountOp::CharDevice { path: c_path(&dev.join(name))?, major, minor });
        }
        for (name, target) in DEV_LINKS {
            self.ops.push(MountOp::Symlink { target: c_string(target.into())?, path: c_path(&dev.join(name))? });
        }
        self.mkdir(Path::new("/dev/shm"), 0o1777)?;
        // Shared by every action: read-only, device nodes still usable.
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC;
        self.ops.push(MountOp::Remount { target: c_path(&dev)?, flags });
        Ok(())
    }

    /// `path` (absolute) under the new root.
    fn inside(&self, path: &Path) -> PathBuf {
        self.host_dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn mkdir(&mut self, path: &Path, mode: libc::mode_t) -> Result<()> {
        let path = c_path(&self.inside(path))?;
        if !self.ops.iter().any(|op| matches!(op, MountOp::Mkdir { path: p, .. } if *p == path)) {
            self.ops.push(MountOp::Mkdir { path, mode });
        }
        Ok(())
    }

    /// `path` and its parents.
    fn mkdirs(&mut self, path: &Path) -> Result<()> {
        let mut current = PathBuf::from("/");
        for component in path.components().skip(1) {
            current.push(component);
            self.mkdir(&current.clone(), 0o755)?;
        }
        Ok(())
    }
}

/// What every action mounts in its copy of the namespace.
fn action_ops(config: &SandboxConfig) -> Result<Vec<MountOp>> {
    let tmp_data = format!("mode=1777,size={}", config.tmp_bytes);
    let mut ops = Vec::new();
    for dir in PRIVATE_DIRS {
        ops.push(tmpfs(Path::new(dir), libc::MS_NOSUID | libc::MS_NODEV, &tmp_data)?);
    }
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    ops.push(MountOp::Fresh { fstype: c"proc".into(), target: c"/proc".into(), flags, data: c"".into() });
    let sealed = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    ops.push(MountOp::Bind { source: c"/proc/sys".into(), target: c"/proc/sys".into(), flags: sealed });
    if Path::new("/proc/sysrq-trigger").exists() {
        ops.push(MountOp::Bind { source: c"/dev/null".into(), target: c"/proc/sysrq-trigger".into(), flags: sealed });
    }
    Ok(ops)
}

fn tmpfs(target: &Path, flags: libc::c_ulong, data: &str) -> Result<MountOp> {
    Ok(MountOp::Fresh { fstype: c"tmpfs".into(), target: c_path(target)?, flags, data: c_string(data.into())? })
}

/// Builds the template in a new mount namespace, from a thread of its own
/// (a thread may take a mount namespace of its own; the process keeps the
/// host's): the namespace and a writable handle on its root.
fn build(host_dir: &Path, ops: &[MountOp]) -> Result<(OwnedFd, OwnedFd)> {
    let host_dir = c_path(host_dir)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| build_here(&host_dir, ops))
            .join()
            .map_err(|_| Error::internal("building the sandbox's root panicked"))?
    })
}

fn build_here(host_dir: &CString, ops: &[MountOp]) -> Result<(OwnedFd, OwnedFd)> {
    let os = |what: &str| {
        Error::internal(format!("building the sandbox's root: {what}: {}", std::io::Error::last_os_error()))
    };
    let (root, here) = (c"/".as_ptr(), c".".as_ptr());
    // SAFETY: syscalls on this thread's own mount namespace and NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os("unshare"));
        }
        // This thread's own (the umask is the filesystem context's, which
        // the unshare made private): devices and directories get the
        // modes asked for.
        libc::umask(0);
        let namespace = libc::open(c"/proc/thread-self/ns/mnt".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if namespace < 0 {
            return Err(os("opening /proc/thread-self/ns/mnt"));
        }
        let namespace = OwnedFd::from_raw_fd(namespace);
        if libc::mount(null(), root, null(), libc::MS_REC | libc::MS_PRIVATE, null()) != 0 {
            return Err(os("making the mounts private"));
        }
        for op in ops {
            op.apply().map_err(|errno| {
                Error::internal(format!(
                    "building the sandbox's root: {op}: {}",
                    std::io::Error::from_raw_os_error(errno)
                ))
            })?;
        }
        let writable_root = open_tree_at(host_dir.as_ptr(), 0)
            .map_err(|e| Error::internal(format!("building the sandbox's root: {}", open_tree_error(e))))?;
        if libc::chdir(host_dir.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, here, here) != 0
            || libc::umount2(here, libc::MNT_DETACH) != 0
            || libc::chdir(root) != 0
        {
            return Err(os("entering the root"));
        }
        if remount(c"/", libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV) != 0 {
            return Err(os("making the root read-only"));
        }
        Ok((namespace, writable_root))
    }
}

/// A detached copy of the mounts at `path` (and below), to attach
/// elsewhere with `move_mount`.
fn open_tree(path: &Path, c_path: &CStr) -> Result<OwnedFd> {
    open_tree_at(c_path.as_ptr(), libc::AT_RECURSIVE as libc::c_uint)
        .map_err(|e| Error::internal(format!("opening the input root {}: {}", path.display(), open_tree_error(e))))
}

/// What a failed `open_tree` means for the sandbox.
fn open_tree_error(e: std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "open_tree: the namespace sandbox needs Linux 5.2 or later".to_string(),
        Some(libc::EPERM) => format!(
            "open_tree: {e} (in a container, the worker needs CAP_SYS_ADMIN and a seccomp profile that allows \
             open_tree and move_mount: privileged, or seccomp unconfined)"
        ),
        _ => format!("open_tree: {e}"),
    }
}

fn open_tree_at(path: *const libc::c_char, flags: libc::c_uint) -> std::io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | flags;
    // SAFETY: `path` is NUL-terminated; the kernel returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(super) fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument(format!("path {} contains a NUL byte", path.display())))
}

pub(super) fn c_string(text: String) -> Result<CString> {
    CString::new(text).map_err(|e| Error::invalid_argument(format!("{:?} contains a NUL byte", e.into_vec())))
}
