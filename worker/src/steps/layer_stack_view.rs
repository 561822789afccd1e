//! A parent filesystem read from its layers' indexes, top layer first, as
//! overlayfs would show the unpacked stack: no snapshot, no mount.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memobuild_oci::{FsEntry, FsKind, LayerIndex, PathInLayer};
use memobuild_proto::Result;

use super::fs_view::FsView;

/// A layer stack's filesystem, from the indexes of its layers (bottom
/// first). A file whose bytes no index kept cannot be read: the view
/// remembers that ([`LayerStackView::incomplete`]) so the caller can plan
/// again against the mounted filesystem.
pub struct LayerStackView {
    layers: Vec<Arc<LayerIndex>>,
    incomplete: AtomicBool,
}

impl LayerStackView {
    pub fn new(layers: Vec<Arc<LayerIndex>>) -> Self {
        LayerStackView { layers, incomplete: AtomicBool::new(false) }
    }

    /// Whether a read asked for bytes no index holds (its answer, `None`,
    /// was not the filesystem's).
    pub fn incomplete(&self) -> bool {
        self.incomplete.load(Ordering::Relaxed)
    }

    /// The entry at `path` as the top-most layer that has it says.
    fn find(&self, path: &str) -> Option<FsEntry> {
        if path.is_empty() {
            return Some(implied_directory());
        }
        for layer in self.layers.iter().rev() {
            match layer.lookup(path) {
                PathInLayer::Present(entry) => return Some(entry.clone()),
                // Unpacking makes it in that layer's directory, which
                // overlayfs shows over what lower layers have there.
                PathInLayer::Implied => return Some(implied_directory()),
                PathInLayer::Hidden => return None,
                PathInLayer::Absent => {}
            }
        }
        None
    }
}

/// A directory a layer has entries in but no entry for.
fn implied_directory() -> FsEntry {
    FsEntry { kind: FsKind::Directory, mode: 0o755, uid: 0, gid: 0, mtime: 0, content: None }
}

impl FsView for LayerStackView {
    fn lstat(&self, path: &str) -> Result<Option<FsEntry>> {
        Ok(self.find(path).map(|entry| FsEntry { content: None, ..entry }))
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.find(path) {
            Some(FsEntry { kind: FsKind::File, content: Some(bytes), .. }) => Ok(Some(bytes)),
            Some(FsEntry { kind: FsKind::File, content: None, .. }) => {
                self.incomplete.store(true, Ordering::Relaxed);
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::steps::rootfs::{lookup_user, resolve_in_root};

    /// The index of a layer holding what `fill` puts in a directory.
    fn layer(fill: impl Fn(&Path)) -> Arc<LayerIndex> {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        tar.append_dir_all(".", dir.path()).unwrap();
        Arc::new(LayerIndex::from_tar(&tar.into_inner().unwrap()[..]).unwrap())
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide() {
        let base = layer(|d| {
            for dir in ["etc", "usr/lib", "srv/old", "opt"] {
                std::fs::create_dir_all(d.join(dir)).unwrap();
            }
            std::fs::set_permissions(d.join("usr"), std::fs::Permissions::from_mode(0o711)).unwrap();
            std::fs::write(d.join("etc/passwd"), "app:x:1000:1000::/home/app:/bin/sh\n").unwrap();
            std::fs::write(d.join("etc/group"), "staff:x:50:\n").unwrap();
            std::fs::write(d.join("opt/x"), "x").unwrap();
            symlink("usr/lib", d.join("lib")).unwrap();
        });
        let top = layer(|d| {
            std::fs::create_dir_all(d.join("srv")).unwrap();
            std::fs::create_dir_all(d.join("opt")).unwrap();
            std::fs::write(d.join("srv/.wh.old"), "").unwrap();
            std::fs::write(d.join("opt/.wh..wh..opq"), "").unwrap();
            std::fs::write(d.join("opt/y"), "y").unwrap();
        });
        let view = LayerStackView::new(vec![base, top]);
        assert_eq!(resolve_in_root(&view, "/lib/x").unwrap(), "usr/lib/x");
        assert_eq!(view.lstat("srv/old").unwrap(), None);
        assert_eq!(view.lstat("opt/x").unwrap(), None);
        assert_eq!(view.lstat("opt/y").unwrap().map(|e| e.kind), Some(FsKind::File));
        let usr = view.lstat("usr").unwrap().unwrap();
        assert_eq!((usr.kind, usr.mode), (FsKind::Directory, 0o711));
        assert_eq!(lookup_user(&view, "app:staff").unwrap(), (1000, 50));
        assert!(!view.incomplete());
        assert_eq!(view.read("opt/y").unwrap(), None);
        assert!(view.incomplete());
    }
}
