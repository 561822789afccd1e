use std::path::Path;

/// Removes what workers that died without cleaning up left below `parent`:
/// directories named `{prefix}{pid}-{n}` whose process is gone, after their
/// subdirectories (a cgroup's slots). Only empty directories go: a cgroup
/// that still holds processes, or a directory with files, stays.
pub(super) fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| owner_pid(n, prefix)) else { continue };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        remove_left(&entry.path(), pid);
    }
}

/// Removes `dir`, named after `pid`, and its empty subdirectories, if a dead
/// worker left them there. Also called on the name a worker is about to use:
/// an earlier process with the same pid (a container's entry point has the
/// same pid at every start) may have left it, and remove_stale keeps it
/// since that pid is alive.
pub(super) fn remove_left(dir: &Path, pid: u32) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => tracing::info!(path = %dir.display(), pid, "removed what a dead worker left"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(path = %dir.display(), error = %e, "a dead worker's directory stays"),
    }
}

/// The pid in `{prefix}{pid}-{n}`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, instance) = name.strip_prefix(prefix)?.split_once('-')?;
    instance.parse::<u64>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_owners_directories_go() {
        assert_eq!(owner_pid("memobuild-123-4", "memobuild-"), Some(123));
        assert_eq!(owner_pid("memobuild-worker", "memobuild-"), None);
        assert_eq!(owner_pid("memobuild-sandbox-9-0", "memobuild-sandbox-"), Some(9));
        let dir = tempfile::tempdir().unwrap();
        // No process has pid 2^22 + 1 (above the kernel's maximum).
        let dead = dir.path().join("memobuild-4194305-0");
        std::fs::create_dir_all(dead.join("slot-0")).unwrap();
        let alive = dir.path().join(format!("memobuild-{}-0", std::process::id()));
        std::fs::create_dir(&alive).unwrap();
        let kept = dir.path().join("memobuild-worker");
        std::fs::create_dir(&kept).unwrap();
        remove_stale(dir.path(), "memobuild-");
        assert!(!dead.exists());
        assert!(alive.exists() && kept.exists());
    }
}
