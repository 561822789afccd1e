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
    use super::*;
    use crate::steps::rootfs::{lookup_user, resolve_in_root};

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Arc<LayerIndex> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o711);
            header.set_uid(5);
            header.set_gid(6);
            header.set_mtime(1000);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                builder.append_link(&mut header, path, data).unwrap();
            } else {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_bytes()).unwrap();
            }
        }
        Arc::new(LayerIndex::from_tar(&builder.into_inner().unwrap()[..]).unwrap())
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let base = layer(&[
            ("etc", Directory, ""),
            ("etc/passwd", Regular, "app:x:1000:1000::/home/app:/bin/sh\n"),
            ("etc/group", Regular, "staff:x:50:\n"),
            ("usr", Directory, ""),
            ("usr/lib", Directory, ""),
            ("lib", Symlink, "usr/lib"),
            ("srv", Directory, ""),
            ("srv/old", Directory, ""),
            ("opt", Directory, ""),
            ("opt/x", Regular, "x"),
        ]);
        let top = layer(&[("srv/.wh.old", Regular, ""), ("opt/.wh..wh..opq", Regular, ""), ("opt/y", Regular, "y")]);
        let view = LayerStackView::new(vec![base, top]);
        assert_eq!(resolve_in_root(&view, "/lib/x").unwrap(), "usr/lib/x");
        assert_eq!(view.lstat("srv/old").unwrap(), None);
        assert_eq!(view.lstat("opt/x").unwrap(), None);
        assert_eq!(view.lstat("opt/y").unwrap().map(|e| e.kind), Some(FsKind::File));
        let usr = view.lstat("usr").unwrap().unwrap();
        assert_eq!((usr.kind, usr.mode, usr.uid, usr.gid, usr.mtime), (FsKind::Directory, 0o711, 5, 6, 1000));
        // srv is implied by the top layer's whiteout: unpacked, it is a new directory.
        assert_eq!(view.lstat("srv").unwrap().map(|e| e.mode), Some(0o755));
        assert_eq!(lookup_user(&view, "app:staff").unwrap(), (1000, 50));
        assert!(!view.incomplete());
        assert_eq!(view.read("opt/y").unwrap(), None);
        assert!(view.incomplete());
    }
}
