use std::path::Path;

use memobuild_proto::{Result, ResultExt};

/// Gives the input root's directories to the action's user, so it can
/// create its outputs (the files stay the file cache's, read-only). Never
/// follows a symlink.
pub fn give_dirs(root: &Path, uid: u32, gid: u32) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}
