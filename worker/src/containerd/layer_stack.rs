use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The overlay xattr that marks a directory as hiding the layers below it.
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Read-only overlay layer directories, top first, read the way overlayfs
/// merges them (whiteouts and opaque directories hide what is below) without
/// mounting anything.
#[derive(Clone, Debug, Default)]
pub(super) struct LayerStack {
    dirs: Vec<PathBuf>,
}

impl LayerStack {
    pub(super) fn new(dirs: Vec<PathBuf>) -> Self {
        LayerStack { dirs }
    }

    /// The host path and metadata of `rel` (relative, `/`-separated) in the
    /// merged view, without following a final symlink; `None` when absent.
    pub(super) fn lookup(&self, rel: &Path) -> Option<(PathBuf, Metadata)> {
        let components: Vec<&Path> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(Path::new(name)),
                _ => None,
            })
            .collect();
        if components.is_empty() {
            return None;
        }
        'layers: for dir in &self.dirs {
            let mut path = dir.clone();
            for (index, name) in components.iter().enumerate() {
                path.push(name);
                let last = index + 1 == components.len();
                match std::fs::symlink_metadata(&path) {
                    Ok(meta) if is_whiteout(&meta) => return None,
                    Ok(meta) if last => return Some((path, meta)),
                    // A file where a directory should be hides the rest.
                    Ok(meta) if !meta.is_dir() => return None,
                    Ok(_) if is_opaque(&path) => {
                        // Below an opaque directory only this layer counts.
                        let full = dir.join(rel);
                        return match std::fs::symlink_metadata(&full) {
                            Ok(meta) if !is_whiteout(&meta) => Some((full, meta)),
                            _ => None,
                        };
                    }
                    Ok(_) => {}
                    Err(_) => continue 'layers,
                }
            }
        }
        None
    }

    /// The contents of the regular file `rel` in the merged view (a symlink
    /// is followed within the stack, a few levels deep); `None` when absent.
    pub(super) fn read(&self, rel: &str) -> std::io::Result<Option<Vec<u8>>> {
        let mut rel = rel.trim_start_matches('/').to_string();
        for _ in 0..8 {
            let Some((path, meta)) = self.lookup(Path::new(&rel)) else { return Ok(None) };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                let base = Path::new(&rel).parent().unwrap_or(Path::new("")).to_path_buf();
                let next = if target.is_absolute() { target } else { base.join(target) };
                rel = next.to_string_lossy().trim_start_matches('/').to_string();
                continue;
            }
            if !meta.is_file() {
                return Ok(None);
            }
            return std::fs::read(&path).map(Some);
        }
        Ok(None)
    }
}

/// An overlay whiteout: a character device 0/0.
pub(super) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// An overlay opaque directory.
pub(super) fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(value)) if value == b"y")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_layers_win_and_missing_paths_fall_through() {
        let top = tempfile::tempdir().expect("tempdir");
        let bottom = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(bottom.path().join("etc")).expect("mkdir");
        std::fs::write(bottom.path().join("etc/passwd"), "bottom").expect("write");
        std::fs::write(bottom.path().join("etc/group"), "group").expect("write");
        std::fs::create_dir_all(top.path().join("etc")).expect("mkdir");
        std::fs::write(top.path().join("etc/passwd"), "top").expect("write");
        std::os::unix::fs::symlink("passwd", top.path().join("etc/link")).expect("symlink");
        let stack = LayerStack::new(vec![top.path().to_path_buf(), bottom.path().to_path_buf()]);
        assert_eq!(stack.read("/etc/passwd").expect("read"), Some(b"top".to_vec()));
        assert_eq!(stack.read("/etc/group").expect("read"), Some(b"group".to_vec()));
        assert_eq!(stack.read("/etc/link").expect("read"), Some(b"top".to_vec()));
        assert_eq!(stack.read("/etc/shadow").expect("read"), None);
    }
}
