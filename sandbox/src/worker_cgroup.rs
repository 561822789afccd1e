use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memobuild_proto::{Error, Result, ResultExt};

use super::stale_dirs::{remove_left, remove_stale};

/// Where the cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The names of the workers' cgroups, before `{pid}-{n}`.
const CGROUP_PREFIX: &str = "memobuild-";

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// The worker's own cgroup (one per hierarchy on cgroup v1) under which
/// each sandbox slot gets a child with the memory and pids limits; removed
/// on drop.
pub(super) struct WorkerCgroup {
    /// One directory per hierarchy with its controller (v2: one, `None`).
    dirs: Vec<(PathBuf, Option<&'static str>)>,
    v2: bool,
    memory_bytes: Option<u64>,
    pids: Option<u64>,
}

/// One slot's cgroups, reused by one action after another.
pub(super) struct CgroupSlot {
    dirs: Vec<PathBuf>,
    /// The files a child joins by writing `0` to them: on cgroup v1 the
    /// `tasks` file, which moves the (single-threaded) child without taking
    /// the kernel's global thread-group lock, whose taking can wait for an
    /// RCU grace period (milliseconds); on v2, `cgroup.procs`.
    pub(super) join_files: Vec<CString>,
    /// Where the kernel counts OOM kills (`oom_kill N`).
    oom_counter: Option<PathBuf>,
    /// The count when last read.
    oom_kills_seen: u64,
}

impl WorkerCgroup {
    /// Creates the worker's cgroup below this process's own; `None` when
    /// neither limit is set.
    pub(super) fn create(memory_bytes: Option<u64>, pids: Option<u64>) -> Result<Option<Self>> {
        if memory_bytes.is_none() && pids.is_none() {
            return Ok(None);
        }
        let pid = std::process::id();
        let name = format!("{CGROUP_PREFIX}{pid}-{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        let mut dirs = Vec::new();
        if v2 {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
            let base = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
            remove_stale(&base, CGROUP_PREFIX);
            enable_controllers(&base)?;
            let dir = base.join(&name);
            remove_left(&dir, pid);
            create_dir(&dir)?;
            write(&dir.join("cgroup.subtree_control"), "+memory +pids")?;
            dirs.push((dir, None));
        } else {
            let controllers = [("memory", memory_bytes.is_some()), ("pids", pids.is_some())];
            for (controller, wanted) in controllers {
                if !wanted {
                    continue;
                }
                let path = own
                    .lines()
                    .filter_map(|l| {
                        let mut fields = l.splitn(3, ':');
                        fields.next();
                        fields.next().zip(fields.next())
                    })
                    .find(|(list, _)| list.split(',').any(|c| c == controller))
                    .map(|(_, path)| path)
                    .ok_or_else(|| {
                        Error::new(tonic::Code::FailedPrecondition, format!("no cgroup v1 {controller} hierarchy here"))
                    })?;
                let base = Path::new(CGROUP_ROOT).join(controller).join(path.trim_start_matches('/'));
                remove_stale(&base, CGROUP_PREFIX);
                let dir = base.join(&name);
                remove_left(&dir, pid);
                create_dir(&dir)?;
                dirs.push((dir, Some(controller)));
            }
        }
        Ok(Some(WorkerCgroup { dirs, v2, memory_bytes, pids }))
    }

    /// Creates slot `index`'s cgroups with the limits.
    pub(super) fn slot(&self, index: usize) -> Result<CgroupSlot> {
        let mut slot = CgroupSlot { dirs: Vec::new(), join_files: Vec::new(), oom_counter: None, oom_kills_seen: 0 };
        for (parent, controller) in &self.dirs {
            let dir = parent.join(format!("slot-{index}"));
            create_dir(&dir)?;
            slot.dirs.push(dir.clone());
            let join = if self.v2 { "cgroup.procs" } else { "tasks" };
            let join =
                CString::new(dir.join(join).as_os_str().as_bytes()).map_err(|e| Error::internal(e.to_string()))?;
            slot.join_files.push(join);
            let memory = controller.is_none_or(|c| c == "memory");
            let pids = controller.is_none_or(|c| c == "pids");
            match (self.memory_bytes, memory, self.v2) {
                (Some(bytes), true, true) => {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    write_if_present(&dir.join("memory.swap.max"), "0")?;
                    slot.oom_counter = Some(dir.join("memory.events"));
                }
                (Some(bytes), true, false) => {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    write_if_present(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
                    slot.oom_counter = Some(dir.join("memory.oom_control"));
                }
                _ => {}
            }
            if let (Some(max), true) = (self.pids, pids) {
                write(&dir.join("pids.max"), &max.to_string())?;
            }
        }
        // Kills counted before this slot's first action are none of its.
        slot.oom_killed();
        Ok(slot)
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        for (dir, _) in &self.dirs {
            remove(dir);
        }
    }
}

impl CgroupSlot {
    /// Whether the kernel's OOM killer struck in this slot since the last
    /// call (or since the slot was made).
    pub(super) fn oom_killed(&mut self) -> bool {
        let kills = self.oom_counter.as_deref().map_or(0, oom_kill_count);
        let struck = kills > self.oom_kills_seen;
        self.oom_kills_seen = kills;
        struck
    }
}

impl Drop for CgroupSlot {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove(dir);
        }
    }
}

/// How many times the kernel's OOM killer struck in the cgroup at `path`
/// (as an OCI runtime spec's `cgroupsPath` names it, below the memory
/// hierarchy of cgroup v1 or the unified one of v2), 0 when it has no
/// memory controller.
pub fn oom_kills(path: &Path) -> u64 {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let root = Path::new(CGROUP_ROOT);
    let v1 = root.join("memory").join(relative).join("memory.oom_control");
    let v2 = root.join(relative).join("memory.events");
    if v1.exists() {
        oom_kill_count(&v1)
    } else {
        oom_kill_count(&v2)
    }
}

/// The `oom_kill N` line of a cgroup's `memory.oom_control` (v1) or
/// `memory.events` (v2).
fn oom_kill_count(file: &Path) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Lets children of `base` (cgroup v2) have the memory and pids
/// controllers; when `base` holds processes (this one), they move to a leaf
/// first, as a cgroup with controllers for its children may hold none.
fn enable_controllers(base: &Path) -> Result<()> {
    let control = base.join("cgroup.subtree_control");
    if std::fs::write(&control, "+memory +pids").is_ok() {
        return Ok(());
    }
    let leaf = base.join("memobuild-worker");
    if !leaf.exists() {
        create_dir(&leaf)?;
    }
    let procs = std::fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines() {
        // A process that exited meanwhile is fine.
        let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
    }
    write(&control, "+memory +pids")
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))
}

fn write(file: &Path, value: &str) -> Result<()> {
    std::fs::write(file, value).with_context(|| format!("writing {value:?} to {}", file.display()))
}

fn write_if_present(file: &Path, value: &str) -> Result<()> {
    if file.exists() {
        write(file, value)?;
    }
    Ok(())
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(cgroup = %dir.display(), error = %e, "removing a sandbox cgroup");
    }
}
