use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memobuild_proto::{Error, Result, ResultExt};

use super::mount_op::MountOp;
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

/// The part of every action's root that does not depend on the action:
/// the steps building it under `new_root` (an empty directory this worker
/// made, a mount point only inside the actions' mount namespaces).
/// The names of the template roots, before `{pid}-{n}`.
const ROOT_PREFIX: &str = "memobuild-sandbox-";

pub(super) struct RootTemplate {
    pub(super) new_root: CString,
    new_root_path: PathBuf,
    pub(super) ops: Vec<MountOp>,
    /// Directories the steps create (host-side names, without `new_root`).
    created: BTreeSet<PathBuf>,
    /// The read-only binds, where no input root may be.
    read_only: Vec<PathBuf>,
}

impl RootTemplate {
    pub(super) fn new(config: &SandboxConfig) -> Result<Self> {
        super::stale_dirs::remove_stale(&std::env::temp_dir(), ROOT_PREFIX);
        let pid = std::process::id();
        let name = format!("{ROOT_PREFIX}{pid}-{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let new_root_path = std::env::temp_dir().join(name);
        super::stale_dirs::remove_left(&new_root_path, pid);
        std::fs::create_dir(&new_root_path).with_context(|| format!("creating {}", new_root_path.display()))?;
        let mut template = RootTemplate {
            new_root: c_path(&new_root_path)?,
            new_root_path,
            ops: Vec::new(),
            created: BTreeSet::new(),
            read_only: Vec::new(),
        };
        let tmpfs = |target: &Path, flags: libc::c_ulong, data: String| -> Result<MountOp> {
            Ok(MountOp::Fresh { fstype: c"tmpfs".into(), target: c_path(target)?, flags, data: c_string(data)? })
        };
        let root = template.inside(Path::new("/"));
        template.ops.push(tmpfs(&root, libc::MS_NOSUID | libc::MS_NODEV, "mode=755,size=1m".into())?);
        template.created.insert(PathBuf::from("/"));

        let sealed = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        for dir in &config.read_only {
            let Ok(meta) = std::fs::symlink_metadata(dir) else { continue };
            if !dir.is_absolute() {
                return Err(Error::invalid_argument(format!("sandbox read_only {}: not absolute", dir.display())));
            }
            template.mkdirs(dir.parent().unwrap_or(Path::new("/")))?;
            let target = template.inside(dir);
            if meta.is_symlink() {
                let link = std::fs::read_link(dir).with_context(|| format!("reading {}", dir.display()))?;
                template.ops.push(MountOp::Symlink { target: c_path(&link)?, path: c_path(&target)? });
            } else if meta.is_dir() {
                template.mkdir(dir, 0o755)?;
                template.ops.push(MountOp::Bind { source: c_path(dir)?, target: c_path(&target)?, flags: sealed });
                template.read_only.push(dir.clone());
            }
        }
        for path in &config.hidden {
            let Ok(real) = std::fs::canonicalize(path) else { continue };
            if !template.read_only.iter().any(|d| real.starts_with(d)) {
                continue;
            }
            let target = c_path(&template.inside(&real))?;
            template.ops.push(if real.is_dir() {
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

        let tmp_size = config.tmp_bytes;
        template.mkdir(Path::new("/tmp"), 0o1777)?;
        let target = template.inside(Path::new("/tmp"));
        template.ops.push(tmpfs(&target, libc::MS_NOSUID | libc::MS_NODEV, format!("mode=1777,size={tmp_size}"))?);

        template.mkdir(Path::new("/proc"), 0o555)?;
        let proc = template.inside(Path::new("/proc"));
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        template.ops.push(MountOp::Fresh { fstype: c"proc".into(), target: c_path(&proc)?, flags, data: c"".into() });
        let sys = c_path(&proc.join("sys"))?;
        template.ops.push(MountOp::Bind { source: sys.clone(), target: sys, flags: sealed | libc::MS_NOEXEC });
        if Path::new("/proc/sysrq-trigger").exists() {
            let sysrq = c_path(&proc.join("sysrq-trigger"))?;
            template.ops.push(MountOp::Bind { source: c"/dev/null".into(), target: sysrq, flags: sealed });
        }

        template.mkdir(Path::new("/dev"), 0o755)?;
        let dev = template.inside(Path::new("/dev"));
        template.ops.push(tmpfs(&dev, libc::MS_NOSUID | libc::MS_NOEXEC, "mode=755,size=64k".into())?);
        for (name, major, minor) in DEVICES {
            template.ops.push(MountOp::CharDevice { path: c_path(&dev.join(name))?, major, minor });
        }
        for (name, target) in DEV_LINKS {
            template.ops.push(MountOp::Symlink { target: c_string(target.into())?, path: c_path(&dev.join(name))? });
        }
        template.mkdir(Path::new("/dev/shm"), 0o1777)?;
        let shm = dev.join("shm");
        template.ops.push(tmpfs(&shm, libc::MS_NOSUID | libc::MS_NODEV, format!("mode=1777,size={tmp_size}"))?);
        Ok(template)
    }

    /// The steps binding `input_root` (absolute) read-write at its own
    /// path, after the template's.
    pub(super) fn input_root_ops(&self, input_root: &Path) -> Result<Vec<MountOp>> {
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
        let mut ops = Vec::new();
        let mut path = PathBuf::from("/");
        for component in input_root.components().skip(1) {
            path.push(component);
            if !self.created.contains(&path) {
                ops.push(MountOp::Mkdir { path: c_path(&self.inside(&path))?, mode: 0o755 });
            }
        }
        let target = c_path(&self.inside(input_root))?;
        ops.push(MountOp::Bind { source: c_path(input_root)?, target, flags: libc::MS_NOSUID | libc::MS_NODEV });
        Ok(ops)
    }

    /// `path` (absolute) under the new root.
    fn inside(&self, path: &Path) -> PathBuf {
        self.new_root_path.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn mkdir(&mut self, path: &Path, mode: libc::mode_t) -> Result<()> {
        if self.created.insert(path.to_path_buf()) {
            self.ops.push(MountOp::Mkdir { path: c_path(&self.inside(path))?, mode });
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

impl Drop for RootTemplate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.new_root_path);
    }
}

pub(super) fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_argument(format!("path {} contains a NUL byte", path.display())))
}

pub(super) fn c_string(text: String) -> Result<CString> {
    CString::new(text).map_err(|e| Error::invalid_argument(format!("{:?} contains a NUL byte", e.into_vec())))
}
