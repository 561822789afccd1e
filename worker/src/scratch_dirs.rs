use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_proto::{Result, ResultExt};
use parking_lot::Mutex;

use crate::action_executor::blocking;

/// The directories actions run in: `slot-N/` with `root/` (the input root)
/// and the captured `stdout` and `stderr`. A directory serves one action
/// after another: between two, its input root is removed and its streams
/// are emptied in place, so a trivial action creates as few inodes as it
/// can (creating and deleting files is most of a trivial action's cost on
/// ext4).
pub(crate) struct ScratchDirs {
    dir: PathBuf,
    state: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    free: Vec<PathBuf>,
    made: usize,
}

/// One action's directory, cleaned in the background and given back when
/// it is dropped (the action done, or its future dropped midway).
pub(crate) struct ScratchDir {
    path: PathBuf,
    pool: Arc<ScratchDirs>,
}

impl ScratchDirs {
    /// Starts with `dir` empty: whatever a previous run left goes.
    pub(crate) async fn open(dir: PathBuf) -> Result<Arc<Self>> {
        let stale = dir.clone();
        blocking(move || {
            if stale.exists() {
                force_remove_dir_all(&stale)?;
            }
            std::fs::create_dir_all(&stale)
        })
        .await
        .with_context(|| format!("preparing {}", dir.display()))?;
        Ok(Arc::new(ScratchDirs { dir, state: Mutex::default() }))
    }

    /// A clean directory, reused or new.
    pub(crate) async fn take(self: &Arc<Self>) -> Result<ScratchDir> {
        let reused = {
            let mut state = self.state.lock();
            match state.free.pop() {
                Some(path) => Ok(path),
                None => {
                    state.made += 1;
                    Err(self.dir.join(format!("slot-{}", state.made)))
                }
            }
        };
        let path = match reused {
            Ok(path) => path,
            Err(path) => {
                tokio::fs::create_dir(&path).await.with_context(|| format!("creating {}", path.display()))?;
                path
            }
        };
        Ok(ScratchDir { path, pool: self.clone() })
    }
}

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let (path, pool) = (self.path.clone(), self.pool.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || clean_and_return(path, &pool))),
            Err(_) => clean_and_return(path, &pool),
        }
    }
}

/// Removes the input root and empties the streams; a directory that cannot
/// be cleaned is removed and not reused.
fn clean_and_return(path: PathBuf, pool: &ScratchDirs) {
    let cleaned = (|| -> std::io::Result<()> {
        let root = path.join("root");
        if root.exists() {
            force_remove_dir_all(&root)?;
        }
        for stream in ["stdout", "stderr"] {
            match std::fs::OpenOptions::new().write(true).open(path.join(stream)) {
                Ok(file) => file.set_len(0)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })();
    match cleaned {
        Ok(()) => pool.state.lock().free.push(path),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cleaning an action directory; it is not reused");
            let _ = force_remove_dir_all(&path);
        }
    }
}

/// Removes a tree even when the command left read-only directories in it.
pub(crate) fn force_remove_dir_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `count` directories are back in the pool.
    async fn returned(pool: &ScratchDirs, count: usize) {
        while pool.state.lock().free.len() < count {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn directories_come_back_clean_and_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ScratchDirs::open(dir.path().join("actions")).await.unwrap();
        let first = pool.take().await.unwrap();
        let path = first.path().to_path_buf();
        std::fs::create_dir_all(path.join("root/sub")).unwrap();
        std::fs::write(path.join("stdout"), "old output").unwrap();
        drop(first);
        returned(&pool, 1).await;
        assert!(!path.join("root").exists());
        assert_eq!(std::fs::read(path.join("stdout")).unwrap(), b"");

        // Taken again: the same directory; two at once: two.
        let again = pool.take().await.unwrap();
        assert_eq!(again.path(), path);
        let other = pool.take().await.unwrap();
        assert_ne!(other.path(), path);
        std::fs::create_dir(other.path().join("root")).unwrap();
        drop(other);
        drop(again);
        returned(&pool, 2).await;
        let left: Vec<_> = std::fs::read_dir(dir.path().join("actions"))
            .unwrap()
            .map(|e| e.unwrap().path().join("root").exists())
            .collect();
        assert_eq!(left, [false, false]);
    }
}
