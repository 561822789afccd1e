use std::path::{Path, PathBuf};
use std::sync::Once;

use memobuild_proto::{Error, Result, ResultExt};
use nix::errno::Errno;
use nix::mount::MntFlags;

use super::snapshot_mounts::SnapshotMounts;

/// A directory of MemoBuild's own under the temporary directory, with a
/// snapshot mounted on it: unmounted and removed by
/// [`MountPoint::release`], or when dropped.
#[derive(Debug)]
pub(super) struct MountPoint {
    path: PathBuf,
    released: bool,
}

impl MountPoint {
    /// Creates this process's empty directory `name` (see [`create_owned_dir`]).
    pub(super) fn create(name: &str) -> Result<MountPoint> {
        Ok(MountPoint { path: create_owned_dir(name)?, released: false })
    }

    /// Mounts `mounts` here.
    pub(super) fn mount(&mut self, mounts: &SnapshotMounts) -> Result<()> {
        mounts.mount_at(&self.path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and removes the directory (see [`release_mount_point`]).
    /// Done once; dropping does it when nothing did.
    pub(super) fn release(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        release_mount_point(&self.path)
    }

    /// The path, for whoever releases it later by path; `None` once
    /// released. Dropping no longer releases it.
    pub(super) fn into_path(mut self) -> Option<PathBuf> {
        (!std::mem::replace(&mut self.released, true)).then(|| self.path.clone())
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "dropping a mount point");
        }
    }
}

/// Unmounts what is mounted at `path`, if anything (lazily: whatever still
/// holds the mount keeps it), and removes the directory (or the file, for a
/// mount of a file), if it is there.
pub(super) fn release_mount_point(path: &Path) -> Result<()> {
    unmount_lazily(path)?;
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => std::fs::remove_dir(path),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("removing mount point {}", path.display()))),
    }
}

/// Detaches what is mounted at `path`; nothing mounted, or no `path`, is
/// no error.
fn unmount_lazily(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::internal(format!("unmounting {}: {e}", path.display()))),
    }
}

/// What the names of the directories in [`create_owned_dir`] start with.
const OWNED_PREFIX: &str = "memobuild.";

/// Creates this process's empty mount point or staging directory `name`:
/// `memobuild.PID.NAME` under the temporary directory. A process killed
/// in the middle of a step leaves its mounts there; the first call in
/// each process starts [`sweep_abandoned`] in the background, which
/// removes those of processes that are gone. (Processes that share a
/// temporary directory must share a PID namespace, as they do on one
/// host or in one pod.)
pub(super) fn create_owned_dir(name: &str) -> Result<PathBuf> {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        std::thread::spawn(|| sweep_abandoned(&std::env::temp_dir()));
    });
    let path = std::env::temp_dir().join(format!("{OWNED_PREFIX}{}.{name}", std::process::id()));
    std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// Unmounts and removes every directory in `dir` made by [`create_owned_dir`] in
/// a process that no longer runs; returns how many. A directory with a
/// mount that will not go is left whole: removing its files would remove
/// the mounted ones.
pub(super) fn sweep_abandoned(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut swept = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else { continue };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        match remove_abandoned(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), pid, "removed the mounts of a step whose process is gone");
                swept += 1;
            }
            Err(e) => tracing::warn!(error = %e, "could not remove an abandoned step directory"),
        }
    }
    swept
}

/// The process id in a name made by [`create_owned_dir`].
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(OWNED_PREFIX)?.split_once('.')?;
    pid.parse().ok()
}

/// Unmounts everything at or under `path`, deepest first, then removes it.
fn remove_abandoned(path: &Path) -> Result<()> {
    for mount in mounts_under(path)?.iter().rev() {
        unmount_lazily(mount)?;
    }
    if !mounts_under(path)?.is_empty() {
        return Err(Error::internal(format!("{} still holds mounts", path.display())));
    }
    std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))
}

/// The mount points at or under `path` in this mount namespace, in the
/// order they were mounted.
fn mounts_under(path: &Path) -> Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_octal(point)))
        .filter(|point| point.starts_with(path))
        .collect())
}

/// A mountinfo field with its `\NNN` escapes (space, tab, newline,
/// backslash) decoded.
fn unescape_octal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mountinfo_escapes_and_owner_pids_are_read() {
        assert_eq!(unescape_octal("/tmp/a\\040b\\134c\\x"), "/tmp/a b\\c\\x");
        assert_eq!(owner_pid("memobuild.4242.rootfs-memobuild-step-0-1"), Some(4242));
        assert_eq!(owner_pid("memobuild.x.rootfs"), None);
        assert_eq!(owner_pid("memobuild-ctd-tests"), None);
    }

    /// A directory of a process that is gone is unmounted (a tmpfs on it
    /// and one inside it) and removed; one of a live process is left alone.
    #[test]
    fn only_the_mounts_of_processes_that_are_gone_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let abandoned = tmp.path().join(format!("memobuild.{gone}.rootfs-x"));
        let live = tmp.path().join(format!("memobuild.{}.rootfs-y", std::process::id()));
        let tmpfs = |at: &Path| {
            nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap()
        };
        for dir in [&abandoned, &live] {
            std::fs::create_dir(dir).unwrap();
            tmpfs(dir);
        }
        std::fs::create_dir(abandoned.join("inner")).unwrap();
        tmpfs(&abandoned.join("inner"));
        std::fs::write(abandoned.join("inner/file"), "x").unwrap();
        assert_eq!(sweep_abandoned(tmp.path()), 1);
        assert!(!abandoned.exists());
        assert!(mounts_under(&abandoned).unwrap().is_empty());
        assert_eq!(mounts_under(&live).unwrap(), std::slice::from_ref(&live));
        release_mount_point(&live).unwrap();
    }
}
